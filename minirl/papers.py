"""The three papers' published numbers, as data: minirl/papers.toml.

papers.toml quotes docs/PAPERS.md (the specification) for paper 1, *RL
fine-tunes small subnetworks* (arXiv 2505.11711, table ``sparsity``), paper 2,
*Online merging optimizers* (arXiv 2405.17931, ``merging``), paper 3, *PERL*
(arXiv 2403.10704, ``perl``), and the scale-matching estimate
(``scale_matching``). Each number keeps the doc's units (percentages in
percent) and says where it comes from (``source``). Reports print these beside
minirl's measured numbers: "paper: X, minirl: Y".
"""

from __future__ import annotations

import copy
import tomllib
from functools import cache
from importlib.resources import files

@cache
def _load() -> dict:
    """papers.toml parsed, read from disk once per process."""
    return tomllib.loads(files("minirl").joinpath("papers.toml").read_text(encoding="utf-8"))


def papers() -> dict:
    """All of papers.toml as nested dicts (a fresh copy, so callers may edit it)."""
    return copy.deepcopy(_load())


def paper(name: str) -> dict:
    """One paper's numbers: "sparsity", "merging" or "perl" (or "scale_matching")."""
    data = _load()
    if name not in data:
        raise KeyError(f"no paper {name!r} in papers.toml; allowed: {', '.join(data)}")
    return copy.deepcopy(data[name])
