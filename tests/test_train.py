"""The shared training loop: learning, determinism, NaN/inf guards, precision, Ctrl-C, config checks."""

import os
import signal

import numpy as np
import pytest

import minirl
from minirl.functional import _op
from minirl.model import Transformer, TransformerConfig
from minirl.optim import OptimizerConfig
from minirl.precision import to_bf16, to_fp16
from minirl.runs import RunDir
from minirl.rl.sft import SFT, Pretrain, PretrainConfig, SFTConfig
from minirl.tasks import CharTokenizer
from minirl.train import TrainConfig, TrainingError, train

TOK = CharTokenizer()


def tiny_model(seed: int = 0) -> Transformer:
    config = TransformerConfig(vocab_size=TOK.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2)
    return Transformer(config, seed=seed, tokenizer=TOK)


def sft(batch_size: int = 8) -> SFT:
    return SFT(SFTConfig(batch_size=batch_size))


def run(model, algo, steps: int = 5, seed: int = 0, **kw):
    """train() with AdamW at a constant lr of 1e-2 and no progress bar; `kw` go to TrainConfig or train()."""
    config_kw = {k: kw.pop(k) for k in list(kw) if k in TrainConfig.__dataclass_fields__}
    config = TrainConfig(steps=steps, seed=seed, **config_kw)
    return train(model, algo, config, OptimizerConfig(lr=1e-2), progress=False, **kw)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


class Poisoned:
    """SFT whose loss is NaN, or whose gradient of one named parameter is inf, at step `at`."""

    name = "poisoned"

    def __init__(self, at: int, param: str | None = None):
        self.sft, self.at, self.param, self.step = sft(), at, param, None

    def batch(self, policy, rng, step):
        self.step = step
        return self.sft.batch(policy, rng, step)

    def loss(self, policy, batch):
        loss, stats = self.sft.loss(policy, batch)
        if self.step != self.at:
            return loss, stats
        if self.param is None:
            return loss * float("nan"), stats
        p = dict(policy.named_parameters())[self.param]
        # a zero-valued op whose backward sends inf to one parameter: the loss stays finite
        spike = _op(np.zeros((), np.float32), (p,), lambda dout: (np.full(p.shape, np.inf, np.float32),))
        return loss + spike, stats


# -------------------------------------------------------------------------------------- learning
@pytest.mark.parametrize("objective", ["sft", "pretrain"])
def test_loss_decreases_over_30_steps(objective):
    algo = sft(16) if objective == "sft" else Pretrain(PretrainConfig(batch_size=8, seq_len=32))
    losses = [h["loss"] for h in run(tiny_model(), algo, steps=30).history]
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"{objective}: loss {first:.3f} -> {last:.3f}")
    assert first > 3.5  # about log(52) = 3.95 at initialisation
    assert last < first - 0.7


def test_same_seed_gives_the_same_bits_and_another_seed_does_not():
    a, b, c = tiny_model(), tiny_model(), tiny_model()
    run(a, sft(), seed=3)
    run(b, sft(), seed=3)
    run(c, sft(), seed=4)
    assert states_equal(a.state_dict(), b.state_dict())
    assert not states_equal(a.state_dict(), c.state_dict())
    assert not states_equal(a.state_dict(), tiny_model().state_dict())  # and training did change them


def test_only_the_given_params_are_updated():
    model, before = tiny_model(), tiny_model().state_dict()
    head = [(n, p) for n, p in model.named_parameters() if n == "lm_head.weight"]
    run(model, sft(), steps=2, params=head, precision="fp32")
    for name, w in model.state_dict().items():
        assert np.array_equal(w, before[name]) == (name != "lm_head.weight"), name


# ------------------------------------------------------------------------------ non-finite guards
@pytest.mark.parametrize("checkpoint_every", [1, 0])
def test_nan_loss_stops_before_the_step_and_keeps_the_last_checkpoint(tmp_path, checkpoint_every):
    model, snapshots = tiny_model(), {}
    rundir = RunDir(tmp_path / "run")
    with pytest.raises(TrainingError, match=r"step 2\b.*loss is nan"):
        run(model, Poisoned(at=2), steps=5, run=rundir, checkpoint_every=checkpoint_every,
            on_step=lambda step, metrics: snapshots.setdefault(step, model.state_dict()))
    assert sorted(snapshots) == [0, 1]
    assert states_equal(model.state_dict(), snapshots[1])  # nothing of step 2 was applied
    assert not states_equal(snapshots[0], snapshots[1])
    assert len(rundir.read_metrics()) == 2
    last = minirl.load(rundir.checkpoint_path("last"))  # bf16 weights of step 1, saved before the failure
    assert states_equal(last.state_dict(), snapshots[1])


def test_nan_reward_stops_the_run_naming_the_step_and_keeps_the_last_good_weights(tmp_path, monkeypatch):
    from minirl.rl.grpo import GRPO, GRPOConfig
    from minirl.tasks import get_task

    model, snapshots = tiny_model(), {}
    rundir = RunDir(tmp_path / "run")
    task_class = type(get_task("add"))

    def poison_from_step_1(step, metrics):
        snapshots[step] = model.state_dict()
        monkeypatch.setattr(task_class, "reward", lambda self, prompt, completion: float("nan"))

    with pytest.raises(TrainingError, match=r"step 1: reward of sequence 0 is nan.*last good weights saved"):
        run(model, GRPO(GRPOConfig(num_prompts=2, num_generations=2, reward="partial")), steps=3, run=rundir,
            on_step=poison_from_step_1)
    assert sorted(snapshots) == [0]
    assert states_equal(model.state_dict(), snapshots[0])  # the NaN rollout changed nothing
    assert len(rundir.read_metrics()) == 1
    assert states_equal(minirl.load(rundir.checkpoint_path("last")).state_dict(), snapshots[0])


def test_inf_gradient_names_the_parameter():
    name = "model.layers.1.mlp.up_proj.weight"
    model, snapshots = tiny_model(), {}
    with pytest.raises(TrainingError, match=rf"step 2\b.*{name}") as err:
        run(model, Poisoned(at=2, param=name), on_step=lambda step, m: snapshots.setdefault(step, model.state_dict()))
    assert str(err.value).count("model.") == 1  # only the broken one is named
    assert states_equal(model.state_dict(), snapshots[1])


# ------------------------------------------------------------------------------------- precision
@pytest.mark.parametrize("precision, rounded", [("bf16", to_bf16), ("pure_bf16", to_bf16), ("fp16", to_fp16)])
def test_low_precision_stores_only_representable_weights(precision, rounded):
    model = tiny_model()
    run(model, sft(), steps=3, precision=precision)
    for name, w in model.state_dict().items():
        np.testing.assert_array_equal(w, rounded(w), err_msg=name)


def test_fp32_precision_does_not_round():
    model = tiny_model()
    run(model, sft(), steps=3, precision="fp32")
    weights = np.concatenate([w.ravel() for w in model.state_dict().values()])
    assert np.mean(weights != to_bf16(weights)) > 0.9


# -------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_finishes_the_step_saves_and_returns(tmp_path):
    rundir = RunDir(tmp_path / "run")
    handler = signal.getsignal(signal.SIGINT)

    def on_step(step, metrics):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    model = tiny_model()
    result = run(model, sft(), steps=10, run=rundir, on_step=on_step)
    assert result.interrupted and [h["step"] for h in result.history] == [0, 1, 2]
    assert len(rundir.read_metrics()) == 3
    assert rundir.checkpoints() == ["last"]
    assert states_equal(minirl.load(rundir.checkpoint_path("last")).state_dict(), model.state_dict())
    assert signal.getsignal(signal.SIGINT) is handler  # the loop put the old handler back


def test_second_ctrl_c_interrupts_at_once():
    handler = signal.getsignal(signal.SIGINT)

    def on_step(step, metrics):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        run(tiny_model(), sft(), steps=10, on_step=on_step)
    assert signal.getsignal(signal.SIGINT) is handler


# --------------------------------------------------------------------------------- config checks


@pytest.mark.parametrize("cls, kwargs, field", [
    (TrainConfig, dict(steps=-1), "steps"),
    (TrainConfig, dict(steps=2.5), "steps"),
    (TrainConfig, dict(grad_clip=0.0), "grad_clip"),
    (TrainConfig, dict(checkpoint_every=-1), "checkpoint_every"),
    (TrainConfig, dict(precision="fp8"), "precision"),
    (OptimizerConfig, dict(lr=-1e-3), "lr"),
    (OptimizerConfig, dict(lr=float("nan")), "lr"),
    (OptimizerConfig, dict(schedule="linear"), "schedule"),
    (OptimizerConfig, dict(warmup_steps=-1), "warmup_steps"),
    (OptimizerConfig, dict(schedule="cosine", min_lr_ratio=2.0), "min_lr_ratio"),
    (OptimizerConfig, dict(betas=(1.5, 0.999)), "betas"),
    (OptimizerConfig, dict(eps=0.0), "eps"),
    (OptimizerConfig, dict(weight_decay=-0.1), "weight_decay"),
    (OptimizerConfig, dict(momentum=1.0), "momentum"),
    (OptimizerConfig, dict(optimizer="lion"), "optimizer"),
])
def test_config_errors_name_the_field(cls, kwargs, field):
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    assert f"{cls.__name__}.{field} must be" in str(err.value)
