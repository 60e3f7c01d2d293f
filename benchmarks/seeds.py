"""The seeds table: one `minirl run ALGO` command over several seeds, its gain, tax and wall time.

    python benchmarks/seeds.py grpo                       # seeds 0-4, the default recipe
    python benchmarks/seeds.py ppo --seeds 0,1,2
    python benchmarks/seeds.py grpo --jobs 2 -- --lr 1e-4 --beta 0.04    # any `minirl run` options after --

Each seed runs the real command, `minirl run ALGO --seed S --out DIR --json
--no-progress [options]`, in its own process, and the whole process is timed
(imports, loading, the before/after benchmarks, training, the analysis): the
wall time a user waits. For each seed it reads the run's report.json and
prints the greedy accuracy on the trained task before and after (1000
held-out problems), the gain in points, the alignment tax (the mean drop in
points over the other five tasks; a gain counts negative), the largest
single-task drop and the update sparsity; then the mean, min and max of each
column over the seeds. For `rm` the accuracy is the reward model's pairwise
accuracy on held-out pairs, and there is no tax.

A result must hold beyond one seed and one machine: the same seed on another
BLAS build diverges after a few hundred steps, so the seeds stand in for the
machines. With --jobs 2 two seeds share the two cores: accuracies are the
same as with --jobs 1 (each run is single-threaded and deterministic), but
wall times then include the contention; measure wall time with --jobs 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def parse_seeds(text: str) -> list[int]:
    """'0-4' or '0,1,2' or '3' -> a list of seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-")
            seeds += range(int(lo), int(hi) + 1)
        elif part:
            seeds.append(int(part))
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}; write e.g. 0-4 or 0,1,2")
    return seeds


def run_seed(algo: str, seed: int, options: list[str], workdir: Path) -> dict:
    """One whole `minirl run` command; its report's numbers and its wall time."""
    out = workdir / f"{algo}-seed{seed}"
    cmd = [sys.executable, "-m", "minirl.cli", "run", algo, "--seed", str(seed), "--out", str(out),
           "--json", "--no-progress", *options]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"seed {seed}: `{' '.join(cmd)}` exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    return summarise(report, seed, wall)


def summarise(report: dict, seed: int, wall: float) -> dict:
    """Gain and tax, in points, of one run's report.json."""
    before, after = report["accuracy"]["before"], report["accuracy"]["after"]
    [task] = report["trained_tasks"]
    drops = {t: 100 * (before[t] - after[t]) for t in before if t != task}
    worst = max(drops, key=drops.get) if drops else "-"  # a reward model's report has one task: no tax
    return {"seed": seed, "task": task, "before": 100 * before[task], "after": 100 * after[task],
            "gain": 100 * (after[task] - before[task]), "tax": statistics.fmean(drops.values()) if drops else 0.0,
            "worst_task": worst, "worst_drop": drops.get(worst, 0.0), "wall": wall, "train_seconds": report["wall_seconds"], "steps": report["steps"],
            "sparsity": 100 * report["sparsity"]["overall"]}


def table(algo: str, rows: list[dict], options: list[str]) -> str:
    """The seeds table as Markdown: one row per seed, then mean / min / max."""
    title = f"`minirl run {algo}{' ' + ' '.join(options) if options else ''}`, seeds {','.join(str(r['seed']) for r in rows)}"
    lines = [title, "",
             "| seed | before | after | gain (pts) | tax (pts, mean of 5) | worst task (pts) | sparsity (%) | wall (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['before']:.1f} | {r['after']:.1f} | {r['gain']:+.1f} | {r['tax']:+.1f} | "
                     f"{r['worst_task']} {-r['worst_drop']:+.1f} | {r['sparsity']:.1f} | {r['wall']:.1f} |")
    for name, fn in (("mean", statistics.fmean), ("min", min), ("max", max)):
        lines.append(f"| **{name}** | | {fn(r['after'] for r in rows):.1f} | **{fn(r['gain'] for r in rows):+.1f}** | "
                     f"**{fn(r['tax'] for r in rows):+.1f}** | {-fn(r['worst_drop'] for r in rows):+.1f} | "
                     f"{fn(r['sparsity'] for r in rows):.1f} | {fn(r['wall'] for r in rows):.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                usage="%(prog)s ALGO [--seeds 0-4] [--jobs N] [--json FILE] [-- minirl run options]")
    p.add_argument("algo", help="an algorithm of `minirl run` with one trained task: grpo, ppo, dpo, kto, ...")
    p.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-4"), help="e.g. 0-4 (default) or 0,2,7")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once (default 1; wall times need 1)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    p.add_argument("--keep", type=Path, default=None, help="keep the run directories here (default: a temp dir)")
    args, options = p.parse_known_args(argv)
    options = [o for o in options if o != "--"]
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(lambda s: run_seed(args.algo, s, options, workdir), args.seeds))
    print(table(args.algo, rows, options))
    if args.json:
        args.json.write_text(json.dumps({"algo": args.algo, "options": options, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
