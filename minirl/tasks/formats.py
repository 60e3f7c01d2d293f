"""The two text formats of a problem: raw pretraining lines and chat prompts.

    pretraining (raw) line:  "347+85=432"          format_pretrain(example)
    raw conditioning text:   "347+85="             format_raw_prompt(prompt)
    chat prompt:             "Q:347+85\\nA:"        format_prompt(prompt)

A pretraining document is bos followed by such lines, each ended by "\\n" (no
eos anywhere). A chat sequence is

    <bos> Q:347+85\\nA: 432 <eos>

so SFT has two visible things to teach a base model: the Q/A wrapper, and
ending the answer with eos instead of running on to the next line. The longest
chat sequence of the default tasks is 24 tokens; every allowed task config
stays within MAX_SEQ_LEN = 32.
"""

from __future__ import annotations

from .base import Example
from .tasks import Task, resolve_task
from .tokenizer import CharTokenizer

MAX_SEQ_LEN = 32
"""Upper bound on a chat sequence in tokens, bos and eos included."""

CHAT_PREFIX, CHAT_SUFFIX = "Q:", "\nA:"
RAW_SEP = "="
"""Separates problem and answer in a pretraining line."""


def _prompt_of(example_or_prompt: Example | str, task: str | Task | None) -> str:
    """The raw prompt, checked against `task` when one is given."""
    if isinstance(example_or_prompt, Example):
        prompt = example_or_prompt.prompt
        if task is not None and resolve_task(task).name != example_or_prompt.task:
            raise ValueError(f"example of task {example_or_prompt.task!r} formatted as {resolve_task(task).name!r}")
    else:
        prompt = example_or_prompt
        if task is not None:
            resolve_task(task).solve(prompt)  # raises ValueError if the prompt is not of this task
    return prompt


def format_prompt(example_or_prompt: Example | str, task: str | Task | None = None) -> str:
    """Chat text the model is conditioned on: "Q:347+85\\nA:"; the answer and eos follow."""
    return CHAT_PREFIX + _prompt_of(example_or_prompt, task) + CHAT_SUFFIX


def format_raw_prompt(example_or_prompt: Example | str, task: str | Task | None = None) -> str:
    """Pretraining-format text a base model completes: "347+85="; the answer and "\\n" follow."""
    return _prompt_of(example_or_prompt, task) + RAW_SEP


def format_pretrain(example: Example) -> str:
    """One pretraining line without its newline: "347+85=432"."""
    return example.prompt + RAW_SEP + example.answer


def encode_chat(tok: CharTokenizer, prompt: str, completion: str | None = None) -> tuple[list[int], list[int]]:
    """(bos + chat prompt ids, completion ids + eos); the second is [] when completion is None."""
    prompt_ids = [tok.bos_id] + tok.encode(format_prompt(prompt))
    completion_ids = [] if completion is None else tok.encode(completion) + [tok.eos_id]
    return prompt_ids, completion_ids


def max_seq_len(task: str | Task) -> int:
    """Longest chat sequence of `task` in tokens: bos + prompt + answer + eos."""
    task = resolve_task(task)
    return 1 + len(CHAT_PREFIX) + task.max_prompt_len + len(CHAT_SUFFIX) + task.max_answer_len + 1
