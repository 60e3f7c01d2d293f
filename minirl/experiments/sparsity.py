"""Every claim of paper 1's headline table as an experiment with a verdict: `minirl reproduce sparsity`.

Mukherjee et al., *Reinforcement Learning Finetunes Small Subnetworks in Large Language Models*, arXiv
2505.11711 (2025); docs/PAPERS.md §1 defines each quantity. From the shipped SFT model, over several seeds,
it trains (each with its preset unless said):

    grpo, ppo, reinforce, rloo, dpo, kto, simpo, orpo, rft   RL update sparsity of every algorithm minirl has;
                                                             GRPO keeps its weights every 25 steps (dynamics)
    sft_add       SFT on add's gold answers, at the RL presets' lr 1e-4 and 150 steps: the same start, steps and
                  rate as the RL runs, only the data and the loss differ (out-of-distribution data: the answers
                  are not the policy's own samples)
    dpo_offline   DPO on offline pairs (the right answer against a plausible mistake: out-of-distribution)
    sft_sub, dpo_sub, dpo_offline_sub
                  the same on sub (subtraction), a task neither shipped model ever saw (the SFT model scores 0 %):
                  SFT and offline DPO on gold answers (out-of-distribution) against on-policy DPO on the policy's
                  own answers ranked by partial credit (in-distribution; none is right, so RFT has nothing to keep)
    grpo_kl       GRPO with a KL penalty, beta 0.1 (the preset has none)
    grpo_fp32     GRPO with fp32 weights (the precision explanation)
    grpo_sub      GRPO with its gradients masked to the weights the same seed's GRPO run updated (subnetwork
                  fine-tuning, `--mask-from`)

and measures each claim from the runs' reports and checkpoints: sparsity (bf16, tol 1e-5), layers and norms,
update rank, overlap of updated weights across seeds, data and algorithms against chance, subnetwork agreement,
sparsity between consecutive checkpoints, and bf16 against fp32 storage. Each claim gets the paper's number,
minirl's mean and spread over seeds, and a verdict: reproduced (same direction, clear margin), partly, or not
reproduced. Every run keeps its run directory under `--out`; a rerun with the same `--out` reads finished runs
back.

What "clear margin" means is said per claim in `verdicts`; sparsities are compared in points of percent.
"""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from minirl.config import check_fields
from minirl.experiments.common import outcome, run_or_reuse

ALGORITHMS = ("grpo", "ppo", "reinforce", "rloo", "dpo", "kto", "simpo", "orpo", "rft")
KEEP_EVERY, QUICK_KEEP_EVERY = 25, 4
"""GRPO's checkpoints for the dynamics claim (150 steps: six; --quick's 12: three)."""
VARIANTS = {
    # name: (job, overrides); "mask_from" is filled with the same seed's GRPO run
    "sft_add": ("sft", {"init": "sft", "tasks": ["add"], "lr": 1e-4, "steps": 150}),
    "dpo_offline": ("dpo", {"pairs": "offline"}),
    "sft_sub": ("sft", {"init": "sft", "tasks": ["sub"], "lr": 1e-4, "steps": 150}),
    "dpo_sub": ("dpo", {"task": "sub", "reward": "partial"}),
    "dpo_offline_sub": ("dpo", {"task": "sub", "pairs": "offline"}),
    "grpo_kl": ("grpo", {"beta": 0.1}),
    "grpo_fp32": ("grpo", {"precision": "fp32"}),
    "grpo_sub": ("grpo", {"mask_from": True}),
}
"""The controlled variants beside the algorithms' presets."""
QUICK_SEEDS = (0, 1)
"""--quick: two seeds (the overlap across seeds needs two), 12 steps a run."""
MARGIN = 2.0
"""Points of percent below which two sparsities count as equal (seeds differ by about a point)."""


@dataclass
class SparsityConfig:
    """What `minirl reproduce sparsity` runs."""

    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of every run (at least two: the overlap across seeds compares them)."""
    algorithms: tuple[str, ...] = ALGORITHMS
    """The algorithms whose update sparsity is measured (grpo, dpo and rft are needed by other claims)."""
    quick: bool = False
    """A smoke test (CI): 12 steps a run, 20 problems per task; the numbers mean nothing."""
    workers: int = 2
    """Runs at once (each single-threaded)."""

    def __post_init__(self):
        check_fields(self, [
            ("seeds", len(self.seeds) >= 2 and len(set(self.seeds)) == len(self.seeds)
             and all(int(s) == s and s >= 0 for s in self.seeds), "at least two different integers >= 0"),
            ("algorithms", all(a in ALGORITHMS for a in self.algorithms)
             and {"grpo", "dpo", "rft"} <= set(self.algorithms), "names among " + ", ".join(ALGORITHMS)
             + ", grpo, dpo and rft included"),
            ("workers", self.workers >= 1, ">= 1"),
        ])


# ------------------------------------------------------------------------------ the runs
def _quick(job: str) -> dict:
    """--quick's settings: 12 steps, few prompts (preference data sets need a few dozen to have pairs)."""
    if job == "sft":
        return {"steps": 12}
    return {"steps": 12, "num_prompts": 64 if job in ("dpo", "kto", "simpo", "orpo", "rft") else 8}


def planned_runs(config: SparsityConfig) -> list[dict]:
    """The algorithms' presets, then the variants (the subnetwork runs last: they need GRPO's)."""
    out = []
    for seed in config.seeds:
        for algorithm in config.algorithms:
            over = {"keep_every": QUICK_KEEP_EVERY if config.quick else KEEP_EVERY} if algorithm == "grpo" else {}
            out.append({"name": algorithm, "job": algorithm, "seed": seed, "overrides": over})
        for name, (job, over) in VARIANTS.items():
            if name != "grpo_sub":
                out.append({"name": name, "job": job, "seed": seed, "overrides": dict(over)})
    out += [{"name": "grpo_sub", "job": "grpo", "seed": s, "overrides": {"mask_from": True}} for s in config.seeds]
    return out


def _run_dir(out: Path, run: dict) -> Path:
    return out / f"{run['name']}-s{run['seed']}"


def train_run(run: dict, quick: bool, out: str) -> dict:
    """One run: its report's numbers (outcome, sparsity, rank, per tensor) and where its checkpoints are."""
    over = dict(run["overrides"])
    if over.get("mask_from"):
        over["mask_from"] = str(Path(out).parent / f"grpo-s{run['seed']}")
    if quick:
        over.update(_quick(run["job"]))
    r = run_or_reuse(run["job"], out, run["seed"], bench_n=20 if quick else None, **over)
    return {"name": run["name"], "seed": run["seed"], **outcome(r), "sparsity": 100 * r["sparsity"]["overall"],
            "bitwise": 100 * r["sparsity"]["bitwise"], "fp32_exact": 100 * r["sparsity"]["fp32_exact"],
            "per_tensor": {k: 100 * v for k, v in r["sparsity"]["per_tensor"].items()},
            "rank": 100 * r["rank"]["mean_fraction"], "run_dir": r["run_dir"], "checkpoint": r["checkpoint"],
            "precision": r["precision"]}


def _train_task(args):
    return train_run(*args)


# ------------------------------------------------------------------------------ measurements on checkpoints
def _weights(path) -> dict[str, np.ndarray]:
    from minirl.checkpoint import load_checkpoint
    from minirl.loading import resolve
    from minirl.runs import IGNORED_IN_ANALYSIS

    tensors = load_checkpoint(resolve(path))[0]
    return {k: v for k, v in tensors.items() if k not in IGNORED_IN_ANALYSIS}


def overlap(init: str, a: str, b: str) -> dict:
    """o1, o2, Jaccard of two runs' updated weights (bf16, tol 1e-5) and their chance levels."""
    from minirl.analysis import run_overlap

    return run_overlap(_weights(init), _weights(a), _weights(b)).summary()


def consecutive_sparsity(run_dir: str) -> list[dict]:
    """Sparsity (bf16, tol 1e-5) between each pair of consecutive kept checkpoints (init, step_25, ..., final)."""
    from minirl.analysis import compare_state_dicts

    kept = sorted(Path(run_dir, "checkpoints").glob("step_*"))
    chain = [("init", _weights("sft"))] + [(p.name, _weights(p)) for p in kept]
    out = []
    for (n0, t0), (n1, t1) in zip(chain, chain[1:]):
        out.append({"from": n0, "to": n1, "sparsity": 100 * compare_state_dicts(t0, t1).overall})
    return out


def subnetwork_agreement(sub_ckpt: str, full_ckpt: str) -> dict:
    """Fraction (%) of weights equal between the masked run and the full one, at tol 1e-5 and 1e-4 (bf16)."""
    from minirl.analysis import subnetwork_agreement as agreement

    return {f"{tol:g}": 100 * v for tol, v in agreement(_weights(sub_ckpt), _weights(full_ckpt)).items()}


# ------------------------------------------------------------------------------ the experiment
@dataclass
class SparsityResult:
    """Everything `reproduce sparsity` measured, and the claims with verdicts."""

    config: dict
    runs: list[dict] = field(default_factory=list)
    overlaps: list[dict] = field(default_factory=list)
    dynamics: list[dict] = field(default_factory=list)
    subnetwork: list[dict] = field(default_factory=list)
    claims: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0


def run_sparsity(config: SparsityConfig, out: Path, progress=None) -> SparsityResult:
    """Every run (in `config.workers` processes), the checkpoint measurements, the claims; writes report.json,
    report.md and the figures into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = SparsityResult(config=asdict(config))
    planned = planned_runs(config)
    first = [r for r in planned if r["name"] != "grpo_sub"]
    subs = [r for r in planned if r["name"] == "grpo_sub"]
    with ProcessPoolExecutor(max_workers=config.workers) as pool:
        for batch in (first, subs):  # the masked runs need the GRPO runs' final weights
            tasks = [(run, config.quick, str(_run_dir(out, run))) for run in batch]
            for row in pool.map(_train_task, tasks):
                result.runs.append(row)
                if progress:
                    progress(f"[{len(result.runs)}/{len(planned)}] {row['name']} seed {row['seed']}: sparsity "
                             f"{row['sparsity']:.1f} %, gain {row['gain']:+.1f}")
    by = {(r["name"], r["seed"]): r for r in result.runs}
    seeds = config.seeds
    pairs = [("seeds", "grpo", seeds[i], "grpo", seeds[j]) for i in range(len(seeds)) for j in range(i + 1, len(seeds))]
    pairs += [("data", "dpo", s, "dpo_offline", s) for s in seeds]
    pairs += [("algorithms", a, s, b, s) for s in seeds for a, b in (("grpo", "ppo"), ("grpo", "dpo"), ("dpo", "kto"))
              if (a, s) in by and (b, s) in by]
    for kind, a, sa, b, sb in pairs:
        result.overlaps.append({"kind": kind, "a": f"{a} s{sa}", "b": f"{b} s{sb}",
                                **overlap("sft", by[(a, sa)]["checkpoint"], by[(b, sb)]["checkpoint"])})
    for s in seeds:
        result.dynamics.append({"seed": s, "steps": consecutive_sparsity(by[("grpo", s)]["run_dir"])})
        result.subnetwork.append({"seed": s, **subnetwork_agreement(by[("grpo_sub", s)]["checkpoint"],
                                                                     by[("grpo", s)]["checkpoint"])})
    result.claims = claims(result)
    result.wall_seconds = time.perf_counter() - start
    (out / "report.json").write_text(json.dumps(asdict(result), indent=2))
    figures = draw(result, out)
    (out / "report.md").write_text(markdown(result, figures))
    return result


# ------------------------------------------------------------------------------ claims and verdicts
def spread(values: list[float]) -> dict:
    """Mean, min and max over seeds."""
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def _fmt(s: dict, unit: str = " %") -> str:
    return f"{s['mean']:.1f}{unit} ({s['min']:.1f}-{s['max']:.1f})"


def _of(result: SparsityResult, name: str, key: str = "sparsity") -> dict | None:
    values = [r[key] for r in result.runs if r["name"] == name]
    return spread(values) if values else None


def _verdict(ok: bool, partly: bool) -> str:
    return "reproduced" if ok else "partly" if partly else "not reproduced"


def claims(result: SparsityResult) -> list[dict]:
    """Each claim of paper 1 (minirl/papers.toml, quoted from PAPERS.md) with minirl's numbers and a verdict."""
    from minirl.papers import papers

    sp = papers()["sparsity"]
    lo, hi = sp["table1"]["range"]
    out = []

    # 1) RL update sparsity, algorithm by algorithm: inside the paper's 68.5-96 % range?
    algos = [a for a in result.config["algorithms"]]
    within = {a: _of(result, a) for a in algos}
    inside = [a for a, s in within.items() if s["mean"] >= lo - MARGIN]
    out.append({"claim": "RL fine-tunes a small subnetwork: update sparsity (bf16, tol 1e-5) of every algorithm",
                "paper": f"{lo}-{hi} % (Table 1, 7 algorithms, 10 models)",
                "minirl": ", ".join(f"{a} {_fmt(s)}" for a, s in within.items()),
                "verdict": _verdict(len(inside) == len(algos), bool(inside))})

    # 2) SFT is dense, and denser than RL from the same start
    sft, rl = _of(result, "sft_add"), spread([within[a]["mean"] for a in algos])
    slo, shi = sp["sft"]["range"]
    out.append({"claim": "SFT updates are dense (same start, lr and steps as the RL runs)",
                "paper": f"{slo}-{shi} % sparse",
                "minirl": f"SFT on add {_fmt(sft)}; RL algorithms' mean {rl['mean']:.1f} %",
                "verdict": _verdict(sft["mean"] <= shi + MARGIN and rl["mean"] > sft["mean"] + MARGIN,
                                    sft["mean"] <= shi + MARGIN or rl["mean"] > sft["mean"] + MARGIN)})

    # 3) in-distribution data drives sparsity: RFT vs SFT, on-policy vs offline DPO
    dist = sp["data_distribution"]
    rft, dpo, dpo_off = _of(result, "rft"), _of(result, "dpo"), _of(result, "dpo_offline")
    ahead = [rft["mean"] > sft["mean"] + MARGIN, dpo["mean"] > dpo_off["mean"] + MARGIN]
    out.append({"claim": "in-distribution data (the policy's own samples) gives sparser updates than "
                         "out-of-distribution data",
                "paper": f"RFT {dist['in_distribution']['rejection_sampling_sft']} % vs SFT "
                         f"{dist['out_of_distribution']['sft']} %; DPO on-policy {dist['in_distribution']['dpo']} % "
                         f"vs off-policy {dist['out_of_distribution']['dpo'][0]}, {dist['out_of_distribution']['dpo'][1]} %",
                "minirl": f"on add: RFT {_fmt(rft)} vs SFT {_fmt(sft)}; DPO on-policy {_fmt(dpo)} vs offline "
                          f"{_fmt(dpo_off)}",
                "verdict": _verdict(all(ahead), any(ahead))})
    sub_id, sub_sft, sub_off = _of(result, "dpo_sub"), _of(result, "sft_sub"), _of(result, "dpo_offline_sub")
    if sub_id and sub_sft and sub_off:
        ahead = [sub_id["mean"] > sub_sft["mean"] + MARGIN, sub_id["mean"] > sub_off["mean"] + MARGIN]
        out.append({"claim": "... on a task the model never saw (sub): the policy's own samples against gold answers",
                    "paper": "as above",
                    "minirl": f"on-policy DPO {_fmt(sub_id)} vs SFT {_fmt(sub_sft)} and offline DPO {_fmt(sub_off)}",
                    "verdict": _verdict(all(ahead), any(ahead))})

    # 4) the KL penalty has limited effect
    kl = sp["kl"]
    grpo, grpo_kl = _of(result, "grpo"), _of(result, "grpo_kl")
    diff = grpo_kl["mean"] - grpo["mean"]
    out.append({"claim": "a KL penalty has limited effect on sparsity",
                "paper": f"GRPO with KL {kl['grpo_with_kl']} %, without {kl['grpo_without_kl']} %",
                "minirl": f"GRPO beta 0.1 {_fmt(grpo_kl)}, beta 0 {_fmt(grpo)} (difference {diff:+.1f})",
                "verdict": "reproduced" if abs(diff) <= MARGIN else "partly" if abs(diff) <= 2 * MARGIN
                else "not reproduced"})

    # 5) all layers similarly sparse; norms barely updated
    layers, norms, mats = _layer_stats(result)
    out.append({"claim": "all layers are similarly sparse; norm weights are barely updated",
                "paper": sp["layers"]["claim"],
                "minirl": f"GRPO layers' sparsity {min(layers.values()):.1f}-{max(layers.values()):.1f} %; norm "
                          f"weights {norms:.1f} % vs matrices {mats:.1f} %",
                "verdict": _verdict(max(layers.values()) - min(layers.values()) <= 2 * MARGIN
                                    and norms > mats + MARGIN,
                                    max(layers.values()) - min(layers.values()) <= 2 * MARGIN
                                    or norms > mats + MARGIN)})

    # 6) updates are nearly full rank
    rlo, rhi = sp["rank"]["range"]
    ranks = {a: _of(result, a, "rank") for a in algos}
    low = min(s["mean"] for s in ranks.values())
    out.append({"claim": "the updates are nearly full rank", "paper": f"{rlo}-{rhi} % of full rank",
                "minirl": ", ".join(f"{a} {s['mean']:.1f} %" for a, s in ranks.items()),
                "verdict": _verdict(low >= rlo - 2.0, low >= 90.0)})

    # 7) overlap across seeds, data, algorithms: above chance?
    for kind, ref in (("seeds", "seeds"), ("data", "data"), ("algorithms", "seed_data_algorithm")):
        rows = [o for o in result.overlaps if o["kind"] == kind]
        if not rows:
            continue
        o1 = spread([100 * o["o1"] for o in rows])
        o1r = spread([100 * o["o1_random"] for o in rows])
        jac, jacr = spread([100 * o["jaccard"] for o in rows]), spread([100 * o["jaccard_random"] for o in rows])
        p = sp["overlap"][ref]
        above = o1["mean"] > o1r["mean"] + MARGIN
        out.append({"claim": f"the subnetworks of runs with different {kind} overlap more than chance",
                    "paper": f"o1 {p['o1']} % vs random {p['o1_random']} %",
                    "minirl": f"o1 {_fmt(o1)} vs random {o1r['mean']:.1f} %; Jaccard {jac['mean']:.1f} % vs "
                              f"{jacr['mean']:.1f} % ({len(rows)} pairs)",
                    "verdict": _verdict(above, o1["mean"] > o1r["mean"])})

    # 8) subnetwork fine-tuning matches full fine-tuning
    sub = sp["subnetwork_finetuning"]
    eq5 = spread([s["1e-05"] for s in result.subnetwork])
    eq4 = spread([s["0.0001"] for s in result.subnetwork])
    full_gain, sub_gain = _of(result, "grpo", "gain"), _of(result, "grpo_sub", "gain")
    same_acc = sub_gain["mean"] >= full_gain["mean"] - max(MARGIN, full_gain["max"] - full_gain["min"])
    out.append({"claim": "fine-tuning only the subnetwork reproduces the full run",
                "paper": f"DPO {sub['dpo'][0]} % / {sub['dpo'][1]} % of weights equal at tol 1e-5 / 1e-4; "
                         f"accuracy {sub['accuracy']}",
                "minirl": f"GRPO {_fmt(eq5)} / {_fmt(eq4)} equal; gain {sub_gain['mean']:+.1f} vs full "
                          f"{full_gain['mean']:+.1f}",
                "verdict": _verdict(eq5["mean"] >= sub["dpo"][0] - 5 and same_acc, same_acc)})

    # 9) sparsity over training: consecutive checkpoints change few weights
    steps = [s["sparsity"] for d in result.dynamics for s in d["steps"][1:]]  # after the first interval
    changed = spread([100 - v for v in steps]) if steps else None
    ref = sp["training_dynamics"]["consecutive_checkpoints_changed"]
    if changed:
        whole = grpo["mean"]
        every = QUICK_KEEP_EVERY if result.config["quick"] else KEEP_EVERY
        out.append({"claim": "between consecutive checkpoints only a few weights change",
                    "paper": f"about {ref} % changed",
                    "minirl": f"{_fmt(changed)} changed per {every} GRPO steps (the whole run: "
                              f"{100 - whole:.1f} % changed)",
                    "verdict": _verdict(changed["mean"] <= 2 * ref, changed["mean"] < 50)})  # partly: a minority

    # 10) the precision explanation: fp32 storage makes updates dense, and costs no accuracy
    fp32, bf16_gain, fp32_gain = _of(result, "grpo_fp32", "fp32_exact"), _of(result, "grpo", "gain"), \
        _of(result, "grpo_fp32", "gain")
    gap = fp32_gain["mean"] - bf16_gain["mean"]
    noise = max(MARGIN, bf16_gain["max"] - bf16_gain["min"], fp32_gain["max"] - fp32_gain["min"])
    out.append({"claim": "with fp32 weights the update is dense, and bf16 storage costs no accuracy",
                "paper": "fp32: dense ('infinite precision', footnote 5)",
                "minirl": f"fp32 run: {_fmt(fp32)} exactly unchanged; gain fp32 {_fmt(fp32_gain, '')} vs bf16 "
                          f"{_fmt(bf16_gain, '')} (fp32 - bf16 {gap:+.1f}; noise {noise:.1f})",
                "verdict": _verdict(fp32["mean"] < 1.0 and gap <= noise, fp32["mean"] < 1.0)})
    return out


def _layer_stats(result: SparsityResult) -> tuple[dict[int, float], float, float]:
    """GRPO's mean sparsity per layer (matrices), of the norm weights, and of the matrices, over seeds."""
    from minirl.analysis import cell_of

    per_layer: dict[int, list[float]] = {}
    norms, mats = [], []
    for r in result.runs:
        if r["name"] != "grpo":
            continue
        for name, value in r["per_tensor"].items():
            layer, column = cell_of(name)
            if "norm" in column:
                norms.append(value)
            else:
                mats.append(value)
                if layer is not None:
                    per_layer.setdefault(layer, []).append(value)
    return ({k: statistics.fmean(v) for k, v in sorted(per_layer.items())}, statistics.fmean(norms),
            statistics.fmean(mats))


# ------------------------------------------------------------------------------ figures and the Markdown report
def draw(result: SparsityResult, out: Path) -> list[str]:
    """sparsity.png (every algorithm against the paper's range), overlap.png, dynamics.png; none without
    matplotlib."""
    from minirl.plots import pyplot, save

    plt = pyplot()
    if plt is None:
        return []
    from minirl.papers import papers

    sp = papers()["sparsity"]
    names = list(result.config["algorithms"]) + [n for n in VARIANTS if any(r["name"] == n for r in result.runs)]
    stats = [_of(result, n) for n in names]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.axhspan(*sp["table1"]["range"], color="tab:orange", alpha=0.2, label="paper 1, Table 1 range")
    ax.bar(names, [s["mean"] for s in stats], yerr=[[s["mean"] - s["min"] for s in stats],
                                                    [s["max"] - s["mean"] for s in stats]], color="tab:blue",
           capsize=3, label="minirl (mean, min-max over seeds)")
    ax.set(ylabel="update sparsity, % (bf16, tol 1e-5)", ylim=(0, 100), title="update sparsity by run")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=8)
    save(fig, out / "sparsity.png")
    files = ["sparsity.png"]
    if result.overlaps:
        kinds = list(dict.fromkeys(o["kind"] for o in result.overlaps))
        fig, ax = plt.subplots(figsize=(6, 4))
        x = np.arange(len(kinds))
        for off, key, lab in ((-0.2, "o1", "o1"), (0.2, "o1_random", "o1 at chance")):
            ax.bar(x + off, [100 * statistics.fmean(o[key] for o in result.overlaps if o["kind"] == k) for k in kinds],
                   width=0.4, label=lab)
        ax.set_xticks(x, [f"across {k}" for k in kinds])
        ax.set(ylabel="%", title="overlap of updated weights")
        ax.legend(fontsize=8)
        save(fig, out / "overlap.png")
        files.append("overlap.png")
    if result.dynamics:
        fig, ax = plt.subplots(figsize=(6, 4))
        for d in result.dynamics:
            ax.plot(range(1, len(d["steps"]) + 1), [100 - s["sparsity"] for s in d["steps"]], "o-",
                    label=f"seed {d['seed']}")
        ax.axhline(sp["training_dynamics"]["consecutive_checkpoints_changed"], color="tab:orange", ls="--",
                   label="paper (approximate)")
        every = QUICK_KEEP_EVERY if result.config["quick"] else KEEP_EVERY
        ax.set(xlabel=f"interval ({every} GRPO steps each)", ylabel="% of weights changed",
               title="weights changed between consecutive checkpoints")
        ax.legend(fontsize=8)
        save(fig, out / "dynamics.png")
        files.append("dynamics.png")
    return files


def markdown(result: SparsityResult, figures: list[str]) -> str:
    """report.md: the claims table, the runs, the figures."""
    lines = ["# Paper 1 at toy scale: `minirl reproduce sparsity`", "",
             f"Seeds {', '.join(map(str, result.config['seeds']))}"
             + (" (quick: the numbers mean nothing)" if result.config["quick"] else "")
             + f"; {len(result.runs)} runs in {result.wall_seconds / 60:.1f} min.", "",
             "| claim | paper | minirl (mean, min-max over seeds) | verdict |", "|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['paper']} | {c['minirl']} | {c['verdict']} |" for c in result.claims]
    lines += ["", "| run | sparsity % | bitwise % | rank % | gain | tax |", "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["name"] for r in result.runs):
        rows = [r for r in result.runs if r["name"] == name]
        cells = [_fmt(spread([r[k] for r in rows]), "") for k in ("sparsity", "bitwise", "rank", "gain", "tax")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"

