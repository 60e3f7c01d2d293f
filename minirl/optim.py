"""Optimizers (SGD, AdamW), gradient clipping and learning-rate schedules.

AdamW follows Loshchilov & Hutter, *Decoupled Weight Decay Regularization*
(arXiv 1711.05101) exactly as ``torch.optim.AdamW`` implements it (single-tensor
path): decay ``p *= 1 - lr*wd`` first, then the bias-corrected Adam step with
eps added after ``sqrt(v_hat)``. SGD is ``torch.optim.SGD`` (coupled L2 weight
decay, momentum buffer initialised to the first gradient, no dampening).
``clip_grad_norm`` is ``torch.nn.utils.clip_grad_norm_``.

Precision (DESIGN.md, "Precision"): with a ``PrecisionPolicy`` that
``needs_master`` (bf16, fp16) the optimizer keeps fp32 master weights, applies
every update to them and writes the rounded copy into ``p.data``; updates below
half a storage ULP then accumulate in the master until they cross it. With
"pure_bf16" the update is applied to ``p.data`` itself and rounded, so such
updates are lost for good. With "fp32" (or None) the master *is* ``p.data``.

Parameters are duck-typed: anything with ``.data`` (float32 ndarray, updated
in place) and ``.grad`` (ndarray or None = skip), passed as a list or as a list
of ``(name, param)`` pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from minirl.config import check_fields
from minirl.precision import PrecisionPolicy, get_policy


def _named(params) -> tuple[list[str], list]:
    """Split params, (name, param) pairs or a {name: param} dict into names and params."""
    params = list(params.items()) if isinstance(params, dict) else list(params)
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    if all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in params):
        names, ps = [n for n, _ in params], [p for _, p in params]
    else:
        names, ps = [f"param{i}" for i in range(len(params))], params
    if len(set(names)) != len(names):
        raise ValueError("optimizer parameter names must be unique")
    return names, ps


def _check(field: str, value: float, ok: bool, allowed: str) -> None:
    """Raise ValueError naming the field and the allowed range unless ok."""
    if not ok:
        raise ValueError(f"{field} must be {allowed}, got {value!r}")


class Optimizer:
    """Shared step loop: delta -> transform_delta hook -> (decay, apply) -> store."""

    def __init__(self, params, lr: float, precision: PrecisionPolicy | str | None = None):
        self.names, self.params = _named(params)
        self.lr = lr
        self.base_lr = self.lr
        """The lr given at construction; schedules set ``lr = base_lr * schedule(step)``."""
        self.policy = get_policy(precision)
        self.step_count = 0
        """Number of ``step()`` calls so far."""
        self.state: list[dict] = [{} for _ in self.params]
        """Per-parameter state: numpy arrays and the parameter's own step count."""
        # The weights every update is applied to: an fp32 copy for master
        # policies, p.data itself otherwise.
        self.master: list[np.ndarray | None] = [None] * len(self.params)
        for i, p in enumerate(self.params):
            if self.policy.needs_master:
                # the master starts from the stored (rounded) weights, on the storage grid: an fp32
                # init held off the grid would let sub-ULP updates flip stored weights at once
                self.master[i] = self.policy.store(p.data)
            self._store(i)  # stored weights are representable from step 0

    # -- hyperparameters -------------------------------------------------------
    @property
    def lr(self) -> float:
        """Current learning rate (schedules set it before each step)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        _check("lr", value, value >= 0, ">= 0")
        self._lr = float(value)

    # -- the step ----------------------------------------------------------------
    def weights(self, i: int) -> np.ndarray:
        """The array parameter i's updates are applied to (master or p.data)."""
        return self.master[i] if self.master[i] is not None else self.params[i].data

    def _store(self, i: int) -> None:
        """Write parameter i's stored weights from its master (rounding if the policy says so)."""
        p = self.params[i]
        if self.master[i] is not None:
            p.data[...] = self.policy.store(self.master[i])
        elif self.policy.rounds:
            p.data[...] = self.policy.store(p.data)

    def _delta(self, i: int, grad: np.ndarray) -> np.ndarray:
        """The raw update for parameter i (updates the moment state)."""
        raise NotImplementedError

    def _decay_factor(self) -> float:
        """Multiplier applied to the weights before the delta (decoupled decay)."""
        return 1.0

    def transform_delta(self, i: int, name: str, delta: np.ndarray) -> np.ndarray:
        """Hook for online-merging optimizers (OnDARE/OnTIES): identity here."""
        return delta

    def step_stats(self) -> dict[str, float]:
        """Statistics of the last ``step()`` that training logs beside the loss (online merging: its merge ratio)."""
        return {}

    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        self.step_count += 1
        decay = self._decay_factor()
        for i, (name, p) in enumerate(zip(self.names, self.params)):
            if p.grad is None:
                continue  # as torch: no state update, no weight decay
            grad = np.asarray(p.grad, dtype=np.float32)
            if grad.shape != p.data.shape:
                raise ValueError(f"{name}: grad shape {grad.shape} != param shape {p.data.shape}")
            # 1) plain optimizer step, 2) hook, 3) decay-then-add, 4) store
            delta = self._delta(i, grad)
            delta = self.transform_delta(i, name, delta)
            w = self.weights(i)
            if decay != 1.0:
                w *= decay
            w += delta
            self._store(i)

    def zero_grad(self) -> None:
        """Drop every gradient (p.grad = None)."""
        for p in self.params:
            p.grad = None

    # -- resume --------------------------------------------------------------
    def hyperparams(self) -> dict:
        """JSON-able hyperparameters (for state_dict and run configs)."""
        return {}

    def state_dict(self) -> dict:
        """Copy of the optimizer state: JSON-able scalars plus a flat ``tensors`` dict.

        ``tensors`` maps ``"{param name}:{key}"`` to float32 arrays, so the whole
        state saves as ``save_checkpoint(path, sd["tensors"], {k: v ...}, "fp32")``.
        """
        tensors, steps = {}, {}
        for name, st, m in zip(self.names, self.state, self.master):
            for key, value in st.items():
                if key == "step":
                    steps[name] = int(value)
                else:
                    tensors[f"{name}:{key}"] = np.array(value, copy=True)
            if m is not None:
                tensors[f"{name}:master"] = m.copy()
        return {
            "type": type(self).__name__,
            "lr": self.lr,
            "base_lr": self.base_lr,
            "hyperparams": self.hyperparams(),
            "precision": self.policy.name,
            "step_count": self.step_count,
            "param_steps": steps,
            "names": list(self.names),
            "tensors": tensors,
        }

    def load_state_dict(self, sd: dict) -> None:
        """Restore a ``state_dict()``; the stored weights are re-derived from the masters."""
        if sd["names"] != self.names:
            missing = sorted(set(self.names) - set(sd["names"]))
            extra = sorted(set(sd["names"]) - set(self.names))
            raise ValueError(f"state_dict parameter names differ: missing {missing}, unexpected {extra}")
        if sd.get("precision", self.policy.name) != self.policy.name:
            raise ValueError(f"state_dict precision {sd['precision']!r} != optimizer's {self.policy.name!r}")
        by_param: dict[str, dict] = {name: {} for name in self.names}
        for key, value in sd["tensors"].items():
            pname, _, k = key.rpartition(":")
            if pname not in by_param:
                raise ValueError(f"state_dict tensor {key!r} names no parameter of this optimizer")
            by_param[pname][k] = value
        for i, name in enumerate(self.names):
            shape = self.params[i].data.shape
            st = {}
            for k, value in by_param[name].items():
                key = f"{name}:{k}"
                if value.shape != shape:
                    raise ValueError(f"state_dict {key}: shape {value.shape} != param shape {shape}")
                if k == "master":
                    if self.master[i] is None:
                        raise ValueError(f"state_dict has {key} but precision {self.policy.name} keeps no master")
                    self.master[i][...] = value
                else:
                    st[k] = np.array(value, dtype=np.float32, copy=True)
            if name in sd["param_steps"]:
                st["step"] = int(sd["param_steps"][name])
            self.state[i] = st
            self._store(i)
        self.lr, self.base_lr = sd["lr"], sd.get("base_lr", sd["lr"])
        self.step_count = int(sd["step_count"])


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and (coupled) L2 weight decay, as torch.optim.SGD."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, precision=None):
        _check("momentum", momentum, 0 <= momentum < 1, "in [0, 1)")
        _check("weight_decay", weight_decay, weight_decay >= 0, ">= 0")
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        super().__init__(params, lr, precision)

    def hyperparams(self) -> dict:
        """JSON-able hyperparameters."""
        return {"momentum": self.momentum, "weight_decay": self.weight_decay}

    def _delta(self, i, grad):
        """``-lr * buf`` with ``buf = momentum * buf + (grad + wd * w)``."""
        if self.weight_decay:
            grad = grad + self.weight_decay * self.weights(i)  # torch: coupled L2 on the gradient
        if self.momentum:
            st = self.state[i]
            if "momentum_buffer" not in st:
                st["momentum_buffer"] = grad.copy()  # torch starts the buffer at the first gradient
            else:
                st["momentum_buffer"] *= self.momentum
                st["momentum_buffer"] += grad
            grad = st["momentum_buffer"]
        return -self.lr * grad


class AdamW(Optimizer):
    """Adam with decoupled weight decay, exactly torch.optim.AdamW.

    Per parameter: (1) ``delta = _adam_delta(i, grad) = -lr * m_hat / (sqrt(v_hat) + eps)``
    (no weight decay, updates m and v); (2) ``delta = transform_delta(i, name, delta)``,
    the hook online-merging subclasses override; (3) ``w = w * (1 - lr*wd) + delta``.
    Step 3 is torch's order (decay, then add the step), read as "decay the
    pre-update weights, then add the (merged) delta": it equals PAPERS.md's
    "decay after the merge" up to the O(lr*wd*delta) term and keeps plain AdamW
    bit-compatible with torch.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, precision=None):
        _check("betas[0]", betas[0], 0 <= betas[0] < 1, "in [0, 1)")
        _check("betas[1]", betas[1], 0 <= betas[1] < 1, "in [0, 1)")
        _check("eps", eps, eps > 0, "> 0")
        _check("weight_decay", weight_decay, weight_decay >= 0, ">= 0")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps, self.weight_decay = float(eps), float(weight_decay)
        super().__init__(params, lr, precision)

    def hyperparams(self) -> dict:
        """JSON-able hyperparameters."""
        return {"betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}

    def _decay_factor(self) -> float:
        """Decoupled weight decay: ``w *= 1 - lr * wd``."""
        return 1.0 - self.lr * self.weight_decay

    def _adam_delta(self, i: int, grad: np.ndarray) -> np.ndarray:
        """Bias-corrected Adam step ``-lr * m_hat / (sqrt(v_hat) + eps)``, updating m and v."""
        beta1, beta2 = self.betas
        st = self.state[i]
        if not st:
            st["step"] = 0
            st["exp_avg"] = np.zeros_like(grad)
            st["exp_avg_sq"] = np.zeros_like(grad)
        st["step"] += 1
        m, v, t = st["exp_avg"], st["exp_avg_sq"], st["step"]
        m += (1 - beta1) * (grad - m)  # torch: exp_avg.lerp_(grad, 1 - beta1)
        v *= beta2
        v += (1 - beta2) * grad * grad
        # torch's arithmetic order: the lr/bc1 step size, sqrt(v)/sqrt(bc2) + eps
        step_size = self.lr / (1 - beta1**t)
        denom = np.sqrt(v) / math.sqrt(1 - beta2**t) + self.eps
        return -step_size * (m / denom)  # torch: param.addcdiv_(m, denom, value=-step_size)

    def _delta(self, i, grad):
        """AdamW's raw delta is the plain Adam step."""
        return self._adam_delta(i, grad)


def clip_grad_norm(params, max_norm: float, error_if_nonfinite: bool = False) -> float:
    """Scale all grads so their global L2 norm is at most max_norm; return the norm before clipping.

    torch's ``clip_grad_norm_``: ``coef = max_norm / (total + 1e-6)``, applied when
    ``coef < 1``. A non-finite norm leaves the grads untouched (so the caller
    can skip the step) or raises if ``error_if_nonfinite``.
    """
    _check("max_norm", max_norm, max_norm > 0, "> 0")
    _, ps = _named(params)
    grads = [p.grad for p in ps if p.grad is not None]
    if not grads:
        return 0.0
    norms = np.array([np.linalg.norm(np.ravel(g).astype(np.float32)) for g in grads], dtype=np.float32)
    total = float(np.linalg.norm(norms))
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise ValueError(f"gradient norm is {total}; refusing to clip")
        return total
    clip_coef = max_norm / (total + 1e-6)
    if clip_coef < 1:
        for g in grads:
            g *= np.float32(clip_coef)  # in place, keeping each grad's dtype
    return total


@dataclass(frozen=True)
class LRSchedule:
    """A learning-rate multiplier as a function of the 0-based step about to be taken."""

    kind: str = "constant"
    """"constant", "linear_warmup" or "cosine"."""
    warmup_steps: int = 0
    """Steps of linear warmup; the multiplier is (step + 1) / warmup_steps during them."""
    total_steps: int = 0
    """Cosine only: the step at which the multiplier reaches min_ratio (>= warmup_steps, >= 1)."""
    min_ratio: float = 0.0
    """Cosine only: the final multiplier, in [0, 1]."""

    def __post_init__(self):
        _check("kind", self.kind, self.kind in ("constant", "linear_warmup", "cosine"),
               'one of "constant", "linear_warmup", "cosine"')
        _check("warmup_steps", self.warmup_steps,
               isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "an int >= 0")
        if self.kind == "cosine":
            _check("total_steps", self.total_steps,
                   isinstance(self.total_steps, int) and self.total_steps >= max(1, self.warmup_steps),
                   f"an int >= max(1, warmup_steps={self.warmup_steps})")
            _check("min_ratio", self.min_ratio, 0 <= self.min_ratio <= 1, "in [0, 1]")

    def __call__(self, step: int) -> float:
        """Multiplier for 0-based step ``step``."""
        _check("step", step, step >= 0, ">= 0")
        # 1) linear warmup, reaching 1 on the last warmup step
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind != "cosine":
            return 1.0
        # 2) cosine decay from 1 at the end of warmup to min_ratio at total_steps, then flat
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def constant() -> LRSchedule:
    """Multiplier 1 at every step."""
    return LRSchedule("constant")


def linear_warmup(warmup_steps: int) -> LRSchedule:
    """(step + 1) / warmup_steps during warmup, then 1."""
    return LRSchedule("linear_warmup", warmup_steps=warmup_steps)


def cosine(total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0) -> LRSchedule:
    """Linear warmup, then cosine decay to min_ratio at total_steps."""
    return LRSchedule("cosine", warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio)


# -- configuration and the registry -----------------------------------------------------
SCHEDULES = ("constant", "linear_warmup", "cosine")
MERGE_RESCALES = ("none", "inverse_p", "l1")


@dataclass
class OptimizerConfig:
    """Which optimizer updates the weights, and its learning rate over the run."""

    optimizer: str = "adamw"
    """The optimizer, by its name in the registry `minirl.optim.OPTIMIZERS`: adamw, sgd, ondare, onties, ema or
    childtuning (the last four: `minirl.merging.online`)."""
    lr: float = 1e-3
    """Peak learning rate: the schedule sets lr = lr * schedule(step)."""
    schedule: str = "constant"
    """Learning-rate schedule: constant, linear_warmup or cosine."""
    warmup_steps: int = 0
    """Linear warmup over this many optimizer updates."""
    min_lr_ratio: float = 0.1
    """Cosine only: the final lr as a fraction of the peak."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's moment decay rates."""
    eps: float = 1e-8
    """AdamW's epsilon."""
    weight_decay: float = 0.0
    """Weight decay: decoupled for AdamW, L2 on the gradient for SGD."""
    momentum: float = 0.0
    """SGD only: momentum."""
    reserve_rate: float = 0.1
    """ondare, onties, childtuning: the fraction p of entries kept each step (paper: 0.01 over ~15k steps; 0.1 keeps
    p x steps in the paper's range for minirl's 150-step runs, see minirl.merging.online)."""
    merge_weight: float = 1e-6
    """ondare, onties: alpha, the weight of the reference task vector in each merge (paper: 1e-7 at 7B; 1e-6 gives
    the paper's alpha rms(tau_r) / rms(step) at lr 1e-4, see minirl.merging.online)."""
    merge_every: int = 1
    """ondare, onties: merge every K optimizer updates, plain AdamW in between (step-K; 1 = online merging)."""
    merge_base: str = "base"
    """ondare, onties: the base model of tau_r = theta(merge_ref) - theta(merge_base): a shipped name or a path."""
    merge_ref: str = "sft"
    """ondare, onties: the reference (SFT) model of tau_r: a shipped name or a path."""
    merge_rescale: str = "none"
    """ondare, onties: rescale what the sparsifier keeps: none (paper), inverse_p (ondare only: the official
    code's dropout) or l1 (the official code's rescale option)."""
    ema_decay: float = 0.999
    """ema: d in theta_avg = d theta_avg + (1 - d) theta (the official code's ema_rate 1e-3 = 1 - d)."""
    mask_seed: int = 0
    """ondare, childtuning: seed of the random masks (a run takes its [train] seed unless this is given)."""

    def __post_init__(self):
        self.betas = tuple(self.betas)
        check_fields(self, [
            ("optimizer", self.optimizer in OPTIMIZERS, "one of " + ", ".join(OPTIMIZERS)),
            ("lr", self.lr >= 0 and math.isfinite(self.lr), "a finite number >= 0"),
            ("schedule", self.schedule in SCHEDULES, "one of " + ", ".join(SCHEDULES)),
            ("warmup_steps", int(self.warmup_steps) == self.warmup_steps and self.warmup_steps >= 0, "an integer >= 0"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            ("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "two numbers in [0, 1)"),
            ("eps", self.eps > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("reserve_rate", 0 < self.reserve_rate <= 1, "in (0, 1]"),
            ("merge_weight", 0 <= self.merge_weight <= 1, "in [0, 1]"),
            ("merge_every", int(self.merge_every) == self.merge_every and self.merge_every >= 1, "an integer >= 1"),
            ("merge_base", isinstance(self.merge_base, str) and self.merge_base != "", "a model name or path"),
            ("merge_ref", isinstance(self.merge_ref, str) and self.merge_ref != "", "a model name or path"),
            ("merge_rescale", self.merge_rescale in MERGE_RESCALES, "one of " + ", ".join(MERGE_RESCALES)),
            ("merge_rescale", not (self.optimizer == "onties" and self.merge_rescale == "inverse_p"),
             "none or l1 for onties (a top-p trim has no 1/p)"),
            ("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1)"),
            ("mask_seed", int(self.mask_seed) == self.mask_seed and self.mask_seed >= 0, "an integer >= 0"),
        ])
        self.warmup_steps = int(self.warmup_steps)
        self.merge_every, self.mask_seed = int(self.merge_every), int(self.mask_seed)


def _adamw(params, c: OptimizerConfig, precision) -> AdamW:
    return AdamW(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, precision=precision)


def _sgd(params, c: OptimizerConfig, precision) -> SGD:
    return SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, precision=precision)


def _online(kind: str):
    """Factory of an optimizer in `minirl.merging.online` (imported on use: it subclasses AdamW)."""
    def factory(params, c: OptimizerConfig, precision):
        from minirl.merging.online import make_online_optimizer

        return make_online_optimizer(kind, params, c, precision)

    factory.__name__ = f"_{kind}"
    return factory


OPTIMIZERS = {"adamw": _adamw, "sgd": _sgd,
              **{kind: _online(kind) for kind in ("ondare", "onties", "ema", "childtuning")}}
"""name -> factory(params, OptimizerConfig, precision) -> Optimizer; `register_optimizer` adds one."""


def register_optimizer(name: str, factory) -> None:
    """Make `--optimizer NAME` build `factory(params, config, precision)` (online merging plugs in here)."""
    OPTIMIZERS[name] = factory


def make_optimizer(params, config: OptimizerConfig, precision=None) -> Optimizer:
    """The optimizer `config.optimizer` over `params` ((name, parameter) pairs), at `config.lr` as its base_lr."""
    return OPTIMIZERS[config.optimizer](params, config, precision)


def make_schedule(config: OptimizerConfig, total_updates: int) -> LRSchedule:
    """The lr multiplier of `config.schedule` over a run of `total_updates` optimizer updates."""
    if config.schedule == "cosine":
        return cosine(max(total_updates, 1, config.warmup_steps), config.warmup_steps, config.min_lr_ratio)
    return LRSchedule(config.schedule, config.warmup_steps)
