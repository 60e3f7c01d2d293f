"""The one training loop that pretraining, SFT and every RL algorithm share.

An algorithm is any object with
    name: str
    batch(policy, rng, step) -> batch          rollouts, preference pairs or a text batch
    minibatches(batch, rng) -> iterable        optional; default: the batch once
    loss(policy, minibatch) -> (Tensor, dict)  a scalar loss and float stats

and the loop is: batch -> for each minibatch: loss, backward, mask (subnetwork
fine-tuning only: `minirl.subnetwork`), clip, optimizer step (the precision
policy stores the weights) -> log. A non-finite loss or gradient stops
training with the step and the tensor named, before the optimizer touches the
weights, so the last good checkpoint stays good.
Ctrl-C finishes the current step, saves, and returns: nothing is lost.

Resume: every save of `checkpoints/last` (each `checkpoint_every` steps, at
the end, and on Ctrl-C) holds the weights and a `TrainState` (optimizer
state, RNG state, step, the algorithm's state), so a run stopped by Ctrl-C
or killed between checkpoints continues with `train(..., resume=True)` and
ends with the same bits as one that never stopped.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field

import numpy as np

from minirl.config import check_fields
from minirl.lora import dropout_state, set_dropout_state
from minirl.optim import OptimizerConfig, clip_grad_norm, make_optimizer, make_schedule
from minirl.precision import POLICY_NAMES
from minirl.rl.rollout import RewardError
from minirl.subnetwork import gradient_masks, mask_gradients


class TrainingError(RuntimeError):
    """Training stopped because something became NaN or infinite."""


@dataclass
class TrainConfig:
    """What every run shares: steps, precision, gradient clipping, seed, checkpoints."""

    steps: int = 100
    """Number of batches (rollouts for RL) to train on."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this (None: no clipping)."""
    precision: str = "bf16"
    """Weight storage: bf16 (fp32 master weights, bf16 stored), fp32, pure_bf16 or fp16."""
    seed: int = 0
    """Seed of every random choice in the run."""
    checkpoint_every: int = 0
    """Save a resumable `checkpoints/last` every this many steps (0: only at the end or on Ctrl-C)."""
    keep_every: int = 0
    """Also keep the weights every this many steps as `checkpoints/step_NNNNNN` (sparsity over training:
    `minirl analyze` between consecutive ones; 0: none)."""
    mask_from: str = ""
    """Subnetwork fine-tuning (docs/PAPERS.md §1): a run directory RUN (or RUN/checkpoints/NAME); every gradient is
    multiplied by the mask of the weights RUN updated (checkpoints/final against its init) before each update
    ("": no mask; see minirl.subnetwork)."""
    mask_tol: float | None = None
    """With mask_from: an entry counts as updated when its bf16 |delta| > mask_tol (none: when it changed at all,
    the paper's mask)."""

    def __post_init__(self):
        check_fields(self, [
            ("steps", int(self.steps) == self.steps and self.steps >= 0, "an integer >= 0"),
            ("grad_clip", self.grad_clip is None or self.grad_clip > 0, "> 0 or None"),
            ("precision", self.precision in POLICY_NAMES, "one of " + ", ".join(POLICY_NAMES)),
            ("checkpoint_every", int(self.checkpoint_every) == self.checkpoint_every and self.checkpoint_every >= 0,
             "an integer >= 0"),
            ("keep_every", int(self.keep_every) == self.keep_every and self.keep_every >= 0, "an integer >= 0"),
            ("mask_from", isinstance(self.mask_from, str), "a run directory or empty"),
            ("mask_tol", self.mask_tol is None or self.mask_tol >= 0, ">= 0 or None"),
        ])


@dataclass
class TrainState:
    """Where a run stands after a step: what `--resume` restores besides the weights."""

    step: int
    """Steps completed."""
    optimizer: dict
    """`Optimizer.state_dict()`: master weights, moments, step counts, base lr."""
    rng: dict
    """The run's `np.random.Generator` state (`bit_generator.state`)."""
    algorithm: dict = field(default_factory=dict)
    """The algorithm's own state (e.g. PPO's adaptive KL coefficient), if it has one."""
    wall_seconds: float = 0.0
    """Time spent in the loop so far, over every resumed part."""
    model_rng: dict = field(default_factory=dict)
    """The model's own generators (LoRA dropout), if it has any."""


@dataclass
class TrainResult:
    """What a finished (or interrupted) run returns."""

    history: list[dict] = field(default_factory=list)
    """One metrics dict per step (resumed runs: the earlier steps too)."""
    interrupted: bool = False
    """True when Ctrl-C stopped the run early."""
    wall_seconds: float = 0.0
    """Time spent in the loop (resumed runs: every part)."""


class _StopFlag:
    """First Ctrl-C asks the loop to stop after this step; a second one interrupts at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: keep the default behaviour
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def check_finite(step: int, loss, named_params) -> None:
    """Raise TrainingError naming the step and the first non-finite tensor."""
    value = float(loss.data)
    if not math.isfinite(value):
        raise TrainingError(f"step {step}: loss is {value}; this update was not applied")
    for name, p in named_params:
        if p.grad is not None and not np.isfinite(p.grad).all():
            raise TrainingError(f"step {step}: gradient of {name} is not finite; this update was not applied")


def train(policy, algo, config: TrainConfig, optim: OptimizerConfig | None = None, run=None, optimizer=None,
          progress: bool = True, on_step=None, params=None, resume: bool = False) -> TrainResult:
    """Train `policy` with `algo` for `config.steps` batches; log to `run` (a RunDir) if given.

    `params` are the (name, Parameter) pairs to update (default: all of the
    policy's); `optimizer` defaults to `make_optimizer(params, optim,
    config.precision)`, and the schedule of `optim` sets its lr to
    `optimizer.base_lr * schedule(update)` before every update. With
    `resume=True` the run continues from `run`'s `checkpoints/last` (weights,
    optimizer state, RNG state, step, the algorithm's state) when it has one;
    metrics logged after that checkpoint are dropped, so the resumed run logs
    exactly what an uninterrupted one would. `on_step(step, metrics)` is
    called after each step.
    """
    named = list(params if params is not None else policy.named_parameters())
    optim = optim if optim is not None else OptimizerConfig()
    if optimizer is None:
        optimizer = make_optimizer(named, optim, config.precision)
    updates_per_step = getattr(algo, "updates_per_step", 1)
    schedule = make_schedule(optim, config.steps * updates_per_step)
    masks = gradient_masks(config.mask_from, named, config.mask_tol) if config.mask_from else None
    rng = np.random.default_rng([config.seed, 1])
    result, start_step, elapsed = TrainResult(), 0, 0.0
    if resume and run is not None:
        state = run.load_state("last", policy)  # the weights go into the policy
        if state is not None:
            optimizer.load_state_dict(state.optimizer)
            rng.bit_generator.state = state.rng
            if state.algorithm:
                algo.load_state_dict(state.algorithm)
            if state.model_rng:
                set_dropout_state(policy, state.model_rng)
            start_step, elapsed = state.step, state.wall_seconds
        result.history = run.truncate_metrics(start_step)

    def snapshot(step: int) -> TrainState:
        algo_state = algo.state_dict() if hasattr(algo, "state_dict") else {}
        return TrainState(step, optimizer.state_dict(), rng.bit_generator.state, algo_state,
                          elapsed + time.perf_counter() - start, dropout_state(policy))

    start = time.perf_counter()
    bar = _progress(progress)
    done = start_step  # steps completed
    try:
        with _StopFlag() as stop, bar:
            task = bar.add_task(algo.name, total=config.steps, completed=start_step) if bar else None
            for step in range(start_step, config.steps):
                t0 = time.perf_counter()
                try:
                    batch = algo.batch(policy, rng, step)
                except RewardError as e:  # a NaN or infinite reward
                    raise TrainingError(f"step {step}: {e}") from e
                minibatches = algo.minibatches(batch, rng) if hasattr(algo, "minibatches") else [batch]
                stats_sum: dict[str, float] = {}
                n_updates = 0
                for mb in minibatches:
                    loss, stats = algo.loss(policy, mb)
                    optimizer.zero_grad()
                    loss.backward()
                    check_finite(step, loss, named)
                    # subnetwork fine-tuning masks before the clip (PAPERS.md names no order): the clip then
                    # scales, and grad_norm logs, only the gradient the update applies; masked entries stay 0 either way
                    if masks is not None:
                        mask_gradients(named, masks)
                    grad_norm = clip_grad_norm(optimizer.params, config.grad_clip) if config.grad_clip else float("nan")
                    optimizer.lr = optimizer.base_lr * schedule(optimizer.step_count)
                    optimizer.step()
                    for k, v in {"loss": float(loss.data), "grad_norm": grad_norm, **stats,
                                 **optimizer.step_stats()}.items():
                        stats_sum[k] = stats_sum.get(k, 0.0) + float(v)
                    n_updates += 1
                metrics = {"step": step, "lr": optimizer.lr, "step_seconds": time.perf_counter() - t0}
                metrics.update({k: v / max(n_updates, 1) for k, v in stats_sum.items()})
                metrics.update(getattr(batch, "stats", {}) or {})
                result.history.append(metrics)
                done = step + 1
                if run is not None:
                    run.log(metrics)
                    if config.checkpoint_every and done % config.checkpoint_every == 0:
                        run.save_state("last", policy, config.precision, snapshot(done))
                    if config.keep_every and done % config.keep_every == 0:
                        run.save_model(done, policy, config.precision)
                if on_step is not None:
                    on_step(step, metrics)
                if bar:
                    shown = {k: metrics[k] for k in ("loss", "reward", "accuracy") if k in metrics}
                    bar.update(task, advance=1, description=f"{algo.name} " + " ".join(f"{k} {v:.3f}" for k, v in shown.items()))
                if stop.requested:
                    result.interrupted = True
                    break
    except TrainingError as e:
        # nothing of the failing update was applied: the current weights are the last good ones. They are
        # saved without a training state: resuming would only fail the same way (the run is deterministic).
        if run is not None:
            path = run.save_state("last", policy, config.precision, None)
            e.args = (f"{e.args[0] if e.args else e}; last good weights saved to {path}",) + e.args[1:]
        raise
    result.wall_seconds = elapsed + time.perf_counter() - start
    if run is not None:
        run.save_state("last", policy, config.precision, snapshot(done))
    return result


def _progress(enabled: bool):
    """A rich progress bar, or a do-nothing context when disabled."""
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=False)


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False

    def __bool__(self):
        return False
