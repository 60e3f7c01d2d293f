"""The `Task` interface shared by every toy task, and the helpers they reuse.

A task knows four things about its problems: how to sample one from a seeded
`np.random.Generator`, the unique correct answer (`solve`), how good a
completion is (`verify` exact, `reward` with partial credit), and what a
plausible wrong answer looks like (`wrong_answer`, for preference pairs).

Prompts are the raw problem and name their operation, so a prompt alone says
what is asked: `"347+85"`, `"sort 5831"`, `"rev abcde"`, `"copy abc"`.
The text formats the model is trained on (pretraining lines, chat prompts)
are built from them in `formats.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIGITS = "0123456789"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Example:
    """One problem with its correct answer."""

    prompt: str
    """The raw problem, e.g. "347+85"."""
    answer: str
    """The unique correct answer, e.g. "432"."""
    task: str
    """Name of the task that made it (a key of `TASKS`)."""


def positional_match(completion: str, answer: str, align: str = "left") -> float:
    """Fraction of aligned positions where `completion` agrees with `answer`, over the longer length."""
    n = max(len(completion), len(answer))
    if n == 0:
        return 1.0
    if align == "right":
        completion, answer = completion[::-1], answer[::-1]
    elif align != "left":
        raise ValueError(f"align must be 'left' or 'right', got {align!r}")
    return sum(c == a for c, a in zip(completion, answer)) / n


def random_string(rng: np.random.Generator, chars: str, min_len: int, max_len: int) -> str:
    """A string of length uniform in [min_len, max_len] with characters uniform over `chars`."""
    n = int(rng.integers(min_len, max_len + 1))
    return "".join(chars[i] for i in rng.integers(0, len(chars), size=n))


def mutate_one(s: str, chars: str, rng: np.random.Generator) -> str:
    """`s` with one random position replaced by a different character of `chars`."""
    if not s:
        return chars[int(rng.integers(len(chars)))]
    i = int(rng.integers(len(s)))
    others = [c for c in chars if c != s[i]]
    return s[:i] + others[int(rng.integers(len(others)))] + s[i + 1 :]


def swap_adjacent(s: str, rng: np.random.Generator) -> str:
    """`s` with one random pair of unequal neighbours swapped (`s` itself if there is none)."""
    pairs = [i for i in range(len(s) - 1) if s[i] != s[i + 1]]
    if not pairs:
        return s
    i = pairs[int(rng.integers(len(pairs)))]
    return s[:i] + s[i + 1] + s[i] + s[i + 2 :]


def check_range(obj: object, low_field: str, high_field: str, lo: int, hi: int) -> None:
    """Raise ValueError unless lo <= obj.low_field <= obj.high_field <= hi."""
    low, high = getattr(obj, low_field), getattr(obj, high_field)
    name = type(obj).__name__
    for field, value in ((low_field, low), (high_field, high)):
        if not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            raise ValueError(f"{name}.{field} must be an integer in [{lo}, {hi}], got {value!r}")
    if low > high:
        raise ValueError(f"{name}.{low_field} ({low}) must be <= {name}.{high_field} ({high})")


class Task:
    """Base class: subclasses set `name` and implement `solve`, `_sample_prompt`, the two lengths."""

    name: str
    answer_chars: str = DIGITS
    """Characters an answer is made of (used to corrupt answers)."""

    # --- what a subclass implements -------------------------------------------
    def _sample_prompt(self, rng: np.random.Generator) -> str:
        """A random raw prompt."""
        raise NotImplementedError

    def solve(self, prompt: str) -> str:
        """The correct answer to `prompt`; ValueError if the prompt is not of this task."""
        raise NotImplementedError

    def _wrong_candidates(self, prompt: str, answer: str, rng: np.random.Generator) -> list[str]:
        """Plausible mistakes, some of which may happen to equal the answer."""
        return []

    @property
    def max_prompt_len(self) -> int:
        """Longest raw prompt in characters."""
        raise NotImplementedError

    @property
    def max_answer_len(self) -> int:
        """Longest answer in characters (so max_new_tokens = max_answer_len + 1 for eos)."""
        raise NotImplementedError

    # --- shared behaviour ----------------------------------------------------
    def sample(self, rng: np.random.Generator) -> Example:
        """A random problem and its answer."""
        prompt = self._sample_prompt(rng)
        return Example(prompt=prompt, answer=self.solve(prompt), task=self.name)

    def verify(self, prompt: str, completion: str) -> bool:
        """True iff `completion` is exactly the answer (no whitespace tolerated)."""
        return completion == self.solve(prompt)

    def reward(self, prompt: str, completion: str) -> float:
        """1.0 iff verify; otherwise the fraction of positions right (left-aligned), in [0, 1)."""
        return positional_match(completion, self.solve(prompt))

    def wrong_answer(self, prompt: str, rng: np.random.Generator) -> str:
        """A plausible wrong answer, guaranteed different from the correct one."""
        answer = self.solve(prompt)
        candidates = [c for c in self._wrong_candidates(prompt, answer, rng) if c != answer]
        if candidates:
            return candidates[int(rng.integers(len(candidates)))]
        return mutate_one(answer, self.answer_chars, rng)

    def preference_pair(self, rng: np.random.Generator) -> tuple[str, str, str]:
        """(prompt, chosen, rejected): chosen is correct, rejected a plausible mistake."""
        example = self.sample(rng)
        return example.prompt, example.answer, self.wrong_answer(example.prompt, rng)

    def _parse(self, prompt: str, prefix: str, chars: str) -> str:
        """The operand of `prefix + operand`, checking it is made of `chars`."""
        body = prompt[len(prefix) :]
        if not prompt.startswith(prefix) or not body or any(c not in chars for c in body):
            raise ValueError(f"not a {self.name!r} prompt: {prompt!r} (expected {prefix!r} + [{chars}]+)")
        return body
