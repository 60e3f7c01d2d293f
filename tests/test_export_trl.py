"""`minirl export --format trl`: the mapping, reward.py against the verifiers, and TRL running the recipes (2 steps).

The end-to-end tests export a GRPO run (with OnTIES, so TRL trains with
minirl's torch optimizer) and a DPO run, run each `train.py` with TRL for two
steps on a tiny batch in a subprocess, and read the result back with minirl.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from minirl.cli import main
from minirl.export.trl import ALGORITHMS, export_trl, partial_credit_rule, trl_recipe
from minirl.export.trl_files import reward_py
from minirl.loading import load
from minirl.runs import resolve
from minirl.tasks import TASKS, resolve_task


def run_dir(tmp_path, name: str, **overrides) -> Path:
    """A run directory holding only the resolved config.toml of `minirl run NAME` (what export reads)."""
    d = tmp_path / f"{name}-run"
    d.mkdir()
    (d / "config.toml").write_text(resolve(name, **overrides).to_toml())
    return d


# -- the mapping ------------------------------------------------------------------------------------------------
def test_grpo_mapping_sets_the_defaults_that_differ():
    config, rows = trl_recipe(resolve("grpo"))
    # the preset: 48 prompts x 4, lr 1e-4, 150 steps, TRL's "dapo" loss
    assert config["loss_type"] == "dapo" and config["num_generations"] == 4
    assert config["per_device_train_batch_size"] == 48 * 4 and config["steps_per_generation"] == 1
    assert config["learning_rate"] == 1e-4 and config["max_steps"] == 150
    # TRL defaults that would silently change the comparison, set explicitly
    assert config["gradient_checkpointing"] is False and config["bf16"] is False
    assert config["lr_scheduler_type"] == "constant" and config["optim"] == "adamw_torch"
    assert config["max_completion_length"] == resolve_task("add").max_answer_len + 1
    warned = [r.minirl for r in rows if r.warning]
    assert warned == ["[train] precision"]  # bf16 storage with fp32 masters: TRL has no such mode
    assert all(r.reason for r in rows)


def test_preference_mappings():
    dpo, _ = trl_recipe(resolve("dpo"))
    assert dpo["loss_type"] == ["sigmoid"] and dpo["beta"] == 2.0 and dpo["precompute_ref_log_probs"] is True
    ipo, _ = trl_recipe(resolve("ipo"))
    assert ipo["loss_type"] == ["ipo"]
    simpo, _ = trl_recipe(resolve("simpo"))
    assert simpo["loss_type"] == "simpo" and simpo["cpo_alpha"] == resolve("simpo")["simpo"].cpo_alpha
    cosine, rows = trl_recipe(resolve("kto", schedule="cosine", warmup_steps=3, min_lr_ratio=0.2))
    assert cosine["lr_scheduler_type"] == "cosine_with_min_lr"
    assert cosine["lr_scheduler_kwargs"] == {"min_lr_rate": 0.2}
    assert any(r.warning and r.minirl == "[optimizer] warmup_steps" for r in rows)


def test_trl_config_classes_accept_every_mapped_field(tmp_path):
    """Each algorithm's mapped kwargs build TRL's own config class (a misspelt field would raise)."""
    import importlib

    pytest.importorskip("trl")
    for name, (module, _, config_class, _) in ALGORITHMS.items():
        config, _ = trl_recipe(resolve(name))
        cls = getattr(importlib.import_module(module), config_class)
        built = cls(output_dir=str(tmp_path / name), **config)
        assert built.gradient_checkpointing is False and built.bf16 is False, name


@pytest.mark.parametrize("name", ["ppo", "reinforce", "sft"])
def test_unsupported_algorithms_say_why(name):
    with pytest.raises(ValueError, match="TRL"):
        trl_recipe(resolve(name))


def test_unsupported_optimizer_is_refused():
    with pytest.raises(ValueError, match="ema"):
        trl_recipe(resolve("grpo", optimizer="ema"))


# -- reward.py ----------------------------------------------------------------------------------------------------
def load_reward(task: str, reward: str):
    namespace = {}
    exec(reward_py(task, reward, *partial_credit_rule(resolve_task(task))), namespace)
    return namespace["task_reward"]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_reward_py_gives_the_verifiers_rewards(task):
    """reward.py on TRL's conversational completions == minirl's task.reward / task.verify, on right and wrong ones."""
    t = resolve_task(task)
    rng = np.random.default_rng(0)
    prompts, completions, answers, want_partial, want_exact = [], [], [], [], []
    for _ in range(200):
        ex = t.sample(rng)
        text = (ex.answer, t.wrong_answer(ex.prompt, rng), ex.answer[1:] + "7", ex.answer + "12")[rng.integers(4)]
        prompts.append([{"role": "user", "content": ex.prompt}])
        completions.append([{"role": "assistant", "content": text}])
        answers.append(ex.answer)
        want_partial.append(t.reward(ex.prompt, text))
        want_exact.append(float(t.verify(ex.prompt, text)))
    assert load_reward(task, "partial")(prompts, completions, answer=answers) == pytest.approx(want_partial)
    assert load_reward(task, "exact")(prompts, completions, answer=answers) == want_exact
    assert 0 < np.mean(want_exact) < 1 and len(set(want_partial)) > 2  # both kinds of completion were tried


# -- end to end: TRL runs the exported recipes --------------------------------------------------------------------
def run_train(recipe_dir: Path, timeout: int = 180) -> dict:
    """`python train.py --max-steps 2` in a subprocess (one thread); its log history."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "train.py", "--max-steps", "2"], cwd=recipe_dir, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((recipe_dir / "output" / "log_history.json").read_text())


def changed_fraction(before, after) -> tuple[float, int]:
    """Fraction of weight entries that differ, and how many matrices changed at all."""
    a, b = dict(before.named_parameters()), dict(after.named_parameters())
    assert a.keys() == b.keys()
    changed = sum(int((a[k].data != b[k].data).sum()) for k in a)
    total = sum(a[k].data.size for k in a)
    return changed / total, sum(bool((a[k].data != b[k].data).any()) for k in a)


def test_grpo_with_onties_runs_in_trl_and_comes_back(tmp_path):
    pytest.importorskip("trl")
    src = run_dir(tmp_path, "grpo", steps=2, num_prompts=2, num_generations=2, reward="partial",
                  optimizer="onties", reserve_rate=0.1)
    out = tmp_path / "grpo-trl"
    result = CliRunner().invoke(main, ["export", str(src), "--format", "trl", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "GRPOConfig" in result.output and "warning" in result.output
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["trainer"] == "GRPOTrainer" and recipe["optimizer"]["kind"] == "onties"
    assert (out / "merging_optim.py").is_file() and (out / "ref_delta.safetensors").is_file()
    assert len((out / "data" / "train.jsonl").read_text().splitlines()) == 2 * 2  # num_prompts x steps

    history = run_train(out)
    steps = [h for h in history if "reward" in h]
    print("TRL GRPO log:", [(h["step"], h["reward"], h["loss"]) for h in steps])
    assert [h["step"] for h in steps] == [1, 2]
    assert all(0 <= h["reward"] <= 1 for h in steps)
    assert all(h["completions/max_length"] <= recipe["config"]["max_completion_length"] for h in steps)

    # the round trip: minirl reads TRL's output, and the update is OnTIES-sparse: with wd = 0 only the top 10 % of
    # each step's Δθ and the top 10 % of τ_r (its α-weighted pull) can move a weight, so at most 3 x 10 % in 2 steps
    init, trained = load(out / "model"), load(out / "output")
    frac, matrices = changed_fraction(init, trained)
    print(f"changed entries {frac:.4f} in {matrices} tensors")
    assert 0.1 < frac <= 3 * 0.1 + 1e-3 and matrices > 1
    runner = CliRunner().invoke(main, ["eval", str(out / "output"), "--tasks", "add", "--n", "20", "--json"])
    assert runner.exit_code == 0, runner.output
    assert 0 <= json.loads(runner.output)["accuracy"]["add"] <= 1


def test_dpo_runs_in_trl_and_comes_back(tmp_path):
    pytest.importorskip("trl")
    src = run_dir(tmp_path, "dpo", steps=2, pairs="offline", num_prompts=16, batch_size=4, beta=0.1)
    out, rows, _ = export_trl(src, tmp_path / "dpo-trl")
    data = [json.loads(line) for line in (out / "data" / "train.jsonl").read_text().splitlines()]
    assert len(data) == 16 and data[0]["chosen"][0]["role"] == "assistant"
    history = run_train(out)
    steps = [h for h in history if "loss" in h and "rewards/margins" in h]
    print("TRL DPO log:", [(h["step"], h["loss"], h["rewards/margins"]) for h in steps])
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy = reference at the first step
    assert steps[1]["rewards/margins"] > 0  # one step of DPO moved chosen above rejected
    init, trained = load(out / "model"), load(out / "output")
    frac, _ = changed_fraction(init, trained)
    assert frac > 0.5  # AdamW in fp32 moves nearly every weight


TINY = {
    "rloo": dict(steps=2, num_prompts=2, num_generations=2, reward="partial", beta=0.05),
    "kto": dict(steps=2, pairs="offline", num_prompts=8, batch_size=4, beta=0.1),
    "simpo": dict(steps=2, pairs="offline", num_prompts=8, batch_size=4),
    "orpo": dict(steps=2, pairs="offline", num_prompts=8, batch_size=4),
}
"""Two steps on a tiny batch of each remaining exported algorithm (GRPO and DPO are above)."""


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_other_algorithm_runs_in_trl(tmp_path, name):
    pytest.importorskip("trl")
    out, _, _ = export_trl(run_dir(tmp_path, name, **TINY[name]), tmp_path / f"{name}-trl")
    history = run_train(out)
    steps = [h for h in history if "loss" in h and "train_runtime" not in h]
    print(f"TRL {name} log:", [{k: round(v, 4) for k, v in h.items() if k in ("step", "loss", "reward", "kl")}
                                for h in steps])
    assert [h["step"] for h in steps] == [1, 2] and all(math.isfinite(h["loss"]) for h in steps)
    if name == "rloo":
        # PERL's (1 - β) r - β KL: TRL weights the verifier's reward by 1 - β and subtracts β KL (k1, summed)
        assert json.loads((out / "recipe.json").read_text())["config"]["reward_weights"] == [0.95]
        for h in steps:
            assert h["reward"] == pytest.approx(0.95 * h["rewards/task_reward/mean"], abs=1e-6)
        assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy = reference at the first rollout
    elif name == "kto":
        # policy = reference: every implicit reward and the KL estimate are 0, so the loss is 1 - σ(0) = 0.5
        assert steps[0]["loss"] == pytest.approx(0.5, abs=1e-4)
    else:
        assert "rewards/margins" in steps[0]  # CPO's (SimPO) and ORPO's preference metrics
    init, trained = load(out / "model"), load(out / "output")
    frac, _ = changed_fraction(init, trained)
    assert frac > 0.5  # AdamW in fp32 moves nearly every weight


def test_trl_round_trip_report_beside_minirl(tmp_path):
    """A short GRPO run, its export trained 2 steps by TRL, `minirl report OUT --beside RUN` and `minirl analyze`."""
    pytest.importorskip("trl")
    from minirl.runs import rl

    run = tmp_path / "g2"
    rl("grpo", out=run, progress=False, bench_n=5, steps=2, num_prompts=2, num_generations=2, reward="partial")
    out, _, _ = export_trl(run, tmp_path / "g2-trl")
    assert "minirl report output --beside RUN" in (out / "README.md").read_text()  # the way back, as documented
    run_train(out)
    result = CliRunner().invoke(main, ["report", str(out / "output"), "--beside", str(run), "--bench-n", "5",
                                       "--brief"], terminal_width=160)
    assert result.exit_code == 0, result.output
    print(result.output)
    assert "TRL GRPOTrainer" in result.output and "minirl (bf16 storage)" in result.output
    assert "TRL reward per step" in result.output and "minirl reward per step" in result.output
    cached = json.loads((out / "output" / "minirl_report.json").read_text())
    assert cached["steps"] == 2 and cached["accuracy"]["n"]["add"] == 5 and cached["trained_tasks"] == ["add"]
    assert 0 < cached["sparsity"]["overall"] < 1 and 0 < cached["rank"]["mean_fraction"] <= 1
    # the JSON carries both columns; the cache is reused (same numbers) when rendered again
    again = CliRunner().invoke(main, ["report", str(out / "output"), "--beside", str(run), "--bench-n", "5", "--json"])
    assert again.exit_code == 0, again.output
    r = json.loads(again.output)
    assert r["sparsity"] == cached["sparsity"] and r["beside"]["steps"] == 2
    assert r["beside"]["accuracy"]["n"]["add"] == 5
    analyzed = CliRunner().invoke(main, ["analyze", str(out / "model"), str(out / "output"), "--json"])
    assert analyzed.exit_code == 0, analyzed.output
    assert json.loads(analyzed.output)["updates"][0]["sparsity"]["overall"] == pytest.approx(cached["sparsity"]["overall"])


def test_report_of_a_directory_that_is_neither(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "nor is it a TRL output directory" in result.output
    result = CliRunner().invoke(main, ["report", str(tmp_path), "--beside", str(tmp_path)])
    assert result.exit_code == 2 and "for a TRL output directory" in result.output
