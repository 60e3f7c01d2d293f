"""PERL at toy scale: LoRA against full tuning, for the reward model and for RL (paper 3, docs/PAPERS.md §3).

`minirl reproduce perl` trains, for full tuning and for every LoRA rank (1, 4, 8, 16, 32 by default; PERL's
ranks), over several seeds:

    rm          the Bradley-Terry reward model (`minirl run rm`): held-out pairwise accuracy
    reinforce   PERL's RL algorithm, REINFORCE with the KL-regularised reward (`minirl run reinforce`)
    ppo         PPO with its value head (`minirl run ppo`)

each with its preset, on the verifier's reward (a reward model this small is hacked by RL: see the README's
reward-model section), LoRA on PERL's targets (every attention projection) at 10x the preset's learning rate,
the ratio of PERL's own rates (full 1e-5, LoRA 1e-4 to 2e-4). Then it measures the cost of one training step,
LoRA against full, each job alone in a fresh process:

    peak memory   tracemalloc's peak from before the model is loaded to the end of the second training step:
                  weights, gradients, optimizer state, activations and the batch (NumPy reports its arrays to
                  tracemalloc); the Python interpreter and imported modules are not counted
    time          the median wall time of steps 3 to 8 (tracemalloc off), rollout sampling included for RL

and prints each claim beside the paper's number with a verdict: reproduced, partly, or not reproduced.
Every run keeps its run directory under `--out`; run the command again with the same `--out` after an
interruption and the finished runs are read back, not repeated.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from minirl.config import check_fields
from minirl.experiments.common import outcome, run_or_reuse

JOBS = ("rm", "reinforce", "ppo")
RANKS = (1, 4, 8, 16, 32)
QUICK_RANKS, QUICK_SEEDS = (1, 8), (0,)
"""What --quick runs unless --ranks / --seeds say otherwise."""
LORA_LR_SCALE = 10.0
"""LoRA's learning rate over full tuning's: PERL used 1e-5 for full tuning and 1e-4 to 2e-4 for LoRA. Measured
here with GRPO at rank 8 (seed 0): +9.0 points on add at 3x the preset's rate, +16.3 at 10x."""


@dataclass
class PerlConfig:
    """What `minirl reproduce perl` runs."""

    ranks: tuple[int, ...] = RANKS
    """LoRA ranks to compare with full tuning (PERL: 1, 4, 8, 16, 32)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of every quality run."""
    jobs: tuple[str, ...] = JOBS
    """What to train: rm (reward model), reinforce and ppo (RL on the verifier's reward)."""
    quick: bool = False
    """A smoke test (CI): 12 steps per run, cost over 3 steps; the numbers mean nothing."""
    workers: int = 2
    """Quality runs at once (each is single-threaded); the cost measurements always run one at a time."""

    def __post_init__(self):
        check_fields(self, [
            ("ranks", len(self.ranks) >= 1 and all(int(r) == r and r >= 1 for r in self.ranks), "integers >= 1"),
            ("seeds", len(self.seeds) >= 1, "at least one seed"),
            ("jobs", len(self.jobs) >= 1 and all(j in JOBS for j in self.jobs), "names among " + ", ".join(JOBS)),
            ("workers", self.workers >= 1, ">= 1"),
        ])


def _settings(job: str, rank: int, quick: bool) -> dict:
    """The overrides of one run: LoRA (rank 0: full tuning) at the scaled learning rate, fewer steps when quick."""
    from minirl import runs

    lr = runs.resolve(job)["optimizer"].lr
    out = {"lora_rank": rank, "lr": lr * (LORA_LR_SCALE if rank else 1.0)}
    if quick:
        out.update(steps=12, num_prompts=64 if job == "rm" else 8)
    return out


def quality_run(job: str, rank: int, seed: int, quick: bool, out: str) -> dict:
    """One training run; its held-out result (rm: pairwise accuracy; RL: gain and tax on add) and step time."""
    r = run_or_reuse(job, out, seed, bench_n=20 if quick else None, **_settings(job, rank, quick))
    row = {"job": job, "rank": rank, "seed": seed, **outcome(r), "trainable": r.get("lora", {}).get("trainable")}
    del row["average"]
    if "reward" in r.get("curves", {}):
        rewards = r["curves"]["reward"]
        row["final_reward"] = statistics.fmean(rewards[-max(1, len(rewards) // 10):])
    return row


COST_SCRIPT = """
import json, sys, time, tracemalloc
tracemalloc.start()
import minirl
from minirl.experiments.perl import step_cost
print(json.dumps(step_cost(*json.loads(sys.argv[1]))))
"""


def step_cost(job: str, rank: int, quick: bool) -> dict:
    """Peak traced memory (MB) through two training steps and the median time of the next six (call in a fresh
    process with tracemalloc started before minirl is imported: `measure_cost` does)."""
    import tracemalloc

    from minirl import runs
    from minirl.lora import count_trainable, trainable_parameters
    from minirl.optim import make_optimizer
    from minirl.train import TrainConfig, train

    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    spec = runs.resolve(job, **_settings(job, rank, quick))
    policy, _, algo = runs.build(spec)  # the algorithm holds the reference
    params = trainable_parameters(policy)
    optimizer = make_optimizer(params, spec["optimizer"], spec["train"].precision)
    peak = {}

    def after_step(step, metrics):
        if step == 1:  # two steps traced (step 0 also builds a preference data set): the peak
            peak["mb"] = (tracemalloc.get_traced_memory()[1] - base) / 2**20
            tracemalloc.stop()  # tracing slows every allocation: time the later steps without it

    steps = 2 + (3 if quick else 6)
    result = train(policy, algo, TrainConfig(steps=steps, grad_clip=spec["train"].grad_clip,
                                             precision=spec["train"].precision), spec["optimizer"],
                   optimizer=optimizer, params=params, progress=False, on_step=after_step)
    times = [h["step_seconds"] for h in result.history[2:]]
    return {"job": job, "rank": rank, "peak_mb": peak["mb"], "step_seconds": statistics.median(times),
            "trainable": count_trainable(policy)}


def measure_cost(job: str, rank: int, quick: bool) -> dict:
    """`step_cost` in a fresh Python process, so nothing an earlier run allocated or cached is counted."""
    proc = subprocess.run([sys.executable, "-c", COST_SCRIPT, json.dumps([job, rank, quick])], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {job} at rank {rank} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _quality_task(args):
    return quality_run(*args)


@dataclass
class PerlResult:
    """Everything `reproduce perl` measured, and the verdicts."""

    config: dict
    quality: list[dict] = field(default_factory=list)
    cost: list[dict] = field(default_factory=list)
    verdicts: list[dict] = field(default_factory=list)
    wall_seconds: float = 0.0


def run_perl(config: PerlConfig, out: Path, progress=None) -> PerlResult:
    """Every quality run (in `config.workers` processes), then every cost measurement alone; verdicts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = PerlResult(config=asdict(config))
    tasks = [(job, rank, seed, config.quick, str(out / f"{job}-r{rank}-s{seed}"))
             for job in config.jobs for rank in (0, *config.ranks) for seed in config.seeds]
    with ProcessPoolExecutor(max_workers=config.workers) as pool:
        for row in pool.map(_quality_task, tasks):
            result.quality.append(row)
            if progress:
                progress(f"{row['job']} rank {row['rank'] or 'full'} seed {row['seed']}: {row['after']:.1f} %")
    for job in config.jobs:
        for rank in (0, *config.ranks):
            result.cost.append(measure_cost(job, rank, config.quick))
            if progress:
                c = result.cost[-1]
                progress(f"cost {job} rank {rank or 'full'}: {c['peak_mb']:.1f} MB, {1000 * c['step_seconds']:.0f} ms")
    result.verdicts = verdicts(result)
    result.wall_seconds = time.perf_counter() - start
    (out / "perl.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def summary(result: PerlResult) -> list[dict]:
    """One row per (job, rank): quality mean/min/max over seeds, and cost relative to full tuning."""
    rows = []
    cost = {(c["job"], c["rank"]): c for c in result.cost}
    for job in result.config["jobs"]:
        full = cost.get((job, 0))
        for rank in (0, *result.config["ranks"]):
            runs_ = [q for q in result.quality if q["job"] == job and q["rank"] == rank]
            key = "after" if job == "rm" else "gain"
            vals = [q[key] for q in runs_]
            c = cost.get((job, rank), {})
            rows.append({"job": job, "rank": rank, "metric": "pairwise accuracy %" if job == "rm" else "gain on add",
                         "mean": statistics.fmean(vals), "min": min(vals), "max": max(vals),
                         "tax": statistics.fmean(q["tax"] for q in runs_),
                         "reward": statistics.fmean(q["final_reward"] for q in runs_) if job != "rm" else None,
                         "trainable": c.get("trainable"), "peak_mb": c.get("peak_mb"),
                         "step_seconds": c.get("step_seconds"),
                         "memory_pct": 100 * c["peak_mb"] / full["peak_mb"] if c and full else None,
                         "speedup": full["step_seconds"] / c["step_seconds"] if c and full else None})
    return rows


def _range_verdict(values: list[float], lo: float, hi: float, better_above: bool) -> str:
    """reproduced: every rank inside the paper's range (or beyond it on the good side); partly: some saving but not
    the paper's; not reproduced: no saving at any rank."""
    inside = [lo <= v <= hi or (v > hi if better_above else v < lo) for v in values]
    saving = [(v > 1.0) if better_above else (v < 100.0) for v in values]
    if all(inside):
        return "reproduced"
    return "partly" if any(saving) else "not reproduced"


def verdicts(result: PerlResult) -> list[dict]:
    """Each claim of PERL with the paper's number, minirl's, and a verdict."""
    from minirl.papers import papers

    paper = papers()["perl"]
    rows = summary(result)
    out = []
    for job in result.config["jobs"]:
        mine = [r for r in rows if r["job"] == job]
        full, lora = mine[0], mine[1:]
        # quality: on par = LoRA's mean within the larger of 2 points and full tuning's seed spread
        margin = max(2.0, full["max"] - full["min"])
        on_par = [r["mean"] >= full["mean"] - margin for r in lora]
        what = "reward model held-out pairwise accuracy" if job == "rm" else f"{job}: gain on add"
        out.append({"claim": f"{what}, LoRA on par with full tuning", "paper": "on par",
                    "minirl": ", ".join(f"r{r['rank']} {r['mean']:.1f}" for r in lora) + f" vs full {full['mean']:.1f}"
                    f" (on par: within {margin:.1f})",
                    "verdict": "reproduced" if all(on_par) else "partly" if any(on_par) else "not reproduced"})
        cost = paper["reward_model_cost"] if job == "rm" else paper["rl_cost"]
        mem = [r["memory_pct"] for r in lora]
        out.append({"claim": f"{job}: peak memory, % of full tuning's",
                    "paper": f"{cost['peak_memory'][0]}-{cost['peak_memory'][1]} %",
                    "minirl": ", ".join(f"r{r['rank']} {r['memory_pct']:.0f} %" for r in lora),
                    "verdict": _range_verdict(mem, *cost["peak_memory"], better_above=False)})
        speed = [r["speedup"] for r in lora]
        out.append({"claim": f"{job}: speed, times full tuning's", "paper": f"{cost['speedup'][0]}-{cost['speedup'][1]}x",
                    "minirl": ", ".join(f"r{r['rank']} {r['speedup']:.2f}x" for r in lora),
                    "verdict": _range_verdict(speed, *cost["speedup"], better_above=True)})
    return out
