"""`minirl reproduce merging`: the quick run CI does end to end, the merge ratio in a run's report, and the
Pareto verdict rules on made-up points."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from minirl import runs
from minirl.cli import main
from minirl.experiments.merging import (METHODS, MergingConfig, MergingResult, _training_runs, compare, points,
                                        verdicts)

VERDICTS = {"reproduced", "partly", "not reproduced"}


@pytest.mark.slow
def test_reproduce_merging_quick_runs_everything_and_gives_a_verdict_per_claim(tmp_path):
    result = CliRunner().invoke(main, ["reproduce", "merging", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "merging.json").read_text())
    trained = {(r["algorithm"], r["method"]) for r in doc["runs"]}
    assert {(a, m) for a in ("dpo", "grpo") for m in METHODS} <= trained
    assert {("dpo", "ondare_p0.01"), ("dpo", "onties_p0.01"), ("dpo", "ondare_a0.0001")} <= trained
    assert {(r["algorithm"], r["method"], r["density"]) for r in doc["offline"]} == {
        (a, m, d) for a in ("dpo", "grpo") for m, d in (("linear", 1.0), ("dare_linear", 0.5), ("ties", 0.5))}
    online = [r for r in doc["runs"] if r["method"] in ("ondare", "onties", "ondare_k10")]
    assert all(r["merge_ratio"] > 0 for r in online)
    assert all(r["merge_ratio"] is None for r in doc["runs"] if r["method"] in ("adamw", "ema", "lora"))
    claims = [v["claim"] for v in doc["verdicts"]]
    assert len(claims) == 6 and {v["verdict"] for v in doc["verdicts"]} <= VERDICTS
    assert any("than AdamW" in c for c in claims) and any("offline merging" in c for c in claims)
    assert (tmp_path / "pareto.png").is_file() == (tmp_path / "sweeps.png").is_file()
    assert "Table 4" in result.output and "verdict" in result.output
    # a rerun with the same --out reads every finished run back
    stamp = (tmp_path / "dpo-adamw-s0" / "report.json").stat().st_mtime_ns
    again = CliRunner().invoke(main, ["reproduce", "merging", "--quick", "--out", str(tmp_path), "--algorithms", "dpo",
                                      "--methods", "adamw", "--reserve-rates", "none", "--alphas", "none", "--json"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "dpo-adamw-s0" / "report.json").stat().st_mtime_ns == stamp
    assert json.loads(again.output)["runs"][0]["gain"] == doc["runs"][0]["gain"]


def test_an_online_merging_run_reports_its_merge_ratio(tmp_path):
    r = runs.rl("grpo", out=tmp_path / "run", progress=False, bench_n=5, steps=2, num_prompts=4, optimizer="ondare",
                merge_weight=1e-3, seed=4)
    ratio = r["regime"]["merge_ratio"]
    assert r["regime"]["merge_weight"] == 1e-3 and 0 < ratio < np.inf
    assert r["config"]["optimizer"]["mask_seed"] == 4  # the masks follow the run's seed
    from minirl.report import render
    from rich.console import Console

    console = Console(record=True, width=200)
    render(r, console, detail=False)
    assert "merge pull" in console.export_text()
    plain = runs.rl("grpo", out=tmp_path / "plain", progress=False, bench_n=5, steps=1, num_prompts=4)
    assert "merge_ratio" not in plain["regime"]


def test_mask_seed_given_is_kept():
    assert runs.resolve("dpo", seed=3, mask_seed=9)["optimizer"].mask_seed == 9
    assert runs.resolve("dpo", seed=3)["optimizer"].mask_seed == 3


def point(method, gain, tax, family="online", algorithm="dpo", se=0.0, sweep=None):
    return {"algorithm": algorithm, "method": method, "family": family, "seed": 0, "gain": gain, "tax": tax,
            "after": 40 + gain, "average": 90.0, "sparsity": 10.0, "merge_ratio": None, "sweep": sweep,
            "gain_se": se, "tax_se": se}


def test_compare_is_a_pareto_test_with_margins():
    a = point("ondare", 10.0, 0.5)
    assert compare(a, [point("adamw", 8.0, 1.0, "adamw")])[0] == "better"  # less reward at more tax
    assert compare(a, [point("adamw", 12.0, 0.5, "adamw")])[0] == "worse"  # clearly more reward, same tax
    assert compare(a, [point("adamw", 10.0, 0.0, "adamw")])[0] == "worse"  # same reward, clearly less tax
    assert compare(a, [point("adamw", 10.5, 0.6, "adamw")])[0] == "tie"  # within 1 point and 0.25
    assert compare(a, [point("adamw", 20.0, 3.0, "adamw")])[0] == "better"  # more reward only at a higher tax
    assert compare(a, [point("ema", 10.5, 0.6, "regularisation")])[1]["method"] == "ema"  # who decided it
    noisy = point("ondare", 10.0, 0.5, se=2.0)
    assert compare(noisy, [point("adamw", 12.0, 0.5, "adamw", se=2.0)])[0] == "tie"  # 2 < hypot(2, 2)


def test_a_point_between_two_learning_rates_is_a_tie_not_a_win():
    """AdamW at an lr between two measured ones lands between them: the frontier is interpolated in tax."""
    family = [point("adamw", 8.0, 0.0, "adamw"), point("adamw_lr0.3", 14.0, 1.0, "adamw")]
    assert compare(point("ondare", 11.0, 0.5), family)[0] == "tie"  # exactly on the line
    assert compare(point("ondare", 13.0, 0.5), family)[0] == "better"  # 2 points above it
    assert compare(point("ondare", 9.5, 0.5), family)[0] == "worse"  # 1.5 points below it
    assert "adamw .. adamw_lr0.3" in compare(point("ondare", 9.5, 0.5), family)[1]["method"]
    # different regularisers are not a knob: no line between EMA and ChildTuning
    regs = [point("ema", 8.0, 0.0, "regularisation"), point("childtuning", 14.0, 1.0, "regularisation")]
    assert compare(point("ondare", 11.0, 0.5), regs)[0] == "better"


def made_up(online=(12.0, 0.2), adamw=(10.0, 1.0)) -> MergingResult:
    rows = []
    for algorithm in ("dpo", "grpo"):
        for seed in (0, 1):
            rows += [{**point("ondare", *online, algorithm=algorithm), "seed": seed},
                     {**point("onties", online[0] - 3, online[1], algorithm=algorithm), "seed": seed},
                     {**point("adamw", *adamw, "adamw", algorithm), "seed": seed},
                     {**point("ema", 2.0, 0.0, "regularisation", algorithm), "seed": seed}]
    offline = [{**point("linear", 5.0, 0.5, "offline", algorithm), "seed": 0, "weight": 0.5, "density": 1.0}
               for algorithm in ("dpo", "grpo")]
    return MergingResult(config={"algorithms": ["dpo", "grpo"]}, runs=rows, offline=offline)


def test_verdicts_on_made_up_points():
    got = {v["claim"].split("than ")[1].split(" (")[0]: v["verdict"] for v in verdicts(made_up())}
    assert got == {"AdamW": "reproduced", "regularisation": "reproduced", "offline merging": "reproduced"}
    got = {v["claim"].split("than ")[1].split(" (")[0]: v["verdict"] for v in verdicts(made_up(online=(8.0, 1.5)))}
    assert got["AdamW"] == "not reproduced"  # AdamW: more reward at less tax
    assert got["regularisation"] == "reproduced"  # EMA taxes less, but nothing else reaches 8 points at tax 1.5
    pts = points(made_up())
    assert {p["method"] for p in pts} == {"ondare", "onties", "adamw", "ema", "linear"}
    assert next(p for p in pts if p["method"] == "ondare")["seeds"] == 2


def test_points_read_back_from_json_keep_their_sweep_as_a_tuple():
    rows = [{**point("ondare_p0.01", 3.0, 0.0, "sweep", sweep=["reserve_rate", "ondare", 0.01]), "seed": 0}]
    result = MergingResult(**json.loads(json.dumps({"config": {"algorithms": ["dpo"]}, "runs": rows})))
    assert points(result)[0]["sweep"] == ("reserve_rate", "ondare", 0.01)


def test_training_runs_cover_methods_and_sweeps():
    config = MergingConfig(algorithms=("dpo",), seeds=(0, 1), methods=("adamw", "ondare"), reserve_rates=(0.01,),
                           alphas=(0.0, 1e-3))
    todo = _training_runs(config)
    names = [(r["method"], r["seed"]) for r in todo]
    assert len(todo) == 2 * (2 + 2 + 2) and len(set(names)) == len(names)
    assert {r["method"] for r in todo} == {"adamw", "ondare", "ondare_p0.01", "onties_p0.01", "ondare_a0",
                                           "ondare_a0.001"}
    assert not _training_runs(MergingConfig(algorithms=("grpo",), seeds=(0,), methods=("adamw",)))[0].get("sweep")


@pytest.mark.parametrize("args, message", [
    (["--algorithms", "ppo"], "MergingConfig.algorithms"),
    (["--methods", "ondare"], "adamw included"),
    (["--weights", "1.5"], "MergingConfig.weights"),
    (["--densities", "0.5,x"], "comma-separated numbers"),
    (["--reserve-rates", "0"], "MergingConfig.reserve_rates"),
    (["--seeds", "a"], "comma-separated integers"),
])
def test_bad_settings_are_usage_errors(args, message):
    result = CliRunner().invoke(main, ["reproduce", "merging", *args])
    assert result.exit_code == 2 and message in result.output, result.output
