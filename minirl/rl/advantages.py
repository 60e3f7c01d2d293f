"""Advantage estimators: GAE for PPO, group-relative baselines for GRPO and RLOO.

Pure NumPy in, NumPy out; no tape (advantages are constants of the loss).

Shape legend: B=batch of sequences, T=time (token positions), N=number of
samples (N = number of prompts * G), G=group size (samples per prompt).

Token sequences are right-padded: `mask` is 1 on the response tokens of a row
and 0 on padding. Each row's episode is its run of ones; it ends at the last
masked token, with no bootstrap after it unless a `last_value` is given.

References:
- GAE: Schulman et al., *High-Dimensional Continuous Control Using Generalized
  Advantage Estimation* (arXiv 1506.02438); the loop is CleanRL's `ppo.py`
  (`lastgaelam`), with `1 - done` replaced by the next token's mask.
- Group advantages: TRL `GRPOTrainer._generate_and_score_completions`
  (trl/trainer/grpo_trainer.py, v0.22+, where `scale_rewards` became
  "group" | "batch" | "none", PR #3935):
      advantages = rewards - mean_grouped_rewards
      std_rewards = rewards.view(-1, G).std(dim=1)      # "group" (and logged for "none")
      std_rewards = rewards.std().expand_as(rewards)    # "batch"
      advantages = advantages / (std_rewards + 1e-4)    # unless "none"
  `torch.std` defaults to the unbiased estimator (Bessel, ddof=1), so minirl
  uses `ddof=1` too, and adds eps to the std (not to the variance).
- RLOO: Ahmadian et al., *Back to Basics* (arXiv 2402.14740); TRL's
  `RLOOTrainer`: baseline = (group sum - r_i) / (G - 1).
- `whiten`: TRL's `masked_whiten` (trl/trainer/utils.py): masked mean, masked
  unbiased variance, `(x - mean) * rsqrt(var + 1e-8)`.
"""

from __future__ import annotations

import numpy as np

SCALE_REWARDS = ("group", "batch", "none")


# ---------------------------------------------------------------- validation
def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_groups(rewards: np.ndarray, group_size: int) -> None:
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {rewards.shape}")
    if int(group_size) != group_size or group_size < 2:
        raise ValueError(f"group_size must be an integer >= 2 (a baseline needs other samples), got {group_size}")
    if rewards.size % group_size:
        raise ValueError(f"number of rewards N={rewards.size} is not divisible by group_size={group_size}")


def _as_float(x) -> np.ndarray:
    x = np.asarray(x)
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def _as_sequences(name: str, x, shape: tuple | None = None) -> np.ndarray:
    x = _as_float(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (B, T), got shape {x.shape}")
    if shape is not None and x.shape != shape:
        raise ValueError(f"{name} has shape {x.shape}, expected {shape} (the shape of rewards)")
    return x


def _next_mask(mask: np.ndarray) -> np.ndarray:
    """1 where token t+1 belongs to the same sequence, i.e. the episode continues past t."""
    nxt = np.zeros_like(mask)
    nxt[:, :-1] = mask[:, 1:]
    return nxt


# ------------------------------------------------------------- token level
def discounted_returns(rewards, mask, gamma: float) -> np.ndarray:
    """G_t = r_t + gamma * G_{t+1} within each sequence: (B, T), (B, T) -> (B, T), 0 on padding."""
    _check_unit_interval("gamma", gamma)
    rewards = _as_sequences("rewards", rewards)
    mask = _as_sequences("mask", mask, rewards.shape).astype(rewards.dtype)
    next_mask = _next_mask(mask)
    returns = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[0], dtype=rewards.dtype)  # (B,)
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * next_mask[:, t] * running
        returns[:, t] = running
    return returns * mask


def gae(rewards, values, mask, gamma: float, lam: float, last_value=None) -> tuple[np.ndarray, np.ndarray]:
    """Generalized advantage estimates and returns over right-padded sequences.

    rewards, values, mask (B, T); last_value (B,) or None, the value of the
    state after each sequence's last masked token (0 when None: the sequence
    terminated). Returns (advantages, returns), both (B, T), 0 on padding,
    with returns = advantages + values on the masked tokens.
    """
    _check_unit_interval("gamma", gamma)
    _check_unit_interval("lam", lam)
    rewards = _as_sequences("rewards", rewards)
    values = _as_sequences("values", values, rewards.shape)
    mask = _as_sequences("mask", mask, rewards.shape).astype(rewards.dtype)
    B, T = rewards.shape

    # 1) the value of the next state: V_{t+1} inside the sequence, last_value (or 0) after its end
    next_mask = _next_mask(mask)  # (B, T)
    next_values = np.zeros_like(values)
    next_values[:, :-1] = values[:, 1:]
    next_values *= next_mask
    if last_value is not None:
        last_value = _as_float(last_value).reshape(-1)
        if last_value.shape != (B,):
            raise ValueError(f"last_value must have shape (B,) = ({B},), got {last_value.shape}")
        is_last = mask * (1 - next_mask)  # (B, T): 1 on each sequence's final token
        next_values += is_last * last_value[:, None]

    # 2) TD residuals, then the backward recursion A_t = delta_t + gamma * lam * A_{t+1}
    deltas = rewards + gamma * next_values - values  # (B, T)
    advantages = np.zeros_like(rewards)
    lastgaelam = np.zeros(B, dtype=rewards.dtype)
    for t in reversed(range(T)):
        lastgaelam = deltas[:, t] + gamma * lam * next_mask[:, t] * lastgaelam
        advantages[:, t] = lastgaelam

    advantages *= mask
    returns = (advantages + values) * mask
    return advantages, returns


def whiten(x, mask=None, shift_mean: bool = True, eps: float = 1e-8) -> np.ndarray:
    """TRL's masked_whiten: (x - mean) / sqrt(var + eps) over the masked entries, var unbiased.

    With shift_mean=False the mean is added back (only the scale changes), as
    TRL does for rewards. Like TRL, padded entries are transformed too, not
    zeroed; multiply by the mask if they must be 0.
    """
    x = _as_float(x)
    mask = np.ones_like(x) if mask is None else np.asarray(mask, dtype=x.dtype)
    if mask.shape != x.shape:
        raise ValueError(f"mask has shape {mask.shape}, expected {x.shape} (the shape of x)")
    n = mask.sum()
    if n < 2:
        raise ValueError(f"whiten needs at least 2 masked entries for an unbiased variance, got {n:g}")
    mean = (x * mask).sum() / n
    var = ((x - mean) ** 2 * mask).sum() / n * (n / (n - 1))  # Bessel's correction, as torch.std
    whitened = (x - mean) / np.sqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


# -------------------------------------------------------------- group level
def group_advantages(rewards, group_size: int, scale_rewards: str = "group", eps: float = 1e-4) -> np.ndarray:
    """GRPO advantages (N,) -> (N,): reward minus its group's mean, optionally divided by a std.

    Rewards come as consecutive groups of `group_size` samples of one prompt.
    scale_rewards: "group" divides by the group's std, "batch" by the std of
    all N rewards, "none" does not divide (Dr. GRPO). Stds are unbiased
    (ddof=1, torch.std's default, as TRL) and eps is added to the std.
    A group of identical rewards gets advantages exactly 0.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    rewards = _as_float(rewards)
    _check_groups(rewards, group_size)
    grouped = rewards.reshape(-1, group_size)  # (N/G, G)

    centered = grouped - grouped.mean(axis=1, keepdims=True)  # (N/G, G)
    # identical rewards carry no signal; a float mean of equal values can be an ulp off
    # (mean([0.1] * 3) != 0.1), so set those groups to exactly 0
    centered[np.ptp(grouped, axis=1) == 0] = 0.0

    if scale_rewards == "none":
        return centered.reshape(-1)
    if scale_rewards == "group":
        std = grouped.std(axis=1, ddof=1, keepdims=True)  # (N/G, 1)
    else:  # "batch": the std of the raw rewards over the whole batch, as TRL's rewards.std()
        std = np.full((1, 1), rewards.std(ddof=1), dtype=rewards.dtype)
    denom = np.broadcast_to(std + eps, centered.shape)
    # eps = 0 and a constant group: 0 / 0, defined as 0
    advantages = np.divide(centered, denom, out=np.zeros_like(centered), where=denom > 0)
    return advantages.reshape(-1)


def rloo_advantages(rewards, group_size: int) -> np.ndarray:
    """REINFORCE leave-one-out advantages (N,) -> (N,): r_i - mean_{j != i} r_j within each group."""
    rewards = _as_float(rewards)
    _check_groups(rewards, group_size)
    grouped = rewards.reshape(-1, group_size)  # (N/G, G)
    baseline = (grouped.sum(axis=1, keepdims=True) - grouped) / (group_size - 1)  # mean of the others
    advantages = grouped - baseline
    advantages[np.ptp(grouped, axis=1) == 0] = 0.0  # exact zeros for identical rewards, as above
    return advantages.reshape(-1)
