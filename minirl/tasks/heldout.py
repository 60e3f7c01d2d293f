"""The held-out sets: fixed problems per task, and the exact-match accuracy of a text generator on them.

The held-out set of a task is its first `n` samples from a generator seeded by
(seed, crc32(task name)): the same problems on every machine and every run,
different problems for different tasks. It is *not* filtered against the
training data (training draws from the same distribution with other seeds),
and may repeat a problem when a task has few distinct problems; accuracy on
it is an estimate of accuracy over the task's distribution.
"""

from __future__ import annotations

import zlib
from typing import Callable, Sequence

import numpy as np

from .base import Example
from .formats import format_prompt, format_raw_prompt
from .tasks import TASKS, Task, resolve_task

GenerateFn = Callable[[list[str], int], list[str]]
"""generate_fn(prompts, max_new_tokens) -> completions, decoded, cut at eos."""


def heldout_set(task: str | Task, n: int = 200, seed: int = 1234) -> list[Example]:
    """The fixed held-out examples of `task`."""
    task = resolve_task(task)
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode())])
    return [task.sample(rng) for _ in range(n)]


def heldout_accuracy(generate_fn: GenerateFn, tasks: Sequence[str | Task] | None = None, n: int = 200,
             seed: int = 1234, prompt_format: str = "chat") -> dict[str, float]:
    """Exact-match accuracy in [0, 1] per task name, one `generate_fn` call per task.

    `prompt_format="chat"` asks "Q:347+85\\nA:" and expects the completion to
    stop at eos (generate_fn prepends bos and strips eos). `prompt_format="raw"`
    asks "347+85=" the way a base model was pretrained, and scores the
    completion up to its first newline.
    """
    if prompt_format not in ("chat", "raw"):
        raise ValueError(f"prompt_format must be 'chat' or 'raw', got {prompt_format!r}")
    scores = {}
    for task in [resolve_task(t) for t in (tasks if tasks is not None else TASKS)]:
        examples = heldout_set(task, n=n, seed=seed)
        fmt = format_prompt if prompt_format == "chat" else format_raw_prompt
        prompts = [fmt(ex.prompt) for ex in examples]
        # +1: room for the eos (chat) or the newline (raw) that ends the answer
        completions = list(generate_fn(prompts, task.max_answer_len + 1))
        if len(completions) != len(prompts):
            raise ValueError(f"generate_fn returned {len(completions)} completions for {len(prompts)} prompts")
        if prompt_format == "raw":
            completions = [c.split("\n", 1)[0] for c in completions]
        correct = [task.verify(ex.prompt, c) for ex, c in zip(examples, completions)]
        scores[task.name] = float(np.mean(correct)) if correct else 0.0
    return scores
