"""RFT: rejection-sampling fine-tuning (paper 1's RFT; STaR, Zelikman et al. 2022; Yuan et al. 2023).

Sample G completions per prompt from the initial policy, keep those the
verifier accepts (at most one per prompt), and fine-tune on them with SFT's
loss, the masked token NLL (`sft.token_nll`). The data is the policy's own,
in-distribution; with `pairs = "offline"` the same loop trains on the task's
correct answers instead, which is plain SFT on the task: paper 1 contrasts the
two (in-distribution data gives sparse updates, SFT dense ones).

With `regenerate_every = k` the samples are drawn again from the current
policy every k steps (iterated RFT, as expert iteration).
"""

from __future__ import annotations

from dataclasses import dataclass

from minirl.rl.preference import PreferenceAlgorithm, PreferenceConfig
from minirl.rl.sft import token_nll


@dataclass
class RFTConfig(PreferenceConfig):
    """Rejection sampling: the policy's verified samples (on_policy) or the task's answers (offline)."""

    pairs: str = "on_policy"
    """on_policy (the initial policy's verified-correct samples), offline (the correct answers: SFT), or a JSONL file."""


class RFT(PreferenceAlgorithm):
    """Rejection-sampling fine-tuning: SFT on the policy's own verified-correct samples."""

    name = "rft"
    kind = "rft"

    def loss(self, policy, batch):
        rows, _ = batch
        return token_nll(policy, rows.inputs, rows.targets, rows.mask), {}
