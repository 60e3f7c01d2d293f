"""What RL updates change: sparsity, rank and overlap of θ1 - θ0 (arXiv 2505.11711, 2511.08567)."""

from .compare import analyze_checkpoints, check_match
from .overlap import (
    OverlapAccumulator,
    OverlapReport,
    run_overlap,
    subnetwork_agreement,
    subnetwork_overlap,
    updated_mask,
)
from .rank import RankAccumulator, RankReport, rank_report, update_rank
from .sources import open_source
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
    "analyze_checkpoints",
    "analyze_update",
    "cell_of",
    "check_match",
    "compare_models",
    "compare_state_dicts",
    "density_official",
    "open_source",
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
