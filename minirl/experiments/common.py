"""What every `minirl reproduce` experiment shares: a training run that is read back when already finished, and
its outcome (gain on the trained task, alignment tax on the others) as one flat row."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path


def run_or_reuse(job: str, out, seed: int, bench_n: int | None = None, **overrides) -> dict:
    """`minirl run JOB` into `out` and its report; a run that finished there before (an interrupted `reproduce`
    rerun with the same --out) is read back, one cut short is started again."""
    from minirl import runs

    done = Path(out) / "report.json"
    if done.is_file():
        return json.loads(done.read_text())
    if Path(out).exists():
        shutil.rmtree(out)
    return runs.rl(job, out=str(out), progress=False, seed=seed, bench_n=bench_n, **overrides)


def accuracy_outcome(before: dict[str, float], after: dict[str, float], task: str) -> dict:
    """Accuracies (fractions) before and after, as points: the trained task's, its gain, the tax (mean drop over
    the other tasks) and the average over every task (the paper's "benchmark average")."""
    others = [t for t in before if t != task]
    return {"before": 100 * before[task], "after": 100 * after[task], "gain": 100 * (after[task] - before[task]),
            "tax": statistics.fmean(100 * (before[t] - after[t]) for t in others) if others else 0.0,
            "average": statistics.fmean(100 * a for a in after.values())}


def outcome(report: dict) -> dict:
    """`accuracy_outcome` of a fine-tuning run's report, with its training time."""
    acc = report["accuracy"]
    return {**accuracy_outcome(acc["before"], acc["after"], report["trained_tasks"][0]),
            "train_seconds": report["wall_seconds"]}
