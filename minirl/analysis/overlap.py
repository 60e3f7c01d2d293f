"""Subnetwork overlap: do different RL runs update the same parameters?

Mukherjee et al., arXiv 2505.11711 (2025), section on subnetwork overlap.
Runs a and b start from the same θ0; I_a, I_b are their updated-index sets
(entries the sparsity rule of ``sparsity.py`` counts as changed) and s_a, s_b
their sparsities over n parameters:

    o1 = |I_a ∩ I_b| / |I_a|,      o2 = |I_a ∩ I_b| / |I_b|,
    o1_random = 1 - s_b,           o2_random = 1 - s_a     (independent masks),

and ``o1 (1 - s_a) = o2 (1 - s_b) = |I_a ∩ I_b| / n`` always holds.
*The Path Not Taken* (arXiv 2511.08567) reports the Jaccard overlap
``|I_a ∩ I_b| / |I_a ∪ I_b|`` with chance ``pq / (p + q - pq)``, p = 1 - s_a,
q = 1 - s_b. An empty denominator (no updated entry) gives nan, not an error.

Subnetwork fine-tuning compares θ_sub (retrained with the gradient masked to
``m = (θ_init - θ_full != 0)``, i.e. ``updated_mask(..., mode="bitwise")``)
with θ_full by the fraction of entries equal at tol 1e-5 and 1e-4
(paper: 94.0 % / 100 % for DPO, 90.5 % / 100 % for PRIME).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from .sparsity import Tensors, TensorSource, aligned_tensors, compare_models, unchanged_mask


def updated_mask(theta0, theta1, tol: float = 1e-5, mode: str = "tol", dtype: str = "bf16") -> np.ndarray:
    """Boolean mask of updated entries (θ0's shape), by the same rule as update sparsity."""
    return ~unchanged_mask(theta0, theta1, tol=tol, mode=mode, dtype=dtype)


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, nan when the denominator is zero."""
    return numerator / denominator if denominator else float("nan")


@dataclass(frozen=True)
class OverlapReport:
    """Overlap of two runs' updated-index sets, kept as exact counts."""

    n_params: int
    """n, number of entries compared."""
    n_a: int
    """|I_a|, entries updated by run a."""
    n_b: int
    """|I_b|, entries updated by run b."""
    n_both: int
    """|I_a ∩ I_b|, entries updated by both runs."""
    per_tensor: dict[str, OverlapReport] = field(default_factory=dict, compare=False)
    """Per-tensor reports (empty for a single tensor)."""

    @property
    def s_a(self) -> float:
        """Sparsity of run a, 1 - |I_a| / n."""
        return 1.0 - _ratio(self.n_a, self.n_params)

    @property
    def s_b(self) -> float:
        """Sparsity of run b, 1 - |I_b| / n."""
        return 1.0 - _ratio(self.n_b, self.n_params)

    @property
    def o1(self) -> float:
        """|I_a ∩ I_b| / |I_a| (nan if I_a is empty)."""
        return _ratio(self.n_both, self.n_a)

    @property
    def o2(self) -> float:
        """|I_a ∩ I_b| / |I_b| (nan if I_b is empty)."""
        return _ratio(self.n_both, self.n_b)

    @property
    def o1_random(self) -> float:
        """Expected o1 for independent masks, 1 - s_b."""
        return 1.0 - self.s_b

    @property
    def o2_random(self) -> float:
        """Expected o2 for independent masks, 1 - s_a."""
        return 1.0 - self.s_a

    @property
    def jaccard(self) -> float:
        """|I_a ∩ I_b| / |I_a ∪ I_b| (nan if both are empty)."""
        return _ratio(self.n_both, self.n_a + self.n_b - self.n_both)

    @property
    def jaccard_random(self) -> float:
        """Expected Jaccard for independent masks, pq / (p + q - pq) (nan if p = q = 0)."""
        p, q = 1.0 - self.s_a, 1.0 - self.s_b
        return _ratio(p * q, p + q - p * q)

    def summary(self) -> dict[str, float]:
        """All overlap numbers as a flat dict."""
        names = ("s_a", "s_b", "o1", "o2", "o1_random", "o2_random", "jaccard", "jaccard_random")
        return {"n_params": self.n_params, "n_a": self.n_a, "n_b": self.n_b, "n_both": self.n_both} | {
            name: getattr(self, name) for name in names
        }


def subnetwork_overlap(mask_a: np.ndarray, mask_b: np.ndarray) -> OverlapReport:
    """Overlap of two boolean updated-entry masks of the same shape."""
    mask_a, mask_b = np.asarray(mask_a, dtype=bool), np.asarray(mask_b, dtype=bool)
    if mask_a.shape != mask_b.shape:
        raise ValueError(f"mask shapes differ: {mask_a.shape} vs {mask_b.shape}")
    return OverlapReport(
        n_params=mask_a.size,
        n_a=int(np.count_nonzero(mask_a)),
        n_b=int(np.count_nonzero(mask_b)),
        n_both=int(np.count_nonzero(mask_a & mask_b)),
    )


class OverlapAccumulator:
    """Overlap counts accumulated tensor by tensor, per tensor and overall."""

    def __init__(self):
        self.per_tensor: dict[str, OverlapReport] = {}

    def add(self, name: str, mask_a: np.ndarray, mask_b: np.ndarray) -> OverlapReport:
        """Add one tensor's masks; return its own report."""
        if name in self.per_tensor:
            raise ValueError(f"tensor {name!r} added twice")
        try:
            self.per_tensor[name] = subnetwork_overlap(mask_a, mask_b)
        except ValueError as error:
            raise ValueError(f"tensor {name!r}: {error}") from None
        return self.per_tensor[name]

    def report(self) -> OverlapReport:
        """Overall report (sums of counts) with the per-tensor reports attached."""
        reports = self.per_tensor.values()
        return OverlapReport(
            n_params=sum(r.n_params for r in reports),
            n_a=sum(r.n_a for r in reports),
            n_b=sum(r.n_b for r in reports),
            n_both=sum(r.n_both for r in reports),
            per_tensor=dict(self.per_tensor),
        )


def run_overlap(
    theta0_items: Tensors,
    theta_a: TensorSource,
    theta_b: TensorSource,
    *,
    tol: float = 1e-5,
    mode: str = "tol",
    dtype: str = "bf16",
    ignore: Collection[str] = (),
) -> OverlapReport:
    """Overlap of the updates of runs a and b from a shared θ0, streamed one tensor at a time."""
    acc = OverlapAccumulator()
    for name, theta0, a, b in aligned_tensors(theta0_items, theta_a, theta_b, ignore=ignore):
        acc.add(name, updated_mask(theta0, a, tol, mode, dtype), updated_mask(theta0, b, tol, mode, dtype))
    return acc.report()


def subnetwork_agreement(
    theta_sub,
    theta_full,
    tols: tuple[float, ...] = (1e-5, 1e-4),
    dtype: str = "bf16",
) -> dict[float, float]:
    """Fraction of entries with ``|θ_sub - θ_full| <= tol``, for each tol; arrays or models (streamed)."""
    if isinstance(theta_sub, np.ndarray):
        theta_sub, theta_full = {"tensor": theta_sub}, {"tensor": np.asarray(theta_full)}
    by_tol = compare_models(theta_sub, theta_full, tol=tols[0], tols=tols, dtype=dtype).by_tol
    return {tol: by_tol[tol] for tol in tols}
