"""Policy-gradient losses: GRPO (four normalisations), PPO (policy and value), REINFORCE.

Every loss is a pure function of per-token Tensors and NumPy arrays and
returns `(loss, stats)`: a scalar Tensor to call `backward()` on and a dict of
floats for the metrics log. Names follow CleanRL (`logratio`, `ratio`,
`pg_loss`, `v_loss`, `approx_kl`, `clipfrac`) and TRL (`loss_type`,
`epsilon`, `epsilon_high`, `beta`, `num_items_in_batch`).

Shape legend: B=batch of sequences, T=time (response token positions).
Inputs: `logp` (B, T) Tensor, the current policy's log-probs of the sampled
tokens (`F.gather_logprobs`); `old_logp` (B, T) ndarray from the rollout;
`mask` (B, T), 1 on response tokens, 0 on padding. Padded positions are made
inert (log-ratio 0) so garbage there can neither overflow nor leak gradient.

References:
- GRPO: TRL `GRPOTrainer._compute_loss`, trl/trainer/grpo_trainer.py,
  v0.22+ (the "dapo" loss type arrived in v0.22.0, PR #3938):
      coef_1 = exp(per_token_logps - old_per_token_logps)
      coef_2 = clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
      per_token_loss = -min(coef_1 * A, coef_2 * A) (+ beta * per_token_kl)
      grpo:    ((l * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
      bnpo:    (l * m).sum() / m.sum().clamp(min=1)
      dr_grpo: (l * m).sum() / (l.size(0) * max_completion_length)
      dapo:    (l * m).sum() / (num_items_in_batch / num_processes)
  where num_items_in_batch is the number of completion tokens in the whole
  generation batch (gathered over processes and accumulation steps).
  TRL divides grpo/bnpo/dr_grpo by the gradient-accumulation steps but not
  dapo: a loop over minibatches should average the first three and *sum*
  dapo (with `num_items_in_batch` = tokens of the whole batch).
- PPO: CleanRL `ppo.py` (vwxyzjn/cleanrl): clipped surrogate
  `max(-A * ratio, -A * clamp(ratio, 1 - c, 1 + c))`, clipped value loss
  `0.5 * max((v - R)^2, (v_old + clamp(v - v_old, -c, c) - R)^2)`, and the
  diagnostics `approx_kl = mean((ratio - 1) - logratio)`,
  `old_approx_kl = mean(-logratio)`, `clipfrac = mean(|ratio - 1| > c)`;
  here every mean is over the masked tokens.
- REINFORCE with a KL-regularised reward: PERL (arXiv 2403.10704),
  `J = E[(1 - beta) r - beta KL(pi || pi_anchor)]`.
"""

from __future__ import annotations

import numpy as np

from minirl import functional as F
from minirl.rl.kl import k3
from minirl.tensor import Tensor

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


# ------------------------------------------------------------------ helpers
def _as_logp(logp) -> Tensor:
    return logp if isinstance(logp, Tensor) else Tensor(np.asarray(logp))


def _as_array(name: str, x, shape: tuple, dtype) -> np.ndarray:
    x = np.asarray(x.data if isinstance(x, Tensor) else x, dtype=dtype)
    if x.shape != shape:
        raise ValueError(f"{name} has shape {x.shape}, expected {shape} (the shape of logp)")
    return x


def _as_advantages(advantages, shape: tuple, dtype) -> np.ndarray:
    """(B,) or (B, T) advantages as an array that broadcasts against (B, T)."""
    a = np.asarray(advantages.data if isinstance(advantages, Tensor) else advantages, dtype=dtype)
    if a.shape == shape[:1]:
        return a[:, None]  # (B, 1): one advantage per sequence, shared by its tokens
    if a.shape == shape:
        return a
    raise ValueError(f"advantages must have shape (B,) = {shape[:1]} or (B, T) = {shape}, got {a.shape}")


def _inert_padding(old: np.ndarray, logp: Tensor, mask: np.ndarray) -> np.ndarray:
    """`old` with padded positions replaced by logp's values, so logp - old is exactly 0 there."""
    return np.where(mask > 0, old, logp.data)


def _masked_mean_np(x: np.ndarray, mask: np.ndarray) -> float:
    return float((x * mask).sum() / max(mask.sum(), 1.0))


def masked_mean(x: Tensor, mask: np.ndarray) -> Tensor:
    """Mean of x over the masked entries: sum(x * mask / max(sum(mask), 1))."""
    return (x * (mask / max(mask.sum(), 1.0))).sum()


# --------------------------------------------------------------------- GRPO
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

    advantages (B,) (or (B, T)); ref_logp (B, T) is required when beta > 0.
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
    logp = _as_logp(logp)
    if logp.ndim != 2:
        raise ValueError(f"logp must be 2-D (B, T), got shape {logp.shape}")
    T = logp.shape[1]
    mask = _as_array("mask", mask, logp.shape, logp.dtype)
    old_logp = _inert_padding(_as_array("old_logp", old_logp, logp.shape, logp.dtype), logp, mask)
    A = _as_advantages(advantages, logp.shape, logp.dtype)  # (B, 1) or (B, T)
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
        ref_logp = _inert_padding(_as_array("ref_logp", ref_logp, logp.shape, logp.dtype), logp, mask)
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
        "clipfrac_low": _masked_mean_np(is_low_clipped, mask),
        "clipfrac_high": _masked_mean_np(is_high_clipped, mask),
        "clipfrac": _masked_mean_np(is_low_clipped | is_high_clipped, mask),
        "approx_kl": _masked_mean_np((r - 1) - lr, mask),
        "ratio_mean": _masked_mean_np(r, mask),
    }
    if per_token_kl is not None:
        stats["kl"] = _masked_mean_np(per_token_kl.data, mask)
    return loss, stats


# ---------------------------------------------------------------------- PPO
def ppo_policy_loss(logp, old_logp, advantages, mask, clip_coef: float = 0.2) -> tuple[Tensor, dict[str, float]]:
    """CleanRL's clipped surrogate pg_loss = max(-A * ratio, -A * clip(ratio)), masked mean over tokens.

    advantages (B, T) (or (B,) shared by a sequence's tokens).
    """
    if not clip_coef > 0:
        raise ValueError(f"clip_coef must be > 0, got {clip_coef}")
    logp = _as_logp(logp)
    if logp.ndim != 2:
        raise ValueError(f"logp must be 2-D (B, T), got shape {logp.shape}")
    mask = _as_array("mask", mask, logp.shape, logp.dtype)
    old_logp = _inert_padding(_as_array("old_logp", old_logp, logp.shape, logp.dtype), logp, mask)
    A = _as_advantages(advantages, logp.shape, logp.dtype)

    logratio = logp - old_logp  # (B, T)
    ratio = F.exp(logratio)
    pg_loss1 = -A * ratio
    pg_loss2 = -A * F.clip(ratio, 1.0 - clip_coef, 1.0 + clip_coef)
    pg_loss = masked_mean(F.maximum(pg_loss1, pg_loss2), mask)

    r, lr = ratio.data, logratio.data
    stats = {
        "pg_loss": float(pg_loss.data),
        "approx_kl": _masked_mean_np((r - 1) - lr, mask),
        "old_approx_kl": _masked_mean_np(-lr, mask),
        "clipfrac": _masked_mean_np(np.abs(r - 1) > clip_coef, mask),
    }
    return pg_loss, stats


def ppo_value_loss(values, old_values, returns, mask, clip_coef: float | None = 0.2) -> tuple[Tensor, dict[str, float]]:
    """CleanRL's value loss 0.5 * max((v - R)^2, (v_clipped - R)^2), masked mean; unclipped when clip_coef is None.

    values (B, T) Tensor from the value head; old_values, returns (B, T) from the rollout.
    """
    if clip_coef is not None and not clip_coef > 0:
        raise ValueError(f"clip_coef must be > 0 or None (no value clipping), got {clip_coef}")
    values = _as_logp(values)
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D (B, T), got shape {values.shape}")
    mask = _as_array("mask", mask, values.shape, values.dtype)
    returns = _as_array("returns", returns, values.shape, values.dtype)

    v_loss_unclipped = (values - returns) ** 2  # (B, T)
    stats = {}
    if clip_coef is None:
        v_loss = masked_mean(0.5 * v_loss_unclipped, mask)
    else:
        old_values = _as_array("old_values", old_values, values.shape, values.dtype)
        v_clipped = old_values + F.clip(values - old_values, -clip_coef, clip_coef)
        v_loss_clipped = (v_clipped - returns) ** 2
        v_loss = masked_mean(0.5 * F.maximum(v_loss_unclipped, v_loss_clipped), mask)
        stats["vf_clipfrac"] = _masked_mean_np(v_loss_clipped.data > v_loss_unclipped.data, mask)
    stats["v_loss"] = float(v_loss.data)
    return v_loss, stats


# ---------------------------------------------------------------- REINFORCE
def reinforce_loss(logp, advantages, mask) -> tuple[Tensor, dict[str, float]]:
    """REINFORCE: -(A * log pi(sequence)), averaged over sequences.

    With advantages (B,) each sequence's log-prob is the sum of its masked
    token log-probs (the score function of the whole sequence, no length
    normalisation): loss = -mean_b(A_b * sum_t m_bt logp_bt). With (B, T)
    advantages each token gets its own: loss = -mean_b(sum_t m_bt A_bt logp_bt).
    """
    logp = _as_logp(logp)
    if logp.ndim != 2:
        raise ValueError(f"logp must be 2-D (B, T), got shape {logp.shape}")
    mask = _as_array("mask", mask, logp.shape, logp.dtype)
    A = _as_advantages(advantages, logp.shape, logp.dtype)  # (B, 1) or (B, T)

    B = logp.shape[0]
    pg_loss = (logp * (-A * mask / B)).sum()  # -mean_b(A_b * log pi(sequence b))
    seq_logp = (logp.data * mask).sum(axis=1)
    stats = {"pg_loss": float(pg_loss.data), "seq_logp_mean": float(seq_logp.mean())}
    return pg_loss, stats


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


def entropy_bonus(logits: Tensor, mask) -> Tensor:
    """Masked mean entropy of the policy's token distributions: logits (B, T, V) -> scalar.

    Subtract `ent_coef * entropy_bonus(...)` from a loss to encourage exploration (CleanRL's entropy_loss).
    """
    entropy = F.entropy(logits)  # (B, T)
    mask = _as_array("mask", mask, entropy.shape, entropy.dtype)
    return masked_mean(entropy, mask)
