"""Run directories, and resume: a run stopped by Ctrl-C or `kill -9` continues to the same bits as one that never stopped."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minirl
from minirl import runs
from minirl.checkpoint import CheckpointError, read_header
from minirl.precision import to_bf16
from minirl.runs import RunDir
from minirl.train import TrainState

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"d_model": 4, "n_layers": 1, "vocab_size": 7, "name": "tiny"}
TIMING = ("step_seconds",)
"""Metrics that measure the machine, not the run: they differ between any two runs."""


def make_tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {"a.weight": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def without_timing(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


# ------------------------------------------------------------------------------------ run directories
def test_run_dir(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_config('command = "run grpo"\n')
    assert (tmp_path / "run" / "config.toml").read_text() == 'command = "run grpo"\n'
    for step in range(3):
        run.log({"step": step, "reward": np.float64(step / 2)}, loss=1.0 / (step + 1))
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 3, "rew')  # a crash mid-append
    with pytest.warns(UserWarning, match="1 torn line"):
        metrics = run.read_metrics()
    assert [m["step"] for m in metrics] == [0, 1, 2] and metrics[2]["reward"] == 1.0 and metrics[1]["loss"] == 0.5
    run.log(step=4, reward=float("nan"))  # the next record is whole
    with pytest.warns(UserWarning, match="1 torn line"):
        metrics = run.read_metrics()
    assert metrics[-1]["step"] == 4 and np.isnan(metrics[-1]["reward"])
    with pytest.warns(UserWarning, match="1 torn line"):
        kept = run.truncate_metrics(2)  # what a resume from step 2 keeps; the torn line goes too
    assert [m["step"] for m in kept] == [0, 1] == [m["step"] for m in run.read_metrics()]
    t = make_tensors()
    assert run.save(100, t, CONFIG, dtype="fp32") == tmp_path / "run" / "checkpoints" / "step_000100"
    run.save("final", t, CONFIG, dtype="bf16")
    assert run.checkpoints() == ["final", "step_000100"]
    assert same_tensors(run.load(100)[0], t)
    assert same_tensors(run.load("final")[0], {k: to_bf16(v) for k, v in t.items()})
    run.write_json("report", {"ok": True})
    assert json.loads((tmp_path / "run" / "report.json").read_text()) == {"ok": True}
    assert not [p for p in os.listdir(tmp_path / "run") if p.startswith(".")]  # no temp files


def test_the_precision_policy_decides_the_checkpoint_dtype(tmp_path):
    class Config:
        def to_dict(self):
            return dict(CONFIG)

    class Model:  # duck type of nn.Module: state_dict() and .config
        config = Config()

        def state_dict(self):
            return make_tensors()

    run = RunDir(tmp_path)
    for precision, header in (("pure_bf16", "BF16"), ("bf16", "BF16"), ("fp16", "F16"), ("fp32", "F32")):
        path = run.save_model(precision, Model(), precision)
        assert path == tmp_path / "checkpoints" / precision
        assert read_header(path / "model.safetensors")[0]["a.weight"].dtype == header
    tensors, config = run.load("pure_bf16")
    assert config == CONFIG and same_tensors(tensors, {k: to_bf16(v) for k, v in make_tensors().items()})


def test_training_state_round_trips_and_a_weights_only_checkpoint_is_refused(tmp_path, tiny_checkpoint):
    run, model = RunDir(tmp_path), minirl.load(tiny_checkpoint)
    assert run.load_state("last", model) is None  # nothing saved yet: a resume starts from the beginning
    rng = np.random.default_rng(5)
    rng.random(3)
    opt = {"type": "AdamW", "lr": 1e-3, "step_count": 2, "tensors": {"w:exp_avg": np.arange(4, dtype=np.float32)}}
    state = TrainState(7, opt, rng.bit_generator.state, {"kl_coef": 0.05}, 1.5)
    run.save_state("last", model, "bf16", state)
    other = minirl.load(tiny_checkpoint)
    for p in other.parameters():
        p.data[...] = 0.0
    back = run.load_state("last", other)
    assert same_tensors(other.state_dict(), model.state_dict())
    assert (back.step, back.algorithm, back.wall_seconds, back.rng) == (7, {"kl_coef": 0.05}, 1.5, state.rng)
    assert same_tensors(back.optimizer.pop("tensors"), opt.pop("tensors")) and back.optimizer == opt
    (tmp_path / "checkpoints" / "last").rename(tmp_path / "checkpoints" / ".last.old")  # a save crashed mid-swap
    assert run.load_state("last", other).step == 7  # the complete previous checkpoint is found
    run.save_state("last", model, "bf16", None)  # after a failed update: weights only
    with pytest.raises(CheckpointError, match=r"no trainer_state\.json .* cannot be resumed"):
        run.load_state("last", other)


# ---------------------------------------------------------------------------------------- resume
SMALL_RL = dict(init="sft", num_prompts=4, num_generations=4)  # the shipped model: rewards vary, so updates happen
CASES = {
    # bf16 master weights, the rollout RNG
    "grpo": dict(lr=1e-3, **SMALL_RL),
    # the algorithm's own state (the adaptive KL coefficient), minibatch shuffles, a cosine schedule, fp32
    "ppo": dict(lr=1e-3, kl_controller="adaptive", kl_horizon=100, num_minibatches=2, schedule="cosine",
                precision="fp32", **SMALL_RL),
    "sft": dict(lr=1e-3, batch_size=4, schedule="cosine", warmup_steps=2),
    # the data set is part of the state: on-policy pairs, rebuilt from the policy at step 3 (after the stop)
    "dpo": dict(lr=1e-3, task="max", pairs="on_policy", reward="partial", num_prompts=64, num_generations=8,
                batch_size=4, regenerate_every=3),
    "rm": dict(lr=1e-3, pairs="offline", num_prompts=32, batch_size=4),  # a reward head added to the init model
}


def interrupt_at(step_to_stop: int, monkeypatch):
    """Make the job's training loop receive a Ctrl-C during step `step_to_stop`."""
    real_train = runs.train

    def train(*args, **kwargs):
        kwargs["on_step"] = lambda step, metrics: step == step_to_stop and os.kill(os.getpid(), signal.SIGINT)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runs, "train", train)


@pytest.mark.parametrize("algo", CASES)
def test_ctrl_c_then_resume_ends_with_the_same_bits_as_a_straight_run(algo, tmp_path, tiny_checkpoint, monkeypatch):
    settings = dict(init=str(tiny_checkpoint), steps=6, progress=False, bench_n=2) | CASES[algo]
    straight = runs.rl(algo, out=tmp_path / "straight", **settings)
    init = minirl.load(settings["init"]).state_dict()
    unused = ("lm_head.weight",) if algo == "rm" else ()  # a reward model's loss never reaches the LM head
    assert all(not np.array_equal(init[k], v) for k, v in RunDir(tmp_path / "straight").load("final")[0].items()
               if k in init and k not in unused)  # every tensor moved: an update left out on resume would show
    interrupt_at(2, monkeypatch)
    stopped = runs.rl(algo, out=tmp_path / "stopped", **settings)
    assert stopped["interrupted"] and stopped["steps"] == 3
    monkeypatch.undo()
    resumed = runs.resume(tmp_path / "stopped", progress=False, bench_n=2)
    assert not resumed["interrupted"] and resumed["steps"] == 6
    final = [RunDir(tmp_path / d).load("final")[0] for d in ("straight", "stopped")]
    assert same_tensors(*final)
    assert without_timing(RunDir(tmp_path / "straight").read_metrics()) == without_timing(
        RunDir(tmp_path / "stopped").read_metrics())
    assert resumed["accuracy"] == straight["accuracy"] and resumed["sparsity"] == straight["sparsity"]


KILL_AT = """
import os, signal, sys
import minirl.runs as runs
real_train = runs.train

def train(*args, **kwargs):  # a hard kill during step {step}, after the checkpoint of step {checkpoint}
    kwargs["on_step"] = lambda step, metrics: step == {step} and os.kill(os.getpid(), signal.SIGKILL)
    return real_train(*args, **kwargs)

runs.train = train
from minirl.cli import main
main(sys.argv[1:])
"""


def test_kill_9_between_checkpoints_leaves_a_resumable_run(tmp_path):
    args = ["run", "grpo", "--steps", "8", "--checkpoint-every", "2", "--lr", "1e-3", "--num-prompts", "4",
            "--num-generations", "4", "--no-progress", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", KILL_AT.format(step=4, checkpoint=3), *args,
                             "--out", str(tmp_path / "killed")], capture_output=True, text=True, env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(RunDir(tmp_path / "killed").read_metrics()) == 5  # step 4 was logged, its checkpoint never came
    for cmd in (["--resume", str(tmp_path / "killed")], ["--out", str(tmp_path / "straight")]):
        done = subprocess.run([sys.executable, "-m", "minirl.cli", *args[:2], *cmd, "--no-progress", "--json"]
                              if cmd[0] == "--resume" else [sys.executable, "-m", "minirl.cli", *args, *cmd],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
    final = [RunDir(tmp_path / d).load("final")[0] for d in ("straight", "killed")]
    assert same_tensors(*final)
    assert without_timing(RunDir(tmp_path / "straight").read_metrics()) == without_timing(
        RunDir(tmp_path / "killed").read_metrics())


def test_pretraining_resumes_to_the_same_bits(tmp_path, monkeypatch):
    settings = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, batch_size=4, seq_len=16, steps=5,
                    progress=False, bench_n=2)
    runs.pretrain(out=tmp_path / "straight", **settings)
    interrupt_at(1, monkeypatch)
    assert runs.pretrain(out=tmp_path / "stopped", **settings)["steps"] == 2
    monkeypatch.undo()
    assert runs.resume(tmp_path / "stopped", progress=False, bench_n=2)["steps"] == 5
    assert same_tensors(*[RunDir(tmp_path / d).load("final")[0] for d in ("straight", "stopped")])
    assert without_timing(RunDir(tmp_path / "straight").read_metrics()) == without_timing(
        RunDir(tmp_path / "stopped").read_metrics())


def test_keep_every_keeps_the_weights_along_the_way(tmp_path):
    """--keep-every K: checkpoints/step_K, step_2K, ... hold the weights after those steps; the last is final's."""
    from minirl.checkpoint import load_checkpoint

    r = runs.rl("grpo", out=tmp_path / "run", progress=False, bench_n=2, steps=4, num_prompts=4, keep_every=2)
    ckpts = Path(r["run_dir"]) / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_000002", "step_000004"]
    step2, step4, final = (load_checkpoint(ckpts / n)[0] for n in ("step_000002", "step_000004", "final"))
    assert same_tensors(step4, final) and not same_tensors(step2, final)
