"""`minirl reproduce sparsity`: the quick run CI does end to end, and the claim rules on made-up results."""

import json

import pytest
from click.testing import CliRunner

from minirl.cli import main
from minirl.experiments.sparsity import (ALGORITHMS, VARIANTS, SparsityConfig, SparsityResult, claims,
                                         planned_runs)

VERDICTS = {"reproduced", "partly", "not reproduced"}


@pytest.mark.slow
def test_reproduce_sparsity_quick_measures_every_claim(tmp_path):
    result = CliRunner().invoke(main, ["reproduce", "sparsity", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "report.json").read_text())
    assert {(r["name"], r["seed"]) for r in doc["runs"]} == {(n, s) for n in (*ALGORITHMS, *VARIANTS)
                                                             for s in (0, 1)}
    assert len(doc["claims"]) == 13 and {c["verdict"] for c in doc["claims"]} <= VERDICTS
    for r in doc["runs"]:
        assert 0 <= r["sparsity"] <= 100 and r["bitwise"] <= r["sparsity"] + 1e-9
    # the fp32 run changes (nearly) every weight; the masked run changes only weights its mask allows
    fp32 = [r for r in doc["runs"] if r["name"] == "grpo_fp32"]
    assert all(r["fp32_exact"] < 5 for r in fp32)
    for s in (0, 1):
        sub = next(r for r in doc["runs"] if r["name"] == "grpo_sub" and r["seed"] == s)
        full = next(r for r in doc["runs"] if r["name"] == "grpo" and r["seed"] == s)
        assert sub["bitwise"] >= full["bitwise"] - 1e-9  # a subset of full's weights can move
    assert [len(d["steps"]) for d in doc["dynamics"]] == [3, 3]  # 12 steps kept every 4
    assert {o["kind"] for o in doc["overlaps"]} == {"seeds", "data", "algorithms"}
    assert (tmp_path / "report.md").read_text().count("| ") > 20
    assert "--quick: a smoke" in result.output and "verdict" in result.output


def run(name, seed, sparsity, gain=10.0, rank=99.5, fp32_exact=0.5, per_tensor=None):
    return {"name": name, "seed": seed, "sparsity": sparsity, "bitwise": sparsity, "gain": gain, "tax": 0.0,
            "rank": rank, "fp32_exact": fp32_exact, "per_tensor": per_tensor or {}}


def made_up(rl=80.0, sft=10.0, kl=81.0, sub_equal=95.0) -> SparsityResult:
    tensors = {f"model.layers.{i}.self_attn.q_proj.weight": rl for i in range(2)}
    tensors |= {f"model.layers.{i}.input_layernorm.weight": 100.0 for i in range(2)}
    runs = []
    for seed in (0, 1):
        runs += [run(a, seed, rl, per_tensor=tensors if a == "grpo" else None) for a in ALGORITHMS]
        runs += [run("sft_add", seed, sft), run("dpo_offline", seed, sft), run("grpo_kl", seed, kl),
                 run("sft_sub", seed, sft), run("dpo_sub", seed, rl), run("dpo_offline_sub", seed, sft),
                 run("grpo_fp32", seed, 0.0), run("grpo_sub", seed, rl)]
    overlap = {"o1": 0.6, "o2": 0.6, "o1_random": 0.2, "o2_random": 0.2, "jaccard": 0.4, "jaccard_random": 0.1}
    return SparsityResult(
        config={"algorithms": list(ALGORITHMS), "seeds": [0, 1], "quick": False}, runs=runs,
        overlaps=[{"kind": k, **overlap} for k in ("seeds", "data", "algorithms")],
        dynamics=[{"seed": 0, "steps": [{"sparsity": 90.0}, {"sparsity": 95.0}, {"sparsity": 95.0}]}],
        subnetwork=[{"seed": 0, "1e-05": sub_equal, "0.0001": 100.0}])


def verdict_of(rows, word):
    return next(c["verdict"] for c in rows if word in c["claim"])


def test_the_papers_world_reproduces_every_claim():
    rows = claims(made_up())
    assert len(rows) == 13
    assert {c["verdict"] for c in rows} == {"reproduced"}, [c for c in rows if c["verdict"] != "reproduced"]


def test_a_dense_toy_world_is_reported_as_such():
    rows = claims(made_up(rl=10.0, sft=10.0, kl=20.0, sub_equal=60.0))
    assert verdict_of(rows, "small subnetwork") == "not reproduced"
    assert verdict_of(rows, "SFT updates are dense") == "partly"  # dense, but RL is no sparser
    assert verdict_of(rows, "in-distribution") == "not reproduced"
    assert verdict_of(rows, "KL penalty") == "not reproduced"  # 10 points apart
    assert verdict_of(rows, "subnetwork reproduces") == "partly"  # same accuracy, 60 % of weights equal


def test_planned_runs_put_the_masked_runs_last():
    plan = planned_runs(SparsityConfig(seeds=(3, 4)))
    assert [r["name"] for r in plan[-2:]] == ["grpo_sub", "grpo_sub"]
    assert sum(r["name"] == "grpo_sub" for r in plan) == 2
    assert all(r["overrides"].get("keep_every") == 25 for r in plan if r["name"] == "grpo")


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "at least two different"),
    (["--seeds", "x"], "comma-separated integers"),
])
def test_bad_settings_are_usage_errors(args, message):
    result = CliRunner().invoke(main, ["reproduce", "sparsity", *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_graded_rules_for_kl_dynamics_and_precision():
    near = made_up(rl=10.0, kl=13.0)  # KL moves sparsity by 3 points: more than 2, less than 4
    assert verdict_of(claims(near), "KL penalty") == "partly"
    dense_steps = made_up()
    dense_steps.dynamics = [{"seed": 0, "steps": [{"sparsity": 20.0}, {"sparsity": 25.0}, {"sparsity": 27.0}]}]
    assert verdict_of(claims(dense_steps), "consecutive") == "not reproduced"  # ~74 % change per interval
    bf16_better = made_up()
    for r in bf16_better.runs:
        if r["name"] == "grpo_fp32":
            r["gain"] = 5.0  # fp32 learns less than bf16's 10: bf16 storage costs nothing
    assert verdict_of(claims(bf16_better), "fp32 weights") == "reproduced"
    fp32_better = made_up()
    for r in fp32_better.runs:
        if r["name"] == "grpo_fp32":
            r["gain"] = 15.0  # bf16 storage costs 5 points
    assert verdict_of(claims(fp32_better), "fp32 weights") == "partly"
