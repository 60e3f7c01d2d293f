"""LoRA in every training command: the run trains adapters only, saves them, loads them back, resumes, exports."""

import json
import os
import signal

import numpy as np
import pytest
from click.testing import CliRunner

import minirl
from minirl import runs
from minirl.cli import main
from minirl.lora import lora_layers, merged_state_dict
from minirl.runs import RunDir

SMALL = dict(steps=3, lr=1e-3, lora_rank=4, progress=False, bench_n=2)
ADAPTED = ("q_proj", "k_proj", "v_proj", "o_proj")


def run(algo, tmp_path, tiny_checkpoint, **kw):
    return runs.rl(algo, out=tmp_path / algo, init=str(tiny_checkpoint), **(SMALL | kw))


@pytest.mark.parametrize("algo, kw", [
    ("grpo", dict(num_prompts=4, num_generations=2)),
    ("ppo", dict(num_prompts=4, num_generations=2)),  # the value head trains beside the adapters
    ("sft", dict(batch_size=4)),
    ("dpo", dict(pairs="offline", num_prompts=16, batch_size=4)),
    ("rm", dict(pairs="offline", num_prompts=16, batch_size=4)),  # the reward model's head too
])
def test_a_lora_run_changes_only_the_adapted_matrices_and_saves_only_adapters(algo, kw, tmp_path, tiny_checkpoint):
    report = run(algo, tmp_path, tiny_checkpoint, **kw)
    assert report["lora"]["lora_rank"] == 4 and report["lora"]["trainable"] < report["lora"]["total"]
    tensors, config = RunDir(tmp_path / algo).load("final")
    assert config["lora"]["lora_rank"] == 4 and config["base"] == str(tiny_checkpoint)
    assert all(".lora_" in k or k in ("value_head.weight", "score.weight") for k in tensors)
    base = minirl.load(tiny_checkpoint).state_dict()
    model = minirl.load(tmp_path / algo)  # a run directory: its checkpoints/final, the base rebuilt
    assert len(lora_layers(model)) == len(ADAPTED)  # the tiny model has one layer
    merged = merged_state_dict(model)
    moved = []
    for name, w in base.items():
        adapted = name.removesuffix(".weight").rsplit(".", 1)[-1] in ADAPTED
        if not adapted:
            assert np.array_equal(w, merged[name]), name  # the frozen backbone is bitwise the base
        elif not np.array_equal(w, merged[name]):
            moved.append(name)
            s = np.linalg.svd(merged[name].astype(np.float64) - w, compute_uv=False)
            assert (s > 1e-3 * s[0]).sum() <= 4  # rank <= r, above the float32 rounding of W + ΔW
    # (on the random test model GRPO and PPO may earn no reward at all, so only the losses with targets must move)
    assert moved or algo in ("grpo", "ppo")
    per_tensor = report["sparsity"]["per_tensor"]
    assert all(per_tensor[n] == 1.0 for n in base if n.rsplit(".", 2)[-2] not in ADAPTED and n in per_tensor)
    rank = report["rank"]["per_tensor"]  # the report's fractions of full rank: rank(ΔW) <= r = 4
    assert all(0 < round(rank[n] * min(base[n].shape)) <= 4 for n in moved), {n: rank[n] for n in moved}


def test_a_loaded_lora_model_gives_the_trained_logits_merged_or_not(tmp_path, tiny_checkpoint):
    run("sft", tmp_path, tiny_checkpoint, batch_size=4)
    tokens = np.array([[1, 5, 6, 7, 8]])
    unmerged = minirl.load(tmp_path / "sft")
    merged = minirl.load(tmp_path / "sft", merge_lora=True)
    a, b = unmerged(tokens).data, merged(tokens).data
    assert np.allclose(a, b, atol=1e-5 * np.abs(a).max())
    assert not np.allclose(a, minirl.load(tiny_checkpoint)(tokens).data, atol=1e-6)


def test_ctrl_c_then_resume_a_lora_run_ends_with_the_same_bits(tmp_path, tiny_checkpoint, monkeypatch):
    # dropout on: its generators are part of the resume state
    settings = dict(init=str(tiny_checkpoint), steps=5, lr=1e-3, lora_rank=4, lora_dropout=0.1, batch_size=4,
                    progress=False, bench_n=2)
    runs.rl("sft", out=tmp_path / "straight", **settings)
    real_train = runs.train

    def train(*args, **kwargs):
        kwargs["on_step"] = lambda step, metrics: step == 1 and os.kill(os.getpid(), signal.SIGINT)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runs, "train", train)
    assert runs.rl("sft", out=tmp_path / "stopped", **settings)["interrupted"]
    monkeypatch.undo()
    assert runs.resume(tmp_path / "stopped", progress=False, bench_n=2)["steps"] == 5
    a, b = (RunDir(tmp_path / d).load("final")[0] for d in ("straight", "stopped"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_cli_trains_with_lora_and_exports_it(tmp_path, tiny_checkpoint):
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(main, ["run", "sft", "--init", str(tiny_checkpoint), "--lora-rank", "2", "--lora-alpha",
                                  "4", "--lora-targets", "q_proj,v_proj", "--batch-size", "2", "--steps", "1",
                                  "--out", str(out), "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["lora"]["lora_targets"] == ["q_proj", "v_proj"]
    result = runner.invoke(main, ["export", str(out), "--format", "torch", "--out", str(tmp_path / "torch")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["export", str(tiny_checkpoint), "--format", "peft", "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "has no LoRA adapters" in result.output
    for flag, value, field in [("--lora-rank", "-1", "lora_rank"), ("--lora-targets", "q_proj,foo", "lora_targets")]:
        result = runner.invoke(main, ["run", "sft", "--init", str(tiny_checkpoint), flag, value, "--steps", "1"])
        assert result.exit_code == 2 and f"LoraConfig.{field}" in result.output, result.output


def test_peft_export_of_a_lora_run_loads_in_peft_with_the_same_logits(tmp_path, tiny_checkpoint):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    run("sft", tmp_path, tiny_checkpoint, batch_size=4)
    runner = CliRunner()
    for fmt, ckpt in (("hf", str(tiny_checkpoint)), ("peft", str(tmp_path / "sft"))):
        result = runner.invoke(main, ["export", ckpt, "--format", fmt, "--out", str(tmp_path / fmt)])
        assert result.exit_code == 0, result.output
    hf = peft.PeftModel.from_pretrained(transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf"),
                                        tmp_path / "peft")
    tokens = np.array([[1, 5, 6, 7, 8, 9]])
    ours = minirl.load(tmp_path / "sft")(tokens).data
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens)).logits.numpy()
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(ours).max()
