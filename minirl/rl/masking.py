"""What every per-token loss does to its inputs: checked (B, T) arrays, inert padding, masked means.

Shape legend: B=batch of sequences, T=time (response token positions).
Inputs: `logp` (B, T) Tensor, the current policy's log-probs of the sampled
tokens (`F.gather_logprobs`); `old_logp` (B, T) ndarray from the rollout;
`mask` (B, T), 1 on response tokens, 0 on padding. Padded positions are made
inert (log-ratio 0) so garbage there can neither overflow nor leak gradient.
"""

from __future__ import annotations

import numpy as np

from minirl.tensor import Tensor


def as_tensor(name: str, x) -> Tensor:
    """x as a 2-D (B, T) Tensor (Tensors pass through, on the tape)."""
    x = x if isinstance(x, Tensor) else Tensor(np.asarray(x))
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (B, T), got shape {x.shape}")
    return x


def as_array(name: str, x, shape: tuple, dtype) -> np.ndarray:
    """x as an ndarray of logp's shape and dtype (a constant of the loss)."""
    x = np.asarray(x.data if isinstance(x, Tensor) else x, dtype=dtype)
    if x.shape != shape:
        raise ValueError(f"{name} has shape {x.shape}, expected {shape} (the shape of logp)")
    return x


def as_advantages(advantages, shape: tuple, dtype) -> np.ndarray:
    """(B,) or (B, T) advantages as an array that broadcasts against (B, T)."""
    a = np.asarray(advantages.data if isinstance(advantages, Tensor) else advantages, dtype=dtype)
    if a.shape == shape[:1]:
        return a[:, None]  # (B, 1): one advantage per sequence, shared by its tokens
    if a.shape == shape:
        return a
    raise ValueError(f"advantages must have shape (B,) = {shape[:1]} or (B, T) = {shape}, got {a.shape}")


def inert_padding(old: np.ndarray, logp: Tensor, mask: np.ndarray) -> np.ndarray:
    """`old` with padded positions replaced by logp's values, so logp - old is exactly 0 there."""
    return np.where(mask > 0, old, logp.data)


def masked_mean(x: Tensor, mask: np.ndarray) -> Tensor:
    """Mean of x over the masked entries: sum(x * mask / max(sum(mask), 1))."""
    return (x * (mask / max(mask.sum(), 1.0))).sum()


def masked_mean_np(x: np.ndarray, mask: np.ndarray) -> float:
    """`masked_mean` off the tape, for the stats: (B, T) -> float."""
    return float((x * mask).sum() / max(mask.sum(), 1.0))
