"""Batches for pretraining, SFT and RL rollouts, drawn from the toy tasks.

B=batch, T=time. Every function draws only from the `np.random.Generator` it
is given, so the same generator state gives the same batch.

- Pretraining rows are documents of raw lines: bos, then "347+85=432\\n",
  "sort 5831=1358\\n", ... (the task of each line drawn by `weights`), cut to
  T+1 tokens; inputs are row[:, :-1], targets row[:, 1:].
- SFT rows are chat sequences `bos + "Q:347+85\\nA:" + "432" + eos`, right-
  padded with pad_id. They come already shifted: `targets[:, t]` is the token
  after `inputs[:, t]`, and `mask[:, t]` is 1 exactly where `targets[:, t]` is
  an answer token or the eos, so the loss is `sum(mask * nll) / sum(mask)`.
- RL prompts are `bos + "Q:347+85\\nA:"`, unpadded, with their Examples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import Example
from .formats import encode_chat, format_pretrain
from .tasks import TASKS, Task, resolve_task
from .tokenizer import CharTokenizer

TaskSpec = str | Task | Sequence[str | Task] | None
"""A task, its name, a list of either, or None for every task in `TASKS`."""


def _task_list(tasks: TaskSpec) -> list[Task]:
    """The tasks named by a TaskSpec."""
    if tasks is None:
        return list(TASKS.values())
    if isinstance(tasks, (str, Task)):
        return [resolve_task(tasks)]
    out = [resolve_task(t) for t in tasks]
    if not out:
        raise ValueError("tasks must name at least one task")
    return out


def _probabilities(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """`weights` normalised to sum to 1 (uniform when None)."""
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {n} non-negative numbers with a positive sum, got {weights!r}")
    return w / w.sum()


def sample_examples(rng: np.random.Generator, n: int, tasks: TaskSpec = None,
                    weights: Sequence[float] | None = None) -> list[Example]:
    """`n` examples, each from a task drawn with probabilities `weights`."""
    task_list = _task_list(tasks)
    which = rng.choice(len(task_list), size=n, p=_probabilities(weights, len(task_list)))
    return [task_list[i].sample(rng) for i in which]


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, length: int | None = None) -> np.ndarray:
    """(B, length) int64 array of `seqs` right-padded with pad_id (length defaults to the longest)."""
    longest = max((len(s) for s in seqs), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a sequence of {longest} tokens does not fit in length={length}")
    out = np.full((len(seqs), length), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def pretrain_batch(rng: np.random.Generator, tok: CharTokenizer, batch_size: int, seq_len: int,
                   tasks: TaskSpec = None, weights: Sequence[float] | None = None) -> np.ndarray:
    """(B, T+1) int64 rows of raw-format documents for next-token prediction (T = seq_len)."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    task_list = _task_list(tasks)
    p = _probabilities(weights, len(task_list))
    rows = np.empty((batch_size, seq_len + 1), dtype=np.int64)
    which: list[int] = []  # task of each upcoming line, drawn 64 at a time (one rng.choice per line is slow)
    for b in range(batch_size):
        row = [tok.bos_id]
        while len(row) < seq_len + 1:
            if not which:
                which = rng.choice(len(task_list), size=64, p=p).tolist()
            row += tok.encode(format_pretrain(task_list[which.pop()].sample(rng)) + "\n")
        rows[b] = row[: seq_len + 1]
    return rows


def sft_batch(rng: np.random.Generator, tok: CharTokenizer, batch_size: int, tasks: TaskSpec = None,
              weights: Sequence[float] | None = None, seq_len: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, mask), each (B, T): chat sequences shifted by one, mask on answer + eos targets.

    T is the longest sequence of the batch minus one, or `seq_len` if given.
    """
    seqs, answer_starts = [], []
    for ex in sample_examples(rng, batch_size, tasks, weights):
        prompt_ids, answer_ids = encode_chat(tok, ex.prompt, ex.answer)
        seqs.append(prompt_ids + answer_ids)
        answer_starts.append(len(prompt_ids))
    full = pad_right(seqs, tok.pad_id, None if seq_len is None else seq_len + 1)  # (B, T+1)
    inputs, targets = full[:, :-1], full[:, 1:]
    # targets[:, t] = full[:, t+1] is an answer/eos token iff start <= t+1 < len(seq)
    t = np.arange(targets.shape[1])[None, :] + 1  # (1, T)
    starts = np.array(answer_starts)[:, None]  # (B, 1)
    ends = np.array([len(s) for s in seqs])[:, None]  # (B, 1)
    mask = ((t >= starts) & (t < ends)).astype(np.float32)
    return np.ascontiguousarray(inputs), np.ascontiguousarray(targets), mask


def prompt_batch(rng: np.random.Generator, tok: CharTokenizer, task: str | Task,
                 batch_size: int) -> tuple[list[Example], list[list[int]]]:
    """`batch_size` examples of `task` and their chat prompt ids (bos included, unpadded)."""
    task = resolve_task(task)
    examples = [task.sample(rng) for _ in range(batch_size)]
    return examples, [encode_chat(tok, ex.prompt)[0] for ex in examples]
