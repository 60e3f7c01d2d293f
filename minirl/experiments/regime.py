"""The regime map: why a toy run is dense and a 7B run looks sparse (`minirl reproduce regime`).

docs/PAPERS.md ("What reproduced at toy scale means") names the knobs that decide whether bf16 storage hides an
RL update: the relative step lr / rms(w), the number of steps, the storage precision, Adam's eps against the
gradients' RMS, and the model's width. This experiment trains GRPO from the shipped SFT model over a grid of
those knobs (width aside: see the README) and measures, for each point, the update sparsity (bf16, tol 1e-5)
and the gain on add, over several seeds:

    lr        3e-4, 1e-4 (the preset), 3e-5, 1e-5 at 150 steps: relative steps 4.4e-3 ... 1.5e-4
    steps     1e-5 for 600 steps: a small step taken four times as often
    eps       Adam's eps 1e-4 and 1e-3 at lr 1e-4: the preset's 1e-8 is far below the gradients' per-weight RMS
              (about 2e-3 here after the clip); at 1e-3 eps damps the steps of the weights with small gradients
    precision pure_bf16 (no fp32 master: a step below half a bf16 ULP is lost) at lr 1e-4 (150 and 300 steps),
              2e-4 and 1e-3

It answers one question with the measured grid: does a configuration exist in which a toy GRPO run both gains
at least 10 points and is at least 50 % sparse?
"""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from minirl.config import check_fields
from minirl.experiments.common import outcome, run_or_reuse

POINTS = {
    # name: (knob, overrides of the GRPO preset)
    "lr3e-4": ("lr", {"lr": 3e-4}),
    "lr1e-4": ("lr", {}),
    "lr3e-5": ("lr", {"lr": 3e-5}),
    "lr1e-5": ("lr", {"lr": 1e-5}),
    "lr1e-5x600": ("steps", {"lr": 1e-5, "steps": 600}),
    "eps1e-4": ("eps", {"eps": 1e-4}),
    "eps1e-3": ("eps", {"eps": 1e-3}),
    "pure_bf16": ("precision", {"precision": "pure_bf16"}),
    "pure_bf16_lr2e-4": ("precision", {"precision": "pure_bf16", "lr": 2e-4}),
    "pure_bf16x300": ("precision", {"precision": "pure_bf16", "steps": 300}),
    "pure_bf16_lr1e-3": ("precision", {"precision": "pure_bf16", "lr": 1e-3}),
}
"""The grid: each point a knob turned away from the GRPO preset (lr 1e-4, eps 1e-8, bf16 with fp32 master)."""
GAIN_BAR, SPARSITY_BAR = 10.0, 50.0
"""The issue's question: a run that gains at least 10 points and is at least 50 % sparse."""


@dataclass
class RegimeConfig:
    """What `minirl reproduce regime` runs."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of every point."""
    points: tuple[str, ...] = tuple(POINTS)
    """Grid points (see POINTS)."""
    quick: bool = False
    """A smoke test (CI): 8 steps a run (32 for the long one), 20 problems a task; the numbers mean nothing."""
    workers: int = 2
    """Runs at once."""

    def __post_init__(self):
        check_fields(self, [
            ("seeds", len(self.seeds) >= 1 and all(int(s) == s and s >= 0 for s in self.seeds), "integers >= 0"),
            ("points", len(self.points) >= 1 and all(p in POINTS for p in self.points),
             "names among " + ", ".join(POINTS)),
            ("workers", self.workers >= 1, ">= 1"),
        ])


def train_point(name: str, seed: int, quick: bool, out: str) -> dict:
    """One GRPO run of a grid point: relative step, sparsity, gain, tax."""
    over = dict(POINTS[name][1])
    if quick:
        over.update(steps=32 if over.get("steps", 0) > 150 else 8, num_prompts=8)
    r = run_or_reuse("grpo", out, seed, bench_n=20 if quick else None, **over)
    return {"point": name, "knob": POINTS[name][0], "seed": seed, **outcome(r), "grad_rms": grad_rms(r),
            "relative_step": r["regime"]["lr_over_rms"], "lr": r["regime"]["lr"], "steps": r["steps"],
            "sparsity": 100 * r["sparsity"]["overall"], "bitwise": 100 * r["sparsity"]["bitwise"],
            "precision": r["precision"], "eps": r["config"]["optimizer"]["eps"]}


def grad_rms(report: dict) -> float:
    """The gradient's per-weight RMS the optimizer saw, averaged over the run: the clipped global norm (logged
    before the clip as grad_norm) over sqrt(number of weights), what Adam's eps is compared with."""
    from minirl.runs import RunDir

    norms = [m["grad_norm"] for m in RunDir(report["run_dir"]).read_metrics() if "grad_norm" in m]
    clip = report["config"]["train"].get("grad_clip")
    clipped = [min(g, clip) if clip else g for g in norms]
    return statistics.fmean(clipped) / report["sparsity"]["n_params"] ** 0.5 if clipped else float("nan")


def _task(args):
    return train_point(*args)


@dataclass
class RegimeResult:
    """The grid's runs, its points over seeds, and the answer."""

    config: dict
    runs: list[dict] = field(default_factory=list)
    points: list[dict] = field(default_factory=list)
    answer: dict = field(default_factory=dict)
    wall_seconds: float = 0.0


def summarise(runs: list[dict]) -> list[dict]:
    """Mean, min and max of sparsity and gain per grid point."""
    out = []
    for name in dict.fromkeys(r["point"] for r in runs):
        rows = [r for r in runs if r["point"] == name]
        point = {k: rows[0][k] for k in ("point", "knob", "relative_step", "lr", "steps", "precision", "eps")}
        point["eps_over_grad"] = point["eps"] / statistics.fmean(r["grad_rms"] for r in rows)
        for key in ("sparsity", "gain", "tax"):
            values = [r[key] for r in rows]
            point |= {key: statistics.fmean(values), f"{key}_min": min(values), f"{key}_max": max(values)}
        out.append(point | {"seeds": len(rows)})
    return out


def answer(points: list[dict]) -> dict:
    """Whether some point gains >= 10 and is >= 50 % sparse in every seed; the best trade-off found either way."""
    both = [p for p in points if p["gain_min"] >= GAIN_BAR and p["sparsity_min"] >= SPARSITY_BAR]
    learning = [p for p in points if p["gain_min"] >= GAIN_BAR]
    sparsest_learning = max(learning, key=lambda p: p["sparsity"]) if learning else None
    return {"exists": bool(both), "points": [p["point"] for p in both],
            "sparsest_learning": sparsest_learning and sparsest_learning["point"],
            "sparsest_learning_sparsity": sparsest_learning and sparsest_learning["sparsity"],
            "sparsest": max(points, key=lambda p: p["sparsity"])["point"] if points else None}


def run_regime(config: RegimeConfig, out: Path, progress=None) -> RegimeResult:
    """Every grid point over the seeds; regime.json and regime.png in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = RegimeResult(config=asdict(config))
    tasks = [(name, seed, config.quick, str(out / f"{name}-s{seed}")) for name in config.points for seed in config.seeds]
    with ProcessPoolExecutor(max_workers=config.workers) as pool:
        for row in pool.map(_task, tasks):
            result.runs.append(row)
            if progress:
                progress(f"[{len(result.runs)}/{len(tasks)}] {row['point']} seed {row['seed']}: relative step "
                         f"{row['relative_step']:.1e}, sparsity {row['sparsity']:.1f} %, gain {row['gain']:+.1f}")
    result.points = summarise(result.runs)
    result.answer = answer(result.points)
    result.wall_seconds = time.perf_counter() - start
    (out / "regime.json").write_text(json.dumps(asdict(result), indent=2))
    draw(result, out)
    return result


def draw(result: RegimeResult, out: Path) -> Path | None:
    """regime.png: sparsity and gain against the relative step, one marker per knob; None without matplotlib."""
    from minirl.plots import pyplot, save

    plt = pyplot()
    if plt is None:
        return None
    from minirl.papers import papers

    paper_step = papers()["scale_matching"]["relative_step"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    markers = {"lr": "o", "steps": "s", "eps": "^", "precision": "D"}
    for p in result.points:
        for ax, key in ((a1, "sparsity"), (a2, "gain")):
            ax.errorbar(p["relative_step"], p[key], yerr=[[p[key] - p[f"{key}_min"]], [p[f"{key}_max"] - p[key]]],
                        fmt=markers[p["knob"]], capsize=2, color="tab:blue")
            ax.annotate(p["point"], (p["relative_step"], p[key]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
    for ax, bar, label in ((a1, SPARSITY_BAR, "50 % sparse"), (a2, GAIN_BAR, "+10 points")):
        ax.axhline(bar, color="tab:orange", ls="--", label=label)
        ax.axvline(paper_step, color="tab:gray", ls=":", label="the papers' relative step (estimate)")
        ax.set(xscale="log", xlabel="relative step lr / rms(w)")
        ax.legend(fontsize=8)
    a1.set(ylabel="update sparsity, % (bf16, tol 1e-5)", title="sparsity (markers: o lr, s steps, ^ eps, D precision)")
    a2.set(ylabel="gain on add, points", title="learning")
    save(fig, out / "regime.png")
    return out / "regime.png"
