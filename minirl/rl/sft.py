"""Next-token training: pretraining on raw text and supervised fine-tuning (SFT).

Both minimise the masked mean negative log-likelihood of target tokens,
    loss = -sum_t mask_t log p(x_{t+1} | x_<=t) / sum_t mask_t,
pretraining on every token of the raw task corpus ("347+85=432\\n..."),
SFT on the answer and eos of chat-format examples ("Q:347+85\\nA:" -> "432<eos>").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minirl import functional as F
from minirl.config import check_fields
from minirl.tasks import pretrain_batch, resolve_task, sft_batch
from minirl.tensor import Tensor


def token_nll(policy, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> Tensor:
    """Masked mean negative log-likelihood of `targets` (B, T) given `inputs` (B, T)."""
    logp = F.gather_logprobs(policy(inputs), targets)  # (B, T)
    return -(logp * mask).sum() / max(float(mask.sum()), 1.0)


def _mixture_checks(config) -> list[tuple[str, bool, str]]:
    """The checks of a task mixture's fields (tasks, weights); unknown task names raise naming the known ones."""
    for t in config.tasks:
        resolve_task(t)
    w = config.weights
    return [("tasks", len(config.tasks) >= 1, "at least one task"),
            ("weights", w is None or (len(w) == len(config.tasks) and min(w) >= 0 and sum(w) > 0),
             f"{len(config.tasks)} non-negative numbers with a positive sum, or None")]


@dataclass
class PretrainConfig:
    """Language modelling on the raw-format mixture of every task."""

    tasks: tuple[str, ...] = ("add", "sort", "reverse", "copy", "max", "count")
    """Tasks whose problems make up the corpus."""
    weights: tuple[float, ...] | None = None
    """Mixture weights of the tasks (None: uniform)."""
    batch_size: int = 64
    """Sequences per batch."""
    seq_len: int = 48
    """Tokens per sequence (several problems each)."""

    def __post_init__(self):
        check_fields(self, _mixture_checks(self) + [("batch_size", self.batch_size >= 1, ">= 1"),
                                                    ("seq_len", self.seq_len >= 2, ">= 2")])


class Pretrain:
    """Next-token prediction on every position of raw text."""

    name = "pretrain"

    def __init__(self, config: PretrainConfig):
        self.config = config

    def batch(self, policy, rng, step):
        c = self.config
        rows = pretrain_batch(rng, policy.tokenizer, c.batch_size, c.seq_len, c.tasks, c.weights)  # (B, T+1)
        return rows[:, :-1], rows[:, 1:], np.ones((c.batch_size, c.seq_len), np.float32)

    def loss(self, policy, batch):
        inputs, targets, mask = batch
        loss = token_nll(policy, inputs, targets, mask)
        return loss, {}


@dataclass
class SFTConfig:
    """Instruction tuning on chat-format examples; loss on the answer and eos only."""

    tasks: tuple[str, ...] = ("add", "sort", "reverse", "copy", "max", "count")
    """Tasks the examples come from."""
    weights: tuple[float, ...] | None = None
    """Mixture weights of the tasks (default: uniform)."""
    batch_size: int = 64
    """Examples per batch."""

    def __post_init__(self):
        check_fields(self, _mixture_checks(self) + [("batch_size", self.batch_size >= 1, ">= 1")])


class SFT:
    """Supervised fine-tuning: masked next-token loss on chat answers."""

    name = "sft"

    def __init__(self, config: SFTConfig, ref_model=None):
        self.config = config  # no reference model: SFT's loss has no KL term

    def batch(self, policy, rng, step):
        c = self.config
        return sft_batch(rng, policy.tokenizer, c.batch_size, c.tasks, c.weights)  # inputs, targets, mask: (B, T)

    def loss(self, policy, batch):
        inputs, targets, mask = batch
        return token_nll(policy, inputs, targets, mask), {}
