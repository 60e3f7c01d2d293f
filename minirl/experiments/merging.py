"""Online merging against the alignment tax at toy scale (paper 2, docs/PAPERS.md §2): `minirl reproduce merging`.

From the shipped SFT model, for DPO (the paper's setting) and GRPO, over several seeds, it trains

    adamw         the preset (AdamW), and AdamW at 0.3x and 0.1x its learning rate: the AdamW frontier.
                  OnDARE without DARE's 1/p keeps a fraction p of each step, a smaller step on average, so a
                  lower-lr AdamW is the fair point to beat, not only the preset
    ondare        OnDARE at the defaults (p 0.1, alpha 1e-6; see `minirl.merging.online` for the scale matching)
    onties        OnTIES at the same p and alpha
    ondare_k10    OnDARE merging every 10 steps (step-K, Alg. 2)
    ema           an EMA of the weights, decay 0.9: its horizon, 10 steps, is the same share of a 150-step run as
                  the official fork's ema_rate 1e-3 (a 1000-step horizon) of the paper's ~15k steps
    childtuning   ChildTuning-F: gradients kept with probability p 0.1 and rescaled by 1/p
    kl            twice the KL pull: DPO beta 2 -> 4; GRPO beta 0 -> 0.1
    lora          LoRA rank 8 on the attention projections at 10x the learning rate (PERL's ratio)

and merges each seed's AdamW policy offline with the SFT model as mergekit would (base model: the shipped base;
models: the policy with weight w and the SFT model with 1 - w): linear at w 0.1 ... 0.9, and DARE (dare_linear)
and TIES at densities 0.3, 0.5, 0.7 for each w (the paper's grid). On DPO it sweeps OnDARE's and OnTIES' reserve
rate p from 1 down to 5e-4 and OnDARE's alpha from 0 to 1e-2.

Reward is the trained task's held-out accuracy (add: gain in points from the SFT model's 40 %), tax the mean
accuracy drop over the other five tasks. Every run keeps its run directory under `--out`; a rerun with the same
`--out` reads finished runs back.

Verdicts. Point A is *Pareto-better* than a family of points when, over the seeds, no member of the family reaches
A's gain at A's tax or lower, both by a clear margin (the larger of 1 point of gain, 0.25 of tax and the two
points' standard errors over seeds). A knob that varies continuously fills the gaps of its series: AdamW at an lr
between two measured ones, or an offline merge at a weight between two, is taken to land on the straight line
between them (in tax), so a point that merely sits between two learning rates is a tie, not a win. Reproduced if
the best online point (OnDARE or OnTIES) is Pareto-better for both DPO and GRPO; not reproduced if something in the
family beats it clearly in both gain and tax (or matches one and clearly beats the other) for both algorithms;
partly otherwise (a tie within noise, or the algorithms disagree). OnTIES is "more sensitive to a very low p" when it
loses a larger share of its own gain at p 0.1, averaged over the swept p below 0.1, by 10 points of percent.
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
from minirl.experiments.common import accuracy_outcome, outcome, run_or_reuse

ALGORITHMS = ("dpo", "grpo")
METHODS = {
    # name: (family, overrides relative to the preset; "lr_scale" multiplies the preset's lr)
    "adamw": ("adamw", {}),
    "adamw_lr0.3": ("adamw", {"lr_scale": 0.3}),
    "adamw_lr0.1": ("adamw", {"lr_scale": 0.1}),
    "ondare": ("online", {"optimizer": "ondare"}),
    "onties": ("online", {"optimizer": "onties"}),
    "ondare_k10": ("online", {"optimizer": "ondare", "merge_every": 10}),
    "ema": ("regularisation", {"optimizer": "ema", "ema_decay": 0.9}),
    "childtuning": ("regularisation", {"optimizer": "childtuning"}),
    "kl": ("regularisation", {"kl": True}),
    "lora": ("regularisation", {"lora_rank": 8, "lr_scale": 10.0}),
}
"""What every algorithm trains, seed by seed; families are what the verdicts compare."""
ONLINE = ("ondare", "onties")
"""The online merging points the verdicts take the better of (step-K is shown, not judged)."""
OFFLINE_METHODS = ("linear", "dare_linear", "ties")
OFFLINE_WEIGHTS = (0.1, 0.3, 0.5, 0.7, 0.9)
OFFLINE_DENSITIES = (0.3, 0.5, 0.7)
"""The paper's offline grid: weights 0.1 ... 0.9 of the policy against the SFT model, densities 0.3/0.5/0.7."""
RESERVE_RATES = (1.0, 0.3, 0.03, 0.01, 1e-3, 5e-4)
ALPHAS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)
"""The sweeps (DPO, OnDARE and OnTIES for p, OnDARE for alpha), beside the main runs' p 0.1 and alpha 1e-6."""
SWEEP_ALGORITHM = "dpo"
QUICK = {"seeds": (0,), "weights": (0.5,), "densities": (0.5,), "reserve_rates": (0.01,), "alphas": (1e-4,)}
"""What --quick runs unless told otherwise: one seed, one offline point per method, one sweep point each."""
GAIN_MARGIN, TAX_MARGIN = 1.0, 0.25
"""The smallest differences (points) a verdict counts as clear, whatever the seeds' spread."""
SENSITIVITY_MARGIN = 0.10
"""How much more of its gain (a share) OnTIES must lose at low p than OnDARE to count as more sensitive."""


@dataclass
class MergingConfig:
    """What `minirl reproduce merging` runs."""

    algorithms: tuple[str, ...] = ALGORITHMS
    """dpo (the paper's setting) and/or grpo."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of every training run (and of the offline DARE masks)."""
    methods: tuple[str, ...] = tuple(METHODS)
    """Training variants (see the module docstring)."""
    weights: tuple[float, ...] = OFFLINE_WEIGHTS
    """Offline merges: the policy's weight w (the SFT model gets 1 - w)."""
    densities: tuple[float, ...] = OFFLINE_DENSITIES
    """Offline DARE and TIES merges: densities."""
    reserve_rates: tuple[float, ...] = RESERVE_RATES
    """The reserve-rate sweep (OnDARE and OnTIES on DPO); empty: none."""
    alphas: tuple[float, ...] = ALPHAS
    """The alpha sweep (OnDARE on DPO); empty: none."""
    quick: bool = False
    """A smoke test (CI): 12 steps per run, 20 problems per task; the numbers mean nothing."""
    workers: int = 2
    """Runs at once (each single-threaded)."""

    def __post_init__(self):
        check_fields(self, [
            ("algorithms", len(self.algorithms) >= 1 and all(a in ALGORITHMS for a in self.algorithms),
             "names among " + ", ".join(ALGORITHMS)),
            ("seeds", len(self.seeds) >= 1 and all(int(s) == s and s >= 0 for s in self.seeds), "integers >= 0"),
            ("methods", "adamw" in self.methods and all(m in METHODS for m in self.methods),
             "names among " + ", ".join(METHODS) + ", adamw included (every verdict compares with it)"),
            ("weights", len(self.weights) >= 1 and all(0 < w < 1 for w in self.weights), "numbers in (0, 1)"),
            ("densities", len(self.densities) >= 1 and all(0 < d <= 1 for d in self.densities), "numbers in (0, 1]"),
            ("reserve_rates", all(0 < p <= 1 for p in self.reserve_rates), "numbers in (0, 1]"),
            ("alphas", all(0 <= a <= 1 for a in self.alphas), "numbers in [0, 1]"),
            ("workers", self.workers >= 1, ">= 1"),
        ])


# ------------------------------------------------------------------------------ the runs
def _overrides(algorithm: str, method: dict, quick: bool) -> dict:
    """`minirl run` settings of a method on an algorithm's preset."""
    from minirl import runs

    spec = runs.resolve(algorithm)
    out = {k: v for k, v in method.items() if k not in ("lr_scale", "kl")}
    if "lr_scale" in method:
        out["lr"] = spec["optimizer"].lr * method["lr_scale"]
    if method.get("kl"):
        out["beta"] = 2 * spec[algorithm].beta if algorithm == "dpo" else 0.1
    if quick:
        out.update(steps=12, num_prompts=64 if algorithm == "dpo" else 8)
    return out


def _training_runs(config: MergingConfig) -> list[dict]:
    """Every training run: the methods on each algorithm, then the DPO sweeps (skipping the main runs' points)."""
    out = []
    for algorithm in config.algorithms:
        for name in config.methods:
            out.append({"algorithm": algorithm, "method": name, "settings": dict(METHODS[name][1])})
    if SWEEP_ALGORITHM in config.algorithms:
        for opt in ONLINE:
            for p in config.reserve_rates:
                out.append({"algorithm": SWEEP_ALGORITHM, "method": f"{opt}_p{p:g}",
                            "settings": {"optimizer": opt, "reserve_rate": p}, "sweep": ("reserve_rate", opt, p)})
        for a in config.alphas:
            out.append({"algorithm": SWEEP_ALGORITHM, "method": f"ondare_a{a:g}",
                        "settings": {"optimizer": "ondare", "merge_weight": a}, "sweep": ("alpha", "ondare", a)})
    return [{**r, "seed": s} for r in out for s in config.seeds]


def train_run(run: dict, quick: bool, out: str) -> dict:
    """One training run and its outcome row (gain, tax, average, sparsity, merge ratio)."""
    r = run_or_reuse(run["algorithm"], out, run["seed"], bench_n=20 if quick else None,
                     **_overrides(run["algorithm"], run["settings"], quick))
    return {"algorithm": run["algorithm"], "method": run["method"], "seed": run["seed"],
            "family": METHODS.get(run["method"], ("sweep",))[0], "sweep": run.get("sweep"), **outcome(r),
            "sparsity": 100 * r["sparsity"]["overall"], "merge_ratio": r["regime"].get("merge_ratio"),
            "checkpoint": r["checkpoint"], "n": r["accuracy"]["n"], "accuracy_before": r["accuracy"]["before"]}


def offline_merges(algorithm: str, seed: int, checkpoint: str, weights, densities, n: dict,
                   before: dict[str, float]) -> list[dict]:
    """The AdamW policy merged with the SFT model (base: the shipped base), each grid point measured like a run
    against `before`, the SFT model's accuracies its run measured on the same problems."""
    from minirl import runs
    from minirl.checkpoint import load_checkpoint
    from minirl.loading import load, resolve
    from minirl.merging import merge

    # the three models read once, not once per grid point
    base, policy, sft = (load_checkpoint(resolve(p))[0] for p in ("base", checkpoint, "sft"))
    model = load("sft")
    params = dict(model.named_parameters())
    task = runs.resolve(algorithm)[algorithm].task
    rows = []
    for method in OFFLINE_METHODS:
        for density in (1.0,) if method == "linear" else densities:
            for w in weights:
                merged = merge(base, [policy, sft], [w, 1.0 - w], method, density, seed=seed)
                for name, p in params.items():
                    p.data[...] = merged[name]
                rows.append({"algorithm": algorithm, "method": f"{method}", "family": "offline", "seed": seed,
                             "weight": w, "density": density,
                             **accuracy_outcome(before, runs.accuracy(model, n), task)})
    return rows


def _train_task(args):
    return train_run(*args)


def _offline_task(args):
    return offline_merges(*args)


@dataclass
class MergingResult:
    """Everything `reproduce merging` measured, and the verdicts."""

    config: dict
    runs: list[dict] = field(default_factory=list)
    offline: list[dict] = field(default_factory=list)
    verdicts: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0


def run_merging(config: MergingConfig, out: Path, progress=None) -> MergingResult:
    """Every training run, then the offline grid on each AdamW policy (in `config.workers` processes); verdicts
    and figures. Writes merging.json (and pareto.png, sweeps.png with matplotlib) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = MergingResult(config=asdict(config))
    todo = _training_runs(config)
    tasks = [(run, config.quick, str(out / f"{run['algorithm']}-{run['method']}-s{run['seed']}")) for run in todo]
    with ProcessPoolExecutor(max_workers=config.workers) as pool:
        for i, row in enumerate(pool.map(_train_task, tasks)):
            result.runs.append(row)
            if progress:
                progress(f"[{i + 1}/{len(tasks)}] {row['algorithm']} {row['method']} seed {row['seed']}: "
                         f"gain {row['gain']:+.1f}, tax {row['tax']:+.2f}")
        finals = [(r["algorithm"], r["seed"], r["checkpoint"], config.weights, config.densities, r["n"],
                   r["accuracy_before"]) for r in result.runs if r["method"] == "adamw"]
        for rows in pool.map(_offline_task, finals):
            result.offline.extend(rows)
            if progress:
                best = max(rows, key=lambda r: r["gain"] - r["tax"])
                progress(f"offline merges of {rows[0]['algorithm']} seed {rows[0]['seed']}: {len(rows)} points, "
                         f"best gain - tax {best['method']} w {best['weight']} d {best['density']}: "
                         f"{best['gain']:+.1f} / {best['tax']:+.2f}")
    result.verdicts = verdicts(result)
    result.wall_seconds = time.perf_counter() - start
    (out / "merging.json").write_text(json.dumps(asdict(result), indent=2))
    figures(result, out)
    return result


# ------------------------------------------------------------------------------ summaries and verdicts
def _mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error over seeds (0 with one seed)."""
    return statistics.fmean(values), (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def points(result: MergingResult) -> list[dict]:
    """One point per (algorithm, method or offline grid point): means and standard errors over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in result.runs:
        groups.setdefault((r["algorithm"], r["method"], None, None), []).append(r)
    for r in result.offline:
        groups.setdefault((r["algorithm"], r["method"], r["weight"], r["density"]), []).append(r)
    out = []
    for (algorithm, method, weight, density), rows in groups.items():
        gain, gain_se = _mean_se([r["gain"] for r in rows])
        tax, tax_se = _mean_se([r["tax"] for r in rows])
        ratios = [r["merge_ratio"] for r in rows if r.get("merge_ratio") is not None]
        out.append({"algorithm": algorithm, "method": method, "family": rows[0]["family"], "weight": weight,
                    "density": density, "sweep": tuple(rows[0]["sweep"]) if rows[0].get("sweep") else None,  # JSON: list
                    "seeds": len(rows),
                    "gain": gain, "gain_se": gain_se, "gain_min": min(r["gain"] for r in rows),
                    "gain_max": max(r["gain"] for r in rows), "tax": tax, "tax_se": tax_se,
                    "after": statistics.fmean(r["after"] for r in rows),
                    "average": statistics.fmean(r["average"] for r in rows),
                    "sparsity": statistics.fmean(r["sparsity"] for r in rows) if "sparsity" in rows[0] else None,
                    "merge_ratio": statistics.fmean(ratios) if ratios else None})
    return out


def label(point: dict) -> str:
    """A point's name in tables and figures."""
    if point["family"] != "offline":
        return point["method"]
    d = "" if point["method"] == "linear" else f" d{point['density']:g}"
    return f"{point['method']} w{point['weight']:g}{d}"


def _margins(a: dict, b: dict) -> tuple[float, float]:
    return (max(GAIN_MARGIN, math.hypot(a["gain_se"], b["gain_se"])),
            max(TAX_MARGIN, math.hypot(a["tax_se"], b["tax_se"])))


def _series_key(p: dict) -> tuple:
    """Points one continuous knob joins: AdamW's lr; an offline method's weight at one density; else the point."""
    if p["family"] == "adamw":
        return ("adamw",)
    if p["family"] == "offline":
        return ("offline", p["method"], p["density"])
    return ("point", p["method"])


def frontier(family: list[dict], tax: float) -> list[dict]:
    """The family's members, and where each knob series crosses `tax` between two of its points (linear in tax):
    AdamW at an lr between two measured ones, or a merge at a weight between two, is taken to land between them."""
    out = list(family)
    series: dict[tuple, list[dict]] = {}
    for p in family:
        series.setdefault(_series_key(p), []).append(p)
    for key, members in series.items():
        if key[0] == "point":
            continue
        members = sorted(members, key=lambda p: p["tax"])
        for lo, hi in zip(members, members[1:]):
            if lo["tax"] < tax < hi["tax"]:
                f = (tax - lo["tax"]) / (hi["tax"] - lo["tax"])
                out.append({**lo, "method": f"{label(lo)} .. {label(hi)}", "family": "interpolated", "tax": tax,
                            "gain": lo["gain"] + f * (hi["gain"] - lo["gain"]),
                            "gain_se": max(lo["gain_se"], hi["gain_se"]), "tax_se": max(lo["tax_se"], hi["tax_se"])})
    return out


def compare(a: dict, family: list[dict]) -> tuple[str, dict | None]:
    """"better" if no member (nor a point between two of a knob series, see `frontier`) reaches a's gain (minus the
    margin) at a's tax (plus the margin) or lower, "worse" if one clearly beats a on one axis and is no worse on the
    other, else "tie"; and the point that decided it."""
    points_ = frontier(family, a["tax"])
    for b in points_:
        mg, mt = _margins(a, b)
        if (b["gain"] >= a["gain"] + mg and b["tax"] <= a["tax"] + mt) or \
                (b["tax"] <= a["tax"] - mt and b["gain"] >= a["gain"] - mg):
            return "worse", b
    for b in points_:
        mg, mt = _margins(a, b)
        if b["tax"] <= a["tax"] + mt and b["gain"] >= a["gain"] - mg:
            return "tie", b
    return "better", None


def _best_online(pts: list[dict], algorithm: str) -> dict | None:
    online = [p for p in pts if p["algorithm"] == algorithm and p["method"] in ONLINE]
    return max(online, key=lambda p: p["gain"] - p["tax"]) if online else None


def verdicts(result: MergingResult) -> list[dict]:
    """The paper's claims, each with the paper's words, minirl's numbers and a verdict."""
    from minirl.papers import papers

    paper = papers()["merging"]
    pts = points(result)
    out = []
    for what, family in (("AdamW", "adamw"), ("regularisation", "regularisation"), ("offline merging", "offline")):
        present = [p for p in pts if p["family"] == family and not p["sweep"]]
        order = [*METHODS, *OFFLINE_METHODS]
        names = sorted({p["method"] for p in present}, key=order.index)
        what = f"{what} ({', '.join(names)})"
        found, text = [], []
        for algorithm in result.config["algorithms"]:
            best = _best_online(pts, algorithm)
            members = [p for p in pts if p["algorithm"] == algorithm and p["family"] == family and not p["sweep"]]
            if best is None or not members:
                continue
            outcome_, by = compare(best, members)
            found.append(outcome_)
            text.append(f"{algorithm}: {best['method']} {best['gain']:+.1f} / tax {best['tax']:+.2f} is {outcome_}"
                        + (f" (vs {label(by)} {by['gain']:+.1f} / {by['tax']:+.2f})" if by else ""))
        if not found:
            continue
        verdict = ("reproduced" if all(f == "better" for f in found) else
                   "not reproduced" if all(f == "worse" for f in found) else "partly")
        out.append({"claim": f"online merging reaches more reward with less tax than {what}",
                    "paper": "yes (Table 4: AdamW 58.0, OnDARE 59.3, OnTIES 58.0 benchmark average)",
                    "minirl": "; ".join(text), "verdict": verdict})
    out += _sweep_verdicts(pts, paper)
    return out


def _sweep_verdicts(pts: list[dict], paper: dict) -> list[dict]:
    """Reserve rate: robust down to 5e-4, OnTIES more sensitive; alpha: a large alpha destabilises training."""
    out = []
    sweep = {(p["sweep"][0], p["sweep"][1], p["sweep"][2]): p for p in pts if p["sweep"]}
    main = {p["method"]: p for p in pts if p["algorithm"] == SWEEP_ALGORITHM and not p["sweep"]}
    adamw = main.get("adamw")
    rates = sorted({k[2] for k in sweep if k[0] == "reserve_rate"})
    if rates and adamw and all(("reserve_rate", o, rates[0]) in sweep for o in ONLINE):
        low = rates[0]
        text, learned, robust = [], [], []
        for o in ONLINE:
            p = sweep[("reserve_rate", o, low)]
            mg, _ = _margins(p, adamw)
            learned.append(p["gain"] > mg)
            robust.append(adamw["gain"] > mg and p["gain"] >= adamw["gain"] / 2)  # half AdamW's gain, at least
            text.append(f"{o} at p {low:g}: {p['gain']:+.1f} / tax {p['tax']:+.2f}")
        out.append({"claim": f"training robust down to p = {paper['reserve_p']['robust_down_to']:g} "
                             f"({SWEEP_ALGORITHM}; this sweep's lowest p {low:g})",
                    "paper": "robust", "minirl": "; ".join(text) + f" (AdamW {adamw['gain']:+.1f})",
                    "verdict": "reproduced" if all(robust) else "partly" if any(learned) else "not reproduced"})
        if all(o in main for o in ONLINE) and main["ondare"]["gain"] > 0 and main["onties"]["gain"] > 0:
            # sensitivity: the share of its own gain at p 0.1 each optimizer loses, averaged over the swept p < 0.1
            lower = [p for p in rates if p < 0.1]
            lost = {o: statistics.fmean(1 - sweep[("reserve_rate", o, p)]["gain"] / main[o]["gain"] for p in lower)
                    for o in ONLINE}
            diff = lost["onties"] - lost["ondare"]
            out.append({"claim": "OnTIES is more sensitive to a very low p than OnDARE", "paper": paper["reserve_p"]["claim"],
                        "minirl": f"share of the gain at p 0.1 lost, mean over p {', '.join(f'{p:g}' for p in lower)}: "
                                  f"OnDARE {100 * lost['ondare']:.0f} %, OnTIES {100 * lost['onties']:.0f} %",
                        "verdict": "reproduced" if diff > SENSITIVITY_MARGIN else "not reproduced"})
    alphas = sorted(k[2] for k in sweep if k[0] == "alpha")
    if alphas and "ondare" in main:
        top = sweep[("alpha", "ondare", alphas[-1])]
        base = main["ondare"]
        mg, mt = _margins(top, base)
        worse = top["gain"] < base["gain"] - mg or top["tax"] > base["tax"] + mt
        out.append({"claim": "a large alpha destabilises training", "paper": paper["alpha"]["claim"],
                    "minirl": f"OnDARE alpha {alphas[-1]:g} (merge ratio {top['merge_ratio'] or 0:.2g}): "
                              f"{top['gain']:+.1f} / tax {top['tax']:+.2f}; alpha 1e-6 (ratio "
                              f"{base['merge_ratio'] or 0:.2g}): {base['gain']:+.1f} / tax {base['tax']:+.2f}",
                    "verdict": "reproduced" if worse else "not reproduced"})
    return out


# ------------------------------------------------------------------------------ figures
def figures(result: MergingResult, out: Path) -> list[Path]:
    """pareto.png (gain against tax, every point, per algorithm) and sweeps.png (p and alpha); none without
    matplotlib."""
    from minirl.plots import pyplot, save

    plt = pyplot()
    if plt is None:
        return []
    pts = points(result)
    algorithms = result.config["algorithms"]
    colors = {"adamw": "tab:blue", "online": "tab:red", "regularisation": "tab:green", "offline": "tab:gray"}
    markers = {"linear": "o", "dare_linear": "s", "ties": "^"}
    fig, axes = plt.subplots(1, len(algorithms), figsize=(6.5 * len(algorithms), 5), squeeze=False)
    for ax, algorithm in zip(axes[0], algorithms):
        for p in pts:
            if p["algorithm"] != algorithm or p["sweep"]:
                continue
            if p["family"] == "offline":
                ax.scatter(p["tax"], p["gain"], s=14, alpha=0.5, c=colors["offline"], marker=markers[p["method"]])
                continue
            ax.errorbar(p["tax"], p["gain"], xerr=p["tax_se"], yerr=p["gain_se"], fmt="o", ms=6,
                        color=colors[p["family"]], capsize=2, zorder=3 if p["family"] == "online" else 2)
            ax.annotate(p["method"], (p["tax"], p["gain"]), fontsize=8, xytext=(4, 3), textcoords="offset points")
        mine = [p for p in pts if p["algorithm"] == algorithm and not p["sweep"]]
        for m, mk in markers.items():
            if any(p["method"] == m for p in mine):
                ax.scatter([], [], c=colors["offline"], marker=mk, s=14, label=f"offline {m}")
        for fam in ("adamw", "online", "regularisation"):
            if any(p["family"] == fam for p in mine):
                ax.scatter([], [], c=colors[fam], label=fam)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_xscale("symlog", linthresh=1.0)  # linear to 1 point of tax, where the methods are; log beyond
        ax.set_xlim(left=-0.3)
        ax.set(xlabel="alignment tax: mean drop on the other tasks (points; log beyond 1)",
               ylabel="reward: gain on the task (points)", title=f"{algorithm}: up and to the left is better")
        ax.legend(fontsize=7, loc="lower right")
    paths = [save(fig, out / "pareto.png")]
    sweep = [p for p in pts if p["sweep"]]
    if sweep:
        main = {p["method"]: p for p in pts if p["algorithm"] == SWEEP_ALGORITHM and not p["sweep"]}
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
        for opt, color in (("ondare", "tab:red"), ("onties", "tab:purple")):
            row = sorted([(p["sweep"][2], p) for p in sweep if p["sweep"][:2] == ("reserve_rate", opt)] +
                         ([(0.1, main[opt])] if opt in main else []), key=lambda x: x[0])
            if row:
                a1.errorbar([x for x, _ in row], [p["gain"] for _, p in row], yerr=[p["gain_se"] for _, p in row],
                            fmt="o-", color=color, label=f"{opt} gain", capsize=2)
                a1.plot([x for x, _ in row], [p["tax"] for _, p in row], "x--", color=color, label=f"{opt} tax")
        row = sorted([(p["sweep"][2], p) for p in sweep if p["sweep"][0] == "alpha"] +
                     ([(1e-6, main["ondare"])] if "ondare" in main else []), key=lambda x: x[0])
        if row:
            xs = [max(x, 1e-8) for x, _ in row]  # alpha 0 drawn at 1e-8 on the log axis
            a2.errorbar(xs, [p["gain"] for _, p in row], yerr=[p["gain_se"] for _, p in row], fmt="o-",
                        color="tab:red", label="ondare gain", capsize=2)
            a2.plot(xs, [p["tax"] for _, p in row], "x--", color="tab:red", label="ondare tax")
        if "adamw" in main:
            for ax in (a1, a2):
                ax.axhline(main["adamw"]["gain"], color="tab:blue", lw=0.8, label="AdamW gain")
        a1.set(xscale="log", xlabel="reserve rate p", ylabel="points", title=f"{SWEEP_ALGORITHM}: reserve rate")
        a2.set(xscale="log", xlabel="alpha (0 drawn at 1e-8)", ylabel="points", title=f"{SWEEP_ALGORITHM}: alpha")
        for ax in (a1, a2):
            ax.legend(fontsize=8)
        paths.append(save(fig, out / "sweeps.png"))
    return paths
