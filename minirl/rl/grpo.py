"""GRPO: Group Relative Policy Optimization (Shao et al., DeepSeekMath, arXiv 2402.03300).

No value function: for each prompt, sample a group of G completions, score
them, and use the group-normalised reward as every token's advantage,
    A_i = (r_i - mean(r_group)) / (std(r_group) + 1e-4)      (scale_rewards="group").
The loss is PPO's clipped surrogate per token plus an optional k3 KL penalty
to the frozen reference model, normalised by `loss_type` exactly as TRL's
GRPOTrainer does (see `minirl.rl.losses.grpo_loss`). With μ = num_iterations
> 1 the same rollout is reused μ times and the importance ratio
π_θ / π_θ_old moves away from 1, so the clipping matters.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minirl.rl.advantages import SCALE_REWARDS, group_advantages
from minirl.rl.losses import LOSS_TYPES, grpo_loss
from minirl.rl.rollout import Rollout, completion_logprobs, frozen_logprobs, sample_rollout
from minirl.tasks import resolve_task


@dataclass
class GRPOConfig:
    """GRPO's knobs; names follow TRL's GRPOConfig."""

    task: str = "add"
    """Task whose verifier gives the reward."""
    num_prompts: int = 32
    """Prompts per rollout batch (x num_generations = sequences per step)."""
    num_generations: int = 8
    """G: completions sampled per prompt (the group)."""
    temperature: float = 1.0
    """Sampling temperature (log-probs in the loss use the same temperature)."""
    max_new_tokens: int | None = None
    """Completion length limit (default: the task's longest answer + eos)."""
    reward: str = "exact"
    """exact: 1 if the verifier accepts, else 0; partial: the task's partial credit."""
    beta: float = 0.0
    """KL coefficient to the reference model (TRL: 0.04 at first, 0.0 now)."""
    epsilon: float = 0.2
    """Lower clipping range: ratio is clipped to [1 - epsilon, 1 + epsilon_high]."""
    epsilon_high: float | None = None
    """Upper clipping range (DAPO's clip-higher); None means epsilon."""
    loss_type: str = "grpo"
    """Normalisation: grpo, bnpo, dr_grpo or dapo (as TRL defines them)."""
    scale_rewards: str = "group"
    """Divide advantages by the group std (group), the batch std (batch), or not (none)."""
    num_iterations: int = 1
    """μ: optimizer updates per rollout batch (μ > 1 reuses samples with the importance ratio)."""

    def __post_init__(self):
        resolve_task(self.task)
        checks = [
            ("num_prompts", self.num_prompts >= 1, ">= 1"),
            ("num_generations", self.num_generations >= 2, ">= 2 (a group needs at least two samples)"),
            ("temperature", self.temperature > 0, "> 0"),
            ("max_new_tokens", self.max_new_tokens is None or self.max_new_tokens >= 1, ">= 1 or None"),
            ("reward", self.reward in ("exact", "partial"), "one of exact, partial"),
            ("beta", self.beta >= 0, ">= 0"),
            ("epsilon", self.epsilon > 0, "> 0"),
            ("epsilon_high", self.epsilon_high is None or self.epsilon_high > 0, "> 0 or None"),
            ("loss_type", self.loss_type in LOSS_TYPES, "one of " + ", ".join(LOSS_TYPES)),
            ("scale_rewards", self.scale_rewards in SCALE_REWARDS, "one of " + ", ".join(SCALE_REWARDS)),
            ("num_iterations", self.num_iterations >= 1, ">= 1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"GRPOConfig.{name} must be {allowed}, got {getattr(self, name)!r}")


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
        logp = completion_logprobs(policy, rollout.tokens, rollout.attention_mask, rollout.prompt_len, c.temperature)
        old_logp = rollout.extra.get("old_logp", logp.data)  # μ = 1: π_old is the current policy
        return grpo_loss(logp, old_logp, rollout.extra["advantages"], rollout.completion_mask,
                         ref_logp=rollout.extra.get("ref_logp"), beta=c.beta, epsilon=c.epsilon,
                         epsilon_high=c.epsilon_high, loss_type=c.loss_type,
                         max_completion_length=rollout.completion_mask.shape[1])
