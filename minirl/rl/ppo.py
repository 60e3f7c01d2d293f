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
   with CleanRL's (vwxyzjn/cleanrl `ppo.py`) clipped surrogate and clipped
   value loss, every mean taken over the masked tokens (`ppo_policy_loss`,
   `ppo_value_loss` below):
       pg_loss = max(-A * ratio, -A * clamp(ratio, 1 - c, 1 + c))
       v_loss  = 0.5 * max((v - R)^2, (v_old + clamp(v - v_old, -c, c) - R)^2)
   and its diagnostics approx_kl = mean((ratio - 1) - logratio),
   old_approx_kl = mean(-logratio), clipfrac = mean(|ratio - 1| > c).
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

from minirl import functional as F
from minirl.rl.advantages import gae, whiten
from minirl.rl.masking import as_advantages, as_array, as_tensor, inert_padding, masked_mean, masked_mean_np
from minirl.rl.rollout import (Rollout, RolloutConfig, completion_logits, completion_logprobs, frozen_logprobs,
                               minibatch_indices, sample_rollout)
from minirl.tensor import Tensor, no_grad

KL_CONTROLLERS = ("fixed", "adaptive")


@dataclass
class PPOConfig(RolloutConfig):
    """PPO's knobs; names follow CleanRL's ppo.py and TRL's original PPOConfig."""

    num_generations: int = 4  # PPO's default; the field and its docstring are RolloutConfig's
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

    def _checks(self):
        B = self.num_prompts * self.num_generations
        return super()._checks() + [
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
            ("kl_coef", self.kl_controller != "adaptive" or self.kl_coef > 0,
             "> 0 with kl_controller='adaptive' (the controller multiplies it)"),
        ]


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
    gen = rollout.generation
    P = gen.prompt_len
    h = policy.hidden_states(gen.tokens, gen.attention_mask)  # (B, P + N, C)
    logits = completion_logits(policy, h, P, temperature)  # (B, N, V) at the sampling temperature
    logp = completion_logprobs(policy, gen, temperature, logits=logits)
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
    value_head = True
    """The policy needs a value head (`minirl.load(init, value_head=True)`)."""

    def __init__(self, config: PPOConfig, ref_model=None):
        if (config.kl_coef > 0 or config.kl_controller == "adaptive") and ref_model is None:
            raise ValueError("PPOConfig.kl_coef > 0 needs a reference model (ref_model), the frozen initial policy")
        self.config, self.ref_model = config, ref_model
        self.updates_per_step = config.update_epochs * config.num_minibatches
        self.kl_ctl = (AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
                       if config.kl_controller == "adaptive" else FixedKLController(config.kl_coef))

    def state_dict(self) -> dict:
        """What resuming must restore: the KL coefficient, which the adaptive controller moves."""
        return {"kl_coef": self.kl_ctl.value}

    def load_state_dict(self, state: dict) -> None:
        self.kl_ctl.value = float(state["kl_coef"])

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
                yield rollout.take(idx)

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


# ------------------------------------------------------------------- losses
def ppo_policy_loss(logp, old_logp, advantages, mask, clip_coef: float = 0.2) -> tuple[Tensor, dict[str, float]]:
    """CleanRL's clipped surrogate pg_loss = max(-A * ratio, -A * clip(ratio)), masked mean over tokens.

    logp (B, T) Tensor; old_logp, mask (B, T); advantages (B, T) (or (B,) shared by a sequence's tokens).
    """
    if not clip_coef > 0:
        raise ValueError(f"clip_coef must be > 0, got {clip_coef}")
    logp = as_tensor("logp", logp)
    mask = as_array("mask", mask, logp.shape, logp.dtype)
    old_logp = inert_padding(as_array("old_logp", old_logp, logp.shape, logp.dtype), logp, mask)
    A = as_advantages(advantages, logp.shape, logp.dtype)

    logratio = logp - old_logp  # (B, T)
    ratio = F.exp(logratio)
    pg_loss1 = -A * ratio
    pg_loss2 = -A * F.clip(ratio, 1.0 - clip_coef, 1.0 + clip_coef)
    pg_loss = masked_mean(F.maximum(pg_loss1, pg_loss2), mask)

    r, lr = ratio.data, logratio.data
    stats = {
        "pg_loss": float(pg_loss.data),
        "approx_kl": masked_mean_np((r - 1) - lr, mask),
        "old_approx_kl": masked_mean_np(-lr, mask),
        "clipfrac": masked_mean_np(np.abs(r - 1) > clip_coef, mask),
    }
    return pg_loss, stats


def ppo_value_loss(values, old_values, returns, mask, clip_coef: float | None = 0.2) -> tuple[Tensor, dict[str, float]]:
    """CleanRL's value loss 0.5 * max((v - R)^2, (v_clipped - R)^2), masked mean; unclipped when clip_coef is None.

    values (B, T) Tensor from the value head; old_values, returns (B, T) from the rollout.
    """
    if clip_coef is not None and not clip_coef > 0:
        raise ValueError(f"clip_coef must be > 0 or None (no value clipping), got {clip_coef}")
    values = as_tensor("values", values)
    mask = as_array("mask", mask, values.shape, values.dtype)
    returns = as_array("returns", returns, values.shape, values.dtype)

    v_loss_unclipped = (values - returns) ** 2  # (B, T)
    stats = {}
    if clip_coef is None:
        v_loss = masked_mean(0.5 * v_loss_unclipped, mask)
    else:
        old_values = as_array("old_values", old_values, values.shape, values.dtype)
        v_clipped = old_values + F.clip(values - old_values, -clip_coef, clip_coef)
        v_loss_clipped = (v_clipped - returns) ** 2
        v_loss = masked_mean(0.5 * F.maximum(v_loss_unclipped, v_loss_clipped), mask)
        stats["vf_clipfrac"] = masked_mean_np(v_loss_clipped.data > v_loss_unclipped.data, mask)
    stats["v_loss"] = float(v_loss.data)
    return v_loss, stats


def entropy_bonus(logits: Tensor, mask) -> Tensor:
    """Masked mean entropy of the policy's token distributions: logits (B, T, V) -> scalar.

    Subtract `ent_coef * entropy_bonus(...)` from a loss to encourage exploration (CleanRL's entropy_loss).
    """
    entropy = F.entropy(logits)  # (B, T)
    mask = as_array("mask", mask, entropy.shape, entropy.dtype)
    return masked_mean(entropy, mask)
