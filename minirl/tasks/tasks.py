"""The toy tasks, each with an exact verifier, and the `TASKS` registry.

    task      prompt            answer   reward for a wrong answer
    add       "347+85"          "432"    digits right, right-aligned (0 if lengths differ by > 1)
    sort      "sort 5831"       "1358"   positions right, left-aligned
    rev       "rev abcde"       "edcba"  positions right, left-aligned
    copy      "copy abc"        "abc"    positions right, left-aligned
    max       "max 5831"        "8"      0
    count     "count a abcab"   "2"      0
    sub       "347-85"          "262"    as add (a task the shipped models never saw: UNSEEN_TASKS)

Registry key for reversal is "reverse" (the prompt says "rev" to stay short).
Operand lengths are capped (add: 7 digits, the others: 10 characters) so that
every chat-format sequence, bos and eos included, fits in `MAX_SEQ_LEN` = 32
tokens; `formats.max_seq_len(task)` computes the exact bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import DIGITS, LETTERS, Task, check_range, positional_match, random_string, swap_adjacent


@dataclass(frozen=True)
class AddTask(Task):
    """a + b for non-negative integers a, b of min_digits..max_digits digits each."""

    min_digits: int = 1
    """Fewest digits of each operand, in [1, 7]."""
    max_digits: int = 3
    """Most digits of each operand, in [min_digits, 7]."""
    name: str = "add"
    """Registry key, copied into `Example.task`."""

    def __post_init__(self):
        check_range(self, "min_digits", "max_digits", 1, 7)

    def _operand(self, rng: np.random.Generator) -> int:
        d = int(rng.integers(self.min_digits, self.max_digits + 1))
        return int(rng.integers(0 if d == 1 else 10 ** (d - 1), 10**d))

    def _sample_prompt(self, rng: np.random.Generator) -> str:
        a = self._operand(rng)
        return f"{a}+{self._operand(rng)}"

    def _operands(self, prompt: str) -> tuple[str, str]:
        a, plus, b = prompt.partition("+")
        if not (plus and a.isdigit() and b.isdigit() and a.isascii() and b.isascii()):
            raise ValueError(f"not an 'add' prompt: {prompt!r} (expected digits+digits)")
        return a, b

    def solve(self, prompt: str) -> str:
        a, b = self._operands(prompt)
        return str(int(a) + int(b))

    def reward(self, prompt: str, completion: str) -> float:
        """Fraction of digits right, right-aligned (units under units); 0 if lengths differ by more than one."""
        answer = self.solve(prompt)
        if abs(len(completion) - len(answer)) > 1:
            return 0.0
        return positional_match(completion, answer, align="right")

    def _wrong_candidates(self, prompt, answer, rng):
        a, b = self._operands(prompt)
        # 1) the classic mistake: add digit by digit and forget every carry
        n = max(len(a), len(b))
        a, b = a.zfill(n), b.zfill(n)
        no_carry = str(int("".join(str((int(x) + int(y)) % 10) for x, y in zip(a, b))))
        # 2) one digit off by one: answer +- 10^k
        k = int(rng.integers(len(answer)))
        off = int(answer) + int(rng.choice([-1, 1])) * 10**k
        return [no_carry, str(off if off >= 0 else int(answer) + 10**k)]

    @property
    def max_prompt_len(self) -> int:
        return 2 * self.max_digits + 1

    @property
    def max_answer_len(self) -> int:
        return self.max_digits + 1


@dataclass(frozen=True)
class StringTask(Task):
    """Shared shape of "<op> <string>" tasks: sort, rev, copy, max."""

    min_len: int = 3
    """Shortest operand string, in [1, 10]."""
    max_len: int = 6
    """Longest operand string, in [min_len, 10]."""

    prefix: ClassVar[str]
    """Text before the operand, e.g. "sort "."""
    chars: ClassVar[str]
    """Characters the operand is drawn from (uniformly, with repeats)."""

    def __post_init__(self):
        check_range(self, "min_len", "max_len", 1, 10)

    def _sample_prompt(self, rng: np.random.Generator) -> str:
        return self.prefix + random_string(rng, self.chars, self.min_len, self.max_len)

    def solve(self, prompt: str) -> str:
        return self.transform(self._parse(prompt, self.prefix, self.chars))

    def transform(self, s: str) -> str:
        """The answer for operand `s`."""
        raise NotImplementedError

    @property
    def max_prompt_len(self) -> int:
        return len(self.prefix) + self.max_len

    @property
    def max_answer_len(self) -> int:
        return self.max_len


@dataclass(frozen=True)
class SortTask(StringTask):
    """Sort a string of digits ascending: "sort 5831" -> "1358"."""

    name: str = "sort"
    """Registry key, copied into `Example.task`."""
    prefix: ClassVar[str] = "sort "
    chars: ClassVar[str] = DIGITS

    def transform(self, s: str) -> str:
        return "".join(sorted(s))

    def _wrong_candidates(self, prompt, answer, rng):
        s = self._parse(prompt, self.prefix, self.chars)
        # nearly sorted, left as given, sorted the wrong way
        return [swap_adjacent(answer, rng), s, answer[::-1]]


@dataclass(frozen=True)
class ReverseTask(StringTask):
    """Reverse a string of lowercase letters: "rev abcde" -> "edcba"."""

    name: str = "reverse"
    """Registry key, copied into `Example.task`."""
    prefix: ClassVar[str] = "rev "
    chars: ClassVar[str] = LETTERS
    answer_chars: ClassVar[str] = LETTERS

    def transform(self, s: str) -> str:
        return s[::-1]

    def _wrong_candidates(self, prompt, answer, rng):
        s = self._parse(prompt, self.prefix, self.chars)
        half = len(s) // 2
        # one pair out of place, copied instead of reversed, only the second half reversed
        return [swap_adjacent(answer, rng), s, s[:half] + s[half:][::-1]]


@dataclass(frozen=True)
class CopyTask(StringTask):
    """Copy a string of lowercase letters: "copy abc" -> "abc"."""

    name: str = "copy"
    """Registry key, copied into `Example.task`."""
    prefix: ClassVar[str] = "copy "
    chars: ClassVar[str] = LETTERS
    answer_chars: ClassVar[str] = LETTERS

    def transform(self, s: str) -> str:
        return s

    def _wrong_candidates(self, prompt, answer, rng):
        i = int(rng.integers(len(answer)))
        # one pair swapped, reversed, one letter dropped, one letter doubled
        return [swap_adjacent(answer, rng), answer[::-1], answer[:i] + answer[i + 1 :],
                answer[:i] + answer[i] + answer[i:]]


@dataclass(frozen=True)
class MaxTask(StringTask):
    """The largest digit of a string of digits: "max 5831" -> "8"."""

    name: str = "max"
    """Registry key, copied into `Example.task`."""
    prefix: ClassVar[str] = "max "
    chars: ClassVar[str] = DIGITS

    def transform(self, s: str) -> str:
        return max(s)

    def _wrong_candidates(self, prompt, answer, rng):
        s = self._parse(prompt, self.prefix, self.chars)
        return sorted(set(s) - {answer})  # another digit of the operand

    @property
    def max_answer_len(self) -> int:
        return 1


@dataclass(frozen=True)
class CountTask(Task):
    """How often a letter occurs in a string: "count a abcab" -> "2"."""

    min_len: int = 3
    """Shortest string, in [1, 9]."""
    max_len: int = 6
    """Longest string, in [min_len, 9] (so the answer is one digit)."""
    n_letters: int = 3
    """The string and the letter are drawn from the first n_letters letters, in [1, 26]."""
    name: str = "count"
    """Registry key, copied into `Example.task`."""

    def __post_init__(self):
        check_range(self, "min_len", "max_len", 1, 9)
        if not isinstance(self.n_letters, int) or not 1 <= self.n_letters <= 26:
            raise ValueError(f"CountTask.n_letters must be an integer in [1, 26], got {self.n_letters!r}")

    def _sample_prompt(self, rng: np.random.Generator) -> str:
        letters = LETTERS[: self.n_letters]
        target = letters[int(rng.integers(self.n_letters))]
        return f"count {target} " + random_string(rng, letters, self.min_len, self.max_len)

    def _letter_and_string(self, prompt: str) -> tuple[str, str]:
        body = self._parse(prompt, "count ", LETTERS + " ")
        letter, space, s = body.partition(" ")
        if len(letter) != 1 or not space or not s or " " in s:
            raise ValueError(f"not a 'count' prompt: {prompt!r} (expected 'count <letter> <letters>')")
        return letter, s

    def solve(self, prompt: str) -> str:
        letter, s = self._letter_and_string(prompt)
        return str(s.count(letter))

    def _wrong_candidates(self, prompt, answer, rng):
        n = int(answer)
        return [str(m) for m in (n - 1, n + 1) if 0 <= m <= 9]  # off by one

    @property
    def max_prompt_len(self) -> int:
        return len("count a ") + self.max_len

    @property
    def max_answer_len(self) -> int:
        return 1


@dataclass(frozen=True)
class SubTask(AddTask):
    """a - b for integers a >= b >= 0 of min_digits..max_digits digits: a task no shipped model was trained on."""

    name: str = "sub"
    """Registry key, copied into `Example.task`."""

    def _sample_prompt(self, rng: np.random.Generator) -> str:
        a, b = sorted((self._operand(rng), self._operand(rng)), reverse=True)
        return f"{a}-{b}"

    def _operands(self, prompt: str) -> tuple[str, str]:
        a, minus, b = prompt.partition("-")
        if not (minus and a.isdigit() and b.isdigit() and a.isascii() and b.isascii() and int(a) >= int(b)):
            raise ValueError(f"not a 'sub' prompt: {prompt!r} (expected digits-digits, the first not smaller)")
        return a, b

    def solve(self, prompt: str) -> str:
        a, b = self._operands(prompt)
        return str(int(a) - int(b))

    def _wrong_candidates(self, prompt, answer, rng):
        a, b = self._operands(prompt)
        # 1) the classic mistake: subtract digit by digit and forget every borrow; 2) the sum
        n = max(len(a), len(b))
        no_borrow = str(int("".join(str((int(x) - int(y)) % 10) for x, y in zip(a.zfill(n), b.zfill(n)))))
        return [no_borrow, str(int(a) + int(b))]

    @property
    def max_answer_len(self) -> int:
        return self.max_digits


TASKS: dict[str, Task] = {
    t.name: t
    for t in (AddTask(min_digits=2, max_digits=3), SortTask(), ReverseTask(), CopyTask(), MaxTask(), CountTask())
}
"""The registry: task name -> default task instance. The shipped models were pretrained and instruction-tuned on
these, and every run's report measures the alignment tax on them."""

UNSEEN_TASKS: dict[str, Task] = {t.name: t for t in (SubTask(min_digits=2, max_digits=3),)}
"""Tasks neither shipped model ever saw (out-of-distribution data for the sparsity lab): trainable by name, and
measured in a run's report when trained, but not part of the alignment tax."""


def get_task(name: str) -> Task:
    """The registered task called `name` (one of TASKS or UNSEEN_TASKS)."""
    task = TASKS.get(name) or UNSEEN_TASKS.get(name)
    if task is None:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}, and unseen by the shipped models: "
                         f"{sorted(UNSEEN_TASKS)}")
    return task


def resolve_task(task: str | Task) -> Task:
    """`task` itself if it is a Task, else the registered task of that name."""
    return task if isinstance(task, Task) else get_task(task)
