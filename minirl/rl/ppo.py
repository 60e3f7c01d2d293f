"""PPO for language models (Schulman et al., arXiv 1707.06347), as RLHF uses it.

The vocabulary is CleanRL's `ppo.py` (`clip_coef`, `vf_coef`, `ent_coef`,
`update_epochs`, `num_minibatches`, `clip_vloss`, `pg_loss`, `v_loss`,
`approx_kl`, `clipfrac`); the language-model specifics follow TRL's original
PPOTrainer (trl <= 0.11, `compute_rewards` / `compute_advantages` /
`loss`) and Huang et al., *The N Implementation Details of RLHF with PPO*
(ICLR blog track, 2024). Each completion token is an action; the episode is
one completion:

1. Sample G completions for each prompt (no tape, KV cache).
2. With no tape, one forward of the policy gives the old log-probs and the
   old values; one of the frozen reference (the initial policy) its log-probs.
3. Per-token rewards: -kl_coef * k1_t on every completion token, k1_t =
   log π_old(y_t) - log π_ref(y_t) (TRL's "kl" penalty), plus the task
   reward on the last completion token (eos, or the last token if truncated).
4. GAE(γ, λ) over the completion mask, returns = advantages + values, then
   the advantages are whitened over the mask (TRL's masked_whiten).
5. `update_epochs` passes over shuffled minibatches, each minimising
       pg_loss + vf_coef * v_loss - ent_coef * entropy
   with CleanRL's clipped surrogate and clipped value loss.
6. kl_coef is fixed, or adapted after each batch by Ziegler et al.'s
   controller (arXiv 1909.08593, section 2.2; TRL's AdaptiveKLController):
       e = clip(KL / target_kl - 1, -0.2, 0.2),  kl_coef *= 1 + e * B / kl_horizon
   with KL the batch's mean sequence KL and B its number of sequences.

The value function is a scalar head on the policy's trunk
(`TransformerConfig.value_head`, loaded with `minirl.load(init,
value_head=True)`, zero-initialised), not a separate critic: one trunk
forward gives both logits and values, so a PPO update costs half the
memory and compute of an actor plus a critic of the same size, which at
toy scale is the difference that matters. The price is that the value and
policy gradients share the trunk; `vf_coef` sets how hard the value loss
pulls on it (TRL's 0.1). TRL's original PPOTrainer did the same with
`AutoModelForCausalLMWithValueHead`; newer TRL (PPOTrainer since v0.11,
following Huang et al.) trains a separate critic initialised from the
reward model. `value_head.weight` is then one of the policy's trainable
parameters; update-sparsity comparisons of θ0 and θ1 must leave it out.

Which position's value is the state before completion token t: the hidden
state at position P - 1 + t, the same position whose logits give
log π(y_t | prompt, y_<t). So values[:, t] = V(prompt + y_<t) and logp[:, t]
are computed from one hidden state: the value is of the state in which
token t is chosen (as TRL's `values[:, :-1]` sliced from the prompt's last
token). After the last completion token the episode ends: its next value is
0 and the task reward arrives there.

Shape legend: B = num_prompts * G sequences, P = prompt length, N = completion length, C = hidden size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minirl.rl.advantages import gae, whiten
from minirl.rl.losses import entropy_bonus, ppo_policy_loss, ppo_value_loss
from minirl.rl.rollout import Rollout, completion_logits, completion_logprobs, minibatch_indices, frozen_logprobs, sample_rollout, take
from minirl.tasks import resolve_task
from minirl.tensor import Tensor, no_grad

KL_CONTROLLERS = ("fixed", "adaptive")


@dataclass
class PPOConfig:
    """PPO's knobs; names follow CleanRL's ppo.py and TRL's original PPOConfig."""

    task: str = "add"
    """Task whose verifier gives the reward."""
    num_prompts: int = 32
    """Prompts per rollout batch."""
    num_generations: int = 4
    """Completions sampled per prompt."""
    temperature: float = 1.0
    """Sampling temperature (log-probs in the loss use the same temperature)."""
    max_new_tokens: int | None = None
    """Completion length limit (default: the task's longest answer + eos)."""
    reward: str = "exact"
    """exact: 1 if the verifier accepts, else 0; partial: the task's partial credit."""
    gamma: float = 1.0
    """Discount factor γ of GAE, in [0, 1]."""
    lam: float = 0.95
    """λ of GAE, in [0, 1]."""
    clip_coef: float = 0.2
    """ε: the ratio π / π_old is clipped to [1 - ε, 1 + ε] (TRL's cliprange)."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss (TRL's vf_coef)."""
    clip_vloss: bool = True
    """Clip the value loss around the old values (CleanRL's clip_vloss)."""
    vf_clip: float = 0.2
    """Half-width of the value clipping when clip_vloss (TRL's cliprange_value)."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus (entropy is logged either way)."""
    update_epochs: int = 2
    """Passes over each rollout batch (TRL's ppo_epochs)."""
    num_minibatches: int = 1
    """Minibatches per pass; updates per batch = update_epochs * num_minibatches."""
    kl_coef: float = 0.05
    """β: weight of the per-token KL penalty in the reward (initial value when adaptive)."""
    kl_controller: str = "fixed"
    """fixed: kl_coef stays; adaptive: Ziegler et al.'s proportional controller."""
    target_kl: float = 6.0
    """Adaptive only: the mean sequence KL (nats) the controller steers to (TRL's target)."""
    kl_horizon: int = 10000
    """Adaptive only: sequences over which an error is corrected (TRL's horizon)."""
    whiten_advantages: bool = True
    """Whiten the advantages over the completion tokens of the batch."""
    whiten_rewards: bool = False
    """Scale the per-token rewards to unit variance (mean kept) before GAE (TRL's whiten_rewards)."""

    def __post_init__(self):
        resolve_task(self.task)  # raises naming the known tasks
        B = self.num_prompts * self.num_generations
        checks = [
            ("num_prompts", self.num_prompts >= 1, ">= 1"),
            ("num_generations", self.num_generations >= 1, ">= 1"),
            ("temperature", self.temperature > 0, "> 0"),
            ("max_new_tokens", self.max_new_tokens is None or self.max_new_tokens >= 1, ">= 1 or None"),
            ("reward", self.reward in ("exact", "partial"), "one of exact, partial"),
            ("gamma", 0 <= self.gamma <= 1, "in [0, 1]"),
            ("lam", 0 <= self.lam <= 1, "in [0, 1]"),
            ("clip_coef", self.clip_coef > 0, "> 0"),
            ("vf_coef", self.vf_coef >= 0, ">= 0"),
            ("vf_clip", self.vf_clip > 0, "> 0"),
            ("ent_coef", self.ent_coef >= 0, ">= 0"),
            ("update_epochs", self.update_epochs >= 1, ">= 1"),
            ("num_minibatches", 1 <= self.num_minibatches <= max(B, 1),
             f"in [1, num_prompts * num_generations = {B}]"),
            ("kl_coef", self.kl_coef >= 0, ">= 0"),
            ("kl_controller", self.kl_controller in KL_CONTROLLERS, "one of " + ", ".join(KL_CONTROLLERS)),
            ("target_kl", self.target_kl > 0, "> 0"),
            ("kl_horizon", self.kl_horizon >= 1, ">= 1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"PPOConfig.{name} must be {allowed}, got {getattr(self, name)!r}")
        if self.kl_controller == "adaptive" and not self.kl_coef > 0:
            raise ValueError(f"PPOConfig.kl_coef must be > 0 with kl_controller='adaptive' "
                             f"(the controller multiplies it), got {self.kl_coef!r}")


class AdaptiveKLController:
    """Ziegler et al. (arXiv 1909.08593): nudge β so the measured KL tracks a target (TRL's AdaptiveKLController)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), int(horizon)

    def update(self, current: float, n_steps: int) -> float:
        """One proportional step after a batch of `n_steps` sequences with mean sequence KL `current`."""
        proportional_error = float(np.clip(current / self.target - 1, -0.2, 0.2))
        self.value *= 1 + proportional_error * n_steps / self.horizon
        return self.value


class FixedKLController:
    """β stays where it was set."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current: float, n_steps: int) -> float:
        return self.value


def logprobs_and_values(policy, rollout: Rollout, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """One trunk forward: log π(y_t | prompt, y_<t) and V(prompt + y_<t), both (B, N), and the logits (B, N, V)."""
    P = rollout.prompt_len
    h = policy.hidden_states(rollout.tokens, rollout.attention_mask)  # (B, P + N, C)
    logits = completion_logits(policy, h, P, temperature)  # (B, N, V) at the sampling temperature
    logp = completion_logprobs(policy, rollout.tokens, rollout.attention_mask, P, temperature, logits=logits)
    values = policy.values(h[:, P - 1:-1])  # (B, N): position P - 1 + t is the state before token t
    return logp, values, logits


def explained_variance(values: np.ndarray, returns: np.ndarray, mask: np.ndarray) -> float:
    """1 - Var[returns - values] / Var[returns] over the masked tokens; NaN for constant returns (as CleanRL)."""
    on = mask > 0
    var_returns = np.var(returns[on])
    if var_returns == 0:
        return float("nan")
    return float(1 - np.var(returns[on] - values[on]) / var_returns)


class PPO:
    """PPO with a value head on the policy trunk and a KL-to-reference penalty in the reward."""

    name = "ppo"

    def __init__(self, config: PPOConfig, ref_model=None):
        if (config.kl_coef > 0 or config.kl_controller == "adaptive") and ref_model is None:
            raise ValueError("PPOConfig.kl_coef > 0 needs a reference model (ref_model), the frozen initial policy")
        self.config, self.ref_model = config, ref_model
        self.updates_per_step = config.update_epochs * config.num_minibatches
        self.kl_ctl = (AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
                       if config.kl_controller == "adaptive" else FixedKLController(config.kl_coef))

    def batch(self, policy, rng: np.random.Generator, step: int) -> Rollout:
        c = self.config
        if not getattr(policy.config, "value_head", False):
            raise ValueError("PPO needs a value head on the policy: load it with minirl.load(init, value_head=True) "
                             "or build it with TransformerConfig(value_head=True)")
        # 1) sample
        rollout = sample_rollout(policy, c.task, rng, c.num_prompts, c.num_generations,
                                 c.max_new_tokens, c.temperature, reward=c.reward)
        mask = rollout.completion_mask.astype(np.float64)  # (B, N)
        B = mask.shape[0]

        # 2) old log-probs and values from one no-tape forward; the reference's log-probs
        with no_grad():
            old_logp, values, _ = logprobs_and_values(policy, rollout, c.temperature)
        old_logp, values = old_logp.data, values.data * mask  # (B, N) each
        k1 = np.zeros_like(mask)  # (B, N); no reference (kl_coef = 0): no penalty, and no KL to log
        if self.ref_model is not None:
            ref_logp = frozen_logprobs(self.ref_model, rollout, c.temperature)
            k1 = (old_logp - ref_logp) * mask

        # 3) per-token rewards: the KL penalty everywhere, the task reward on the last completion token
        kl_coef = self.kl_ctl.value
        token_rewards = -kl_coef * k1  # (B, N)
        last = mask.sum(axis=1).astype(int) - 1  # (B,): eos, or the last token of a truncated completion
        token_rewards[np.arange(B), last] += rollout.rewards
        if c.whiten_rewards:
            token_rewards = whiten(token_rewards, mask, shift_mean=False) * mask

        # 4) GAE, returns, whitened advantages
        advantages, returns = gae(token_rewards, values, mask, c.gamma, c.lam)
        ev = explained_variance(values, returns, mask)
        if c.whiten_advantages:
            advantages = whiten(advantages, mask) * mask

        # 5) the adaptive controller sees this batch's mean sequence KL; the next batch uses the new coefficient
        kl = float(k1.sum(axis=1).mean())
        self.kl_ctl.update(kl, B)

        rollout.extra.update(old_logp=old_logp, values=values, token_rewards=token_rewards,
                             advantages=advantages, returns=returns)
        rollout.stats.update(kl_coef=kl_coef, explained_variance=ev,
                             value_mean=float(values.sum() / mask.sum()),
                             return_mean=float(returns.sum() / mask.sum()))
        if self.ref_model is not None:
            rollout.stats["kl"] = kl
        return rollout

    def minibatches(self, rollout: Rollout, rng: np.random.Generator):
        """`update_epochs` shuffled passes, each split into `num_minibatches` minibatches."""
        n = len(rollout.rewards)
        for _ in range(self.config.update_epochs):
            for idx in minibatch_indices(n, self.config.num_minibatches, rng):
                yield take(rollout, idx)

    def loss(self, policy, mb: Rollout):
        """pg_loss + vf_coef * v_loss - ent_coef * entropy, from one trunk forward."""
        c = self.config
        mb_mask = mb.completion_mask
        mb_logp, mb_values, logits = logprobs_and_values(policy, mb, c.temperature)  # (b, N) each, on the tape
        pg_loss, pg_stats = ppo_policy_loss(mb_logp, mb.extra["old_logp"], mb.extra["advantages"], mb_mask,
                                            clip_coef=c.clip_coef)
        v_loss, v_stats = ppo_value_loss(mb_values, mb.extra["values"], mb.extra["returns"], mb_mask,
                                         clip_coef=c.vf_clip if c.clip_vloss else None)
        loss = pg_loss + c.vf_coef * v_loss
        # the entropy of the sampling distribution is always logged, but on the tape only when it is in the loss
        if c.ent_coef > 0:
            entropy = entropy_bonus(logits, mb_mask)
            loss = loss - c.ent_coef * entropy
        else:
            with no_grad():
                entropy = entropy_bonus(logits, mb_mask)
        return loss, {**pg_stats, **v_stats, "entropy": float(entropy.data)}
