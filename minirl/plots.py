"""Figures are optional: matplotlib when it is installed (the `plots` extra), nothing otherwise.

Experiments and tutorials ask `pyplot()` for matplotlib's pyplot, drawn off-screen (Agg) unless a Jupyter kernel
is running, and skip their figures when it returns None; `save(fig, path)` writes one and closes it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

TUTORIAL_FIGURES = Path(tempfile.gettempdir()) / "minirl_tutorials"
"""Where the tutorials write their figures: outside the repository, so nothing is left to commit."""


def pyplot():
    """matplotlib.pyplot (the Agg backend outside Jupyter), or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    if "ipykernel" not in sys.modules:  # a script, a test or a CLI command: files, no window
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path, dpi: int = 110) -> Path:
    """Lay out `fig`, write it to `path` (parent directories made) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
