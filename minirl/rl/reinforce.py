"""REINFORCE with PERL's KL-regularised reward, and RLOO, its leave-one-out twin.

PERL (Sidahmed et al., arXiv 2403.10704) fine-tunes with REINFORCE on
    J = E_y~π[(1 - β) r(y) - β KL(π || π_ref)],     β = 0.05, temperature 0.7,
where the KL of one sampled completion y is the k1 sum of its token
log-ratios, sum_t (log π(y_t | y_<t) - log π_ref(y_t | y_<t)), and π_ref is
frozen: the initial policy. The regularised reward R = (1 - β) r - β KL is a
constant of the loss (no gradient flows through the KL), and the gradient
is the score function with a baseline b:
    ∇J = E[(R - b) ∇ log π(y)],   log π(y) = sum_t log π(y_t | y_<t).
`kl_regularised_reward` below computes R; `reinforce_loss` is the surrogate
-mean_y((R - b) log π(y)) whose gradient is -∇J (no length normalisation).

The two classes differ only in b:
- `Reinforce`: b = 0 ("none") or the mean R of the batch ("mean"; it
  includes the sample itself, the usual slightly biased choice).
- `RLOO` (Ahmadian et al., *Back to Basics*, arXiv 2402.14740): G samples
  per prompt, b_i = the mean R of the other G - 1 samples of the same
  prompt, an unbiased baseline (`advantages.rloo_advantages`).

Where the KL goes: into the reward, not the loss. TRL's RLOOTrainer
(trl/trainer/rloo_trainer.py, `_generate_and_score_completions`) does
    per_token_kl = old_per_token_logps - ref_per_token_logps
    kl = (per_token_kl * completion_mask).sum(-1)     # the sequence k1 sum
    rewards = rewards - self.beta * kl                # before the baseline
and only then subtracts the leave-one-out baseline, so the KL is baselined
too; RLOOConfig.beta defaults to 0.05. minirl does the same with PERL's
weighting, (1 - β) r - β KL = (1 - β) (r - β/(1 - β) KL): TRL's reward with
β' = β / (1 - β) (0.0526 at β = 0.05), scaled by 1 - β.

The KL uses the log-probs the sampler recorded (`Generation.logprobs`):
with one update per batch the sampling policy is the current one, so this
is π's log-prob at the sampling temperature without another forward pass;
the reference is scored at the same temperature, as TRL does. With β = 0 the
reference model is never run.

Shape legend: B = num_prompts * G sequences, N = completion length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minirl.rl.advantages import rloo_advantages, whiten
from minirl.rl.masking import as_advantages, as_array, as_tensor
from minirl.rl.rollout import Rollout, RolloutConfig, completion_logprobs, frozen_logprobs, sample_rollout
from minirl.tensor import Tensor

BASELINES = ("none", "mean")


@dataclass
class _KLRewardConfig(RolloutConfig):
    """What REINFORCE and RLOO share: the rollout and PERL's KL-regularised reward."""

    num_prompts: int = 16  # REINFORCE's and RLOO's default; the field and its docstring are RolloutConfig's
    beta: float = 0.05
    """β of PERL's reward (1 - β) r - β KL(π || π_ref), in [0, 1]; 0 skips the reference model."""
    whiten_advantages: bool = False
    """Shift and scale the batch's advantages to mean 0, variance 1 (TRL's normalize_advantages)."""

    def _checks(self):
        return super()._checks() + [
            ("beta", 0 <= self.beta <= 1, "in [0, 1]"),
            ("whiten_advantages", not self.whiten_advantages or self.num_prompts * self.num_generations >= 2,
             "False when the batch has a single sequence (whitening needs num_prompts * num_generations >= 2)"),
        ]


@dataclass
class ReinforceConfig(_KLRewardConfig):
    """REINFORCE (PERL): the KL-regularised reward, minus an optional batch-mean baseline."""

    baseline: str = "mean"
    """none: advantage = R; mean: advantage = R - mean of the batch's R (num_generations may be 1)."""

    def _checks(self):
        return super()._checks() + [("baseline", self.baseline in BASELINES, "one of " + ", ".join(BASELINES))]


@dataclass
class RLOOConfig(_KLRewardConfig):
    """RLOO: the KL-regularised reward minus the mean of the other samples of the same prompt."""

    def _checks(self):
        group = [("num_generations", self.num_generations >= 2,
                  ">= 2 (the leave-one-out baseline needs another sample)")]
        return group + super()._checks()


class Reinforce:
    """REINFORCE on PERL's KL-regularised reward with a batch-mean (or no) baseline."""

    name = "reinforce"

    def __init__(self, config: ReinforceConfig, ref_model=None):
        if config.beta > 0 and ref_model is None:
            raise ValueError(f"{type(config).__name__}.beta > 0 needs a reference model (ref_model), "
                             "the frozen initial policy")
        self.config, self.ref_model = config, ref_model

    def batch(self, policy, rng: np.random.Generator, step: int) -> Rollout:
        c = self.config
        rollout = sample_rollout(policy, c.task, rng, c.num_prompts, c.num_generations,
                                 c.max_new_tokens, c.temperature, reward=c.reward)
        # 1) the regularised reward R = (1 - β) r - β sum_t k1_t, a constant per sequence
        kl = np.zeros(len(rollout.rewards))  # (B,)
        if c.beta > 0:
            ref_logp = frozen_logprobs(self.ref_model, rollout, c.temperature)  # (B, N)
            kl = ((rollout.generation.logprobs - ref_logp) * rollout.completion_mask).sum(axis=1)
            rollout.stats["kl"] = float(kl.mean())
        regularised = kl_regularised_reward(rollout.rewards, kl, c.beta)  # (B,)
        # 2) subtract the baseline, 3) optionally whiten over the batch
        advantages = self.advantages(regularised)
        if c.whiten_advantages:
            advantages = whiten(advantages)
        rollout.extra["regularised_rewards"] = regularised
        rollout.extra["advantages"] = advantages
        rollout.stats["regularised_reward"] = float(regularised.mean())
        return rollout

    def advantages(self, rewards: np.ndarray) -> np.ndarray:
        """R - b for every sequence: (B,) -> (B,)."""
        if self.config.baseline == "none":
            return rewards.copy()
        if np.ptp(rewards) == 0:  # identical rewards carry no signal: exactly 0, not an ulp off
            return np.zeros_like(rewards)
        return rewards - rewards.mean()

    def loss(self, policy, rollout: Rollout):
        """-mean_b(A_b * log π(y_b)) on the current policy's log-probs."""
        logp = completion_logprobs(policy, rollout.generation, self.config.temperature)  # (B, N)
        return reinforce_loss(logp, rollout.extra["advantages"], rollout.completion_mask)


class RLOO(Reinforce):
    """REINFORCE leave-one-out: the baseline of each sample is the mean reward of its group's others."""

    name = "rloo"

    def __init__(self, config: RLOOConfig, ref_model=None):
        if config.num_generations < 2:  # also checked by RLOOConfig; a ReinforceConfig may slip through
            raise ValueError(f"{type(config).__name__}.num_generations must be >= 2 for RLOO "
                             f"(the leave-one-out baseline needs another sample), got {config.num_generations}")
        super().__init__(config, ref_model)

    def advantages(self, rewards: np.ndarray) -> np.ndarray:
        return rloo_advantages(rewards, self.config.num_generations)


# ------------------------------------------------------------------- losses
def kl_regularised_reward(reward, kl, beta: float, mask=None) -> np.ndarray:
    """PERL's (1 - beta) * r - beta * KL(pi || pi_anchor) per sequence: (B,) -> (B,).

    `kl` is either the sequence KL (B,), i.e. the k1 sum of log-ratios
    sum_t (logp_t - anchor_logp_t), or the per-token log-ratios (B, T), which
    are summed over `mask` (all tokens when mask is None). The result is a
    constant reward: no gradient flows through it.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    reward = np.asarray(reward.data if isinstance(reward, Tensor) else reward, dtype=np.float64)
    kl = np.asarray(kl.data if isinstance(kl, Tensor) else kl, dtype=np.float64)
    if reward.ndim != 1:
        raise ValueError(f"reward must be 1-D (B,), got shape {reward.shape}")
    if kl.ndim == 2:
        kl = (kl * (np.ones_like(kl) if mask is None else np.asarray(mask, dtype=np.float64))).sum(axis=1)
    if kl.shape != reward.shape:
        raise ValueError(f"kl must have shape (B,) = {reward.shape} or (B, T), got {kl.shape}")
    return (1.0 - beta) * reward - beta * kl


def reinforce_loss(logp, advantages, mask) -> tuple[Tensor, dict[str, float]]:
    """REINFORCE: -(A * log pi(sequence)), averaged over sequences.

    With advantages (B,) each sequence's log-prob is the sum of its masked
    token log-probs (the score function of the whole sequence, no length
    normalisation): loss = -mean_b(A_b * sum_t m_bt logp_bt). With (B, T)
    advantages each token gets its own: loss = -mean_b(sum_t m_bt A_bt logp_bt).
    """
    logp = as_tensor("logp", logp)
    mask = as_array("mask", mask, logp.shape, logp.dtype)
    A = as_advantages(advantages, logp.shape, logp.dtype)  # (B, 1) or (B, T)

    B = logp.shape[0]
    pg_loss = (logp * (-A * mask / B)).sum()  # -mean_b(A_b * log pi(sequence b))
    seq_logp = (logp.data * mask).sum(axis=1)
    stats = {"pg_loss": float(pg_loss.data), "seq_logp_mean": float(seq_logp.mean())}
    return pg_loss, stats
