"""OnDARE, OnTIES and step-K as ``torch.optim.Optimizer``s: `minirl.merging.online` for PyTorch and TRL.

Lu et al. (Qwen), *Online Merging Optimizers for Boosting Rewards and
Mitigating Tax in Alignment*, arXiv 2405.17931 (2024). The semantics, the
option names and their defaults are those of the NumPy optimizers in
`minirl.merging.online` (its docstring is the specification; PAPERS.md §2):

    θ_t = θ_{t-1} · (1 - lr·wd) + (1 - α) F(Δθ_t) + α F(τ_r)

with Δθ_t torch's AdamW step (``-lr · m̂ / (√v̂ + eps)``), τ_r = θ_SFT - θ_base
(``ref_delta``, by parameter name), ``reserve_rate`` p, ``alpha`` α,
``rescale`` ("none", "inverse_p", "l1"), ``merge_every`` K (step-K: K - 1 plain
AdamW steps accumulate in Δc, the K-th undoes them and merges Δc + Δθ_K) and
``seed``. OnTIES trims each tensor to its k = max(1, int(p · numel)) largest
|entries| (ties: the lower flat index) and keeps the entries that agree with
the elected sign sign(τ_r' + Δθ') (0 → +).

What differs from NumPy, on purpose:

1. OnDARE's random masks come from ``torch.Generator``s on each parameter's
   device (τ_r's fixed mask from ``seed`` · 2 + 1, drawn at construction; the
   per-step masks from ``seed`` · 2, parameter by parameter in order): the
   same distribution as NumPy's, not the same bits. Every process of a
   data-parallel run draws the same masks, so the replicas stay identical.
   ``mask_fn(name, shape, kind)`` (kind "ref" or "step") replaces the draw:
   it returns the keep mask (bool), which is how the tests inject NumPy's.
2. τ_r itself is not kept, only F(τ_r) (one copy of the weights, not two).
3. Weights are updated in the parameters' own dtype: fp32 parameters are
   fp32 master weights; bf16 parameters make this minirl's ``pure_bf16``.

The file imports only torch, so `minirl export --format trl` copies it into
the recipe it writes (``merging_optim.py``), where ``train.py`` hands it to
TRL: ``trainer = GRPOTrainer(..., optimizers=(opt, scheduler))``.
"""

from __future__ import annotations

import math

import torch

RESCALES = ("none", "inverse_p", "l1")


def _check(field: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{field} must be {allowed}, got {value!r}")


# -- the sparsifying functions F (minirl.merging.online's dare_filter, topk_filter, sign_consensus) --------
def _l1_renorm(kept: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``kept`` scaled to the L1 norm of ``x`` (unchanged when nothing was kept)."""
    s_out = kept.abs().sum(dtype=torch.float64)
    if s_out == 0:
        return kept
    return kept * (x.abs().sum(dtype=torch.float64) / s_out).to(kept.dtype)


def dare_filter(x: torch.Tensor, keep: torch.Tensor | None, p: float, rescale: str) -> torch.Tensor:
    """F_R: ``x`` where ``keep`` (a bool mask; None keeps all), rescaled as ``rescale`` says."""
    if keep is None:
        return x
    kept = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
    if rescale == "inverse_p":
        return kept / p
    if rescale == "l1":
        return _l1_renorm(kept, x)
    return kept


def topk_filter(x: torch.Tensor, p: float, rescale: str = "none") -> torch.Tensor:
    """F for TIES: keep the k = max(1, int(p · numel)) largest |x| (ties: lower flat index), rescaled if "l1"."""
    if p == 1.0:
        return x
    k = max(1, int(p * x.numel()))
    flat = x.reshape(-1)
    top = torch.sort(-flat.abs(), stable=True).indices[:k]
    kept = torch.zeros_like(flat)
    kept[top] = flat[top]
    kept = kept.reshape(x.shape)
    return _l1_renorm(kept, x) if rescale == "l1" else kept


def sign_consensus(ref: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TIES' vote between τ_r' and Δθ': elected sign = sign(ref + delta), 0 → +; drop disagreeing entries."""
    elected_pos = (ref + delta) >= 0
    keep_ref = torch.where(elected_pos, ref > 0, ref < 0)
    keep_delta = torch.where(elected_pos, delta > 0, delta < 0)
    zero = torch.zeros((), dtype=ref.dtype, device=ref.device)
    return torch.where(keep_ref, ref, zero), torch.where(keep_delta, delta, zero)


# -- the optimizers -----------------------------------------------------------------------------------------
class _OnlineMerging(torch.optim.Optimizer):
    """torch's AdamW whose every step (or every K-th, step-K) is merged with the reference task vector τ_r."""

    rescales = RESCALES

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, *, ref_delta: dict, reserve_rate: float = 0.1, alpha: float = 1e-6,
                 rescale: str = "none", merge_every: int = 1, seed: int = 0, mask_fn=None):
        named = list(params)
        _check("params", "[]", bool(named) and all(isinstance(x, tuple) and len(x) == 2 for x in named),
               "(name, parameter) pairs, as model.named_parameters() gives (τ_r is matched by name)")
        _check("lr", lr, lr >= 0, ">= 0")
        _check("betas", betas, all(0 <= b < 1 for b in betas), "two numbers in [0, 1)")
        _check("eps", eps, eps > 0, "> 0")
        _check("weight_decay", weight_decay, weight_decay >= 0, ">= 0")
        _check("reserve_rate", reserve_rate, 0 < reserve_rate <= 1, "in (0, 1]")
        _check("alpha", alpha, 0 <= alpha <= 1, "in [0, 1]")
        _check("rescale", rescale, rescale in self.rescales, "one of " + ", ".join(self.rescales))
        _check("merge_every", merge_every, isinstance(merge_every, int) and not isinstance(merge_every, bool)
               and merge_every >= 1, "an int >= 1")
        _check("seed", seed, isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0, "an int >= 0")
        self.reserve_rate, self.alpha, self.rescale = float(reserve_rate), float(alpha), rescale
        self.merge_every, self.seed, self.mask_fn = int(merge_every), int(seed), mask_fn
        self.names = [n for n, _ in named]
        super().__init__([p for _, p in named], dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        missing = sorted(set(self.names) - set(ref_delta))
        extra = sorted(set(ref_delta) - set(self.names))
        if missing or extra:
            raise ValueError(f"ref_delta names must match the parameters: missing {missing}, unexpected {extra}")
        self._generators: dict = {}
        total, count = 0.0, 0
        for name, p in named:
            tau = torch.as_tensor(ref_delta[name]).to(device=p.device, dtype=p.dtype)
            if tau.shape != p.shape:
                raise ValueError(f"ref_delta[{name!r}] shape {tuple(tau.shape)} != param shape {tuple(p.shape)}")
            total += float(tau.double().square().sum())
            count += tau.numel()
            self.state[p]["ref_filtered"] = self.filter(tau, name, "ref")  # F(τ_r), one fixed mask
        self.ref_rms = math.sqrt(total / count) if count else 0.0
        """rms(τ_r) over every optimised weight (for ``step_stats``' merge ratio)."""
        self._step_sq = [0.0, 0]

    # -- masks ---------------------------------------------------------------------------------------
    def keep_mask(self, name: str, like: torch.Tensor, kind: str) -> torch.Tensor:
        """OnDARE's keep-p mask for one tensor: ``mask_fn``'s, or a draw from the (device, kind) generator."""
        if self.mask_fn is not None:
            return torch.as_tensor(self.mask_fn(name, tuple(like.shape), kind), device=like.device).bool()
        key = (str(like.device), kind)
        gen = self._generators.get(key)
        if gen is None:
            gen = self._generators[key] = torch.Generator(device=like.device)
            gen.manual_seed(self.seed * 2 + (1 if kind == "ref" else 0))
        return torch.rand(like.shape, generator=gen, device=like.device) < self.reserve_rate

    def filter(self, x: torch.Tensor, name: str, kind: str) -> torch.Tensor:
        """F, the sparsification of one tensor."""
        raise NotImplementedError

    def merge(self, p: torch.Tensor, name: str, delta: torch.Tensor) -> torch.Tensor:
        """The merged update of one parameter from its (accumulated) AdamW delta."""
        raise NotImplementedError

    # -- the step ------------------------------------------------------------------------------------
    def step_stats(self) -> dict[str, float]:
        """``merge_ratio`` = α · rms(τ_r) / rms(Δθ_t) of the last step (as the NumPy optimizers report it)."""
        total, count = self._step_sq
        step_rms = math.sqrt(total / count) if count else 0.0
        return {"merge_ratio": self.alpha * self.ref_rms / step_rms} if step_rms else {}

    @torch.no_grad()
    def step(self, closure=None):
        """1) torch's Adam step Δθ, 2) step-K / merge, 3) decoupled decay ``w *= 1 - lr·wd``, 4) ``w += Δ``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step_sq = [0.0, 0]
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue  # as torch: no state update, no weight decay
                name, st, grad = self.names[index[id(p)]], self.state[p], p.grad
                if "step" not in st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                m, v, t = st["exp_avg"], st["exp_avg_sq"], st["step"]
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = lr / (1 - beta1**t)
                denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
                delta = (m / denom).mul_(-step_size)
                self._step_sq[0] += float(delta.double().square().sum())
                self._step_sq[1] += delta.numel()
                K = self.merge_every
                if K > 1:
                    acc = st.get("merge_acc")
                    if acc is None:
                        acc = st["merge_acc"] = torch.zeros_like(p)
                    if t % K:  # a plain AdamW step, remembered in Δc
                        acc.add_(delta)
                    else:  # the K-th: undo the K - 1 plain steps, merge all K as one Δθ
                        p.sub_(acc)
                        delta = acc + delta
                        acc.zero_()
                        delta = self.merge(p, name, delta)
                else:
                    delta = self.merge(p, name, delta)
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(delta)
        return loss


class OnDARE(_OnlineMerging):
    """AdamW with online DARE merging: ``Δ = (1 - α) F_R(Δθ_t) + α F_R(τ_r)``, F_R a random keep-p mask."""

    def filter(self, x, name, kind):
        """F_R: each entry kept with probability p (no draw at p = 1)."""
        keep = None if self.reserve_rate == 1.0 else self.keep_mask(name, x, kind)
        return dare_filter(x, keep, self.reserve_rate, self.rescale)

    def merge(self, p, name, delta):
        """(1 - α) F_R(Δθ) + α F_R(τ_r), with a fresh mask for Δθ."""
        kept = self.filter(delta, name, "step")
        if self.alpha == 0.0:
            return kept
        return (1.0 - self.alpha) * kept + self.alpha * self.state[p]["ref_filtered"]


class OnTIES(_OnlineMerging):
    """AdamW with online TIES merging: top-p trim of Δθ_t and τ_r, sign consensus, ``(1 - α) Δθ' + α τ_r'``."""

    rescales = ("none", "l1")

    def filter(self, x, name=None, kind=None):
        """Top-p fraction by magnitude (deterministic)."""
        return topk_filter(x, self.reserve_rate, self.rescale)

    def merge(self, p, name, delta):
        """Trim Δθ, vote with τ_r', keep agreeing entries, weight by 1 - α and α."""
        ref, kept = sign_consensus(self.state[p]["ref_filtered"], self.filter(delta))
        if self.alpha == 0.0:
            return kept
        return (1.0 - self.alpha) * kept + self.alpha * ref


OPTIMIZERS = {"ondare": OnDARE, "onties": OnTIES}
"""minirl's optimizer names (OptimizerConfig.optimizer) -> the torch classes."""


def make_optimizer(kind: str, named_params, ref_delta: dict, *, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                   weight_decay: float = 0.0, reserve_rate: float = 0.1, merge_weight: float = 1e-6,
                   merge_rescale: str = "none", merge_every: int = 1, mask_seed: int = 0):
    """The optimizer of a minirl ``[optimizer]`` section (its field names: merge_weight is α, mask_seed the seed)."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {kind!r}")
    return OPTIMIZERS[kind](named_params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                            ref_delta=ref_delta, reserve_rate=reserve_rate, alpha=merge_weight,
                            rescale=merge_rescale, merge_every=int(merge_every), seed=int(mask_seed))
