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
