"""Everything a run measures about its update θ1 - θ0, in one streaming pass.

Mukherjee et al., arXiv 2505.11711 (2025), and the precision follow-ups
(*The Path Not Taken*, arXiv 2511.08567; docs/PAPERS.md, section 1). One walk
over ``aligned_tensors(θ0, θ1)`` reads each tensor pair once and feeds it to

1) a ``SparsityAccumulator`` in ``dtype`` (bf16 by default): sparsity at
   ``tol``, at every Table 6 tolerance and bitwise, overall and per tensor;
2) a ``RankAccumulator``: rank(Δ) / min(m, n) of every 2-D tensor, Δ taken in
   ``rank_dtype`` (the storage precision: bf16, or fp32 for fp32 runs);
3) a second ``SparsityAccumulator``, in fp32 at tol 0, whose bitwise count is
   the fraction of weights whose float32 value is exactly unchanged (the
   "infinite precision" of the paper's footnote 5). For weights stored in
   bf16 it equals the bitwise sparsity, since bf16 -> fp32 is exact.

So two 7B checkpoints streamed with ``minirl.checkpoint.iter_tensors`` are
read once, not once per measurement.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from .rank import RankAccumulator, RankReport
from .sparsity import TABLE6_TOLS, SparsityAccumulator, SparsityReport, Tensors, TensorSource, aligned_tensors


@dataclass
class UpdateReport:
    """What an update θ1 - θ0 did to the weights: sparsity, rank and exact fp32 equality."""

    sparsity: SparsityReport
    """Sparsity at ``tol``, at every tolerance and bitwise, in the comparison dtype."""
    rank: RankReport | None = None
    """Update rank of each 2-D tensor (None when not measured)."""
    fp32: SparsityReport | None = None
    """θ1 against θ0 in float32 at tol 0; its bitwise numbers are exact fp32 equality (None when not measured)."""

    @property
    def fp32_exact(self) -> float | None:
        """Fraction of weights whose float32 value the update left exactly unchanged."""
        return None if self.fp32 is None else self.fp32.bitwise

    @property
    def fp32_exact_per_tensor(self) -> dict[str, float] | None:
        """Fraction of exactly unchanged float32 weights in each tensor."""
        return None if self.fp32 is None else self.fp32.per_tensor_bitwise

    def to_dict(self) -> dict:
        """The JSON-ready dict a run's report.json holds under "sparsity" and "rank"."""
        sp = self.sparsity
        sparsity = {
            "overall": sp.overall, "bitwise": sp.bitwise, "tol": sp.tol, "n_params": sp.n_params,
            "per_tensor": dict(sp.per_tensor), "per_tensor_bitwise": dict(sp.per_tensor_bitwise),
            "by_tol": {f"{t:g}": v for t, v in sp.by_tol.items()},
        }
        if self.fp32 is not None:
            sparsity["fp32_exact"] = self.fp32_exact
        out = {"sparsity": sparsity}
        if self.rank is not None:
            out["rank"] = {"mean_fraction": self.rank.mean_fraction, "per_tensor": dict(self.rank.per_tensor)}
        return out


def analyze_update(
    theta0: Tensors,
    theta1: TensorSource,
    *,
    tol: float = 1e-5,
    tols: tuple[float, ...] = TABLE6_TOLS,
    dtype: str = "bf16",
    rank: bool = True,
    rank_dtype: str | None = None,
    fp32_exact: bool = True,
    ignore: Collection[str] = (),
) -> UpdateReport:
    """Sparsity, update rank (Δ in ``rank_dtype``, default ``dtype``) and exact fp32 equality in one read."""
    sparsity = SparsityAccumulator(tol=tol, tols=tols, dtype=dtype)
    ranks = RankAccumulator(rank_dtype or dtype) if rank else None
    exact = SparsityAccumulator(tol=0.0, tols=(0.0,), dtype="fp32") if fp32_exact else None
    for name, t0, t1 in aligned_tensors(theta0, theta1, ignore=ignore):
        sparsity.add(name, t0, t1)
        if ranks is not None:
            ranks.add(name, t0, t1)
        if exact is not None:
            exact.add(name, t0, t1)
    return UpdateReport(
        sparsity=sparsity.report(),
        rank=None if ranks is None else ranks.report(),
        fp32=None if exact is None else exact.report(),
    )
