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
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from .sparsity import DTYPES, Tensors, TensorSource, aligned_tensors, update_difference


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


@dataclass
class RankAccumulator:
    """Update ranks collected one tensor pair at a time (1-D tensors skipped)."""

    dtype: str = "bf16"
    """Precision Δ is taken in: "bf16" or "fp32"."""
    rank: dict[str, int] = field(default_factory=dict)
    """rank(Δ) of each 2-D tensor added so far."""
    full: dict[str, int] = field(default_factory=dict)
    """min(m, n) of each 2-D tensor added so far."""
    skipped: list[str] = field(default_factory=list)
    """Names of the tensors added so far that are not 2-D."""

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"RankAccumulator.dtype must be one of {DTYPES}, got {self.dtype!r}")

    def add(self, name: str, theta0: np.ndarray, theta1: np.ndarray) -> None:
        """Record the update rank of one tensor pair, or skip it if it is not 2-D."""
        if name in self.rank or name in self.skipped:
            raise ValueError(f"tensor {name!r} added twice")
        if np.shape(theta0) != np.shape(theta1):
            raise ValueError(f"shape mismatch for tensor {name!r}: θ0 {np.shape(theta0)} vs θ1 {np.shape(theta1)}")
        if np.ndim(theta0) != 2:
            self.skipped.append(name)
            return
        try:
            self.rank[name], self.full[name] = update_rank(update_difference(theta0, theta1, self.dtype))  # Δ: (m, n)
        except ValueError as error:  # e.g. a NaN or inf in Δ
            raise ValueError(f"tensor {name!r}: {error}") from None

    def report(self) -> RankReport:
        """The report for the tensors added so far."""
        per_tensor = {name: r / self.full[name] if self.full[name] else float("nan") for name, r in self.rank.items()}
        mean_fraction = float(np.mean(list(per_tensor.values()))) if per_tensor else float("nan")
        return RankReport(mean_fraction, per_tensor, dict(self.rank), dict(self.full), list(self.skipped), self.dtype)


def rank_report(
    theta0_items: Tensors,
    theta1_lookup: TensorSource,
    *,
    dtype: str = "bf16",
    ignore: Collection[str] = (),
) -> RankReport:
    """Update rank of every 2-D tensor of θ1 against θ0, streamed one tensor at a time."""
    acc = RankAccumulator(dtype)
    for name, theta0, theta1 in aligned_tensors(theta0_items, theta1_lookup, ignore=ignore):
        acc.add(name, theta0, theta1)
    return acc.report()
