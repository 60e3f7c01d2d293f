"""Subnetwork fine-tuning (`--mask-from RUN`): only the weights RUN updated ever move (docs/PAPERS.md §1)."""

import os
import signal

import numpy as np
import pytest
from click.testing import CliRunner

import minirl
from minirl import runs
from minirl.analysis import updated_mask
from minirl.cli import main
from minirl.config import load_toml
from minirl.runs import RunDir
from minirl.subnetwork import MaskError, updated_weights

TINY = dict(progress=False, bench_n=5)
GRPO = dict(init="sft", num_prompts=4, num_generations=4, **TINY)


@pytest.fixture(scope="module")
def mask_run(tmp_path_factory):
    """A short GRPO run at a small lr: bf16 storage leaves ~89 % of the weights bitwise unchanged."""
    out = tmp_path_factory.mktemp("subnetwork") / "run"
    runs.rl("grpo", out=out, steps=2, lr=1e-5, **GRPO)
    return out


def changed(run_dir) -> dict[str, np.ndarray]:
    """Name -> which stored entries the run's final weights changed against the shipped SFT model."""
    init = minirl.load("sft").state_dict()
    return {k: v != init[k] for k, v in RunDir(run_dir).load("final")[0].items() if k in init}


def test_the_mask_is_what_run_updated(mask_run):
    theta0, theta1 = minirl.load("sft").state_dict(), minirl.load(mask_run).state_dict()
    masks = updated_weights(mask_run)
    assert masks.keys() == theta0.keys()
    for name, m in masks.items():  # PAPERS.md: θ_init − θ_full != 0, in bf16
        np.testing.assert_array_equal(m, updated_mask(theta0[name], theta1[name], mode="bitwise"), err_msg=name)
        np.testing.assert_array_equal(m, theta0[name] != theta1[name], err_msg=name)  # both stored in bf16
    fraction = sum(m.sum() for m in masks.values()) / sum(m.size for m in masks.values())
    assert 0.05 < fraction < 0.3  # sparse: the test below can tell masked from unmasked
    at_tol = updated_weights(mask_run / "checkpoints" / "final", tol=1e-5)  # a checkpoint of the run, the tol rule
    for name, m in at_tol.items():
        np.testing.assert_array_equal(m, updated_mask(theta0[name], theta1[name], tol=1e-5), err_msg=name)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_masked_weights_never_change(mask_run, tmp_path, precision):
    settings = dict(steps=3, lr=1e-3, precision=precision, **GRPO)
    report = runs.rl("grpo", out=tmp_path / "sub", mask_from=str(mask_run), **settings)
    runs.rl("grpo", out=tmp_path / "full", **settings)  # the same run without the mask
    masks, sub, full = updated_weights(mask_run), changed(tmp_path / "sub"), changed(tmp_path / "full")
    frozen = sum(int((sub[k] & ~m).sum()) for k, m in masks.items())
    moved = sum(int((sub[k] & m).sum()) for k, m in masks.items()) / sum(int(m.sum()) for m in masks.values())
    moved_full = sum(int((full[k] & ~m).sum()) for k, m in masks.items()) / sum(int((~m).sum()) for m in masks.values())
    print(f"{precision}: masked entries changed {frozen}; unmasked changed {moved:.3f}; "
          f"without the mask, the masked ones changed {moved_full:.3f}")
    assert frozen == 0  # bitwise: not one masked weight moved
    assert moved > 0.5 and moved_full > 0.5  # the update is dense where it may go, and would be without the mask
    total = sum(m.size for m in masks.values())
    assert report["subnetwork"] == {"mask_from": str(mask_run), "mask_init": "sft", "mask_tol": "none",
                                    "trainable": sum(int(m.sum()) for m in masks.values()), "masked_total": total,
                                    "trainable_fraction": sum(int(m.sum()) for m in masks.values()) / total}
    assert report["sparsity"]["bitwise"] >= 1 - report["subnetwork"]["trainable_fraction"]
    assert load_toml(tmp_path / "sub" / "config.toml")["train"]["mask_from"] == str(mask_run)
    from rich.console import Console

    from minirl.report import render

    console = Console(record=True, width=250)
    render(report, console, detail=False)
    assert f"subnetwork fine-tuning: gradients masked to the weights {mask_run} updated" in console.export_text()


def test_heads_the_mask_does_not_cover_stay_trainable(mask_run, tmp_path):
    runs.rl("ppo", out=tmp_path / "ppo", steps=2, lr=1e-3, mask_from=str(mask_run), **GRPO)
    final = RunDir(tmp_path / "ppo").load("final")[0]
    assert np.count_nonzero(final["value_head.weight"]) > 0  # zero-initialised: it trained
    sub = changed(tmp_path / "ppo")
    assert sum(int((sub[k] & ~m).sum()) for k, m in updated_weights(mask_run).items()) == 0


def test_resume_gives_the_same_bits(mask_run, tmp_path, monkeypatch):
    settings = dict(steps=4, lr=1e-3, mask_from=str(mask_run), **GRPO)
    runs.rl("grpo", out=tmp_path / "straight", **settings)
    real_train = runs.train

    def train(*args, **kwargs):  # Ctrl-C during step 1
        kwargs["on_step"] = lambda step, metrics: step == 1 and os.kill(os.getpid(), signal.SIGINT)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runs, "train", train)
    assert runs.rl("grpo", out=tmp_path / "stopped", **settings)["steps"] == 2
    monkeypatch.undo()
    resumed = runs.resume(tmp_path / "stopped", **TINY)  # the mask rebuilt from config.toml's mask_from
    assert resumed["steps"] == 4 and resumed["subnetwork"]["mask_from"] == str(mask_run)
    straight, stopped = (RunDir(tmp_path / d).load("final")[0] for d in ("straight", "stopped"))
    assert all(np.array_equal(straight[k], stopped[k]) for k in straight)
    resumed_changed = changed(tmp_path / "stopped")
    assert sum(int((resumed_changed[k] & ~m).sum()) for k, m in updated_weights(mask_run).items()) == 0


def test_a_bad_run_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for bad, message in [(tmp_path / "nope", "no run directory"), (tmp_path / "empty", "neither a run directory")]:
        result = CliRunner().invoke(main, ["run", "grpo", "--mask-from", str(bad), "--steps", "1",
                                           "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "out").exists()  # it failed before making a run directory


def test_a_mask_that_does_not_fit_names_the_tensor(tiny_checkpoint, mask_run, tmp_path):
    runs.rl("sft", out=tmp_path / "tiny", init=str(tiny_checkpoint), steps=1, batch_size=2, **TINY)
    with pytest.raises(ValueError, match=r"mask_from: tensor 'model\.embed_tokens\.weight' is \(\d+, 32\) in"):
        runs.rl("grpo", out=tmp_path / "out", steps=1, mask_from=str(tmp_path / "tiny"), **GRPO)


def test_lora_and_a_mask_are_refused(mask_run, tmp_path):
    with pytest.raises(MaskError, match="LoRA adapters"):  # A and B are not weights of RUN; ΔW = BA is dense anyway
        runs.rl("grpo", out=tmp_path / "lora", steps=1, lora_rank=2, mask_from=str(mask_run), **GRPO)
    result = CliRunner().invoke(main, ["run", "grpo", "--lora-rank", "2", "--mask-from", str(mask_run),
                                       "--steps", "1", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 2 and "LoRA adapters" in result.output, result.output
