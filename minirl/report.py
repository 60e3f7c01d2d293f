"""Render an RL run's report.json in the terminal with rich.

Every number shown is read from report.json, which the run measured; the
paper's numbers come from the report's `paper` section (quoted from
docs/PAPERS.md). `minirl report DIR` re-renders a finished run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from minirl.analysis import LAYER_COLUMNS, cell_of

SPARK = "▁▂▃▄▅▆▇█"
SHORT = {"input_norm": "norm1", "post_norm": "norm2"}
"""Column labels of the two RMSNorm gains of a layer (input_layernorm, post_attention_layernorm)."""


def sparkline(values: list[float], width: int = 60) -> str:
    """A one-line chart of `values` (averaged into at most `width` buckets)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return ""
    step = max(1, math.ceil(len(vals) / width))
    buckets = [sum(vals[i:i + step]) / len(vals[i:i + step]) for i in range(0, len(vals), step)]
    lo, hi = min(buckets), max(buckets)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((b - lo) / span * (len(SPARK) - 1) + 0.5))] for b in buckets)


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f} %"


def load_report(path) -> dict:
    """report.json of a run directory (or the file itself)."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"no report.json in {path} (was the run started with --report and did it finish?)")
    return json.loads(file.read_text())


def _accuracy_table(r: dict) -> Table:
    t = Table(title="greedy accuracy on the held-out benchmark", title_justify="left")
    for col, j in (("task", "left"), ("before", "right"), ("after", "right"), ("change", "right")):
        t.add_column(col, justify=j)
    acc = r["accuracy"]
    d = acc["after"] - acc["before"]
    t.add_row(f"[bold]{r['task']}[/] (trained)", pct(acc["before"]), pct(acc["after"]),
              f"[{'green' if d > 0 else 'red'}]{100 * d:+.1f} pts[/]")
    for task, v in r.get("tax", {}).items():
        d = v["after"] - v["before"]
        color = "red" if d < -0.02 else "green" if d > 0.02 else "white"
        t.add_row(f"{task} (alignment tax)", pct(v["before"]), pct(v["after"]), f"[{color}]{100 * d:+.1f} pts[/]")
    return t


def _grid_table(per_tensor: dict, title: str) -> Table:
    """Layer × matrix grid of a per-tensor fraction (percent), other tensors below."""
    grid, other = {}, {}
    for name, v in per_tensor.items():
        layer, col = cell_of(name)
        if layer is None:
            other[col] = v
        else:
            grid.setdefault(layer, {})[col] = v
    cols = [c for c in LAYER_COLUMNS if any(c in row for row in grid.values())]
    t = Table(title=title + ", %", title_justify="left", padding=(0, 1))
    t.add_column("layer")
    for c in cols:
        t.add_column(SHORT.get(c, c), justify="right")
    for layer in sorted(grid):
        t.add_row(str(layer), *[f"{100 * grid[layer][c]:.1f}" if c in grid[layer] else "" for c in cols])
    for name, v in other.items():
        t.add_row(name, f"{100 * v:.1f}", *[""] * (len(cols) - 1))
    return t


def _paper_table(r: dict) -> Table:
    paper, sp, rk = r["paper"], r["sparsity"], r["rank"]
    t = Table(title="paper (Mukherjee et al. 2025, arXiv 2505.11711) beside minirl", title_justify="left")
    for col in ("quantity", "paper", "minirl (this run)"):
        t.add_column(col)
    t.add_row("RL update sparsity (bf16, tol 1e-5)", paper["sparsity_range"], pct(sp["overall"]))
    same = paper.get("sparsity_by_algorithm", {}).get(r["algorithm"])
    if same:  # the paper's row for the same algorithm (REINFORCE and RLOO are not in its Table 1)
        t.add_row(f"  {same[1]}", f"{same[0]} %", pct(sp["overall"]))
    t.add_row("  bitwise (Path Not Taken's rule)", "-", pct(sp["bitwise"]))
    if "fp32_exact" in sp:
        t.add_row("  fp32 storage, exact equality", "dense ('infinite precision', footnote 5)", pct(sp["fp32_exact"]))
    t.add_row("update rank (mean fraction of full)", paper["rank_range"], pct(rk["mean_fraction"]))
    reg = r.get("regime", {})
    if reg:
        t.add_row("relative step lr / rms(w)", "~1e-4 (lr 5e-7..1e-6, rms ~1e-2)",
                  f"{reg['lr_over_rms']:.2e} ({reg['lr_over_rms'] / 1e-4:.0f}x the papers')")
    return t


def render(r: dict, console: Console | None = None, detail: bool = True) -> None:
    """Print the whole report."""
    console = console or Console()
    head = (f"[bold]minirl run {r['algorithm']}[/] · task [bold]{r['task']}[/] · init {r['init']} · seed {r['seed']} · "
            f"{r['steps']} steps · precision {r['precision']} · {r['wall_seconds']:.1f} s wall"
            + (" · [yellow]interrupted[/]" if r.get("interrupted") else ""))
    curve = r.get("reward_curve", [])
    finite = [v for v in curve if v is not None and math.isfinite(v)]
    tenth = max(1, len(finite) // 10)
    reward = (f"reward per step {sparkline(curve, 40)}  first tenth {sum(finite[:tenth]) / tenth:.2f} → "
              f"last tenth {sum(finite[-tenth:]) / tenth:.2f}" if finite else "no reward logged")
    kl = r.get("kl", {})
    kl_line = f"KL(π ‖ π_ref) per sequence on {kl.get('n', 0)} fresh samples: k1 {kl.get('k1', float('nan')):.4f}, k3 {kl.get('k3', float('nan')):.4f}"
    console.print(Panel(Group(head, reward, kl_line), title="minirl report", expand=False))
    console.print(_accuracy_table(r))
    sp = r["sparsity"]
    console.print(f"update sparsity: [bold]{pct(sp['overall'])}[/] of {sp['n_params']:,} weights unchanged "
                  f"(bf16, |Δ| <= {sp['tol']:g}); bitwise {pct(sp['bitwise'])}"
                  + (f"; fp32 exact {pct(sp['fp32_exact'])}" if "fp32_exact" in sp else ""))
    if detail:
        console.print(_grid_table(sp["per_tensor"], "update sparsity per matrix (bf16, tol 1e-5)"))
        console.print(_grid_table(r["rank"]["per_tensor"], "update rank per matrix (fraction of full rank)"))
    console.print(_paper_table(r))
    console.print(f"run directory: {r.get('run_dir', '?')}")
