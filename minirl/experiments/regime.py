"""The regime map: why a toy run is dense and a 7B run looks sparse (`minirl reproduce regime`).

docs/PAPERS.md ("What reproduced at toy scale means") names the knobs that decide whether bf16 storage hides an
RL update: the relative step lr / rms(w), the number of steps, the storage precision, Adam's eps against the
gradients' RMS, and the model's width. This experiment trains GRPO from the shipped SFT models over a grid of
those knobs and measures, for each point, the update sparsity (bf16, tol 1e-5) and the gain on add, over
several seeds:

    lr        3e-4, 1e-4 (the preset), 3e-5, 1e-5 at 150 steps: relative steps 4.4e-3 ... 1.5e-4
    steps     1e-5 for 600 steps: a small step taken four times as often
    eps       Adam's eps 1e-4 and 1e-3 at lr 1e-4: the preset's 1e-8 is far below the gradients' per-weight RMS
              (about 2e-3 here after the clip); at 1e-3 eps damps the steps of the weights with small gradients
    precision pure_bf16 (no fp32 master: a step below half a bf16 ULP is lost) at lr 1e-4 (150 and 300 steps),
              2e-4 and 1e-3
    width     the SFT models of widths 32, 96 and 128 (sft-w32, ...) at the four lrs and with the paper preset;
              `width_trend` fits their weights' RMS and sparsities against log2(width) and carries the lines,
              and the half-ULP predictor, to width 4096

It answers one question with the measured grid: does a configuration exist in which a toy GRPO run both gains
at least 10 points and is at least 50 % sparse?
"""

from __future__ import annotations

import json
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from minirl.config import check_fields
from minirl.experiments.common import outcome, run_or_reuse
from minirl.loading import load

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
WIDTHS = {32: "sft-w32", 64: "sft", 96: "sft-w96", 128: "sft-w128"}
"""The width axis: hidden size -> the SFT model GRPO starts from (each made as minirl/presets/widths/ records, its
SFT run long enough that greedy add accuracy is near the shipped model's 40 %)."""
WIDTH_LRS = {"lr3e-4": 3e-4, "lr1e-4": 1e-4, "lr3e-5": 3e-5, "lr1e-5": 1e-5}
"""The learning rates every width is trained at (width 64: the lr points above)."""


def point_name(width: int, name: str) -> str:
    """A grid point's name at a width: width 64's points keep theirs, the other widths' get a w<width>_ prefix."""
    return name if width == 64 else f"w{width}_{name}"


for _w, _init in WIDTHS.items():
    if _w != 64:
        POINTS |= {point_name(_w, name): ("width", {"init": _init, "lr": lr}) for name, lr in WIDTH_LRS.items()}
        POINTS[point_name(_w, "pure_bf16x300")] = ("width", {"init": _init, "precision": "pure_bf16", "steps": 300})
QUICK_POINTS = tuple(n for n in POINTS if POINTS[n][0] != "width") + ("w32_lr1e-4", "w128_lr1e-4", "w128_lr1e-5")
"""--quick's grid: every knob, the width axis at two widths."""
GAIN_FLOOR = -10.0
"""regime.png's gain axis starts here; a point below (a diverged run) is drawn as an arrow at the floor."""
PAPER_LR = 1e-4
"""The paper preset's lr (pure bf16, 300 steps): what the half-ULP predictor compares with."""
PREDICT_WIDTH = 4096
"""The width the trend is extrapolated to (a 7B Llama's hidden size)."""
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
    return {"point": name, "knob": POINTS[name][0], "width": width_of(name), "seed": seed, **outcome(r),
            "grad_rms": grad_rms(r),
            "relative_step": r["regime"]["lr_over_rms"], "lr": r["regime"]["lr"], "steps": r["steps"],
            "sparsity": 100 * r["sparsity"]["overall"], "bitwise": 100 * r["sparsity"]["bitwise"],
            "precision": r["precision"], "eps": r["config"]["optimizer"]["eps"]}


def width_of(point: str) -> int:
    """The hidden size of the model a grid point starts from."""
    init = POINTS[point][1].get("init", "sft")
    return next(w for w, name in WIDTHS.items() if name == init)


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
    widths: dict = field(default_factory=dict)
    wall_seconds: float = 0.0


def summarise(runs: list[dict]) -> list[dict]:
    """Mean, min and max of sparsity and gain per grid point."""
    out = []
    for name in dict.fromkeys(r["point"] for r in runs):
        rows = [r for r in runs if r["point"] == name]
        point = {k: rows[0][k] for k in ("point", "knob", "relative_step", "lr", "steps", "precision", "eps")}
        point["width"] = rows[0].get("width", 64)  # rows without one: the shipped width
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


def lr_curve(points: list[dict], width: int) -> list[dict]:
    """The fp32-master (bf16 storage), 150-step points of one width, by increasing lr."""
    names = {point_name(width, n) for n in WIDTH_LRS}
    return sorted((p for p in points if p["point"] in names), key=lambda p: p["lr"])


def fit_line(xs: list[float], ys: list[float]) -> dict:
    """Least-squares line of ys against xs: intercept, slope and r^2."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    syy = sum((y - my) ** 2 for y in ys)
    resid = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return {"intercept": my - slope * mx, "slope": slope, "r2": 1 - resid / syy if syy else 1.0}


def half_ulp_fraction(model, lr: float) -> float:
    """The fraction of the model's weights for which half a bf16 ULP exceeds lr: the ones a pure-bf16 Adam step
    (about lr per weight) can never move, so the paper preset's sparsity predicted before training
    (tutorials/08_sparsity.py)."""
    import numpy as np

    from minirl.precision import ulp

    flat = np.concatenate([p.data.ravel() for _, p in model.named_parameters()])
    return float(np.mean(ulp(flat) / 2 > lr))


def gaussian_half_ulp_fraction(rms: float, lr: float, n: int = 400_001) -> float:
    """half_ulp_fraction of normal weights with this RMS (n evenly spaced quantiles): the prediction for a model
    known only by its weights' scale."""
    import numpy as np
    from scipy.stats import norm

    from minirl.precision import ulp

    w = (rms * norm.ppf((np.arange(n) + 0.5) / n)).astype(np.float32)
    return float(np.mean(ulp(w) / 2 > lr))


def width_trend(points: list[dict], half_ulp: dict[int, float] | None = None) -> dict:
    """The width axis. Per width: the SFT model's weight RMS, GRPO's sparsity and gain at each lr (fp32 master,
    bf16 storage, 150 steps), the lr that gained most and its sparsity, and the paper preset (pure bf16, 300 steps).
    Across widths, straight lines against log2(width) (log2 of the RMS and of the best lr; sparsity in points per
    doubling), each carried to PREDICT_WIDTH: what the toy widths predict, not a measurement. `half_ulp`: width ->
    half_ulp_fraction of its SFT model at the paper preset's lr, the per-weight predictor, which is then applied to
    normal weights of the extrapolated RMS at the preset's lr and the papers' learning rates."""
    rows = []
    for width in sorted({p["width"] for p in points}):
        curve = lr_curve(points, width)
        paper = next((p for p in points if p["point"] == point_name(width, "pure_bf16x300")), None)
        if not curve and not paper:
            continue
        anyp = (curve or [paper])[0]
        row = {"width": width, "rms_w": anyp["lr"] / anyp["relative_step"], "lrs": [p["lr"] for p in curve],
               "gains": [p["gain"] for p in curve], "sparsities": [p["sparsity"] for p in curve]}
        if curve:
            best = max(curve, key=lambda p: p["gain"])
            row["best"] = {k: best[k] for k in ("lr", "relative_step", "gain", "gain_min", "sparsity")}
        if paper:
            row["paper"] = {k: paper[k] for k in ("gain", "gain_min", "sparsity")}
        if half_ulp and width in half_ulp:
            row["half_ulp"] = {"exact": 100 * half_ulp[width],
                               "gaussian": 100 * gaussian_half_ulp_fraction(row["rms_w"], PAPER_LR)}
        rows.append(row)
    out = {"widths": rows, "predict_width": PREDICT_WIDTH, "fits": {}}
    at = math.log2(PREDICT_WIDTH)

    def fit(name, have, y, log=False, clip=False):
        use = [r for r in rows if have(r)]
        if len(use) < 3:  # two points always lie on a line
            return
        line = fit_line([math.log2(r["width"]) for r in use], [y(r) for r in use])
        value = line["intercept"] + line["slope"] * at
        value = 2 ** value if log else min(100.0, max(0.0, value)) if clip else value
        out["fits"][name] = line | {"widths": [r["width"] for r in use], "predicted": value, "log": log}

    fit("rms_w", lambda r: True, lambda r: math.log2(r["rms_w"]), log=True)
    fit("best_lr", lambda r: "best" in r, lambda r: math.log2(r["best"]["lr"]), log=True)
    fit("best_sparsity", lambda r: "best" in r, lambda r: r["best"]["sparsity"], clip=True)
    fit("paper_sparsity", lambda r: "paper" in r, lambda r: r["paper"]["sparsity"], clip=True)
    if "rms_w" in out["fits"]:
        from minirl.papers import papers

        rms = out["fits"]["rms_w"]["predicted"]
        lrs = (PAPER_LR, *papers()["scale_matching"]["lr"])
        out["half_ulp_at_predict_width"] = {f"{lr:g}": 100 * gaussian_half_ulp_fraction(rms, lr) for lr in lrs}
    for name, lr in WIDTH_LRS.items():
        fit(f"sparsity_{name}", lambda r, lr=lr: lr in r["lrs"], lambda r, lr=lr: r["sparsities"][r["lrs"].index(lr)],
            clip=True)
    return out


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
    result.widths = width_trend(result.points, {w: half_ulp_fraction(load(init), PAPER_LR)
                                                for w, init in WIDTHS.items() if any(p["width"] == w for p in result.points)})
    result.wall_seconds = time.perf_counter() - start
    (out / "regime.json").write_text(json.dumps(asdict(result), indent=2))
    draw(result, out)
    draw_widths(result, out)
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
    points = [p for p in result.points if p["knob"] != "width"]  # the width axis: widths.png
    floor = GAIN_FLOOR if any(p["gain"] >= GAIN_FLOOR for p in points) else None
    for p in points:
        for ax, key in ((a1, "sparsity"), (a2, "gain")):
            if key == "gain" and floor is not None and p["gain"] < floor:  # a diverged run: an arrow at the floor
                ax.plot(p["relative_step"], floor + 0.5, "v", color="tab:red")
                ax.annotate(f"{p['point']}: {p['gain']:+.1f}", (p["relative_step"], floor + 0.5), fontsize=7,
                            xytext=(-4, 6), textcoords="offset points", ha="right", color="tab:red")
                continue
            ax.errorbar(p["relative_step"], p[key], yerr=[[p[key] - p[f"{key}_min"]], [p[f"{key}_max"] - p[key]]],
                        fmt=markers[p["knob"]], capsize=2, color="tab:blue")
            ax.annotate(p["point"], (p["relative_step"], p[key]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
    if floor is not None and any(p["gain"] < floor for p in points):
        a2.set_ylim(bottom=floor)
    for ax, bar, label in ((a1, SPARSITY_BAR, "50 % sparse"), (a2, GAIN_BAR, "+10 points")):
        ax.axhline(bar, color="tab:orange", ls="--", label=label)
        ax.axvline(paper_step, color="tab:gray", ls=":", label="the papers' relative step (estimate)")
        ax.set(xscale="log", xlabel="relative step lr / rms(w)")
        ax.legend(fontsize=8)
    a1.set(ylabel="update sparsity, % (bf16, tol 1e-5)", title="sparsity (markers: o lr, s steps, ^ eps, D precision)")
    a2.set(ylabel="gain on add, points", title="learning")
    save(fig, out / "regime.png")
    return out / "regime.png"


def draw_widths(result: RegimeResult, out: Path) -> Path | None:
    """widths.png: gain against lr for each width; sparsity against width at each lr, at each width's best lr and
    with the paper preset, the last two with their straight-line fits carried to PREDICT_WIDTH. None without
    matplotlib or with under two widths."""
    from minirl.plots import pyplot, save

    plt = pyplot()
    trend = result.widths
    rows = trend.get("widths", [])
    if plt is None or len(rows) < 2:
        return None
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(18, 4.8))
    for row in rows:
        if row["lrs"]:
            a1.plot(row["lrs"], row["gains"], "o-", label=f"width {row['width']}")
    a1.axhline(0, color="gray", lw=0.5)
    a1.set(xscale="log", xlabel="lr (GRPO, fp32 master, bf16 storage, 150 steps)", ylabel="gain on add, points",
           title="learning against lr, by width (mean over seeds)")
    a1.legend(fontsize=8)
    for name, lr in WIDTH_LRS.items():
        have = [r for r in rows if lr in r["lrs"]]
        a2.plot([r["width"] for r in have], [r["sparsities"][r["lrs"].index(lr)] for r in have], ".--", lw=0.8,
                alpha=0.6, label=f"lr {lr:g}")
    hi = trend["predict_width"]
    for key, sub, style, label in (("best_sparsity", "best", "o", "at each width's best lr"),
                                   ("paper_sparsity", "paper", "D", "the paper preset (pure bf16, 300 steps)")):
        have = [r for r in rows if sub in r]
        line, = a2.plot([r["width"] for r in have], [r[sub]["sparsity"] for r in have], style, ms=7, label=label)
        f = trend["fits"].get(key)
        if f:
            xs = [min(f["widths"]), hi]
            a2.plot(xs, [f["intercept"] + f["slope"] * math.log2(x) for x in xs], ":", color=line.get_color(),
                    label=f"  fit: {f['slope']:+.1f} points per doubling, {f['predicted']:.0f} % at {hi}")
    a2.axhline(SPARSITY_BAR, color="tab:orange", ls="--", lw=0.8)
    a2.set_xscale("log", base=2)
    a2.set(xlabel="hidden size", ylabel="update sparsity, % (bf16, tol 1e-5)", ylim=(0, 100), xlim=(16, 2 * hi),
           title="sparsity against width (straight lines in log2 width, carried to 4096)")
    a2.legend(fontsize=7)
    a3.plot([r["width"] for r in rows], [r["rms_w"] for r in rows], "o", label="each width's SFT model")
    f = trend["fits"].get("rms_w")
    if f:
        xs = [min(f["widths"]), hi]
        a3.plot(xs, [2 ** (f["intercept"] + f["slope"] * math.log2(x)) for x in xs], ":",
                label=f"fit: width^{f['slope']:.2f}, {f['predicted']:.3f} at {hi}")
    a3.axhline(1e-2, color="tab:gray", ls="--", lw=0.8, label="PAPERS.md's estimate for 7B models (order 1e-2)")
    a3.set_xscale("log", base=2)
    a3.set(yscale="log", xlabel="hidden size", ylabel="rms(w) of the SFT model", xlim=(16, 2 * hi),
           title="the weights' scale against width")
    a3.legend(fontsize=7)
    save(fig, out / "widths.png")
    return out / "widths.png"
