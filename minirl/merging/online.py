"""Online merging optimizers (OnDARE, OnTIES) and the EMA and ChildTuning baselines, as AdamW subclasses.

Lu et al. (Qwen), *Online Merging Optimizers for Boosting Rewards and
Mitigating Tax in Alignment*, arXiv 2405.17931 (2024); official code
QwenLM/online_merging_optimizers, ``online_merging/optimizers.py``
(``ODAdamW``, ``OTAdamW``). PAPERS.md §2 is the specification.

The relaxed online merge
------------------------
The policy starts at the SFT model θ_SFT, which was fine-tuned from a base
θ_base; the reference task vector is ``τ_r = θ_SFT - θ_base``. Let Δθ_t be
the plain AdamW step at step t. Instead of ``θ_t = θ_{t-1} + Δθ_t`` every
step merges the step with τ_r, as offline merging merges task vectors::

    θ_t = θ_{t-1} + (1 - α) F(Δθ_t) + α F(τ_r)

- **OnDARE** (Eqs. 3-4): F = F_R keeps each entry independently with
  probability p (the reserve rate): a fresh mask every step for Δθ_t, one
  mask fixed at construction for τ_r (as the official code, which drops τ_r
  once). ``rescale``: "none" (the paper: DARE's 1/p is dropped), "inverse_p"
  (kept entries × 1/p, what the official code's ``F.dropout(1 - p)`` does),
  "l1" (the kept entries rescaled to the L1 norm of the input, the official
  ``rescale=True``). "inverse_p" makes F unbiased: E[F(x)] = x.
- **OnTIES** (Eqs. 5-7): F keeps the top-p fraction of each tensor's entries
  by magnitude, k = max(1, int(p · numel)); then sign consensus: the elected
  sign is sign(τ_r' + Δθ') with ties (0) going to +, entries of τ_r' and Δθ'
  whose sign differs from it (zeros included) are dropped, and the update
  is ``(1 - α) Δθ' + α τ_r'``. The vote is unweighted, so wherever τ_r' is
  kept and |τ_r'| > |Δθ'| (at the paper's scale τ_r ~ 1e-3 against a step
  ~ 1e-6: everywhere) the policy's step may only move along the SFT's sign.
- **Step-K** (Alg. 2, ``merge_every=K``): take K - 1 plain AdamW steps,
  accumulating their sum Δc; on the K-th step undo Δc and merge
  ``Δθ = Δc + Δθ_K`` as above. K = 1 is online merging; K = T (the run's
  length) merges the whole run's delta once, offline. K counts each
  parameter's own updates.
- **Special cases**: α = 0 and p = 1 is AdamW, bit for bit (OnDARE);
  α = 0 and p < 1 is dropout of the AdamW step (ChildTuning-like).
- **Weight decay** is AdamW's decoupled ``w *= 1 - lr*wd``, on the weights
  the merged delta is then added to (minirl's AdamW order: see its docstring).

Paper vs the official code (minirl implements the paper; options as noted)
--------------------------------------------------------------------------
1. F_R's rescale: the paper drops 1/p; the code's ``dropout(1 - p)`` keeps it,
   for Δθ and τ_r alike (``rescale="inverse_p"``). minirl applies the same
   ``rescale`` to both.
2. The code clamps F(τ_r) to ±1 (``clip_val``) and, with ``rescale``, the
   renormalised Δθ' too; minirl does not clamp (entries here are far below 1).
3. The code's L1 rescale is ``x' · ||x||_1 / (||x'||_1 + eps)`` with Adam's eps,
   skipped when ||x||_1 < 1e-8; OnDARE applies it to Δθ only (τ_r keeps its
   1/p), OnTIES to both. minirl's "l1" is ``x' · ||x||_1 / ||x'||_1`` (skipped
   when nothing is kept), on both.
4. OnTIES' trim: the code keeps the whole tensor when int(p · numel) < 1;
   minirl keeps at least one entry, as mergekit and `minirl.merging.offline`
   do (a 64-entry RMSNorm weight at p = 0.01 has int(0.64) = 0). Magnitude
   ties: the code's argsort order is unspecified; minirl keeps the lower
   flat index.
5. Step-K: the code's non-merge branch ``return``s from ``step()``, so only
   the first parameter is updated on non-merge steps; minirl implements
   Alg. 2. Like the code, the decay of non-merge steps is not undone.
6. Adam itself: the code is Hugging Face's AdamW (eps added to sqrt(v)
   before bias correction, eps default 1e-6, decay ``w ← (w + Δ)(1 - lr·wd)``);
   minirl keeps torch's AdamW arithmetic, as `minirl.optim.AdamW`.
7. The code's ``use_merge=False`` skips α F(τ_r) but OnTIES still votes with
   τ_r'; minirl's α = 0 does the same.

Baselines (paper 2's regularisers)
----------------------------------
- **EMA**: Polyak averaging of the AdamW iterate θ,
  ``θ̄ ← d θ̄ + (1 - d) θ`` with d = ``ema_decay`` (the official
  LLaMA-Factory fork's ``ema_rate`` = 1 - d = 1e-3). The average θ̄ is used
  as the weights: it is what the parameters hold, so the run samples,
  computes gradients, evaluates and saves θ̄; the iterate θ lives in the
  optimizer state. (Writing the average back into the iterate would make
  ``θ ← θ + (1 - d) Δθ``, a mere lr scale.)
- **ChildTuning** (ChildTuning-F, Xu et al., arXiv 2109.05687): before
  AdamW each gradient entry is kept with probability p and rescaled by 1/p.

Scale matching for α (PAPERS.md, "What reproduced at toy scale means")
---------------------------------------------------------------------
What α does is set by ``merge_ratio = α · rms(τ_r) / rms(Δθ_t)``, the size
of the reference pull against the policy's own step; runs print it.

- Paper: α = 1e-7, lr = 1e-6, and an Adam step is about lr per weight, so
  rms(Δθ_t) ≈ 1e-6. rms(τ_r) at 7B is assumed ≈ 1e-3 (DARE, Yu et al.
  arXiv 2311.03099: SFT delta parameters of 7B chat models lie mostly within
  ±0.002). Ratio ≈ 1e-7 · 1e-3 / 1e-6 = 1e-4.
- minirl: the shipped ``sft - base`` has rms(τ_r) = 0.0134 (measured), and
  the preference/RL presets train at lr 1e-4, so α = 1e-4 · 1e-4 / 0.0134
  ≈ 7.5e-7; the default ``merge_weight`` is 1e-6 (ratio 1.3e-4 with the same
  assumption, rms(Δθ_t) ≈ lr).
- Measured (``step_stats``, the report's "merge pull" row): the default DPO
  and GRPO runs' AdamW steps average rms(Δθ_t) ≈ 0.3 lr (the cosine schedule
  and |m/√v| < 1), so their ratio is 4-5e-4. A 7B run's Adam step is smaller
  than its lr for the same reasons, so the paper's own ratio is likely above
  its 1e-4 estimate by a similar factor; α = 1e-6 stays within one order of
  magnitude of either reading, and `minirl reproduce merging` sweeps α from
  0 to 1e-2 to show how much (here: how little) the pull matters.

The default reserve rate p = 0.1, not the paper's 0.01: with "none" a
weight is updated in a fraction p of the steps, about p · T times in a run of
T steps. The paper's run (UltraFeedback, ~61k pairs, 2 epochs, batch 8:
T ≈ 15k) gives p · T ≈ 150 at p = 0.01 and ≈ 7.5 at the lowest p it found
robust (5e-4). minirl's presets run T = 150 steps: p = 0.01 would update
each weight about 1.5 times (and leave 22 % never touched), below anything
the paper tried; p = 0.1 gives p · T = 15, inside its robust range.

Randomness and resume: masks come from ``np.random.Generator``s seeded by
``seed`` (τ_r's fixed mask from ``[seed, 1]``, the per-step masks from
``[seed, 2]``, drawn parameter by parameter in order). ``state_dict`` holds
the per-step generator's state, step-K's accumulated Δc (``merge_acc``)
and EMA's iterate, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import copy
import math

import numpy as np

from minirl.optim import AdamW, OptimizerConfig, _check, _named

RESCALES = ("none", "inverse_p", "l1")
"""F's rescale of the entries it keeps: the paper's none, the official code's 1/p and L1."""


# -- the sparsifying functions F --------------------------------------------------------
def _l1_renorm(kept: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``kept`` scaled to the L1 norm of ``x`` (unchanged when nothing was kept)."""
    s_out = float(np.abs(kept).sum(dtype=np.float64))
    if s_out == 0.0:
        return kept
    return kept * np.float32(float(np.abs(x).sum(dtype=np.float64)) / s_out)


def dare_filter(x: np.ndarray, p: float, rescale: str, rng: np.random.Generator) -> np.ndarray:
    """F_R: keep each entry with probability p (one draw per entry from rng), rescaled as ``rescale`` says."""
    if p == 1.0:
        return x  # nothing dropped, no draw
    kept = np.where(rng.random(x.shape) < p, x, np.float32(0))
    if rescale == "inverse_p":
        return kept / np.float32(p)
    if rescale == "l1":
        return _l1_renorm(kept, x)
    return kept


def topk_filter(x: np.ndarray, p: float, rescale: str = "none") -> np.ndarray:
    """F for TIES: keep the k = max(1, int(p · numel)) largest |x| (ties: lower flat index), rescaled if "l1"."""
    if p == 1.0:
        return x
    k = max(1, int(p * x.size))
    flat = x.ravel()
    top = np.argsort(-np.abs(flat), kind="stable")[:k]
    kept = np.zeros_like(flat)
    kept[top] = flat[top]
    kept = kept.reshape(x.shape)
    return _l1_renorm(kept, x) if rescale == "l1" else kept


def sign_consensus(ref: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TIES' vote between τ_r' and Δθ': elected sign = sign(ref + delta), 0 → +; drop disagreeing entries."""
    elected_pos = (ref + delta) >= 0
    keep_ref = np.where(elected_pos, ref > 0, ref < 0)
    keep_delta = np.where(elected_pos, delta > 0, delta < 0)
    return np.where(keep_ref, ref, np.float32(0)), np.where(keep_delta, delta, np.float32(0))


def _rms(x) -> float:
    """RMS over every entry of an array or of a dict of arrays (float64)."""
    arrays = list(x.values()) if isinstance(x, dict) else [x]
    total = sum(float(np.square(np.asarray(a, dtype=np.float64)).sum()) for a in arrays)
    count = sum(np.asarray(a).size for a in arrays)
    return math.sqrt(total / count) if count else 0.0


def merge_ratio(alpha: float, ref_delta, delta) -> float:
    """α · rms(τ_r) / rms(Δθ_t): the reference pull against the policy's own step (arrays or name->array dicts)."""
    pull, step = alpha * _rms(ref_delta), _rms(delta)
    if step == 0.0:
        return math.inf if pull > 0 else 0.0
    return pull / step


# -- shared pieces ------------------------------------------------------------------------
def _check_seed(seed) -> None:
    _check("seed", seed, isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0,
           "an int >= 0")


class _RngState:
    """Mixin: ``self.rng``'s state travels in state_dict, so resumed masks continue the same stream."""

    rng: np.random.Generator

    def state_dict(self) -> dict:
        """AdamW's state plus ``rng``, the mask generator's ``bit_generator.state`` (JSON-able)."""
        sd = super().state_dict()
        sd["rng"] = copy.deepcopy(self.rng.bit_generator.state)
        return sd

    def load_state_dict(self, sd: dict) -> None:
        """Restore AdamW's state and the mask generator."""
        if "rng" not in sd:
            raise ValueError(f"state_dict has no 'rng': it was not saved by {type(self).__name__}")
        super().load_state_dict(sd)
        self.rng.bit_generator.state = copy.deepcopy(sd["rng"])


class _OnlineMerging(AdamW):
    """AdamW whose every step (or every K-th, step-K) is merged with the reference task vector τ_r."""

    rescales = RESCALES

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, precision=None, *, ref_delta: dict,
                 reserve_rate: float = OptimizerConfig.reserve_rate, alpha: float = OptimizerConfig.merge_weight,
                 rescale: str = OptimizerConfig.merge_rescale, merge_every: int = OptimizerConfig.merge_every,
                 seed: int = 0):
        _check("reserve_rate", reserve_rate, 0 < reserve_rate <= 1, "in (0, 1]")
        _check("alpha", alpha, 0 <= alpha <= 1, "in [0, 1]")
        _check("rescale", rescale, rescale in self.rescales, "one of " + ", ".join(self.rescales))
        _check("merge_every", merge_every,
               isinstance(merge_every, (int, np.integer)) and not isinstance(merge_every, bool) and merge_every >= 1,
               "an int >= 1")
        _check_seed(seed)
        self.reserve_rate, self.alpha, self.rescale = float(reserve_rate), float(alpha), rescale
        self.merge_every, self.seed = int(merge_every), int(seed)
        super().__init__(params, lr, betas, eps, weight_decay, precision)
        self.ref_delta = self._check_ref_delta(ref_delta)
        ref_rng = np.random.default_rng([self.seed, 1])
        self.ref_filtered = [self.filter(self.ref_delta[n], ref_rng) for n in self.names]
        """F(τ_r) per parameter, drawn once (the official code's fixed mask)."""
        self.rng = np.random.default_rng([self.seed, 2])
        """The per-step masks' generator."""
        self.ref_rms = _rms(self.ref_delta)
        """rms(τ_r) over every optimised weight."""
        self._step_sq = [0.0, 0]  # Σ Δθ_t² and its count over this step's parameters

    def step(self) -> None:
        """AdamW's step with every parameter's delta merged (and its size measured for ``step_stats``)."""
        self._step_sq = [0.0, 0]
        super().step()

    def step_stats(self) -> dict[str, float]:
        """``merge_ratio`` = α · rms(τ_r) / rms(Δθ_t) of the last step, Δθ_t its plain AdamW step (PAPERS.md's scale
        matching: about 1e-4 at the paper's scale)."""
        total, count = self._step_sq
        step_rms = math.sqrt(total / count) if count else 0.0
        if step_rms == 0.0:
            return {}
        return {"merge_ratio": self.alpha * self.ref_rms / step_rms}

    def _check_ref_delta(self, ref_delta) -> dict[str, np.ndarray]:
        """τ_r as float32 arrays by name; ValueError naming ref_delta unless names and shapes match the params."""
        if not isinstance(ref_delta, dict):
            raise ValueError(f"ref_delta must be a dict name -> array, got {type(ref_delta).__name__}")
        missing = sorted(set(self.names) - set(ref_delta))
        extra = sorted(set(ref_delta) - set(self.names))
        if missing or extra:
            raise ValueError(f"ref_delta names must match the parameters: missing {missing}, unexpected {extra}")
        out = {}
        for name, p in zip(self.names, self.params):
            value = np.asarray(ref_delta[name], dtype=np.float32)
            if value.shape != p.data.shape:
                raise ValueError(f"ref_delta[{name!r}] shape {value.shape} != param shape {p.data.shape}")
            out[name] = value
        return out

    def hyperparams(self) -> dict:
        """JSON-able hyperparameters."""
        return {**super().hyperparams(), "reserve_rate": self.reserve_rate, "alpha": self.alpha,
                "rescale": self.rescale, "merge_every": self.merge_every, "seed": self.seed}

    def filter(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """F, the sparsification of one tensor."""
        raise NotImplementedError

    def merge(self, i: int, delta: np.ndarray) -> np.ndarray:
        """The merged update of parameter i from its (accumulated) AdamW delta."""
        raise NotImplementedError

    def transform_delta(self, i: int, name: str, delta: np.ndarray) -> np.ndarray:
        """Step-K (Alg. 2): plain steps accumulate in Δc; every K-th undoes Δc and merges Δc + Δθ_K."""
        self._step_sq[0] += float(np.square(delta, dtype=np.float64).sum())
        self._step_sq[1] += delta.size
        K = self.merge_every
        if K > 1:
            st = self.state[i]
            acc = st.get("merge_acc")
            if acc is None:
                acc = st["merge_acc"] = np.zeros_like(delta)
            # 1) a plain AdamW step, remembered in Δc
            if st["step"] % K:
                acc += delta
                return delta
            # 2) the K-th step: undo the K - 1 plain steps and merge all K as one Δθ
            self.weights(i)[...] -= acc
            delta = acc + delta
            acc[...] = 0
        return self.merge(i, delta)


class OnDARE(_RngState, _OnlineMerging):
    """AdamW with online DARE merging: ``Δ = (1 - α) F_R(Δθ_t) + α F_R(τ_r)``, F_R a random keep-p mask."""

    def filter(self, x, rng):
        """F_R: each entry kept with probability p."""
        return dare_filter(x, self.reserve_rate, self.rescale, rng)

    def merge(self, i, delta):
        """(1 - α) F_R(Δθ) + α F_R(τ_r), with a fresh mask for Δθ."""
        kept = self.filter(delta, self.rng)
        if self.alpha == 0.0:
            return kept
        return (1.0 - self.alpha) * kept + self.alpha * self.ref_filtered[i]


class OnTIES(_OnlineMerging):
    """AdamW with online TIES merging: top-p trim of Δθ_t and τ_r, sign consensus, ``(1 - α) Δθ' + α τ_r'``."""

    rescales = ("none", "l1")

    def filter(self, x, rng=None):
        """Top-p fraction by magnitude (deterministic)."""
        return topk_filter(x, self.reserve_rate, self.rescale)

    def merge(self, i, delta):
        """Trim Δθ, vote with τ_r', keep agreeing entries, weight by 1 - α and α."""
        ref, kept = sign_consensus(self.ref_filtered[i], self.filter(delta))
        if self.alpha == 0.0:
            return kept
        return (1.0 - self.alpha) * kept + self.alpha * ref


class EMA(AdamW):
    """AdamW on an iterate θ kept in the state; the parameters hold its average θ̄ ← d θ̄ + (1 - d) θ."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, precision=None, *, ema_decay: float = OptimizerConfig.ema_decay):
        _check("ema_decay", ema_decay, 0 <= ema_decay < 1, "in [0, 1)")
        self.ema_decay = float(ema_decay)
        super().__init__(params, lr, betas, eps, weight_decay, precision)

    def hyperparams(self) -> dict:
        """JSON-able hyperparameters."""
        return {**super().hyperparams(), "ema_decay": self.ema_decay}

    def _decay_factor(self) -> float:
        """The average is not decayed: weight decay acts on the iterate (in transform_delta)."""
        return 1.0

    def transform_delta(self, i, name, delta):
        """1) AdamW on the iterate θ, 2) return θ̄'s change ``(1 - d)(θ - θ̄)`` (torch's ``lerp_``)."""
        st, w = self.state[i], self.weights(i)
        iterate = st.get("iterate")
        if iterate is None:
            iterate = st["iterate"] = np.array(w, dtype=np.float32, copy=True)  # θ starts at θ̄ = θ_0
        decay = AdamW._decay_factor(self)
        if decay != 1.0:
            iterate *= decay
        iterate += delta
        return np.float32(1.0 - self.ema_decay) * (iterate - w)


class ChildTuning(_RngState, AdamW):
    """ChildTuning-F: each gradient entry kept with probability p and rescaled by 1/p, then AdamW."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, precision=None, *,
                 reserve_rate: float = OptimizerConfig.reserve_rate, seed: int = 0):
        _check("reserve_rate", reserve_rate, 0 < reserve_rate <= 1, "in (0, 1]")
        _check_seed(seed)
        self.reserve_rate, self.seed = float(reserve_rate), int(seed)
        super().__init__(params, lr, betas, eps, weight_decay, precision)
        self.rng = np.random.default_rng([self.seed, 2])
        """The gradient masks' generator."""

    def hyperparams(self) -> dict:
        """JSON-able hyperparameters."""
        return {**super().hyperparams(), "reserve_rate": self.reserve_rate, "seed": self.seed}

    def _delta(self, i, grad):
        """Adam's step on the masked, 1/p-rescaled gradient."""
        return self._adam_delta(i, dare_filter(grad, self.reserve_rate, "inverse_p", self.rng))


# -- building them from an OptimizerConfig ---------------------------------------------------
def _model_weights(name_or_path) -> dict[str, np.ndarray]:
    """name -> float32 weights of a shipped model or checkpoint (`minirl.loading.load`, imported on use)."""
    from minirl.loading import load

    return {name: p.data for name, p in load(name_or_path).named_parameters()}


def reference_delta(params, base: str = "base", ref: str = "sft") -> dict[str, np.ndarray]:
    """τ_r = θ(ref) - θ(base) for the optimised params; a param neither model has (a fresh head) gets zeros."""
    names, ps = _named(params)
    base_w, ref_w = _model_weights(base), _model_weights(ref)
    out = {}
    for name, p in zip(names, ps):
        if name not in base_w and name not in ref_w:
            out[name] = np.zeros_like(p.data, dtype=np.float32)  # no SFT change to merge back
            continue
        for field, label, weights in (("merge_base", base, base_w), ("merge_ref", ref, ref_w)):
            if name not in weights:
                raise ValueError(f"{field} {label!r} has no parameter {name!r}")
            if weights[name].shape != p.data.shape:
                raise ValueError(f"{field} {label!r}: {name} shape {weights[name].shape} != param shape "
                                 f"{p.data.shape}")
        out[name] = (ref_w[name].astype(np.float32) - base_w[name].astype(np.float32)).astype(np.float32)
    return out


def make_online_optimizer(kind: str, params, c: OptimizerConfig, precision=None):
    """The `OPTIMIZERS` factory of "ondare", "onties", "ema" and "childtuning" (τ_r loaded only for the first two)."""
    adam = dict(lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, precision=precision)
    if kind == "ema":
        return EMA(params, **adam, ema_decay=c.ema_decay)
    if kind == "childtuning":
        return ChildTuning(params, **adam, reserve_rate=c.reserve_rate, seed=c.mask_seed)
    cls = {"ondare": OnDARE, "onties": OnTIES}[kind]
    names, _ = _named(params)
    adapters = [n for n in names if ".lora_A." in n or ".lora_B." in n]
    if adapters:
        raise ValueError(f"optimizer {kind!r}: online merging needs full fine-tuning (it merges the policy's "
                         f"step with τ_r = θ(merge_ref) - θ(merge_base) weight by weight), but the optimised "
                         f"parameters are LoRA adapters ({adapters[0]}, ...); drop LoRA or use adamw")
    ref_delta = reference_delta(params, c.merge_base, c.merge_ref)
    return cls(params, **adam, ref_delta=ref_delta, reserve_rate=c.reserve_rate, alpha=c.merge_weight,
               rescale=c.merge_rescale, merge_every=c.merge_every, seed=c.mask_seed)
