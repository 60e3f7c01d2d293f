"""Character-level tokenizer with a fixed, small vocabulary.

One token per character, plus three special tokens at fixed ids:

    0 <pad>   right-padding of batches; never predicted (masked out of losses)
    1 <bos>   first token of every sequence the model sees
    2 <eos>   end of an answer in the chat format; generation stops here

The ids of the characters follow `ALPHABET` in order, so the vocabulary is the
same on every machine and every run (52 tokens). Like the GPT-2 byte vocabulary
of nanoGPT's `shakespeare_char`, but even smaller: the toy tasks only need
digits, lowercase letters, a few symbols, and `Q` / `A` for the chat format.
"""

from __future__ import annotations

import string
from typing import Iterable

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
"""Special tokens, at ids 0, 1, 2 in this order."""

ALPHABET = "\n" + " +-*/=:,.?" + string.digits + "AQ" + string.ascii_lowercase
"""Every character `encode` accepts, in id order (ids start after the specials)."""


class CharTokenizer:
    """Maps text to ids one character at a time; specials at ids 0 (pad), 1 (bos), 2 (eos)."""

    def __init__(self, alphabet: str = ALPHABET):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError(f"alphabet has repeated characters: {alphabet!r}")
        self.alphabet = alphabet
        self.itos: list[str] = list(SPECIAL_TOKENS) + list(alphabet)
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    @property
    def vocab_size(self) -> int:
        """Number of token ids, specials included."""
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of `text` (no bos/eos added)."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            bad = sorted({c for c in text if c not in self.alphabet})
            raise ValueError(
                f"cannot encode character(s) {bad} in {text!r}; "
                f"allowed alphabet is {self.alphabet!r}"
            ) from None

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of `ids`; pad and bos are always dropped, eos too unless `skip_special=False`."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} out of range [0, {self.vocab_size})")
            if i in (self.pad_id, self.bos_id):
                continue
            if i == self.eos_id and skip_special:
                continue
            out.append(self.itos[i])
        return "".join(out)

    def to_dict(self) -> dict:
        """JSON-serialisable description; `vocab` is a Hugging Face style vocab.json mapping."""
        return {
            "type": "char",
            "vocab": dict(self.stoi),
            "pad_token": PAD,
            "bos_token": BOS,
            "eos_token": EOS,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        """Inverse of `to_dict`."""
        if d.get("type") != "char":
            raise ValueError(f"tokenizer type must be 'char', got {d.get('type')!r}")
        itos = [tok for tok, _ in sorted(d["vocab"].items(), key=lambda kv: kv[1])]
        if [d["vocab"][t] for t in itos] != list(range(len(itos))):
            raise ValueError("vocab ids must be 0, 1, ..., vocab_size - 1")
        if tuple(itos[:3]) != SPECIAL_TOKENS:
            raise ValueError(f"ids 0, 1, 2 must be {SPECIAL_TOKENS}, got {tuple(itos[:3])}")
        if any(len(t) != 1 for t in itos[3:]):
            raise ValueError("every non-special token must be a single character")
        return cls(alphabet="".join(itos[3:]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
