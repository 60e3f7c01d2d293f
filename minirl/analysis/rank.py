"""Update rank: RL updates are sparse but nearly full rank.

Mukherjee et al., arXiv 2505.11711 (2025), official `src/update_rank.py`.
For each 2-D update matrix Δ = θ1 - θ0 (m, n):

    rank fraction = rank(Δ) / min(m, n),

with ``rank`` as ``torch.linalg.matrix_rank(Δ.float())`` / ``np.linalg.matrix_rank``
computes it in float32: the number of singular values above the default
tolerance ``σ_max · max(m, n) · eps_fp32``. The paper's figure is the
unweighted mean of the fractions over matrices (paper: 99.2 % to 99.8 %).

As in the official script, Δ is taken in the models' storage precision
(bf16 by default: both rounded to bf16, the difference rounded to bf16) and
then cast to float32. 1-D tensors (the RMSNorm weights) are skipped; the
embedding and lm_head matrices are 2-D and included, as in the official code.
An exactly zero Δ has rank 0.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from .sparsity import Tensors, TensorSource, aligned_tensors, update_difference


def update_rank(delta2d: np.ndarray) -> tuple[int, int]:
    """(rank, full rank min(m, n)) of an update matrix, in float32 with matrix_rank's default tolerance."""
    delta = np.asarray(delta2d, dtype=np.float32)  # (m, n)
    if delta.ndim != 2:
        raise ValueError(f"update_rank needs a 2-D matrix, got shape {delta.shape}")
    m, n = delta.shape
    if min(m, n) == 0:
        return 0, 0
    singular_values = scipy.linalg.svdvals(delta)  # (min(m, n),) float32, raises on NaN/inf
    tol = singular_values.max() * max(m, n) * np.finfo(np.float32).eps  # zero for Δ = 0, so rank 0
    return int(np.count_nonzero(singular_values > tol)), min(m, n)


@dataclass
class RankReport:
    """Rank fractions of the 2-D update matrices between two models."""

    mean_fraction: float
    """Unweighted mean over matrices of rank / min(m, n) (nan if there are none)."""
    per_tensor: dict[str, float]
    """rank / min(m, n) of each 2-D tensor."""
    rank: dict[str, int]
    """rank(Δ) of each 2-D tensor."""
    full: dict[str, int]
    """min(m, n) of each 2-D tensor."""
    skipped: list[str]
    """Names of tensors that are not 2-D (norm weights), in stream order."""
    dtype: str = "bf16"
    """Precision Δ was taken in."""


def rank_report(
    theta0_items: Tensors,
    theta1_lookup: TensorSource,
    *,
    dtype: str = "bf16",
    ignore: Collection[str] = (),
) -> RankReport:
    """Update rank of every 2-D tensor of θ1 against θ0, streamed one tensor at a time."""
    rank: dict[str, int] = {}
    full: dict[str, int] = {}
    skipped: list[str] = []
    for name, theta0, theta1 in aligned_tensors(theta0_items, theta1_lookup, ignore=ignore):
        if theta0.ndim != 2:
            skipped.append(name)
            continue
        rank[name], full[name] = update_rank(update_difference(theta0, theta1, dtype))  # Δ: (m, n)
    per_tensor = {name: rank[name] / full[name] if full[name] else float("nan") for name in rank}
    mean_fraction = float(np.mean(list(per_tensor.values()))) if per_tensor else float("nan")
    return RankReport(mean_fraction, per_tensor, rank, full, skipped, dtype)
