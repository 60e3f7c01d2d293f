"""What RL updates change: sparsity, rank and overlap of θ1 - θ0 (arXiv 2505.11711, 2511.08567)."""

from .overlap import (
    OverlapAccumulator,
    OverlapReport,
    run_overlap,
    subnetwork_agreement,
    subnetwork_overlap,
    updated_mask,
)
from .rank import RankAccumulator, RankReport, rank_report, update_rank
from .sparsity import (
    LAYER_COLUMNS,
    TABLE6_TOLS,
    SparsityAccumulator,
    SparsityReport,
    aligned_tensors,
    cell_of,
    compare_models,
    compare_state_dicts,
    density_official,
    round_to,
    unchanged_mask,
    update_difference,
    update_sparsity,
)
from .update import UpdateReport, analyze_update

__all__ = [
    "LAYER_COLUMNS",
    "TABLE6_TOLS",
    "OverlapAccumulator",
    "OverlapReport",
    "RankAccumulator",
    "RankReport",
    "SparsityAccumulator",
    "SparsityReport",
    "UpdateReport",
    "aligned_tensors",
    "analyze_update",
    "cell_of",
    "compare_models",
    "compare_state_dicts",
    "density_official",
    "rank_report",
    "round_to",
    "run_overlap",
    "subnetwork_agreement",
    "subnetwork_overlap",
    "unchanged_mask",
    "update_difference",
    "update_rank",
    "update_sparsity",
    "updated_mask",
]
