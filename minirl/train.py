"""The one training loop that pretraining, SFT and every RL algorithm share.

An algorithm is any object with
    name: str
    batch(policy, rng, step) -> batch          rollouts, preference pairs or a text batch
    minibatches(batch, rng) -> iterable        optional; default: the batch once
    loss(policy, minibatch) -> (Tensor, dict)  a scalar loss and float stats

and the loop is: batch -> for each minibatch: loss, backward, clip, optimizer
step (the precision policy stores the weights) -> log. A non-finite loss or
gradient stops training with the step and the tensor named, before the
optimizer touches the weights, so the last good checkpoint stays good.
Ctrl-C finishes the current step, saves, and returns: nothing is lost.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from minirl.optim import AdamW, LRSchedule, clip_grad_norm
from minirl.precision import POLICY_NAMES
from minirl.rl.rollout import RewardError


class TrainingError(RuntimeError):
    """Training stopped because something became NaN or infinite."""


@dataclass
class TrainConfig:
    """What every run shares: steps, optimiser, precision, seed, logging."""

    steps: int = 100
    """Number of batches (rollouts for RL) to train on."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    schedule: str = "constant"
    """Learning-rate schedule: constant, linear_warmup or cosine."""
    warmup_steps: int = 0
    """Linear warmup steps (optimizer steps)."""
    min_lr_ratio: float = 0.1
    """Cosine only: final lr as a fraction of the peak."""
    weight_decay: float = 0.0
    """Decoupled weight decay of AdamW."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's moment decay rates."""
    eps: float = 1e-8
    """AdamW's epsilon."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this (None: no clipping)."""
    precision: str = "bf16"
    """Weight storage: bf16 (fp32 master weights, bf16 stored), fp32, pure_bf16 or fp16."""
    seed: int = 0
    """Seed of every random choice in the run."""
    checkpoint_every: int = 0
    """Save `checkpoints/last` every this many steps (0: only at the end)."""

    def __post_init__(self):
        if int(self.steps) < 0:
            raise ValueError(f"TrainConfig.steps must be >= 0, got {self.steps}")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig.lr must be a finite number >= 0, got {self.lr}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainConfig.grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.checkpoint_every < 0:
            raise ValueError(f"TrainConfig.checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.precision not in POLICY_NAMES:
            raise ValueError(f"TrainConfig.precision must be one of {', '.join(POLICY_NAMES)}; got {self.precision!r}")
        if int(self.warmup_steps) < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ValueError(f"TrainConfig.eps must be > 0, got {self.eps}")
        if not self.weight_decay >= 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        self.schedule_fn()  # validates schedule, warmup_steps, min_lr_ratio

    def schedule_fn(self, total_updates: int | None = None) -> LRSchedule:
        total = max(total_updates or self.steps, 1, self.warmup_steps)
        if self.schedule not in ("constant", "linear_warmup", "cosine"):
            raise ValueError(f"TrainConfig.schedule must be one of constant, linear_warmup, cosine; got {self.schedule!r}")
        if self.schedule == "cosine":
            return LRSchedule("cosine", self.warmup_steps, total, self.min_lr_ratio)
        return LRSchedule(self.schedule, self.warmup_steps)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """What a finished (or interrupted) run returns."""

    history: list[dict] = field(default_factory=list)
    """One metrics dict per step."""
    interrupted: bool = False
    """True when Ctrl-C stopped the run early."""
    wall_seconds: float = 0.0
    """Time spent in the loop."""


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


def train(policy, algo, config: TrainConfig, run=None, optimizer=None, progress: bool = True,
          on_step=None, params=None) -> TrainResult:
    """Train `policy` with `algo` for `config.steps` batches; log to `run` (a RunDir) if given.

    `params` are the (name, Parameter) pairs to update (default: all of the
    policy's); `optimizer` defaults to AdamW with the config's settings and
    precision policy. `on_step(step, metrics)` is called after each step.
    """
    named = list(params if params is not None else policy.named_parameters())
    if optimizer is None:
        optimizer = AdamW(named, lr=config.lr, betas=config.betas, eps=config.eps,
                          weight_decay=config.weight_decay, precision=config.precision)
    updates_per_step = getattr(algo, "updates_per_step", 1)
    schedule = config.schedule_fn(config.steps * updates_per_step)
    rng = np.random.default_rng([config.seed, 1])
    result = TrainResult()
    start = time.perf_counter()
    bar = _progress(progress)
    try:
        with _StopFlag() as stop, bar:
            task = bar.add_task(algo.name, total=config.steps) if bar else None
            for step in range(config.steps):
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
                    grad_norm = clip_grad_norm(optimizer.params, config.grad_clip) if config.grad_clip else float("nan")
                    optimizer.lr = config.lr * schedule(optimizer.step_count)
                    optimizer.step()
                    for k, v in {"loss": float(loss.data), "grad_norm": grad_norm, **stats}.items():
                        stats_sum[k] = stats_sum.get(k, 0.0) + float(v)
                    n_updates += 1
                metrics = {"step": step, "lr": optimizer.lr, "step_seconds": time.perf_counter() - t0}
                metrics.update({k: v / max(n_updates, 1) for k, v in stats_sum.items()})
                metrics.update(getattr(batch, "stats", {}) or {})
                result.history.append(metrics)
                if run is not None:
                    run.log(metrics)
                    if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0:
                        run.save_model("last", policy, config.precision)
                if on_step is not None:
                    on_step(step, metrics)
                if bar:
                    shown = {k: metrics[k] for k in ("loss", "reward", "accuracy") if k in metrics}
                    bar.update(task, advance=1, description=f"{algo.name} " + " ".join(f"{k} {v:.3f}" for k, v in shown.items()))
                if stop.requested:
                    result.interrupted = True
                    break
    except TrainingError as e:
        # nothing of the failing update was applied: the current weights are the last good ones
        if run is not None:
            path = run.save_model("last", policy, config.precision)
            e.args = (f"{e.args[0] if e.args else e}; last good weights saved to {path}",) + e.args[1:]
        raise
    result.wall_seconds = time.perf_counter() - start
    if run is not None:
        run.save_model("last", policy, config.precision)
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
