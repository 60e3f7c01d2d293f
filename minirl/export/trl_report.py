"""`minirl report OUT`: what TRL's run of an exported recipe did, in minirl's own measures.

OUT is the directory an export's `train.py` saves (`minirl.export.trl_files`,
default `<export>/output`): the Hugging Face weights, `log_history.json`
(TRL's logged metrics) and, when the model is minirl's, `minirl_config.json`
and `vocab.json`. The export's `recipe.json` and `MAPPING.md` sit one level
up. `trl_report` measures, as a run's report.json does (`minirl.runs`):

1) TRL's logged curves (reward, loss, KL, DPO's margins) from log_history.json;
2) greedy accuracy of the init (`<export>/model`) and of OUT on every task,
   on TRAINED_N problems of the trained task and BENCH_N of the others;
3) the update OUT - init: sparsity in bf16 at tol 1e-5 and rank, per matrix
   (`minirl.analysis.compare`, the papers' lens, as `minirl analyze`).

The result is cached as OUT/minirl_report.json, so rendering again is instant.
`beside` reads a minirl run's report.json for the second column.
"""

from __future__ import annotations

import json
from pathlib import Path

from minirl.checkpoint import atomic_write_text

CACHE_NAME = "minirl_report.json"
CURVES = {"reward": ("rewards/task_reward/mean", "reward"), "loss": ("loss",), "kl": ("kl",),
          "rewards/margins": ("rewards/margins",), "rewards/accuracies": ("rewards/accuracies",)}
"""Curve -> TRL's log keys, first found wins: the verifier's own mean reward before TRL's weighting (RLOO's
recipe weights it by 1 - β), then the weighted sum."""


def is_trl_output(path) -> bool:
    """True for a directory `train.py` saved: it holds log_history.json."""
    return (Path(path) / "log_history.json").is_file()


def find_recipe(out: Path) -> Path | None:
    """The export directory (holding recipe.json) of an output directory: its parent by default, or itself."""
    for d in (out.parent, out):
        if (d / "recipe.json").is_file():
            return d
    return None


def _warnings(recipe_dir: Path) -> list[str]:
    """MAPPING.md's warnings (what TRL does differently), one line each."""
    text = (recipe_dir / "MAPPING.md").read_text() if (recipe_dir / "MAPPING.md").is_file() else ""
    _, _, tail = text.partition("## Warnings")
    return [line[2:] for line in tail.splitlines() if line.startswith("- ")]


def trl_curves(history: list[dict]) -> tuple[dict[str, list[float]], dict]:
    """(curves by name, the final summary entry) of TRL's log_history."""
    steps = [h for h in history if "step" in h and "train_runtime" not in h and "loss" in h]
    curves = {}
    for name, keys in CURVES.items():
        key = next((k for k in keys if any(k in h for h in steps)), None)
        if key is not None:
            curves[name] = [float(h.get(key, float("nan"))) for h in steps]
    summary = next((h for h in reversed(history) if "train_runtime" in h), {})
    return curves, summary


def _measure_accuracy(init: Path, out: Path, trained: list[str], bench_n: int | None) -> dict:
    """Greedy accuracy of init and out on every task, with the n minirl's runs use (or bench_n for all)."""
    from minirl.loading import load
    from minirl.runs import BENCH_N, TRAINED_N, accuracy
    from minirl.tasks import TASKS

    n = {t: bench_n or (TRAINED_N if t in trained else BENCH_N) for t in TASKS}
    return {"before": accuracy(load(init), n), "after": accuracy(load(out), n), "n": n, "metric": "greedy"}


def _measure_update(init: Path, out: Path) -> dict:
    """Sparsity (bf16, tol 1e-5, every tolerance, bitwise) and rank (bf16) of out - init, as `minirl analyze`."""
    from minirl.analysis.compare import analyze_checkpoints
    from minirl.analysis.sources import open_source
    from minirl.runs import IGNORED_IN_ANALYSIS

    result = analyze_checkpoints(open_source(init, "init"), open_source(out, "trl"), tol=1e-5, dtype="bf16",
                                 rank=True, ignore=IGNORED_IN_ANALYSIS)
    update = result["updates"][0]
    return {"sparsity": update["sparsity"], "rank": update["rank"], "seconds": result["seconds"]}


def trl_report(out, bench_n: int | None = None, refresh: bool = False) -> dict:
    """The JSON-ready report of a TRL output directory, from OUT/minirl_report.json when it is up to date."""
    out = Path(out)
    if not is_trl_output(out):
        raise FileNotFoundError(f"{out}: no log_history.json; not a directory that an exported recipe's train.py "
                                "saved")
    cache = out / CACHE_NAME
    inputs = [out / "log_history.json", *out.glob("*.safetensors")]
    if cache.is_file() and not refresh:
        cached = json.loads(cache.read_text())
        if cached.get("bench_n") == bench_n and all(f.stat().st_mtime <= cache.stat().st_mtime for f in inputs):
            return cached
    recipe_dir = find_recipe(out)
    recipe = json.loads((recipe_dir / "recipe.json").read_text()) if recipe_dir else None
    curves, summary = trl_curves(json.loads((out / "log_history.json").read_text()))
    r = {"kind": "trl", "output": str(out), "bench_n": bench_n, "curves": curves,
         "steps": int(summary.get("step", len(next(iter(curves.values()), [])))),
         "train_runtime": summary.get("train_runtime"), "recipe_dir": None if recipe_dir is None else str(recipe_dir)}
    if recipe is None:
        r["missing"] = "no recipe.json beside or above the output: the recipe and the init are unknown"
        atomic_write_text(cache, json.dumps(r, indent=1) + "\n")
        return r
    spec = recipe["minirl"]
    algo = spec[recipe["algorithm"]]
    trained = [algo["task"]] if "task" in algo else list(dict.fromkeys(algo.get("tasks", [])))
    r.update(algorithm=recipe["algorithm"], trainer=recipe["trainer"], config_class=recipe["config_class"],
             config=recipe["config"], optimizer=(recipe["optimizer"] or {}).get("kind", recipe["config"].get("optim")),
             minirl_command=f"run {recipe['algorithm']}", init=spec.get("init"), model=recipe["model"],
             trained_tasks=trained, warnings=_warnings(recipe_dir))
    init = recipe_dir / recipe["model"]
    if recipe["model"] != "model" or not init.is_dir():
        r["missing"] = (f"the recipe ran on {recipe['model']!r}, not minirl's model: minirl's accuracy and update "
                        "measures need its own model directory")
    else:
        r["accuracy"] = _measure_accuracy(init, out, trained, bench_n)
        r.update(_measure_update(init, out))
    atomic_write_text(cache, json.dumps(r, indent=1, default=str) + "\n")
    return r


def beside(run_dir) -> dict:
    """The numbers of a minirl run's report.json that the TRL report shows in its second column."""
    from minirl.report import load_report

    rep = load_report(run_dir)
    if "trained_tasks" not in rep:
        raise ValueError(f"{run_dir}: report.json is not a fine-tuning run's (it has no 'trained_tasks')")
    return {"run_dir": str(run_dir), "command": rep["command"], "steps": rep["steps"],
            "wall_seconds": rep["wall_seconds"], "precision": rep["precision"], "accuracy": rep["accuracy"],
            "curves": {k: v for k, v in rep.get("curves", {}).items() if k in CURVES},
            "sparsity": {k: rep["sparsity"][k] for k in ("overall", "bitwise", "tol", "n_params")},
            "rank": {"mean_fraction": rep["rank"]["mean_fraction"]}}


__all__ = ["beside", "find_recipe", "is_trl_output", "trl_curves", "trl_report"]
