"""Offline model merging: linear, DARE, TIES and DARE-TIES, as mergekit defines them.

A fine-tuned model θ_i and the base θ_base it started from differ by its
*task vector* (Ilharco et al., *Editing Models with Task Arithmetic*, arXiv
2212.04089):

    δ_i = θ_i - θ_base

Merging N fine-tunes combines their task vectors, tensor by tensor, with
weights w_i and a density d in (0, 1]:

- ``linear`` (mergekit ``linear``, Wortsman et al. model soups, arXiv
  2203.05482): ``θ = Σ w_i θ_i / Σ w_i`` (``normalize`` on, mergekit's
  default; off: ``Σ w_i θ_i``). The base takes no part in the average.
- ``dare_linear`` (Yu et al., DARE, arXiv 2311.03099): drop each entry of
  δ_i at random and rescale what survives,
  ``mask ~ Bernoulli(d)``, ``δ̂_i = mask · δ_i / d``, then
  ``θ = θ_base + Σ w_i δ̂_i``. E[δ̂_i] = δ_i, so the merge is unbiased.
- ``ties`` (Yadav et al., TIES-Merging, arXiv 2306.01708):
    1) trim: keep the k = max(1, int(d · numel)) largest |δ_i| of each tensor,
       zero the rest (at d = 1 nothing is trimmed);
    2) elect: the sign of Σ_i w_i δ̂_i at each entry, with ≥ 0 → + (ties go +);
    3) disjoint merge: keep the entries of w_i δ̂_i whose sign equals the
       elected one, sum them, and divide by the sum of the weights w_i of the
       models that contributed at that entry (1 where none did);
    4) ``θ = θ_base + that``.
- ``dare_ties``: DARE's random drop and 1/d rescale, then TIES' steps 2-4
  (mergekit's default for it does *not* divide in step 3: normalize off).

Matching mergekit (arcee-ai/mergekit, ``merge_methods/generalized_task_arithmetic.py``,
``sparsify.py``, ``merge_methods/registry.py``):

- the trim keeps ``k = max(1, int(density * numel))`` entries (``sparsify.magnitude``);
  of equal magnitudes at the k-th place minirl keeps the first (a stable
  sort), while torch's unstable argsort may keep another: with bf16 weights,
  whose task vectors repeat values, the two can differ there;
- the sign election is on the *trimmed, weighted* task vectors
  (``get_mask(method="sum")``), and a dropped entry (sign 0) never counts;
- ``normalize`` defaults per method as mergekit's registry does: linear
  True, ties True, dare_linear False, dare_ties False. With normalize, the
  task-arithmetic methods divide by Σ w_i (|Σ w_i| < 1e-8 → 1) or, with a
  sign consensus, by the weights that contributed (0 → 1);
- arithmetic is float32, in mergekit's order of operations.

One difference, written down and selectable: the DARE paper (and mergekit up
to 0.0.x) rescales by 1/d; mergekit 0.1.x instead rescales each dropped task
vector to keep its L1 norm (``rescale_norm=l1``). minirl's default is the
paper's ``rescale="inverse_density"``; ``rescale="l1"`` is mergekit 0.1's.

Randomness: DARE's masks come from a generator seeded by ``(seed,
crc32(tensor name))`` (`tensor_rng`), so a tensor's merge does not depend on
which tensors come before it. `merge` streams: it reads one tensor of every
model at a time from disk (memory O(one tensor per model) plus the result).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from minirl.checkpoint import read_tensor, tensor_index

METHODS = ("linear", "dare_linear", "ties", "dare_ties")
"""Merge methods, named as in mergekit."""

DEFAULT_NORMALIZE = {"linear": True, "dare_linear": False, "ties": True, "dare_ties": False}
"""mergekit's default of ``normalize`` for each method."""

RESCALES = ("inverse_density", "l1")
"""DARE's rescale of the kept entries: the paper's 1/d, or mergekit 0.1's L1-norm match."""


def task_vector(theta, base):
    """δ = θ - θ_base, for one array or for dicts of arrays (by name)."""
    if isinstance(theta, Mapping):
        return {name: np.asarray(t, dtype=np.float32) - np.asarray(base[name], dtype=np.float32)
                for name, t in theta.items()}
    return np.asarray(theta, dtype=np.float32) - np.asarray(base, dtype=np.float32)


def tensor_rng(seed: int, name: str) -> np.random.Generator:
    """The generator for tensor `name`: seeded by (seed, crc32(name)), independent of tensor order."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def magnitude_trim(delta: np.ndarray, density: float) -> np.ndarray:
    """TIES' trim: keep the k = max(1, int(density · numel)) largest |δ|, zero the rest (density 1: δ itself)."""
    if density >= 1:
        return delta
    if delta.size == 0:
        return delta.copy()
    k = max(1, int(density * delta.size))
    flat = delta.reshape(-1)
    keep = np.argsort(-np.abs(flat), kind="stable")[:k]  # the k largest magnitudes
    out = np.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(delta.shape)


def dare_drop(delta: np.ndarray, density: float, rng: np.random.Generator,
              rescale: str = "inverse_density") -> np.ndarray:
    """DARE: keep each entry with probability `density` and rescale the kept ones (1/d, or to the L1 norm)."""
    if density >= 1:
        return delta
    mask = rng.random(delta.shape) < density  # Bernoulli(d)
    dropped = np.where(mask, delta, np.float32(0)).astype(np.float32)
    if rescale == "inverse_density":
        return dropped / np.float32(density)
    # mergekit 0.1's rescaled_masked_tensor(norm=l1): match ||δ||_1, unless either norm is < 1e-7
    before, after = np.abs(delta).sum(dtype=np.float32), np.abs(dropped).sum(dtype=np.float32)
    if before < 1e-7 or after < 1e-7:
        return dropped
    return dropped * (before / after)


def sign_consensus(weighted: np.ndarray) -> np.ndarray:
    """TIES' election: bool mask (N, ...) of the entries whose sign equals sign(Σ_i w_i δ_i) (≥ 0 → +)."""
    elected = np.where(weighted.sum(axis=0) >= 0, np.float32(1), np.float32(-1))  # (...)
    return np.sign(weighted) == elected  # a zero (trimmed or dropped) entry never agrees


def _check_args(n_models: int, weights, method: str, density: float, rescale: str) -> np.ndarray:
    """Validate the merge settings; the weights as a float32 array."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if n_models == 0:
        raise ValueError("models: merging needs at least one model")
    w = np.asarray(list(weights), dtype=np.float32).reshape(-1)
    if w.size != n_models:
        raise ValueError(f"weights: got {w.size} weights for {n_models} models; give one weight per model")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be finite, got {w.tolist()}")
    if not (isinstance(density, (int, float, np.floating)) and 0 < density <= 1):
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    if rescale not in RESCALES:
        raise ValueError(f"rescale must be one of {', '.join(RESCALES)}, got {rescale!r}")
    return w


def merge_tensors(base: np.ndarray, models: Sequence[np.ndarray], weights, method: str = "linear",
                  density: float = 1.0, rng: np.random.Generator | None = None, normalize: bool | None = None,
                  rescale: str = "inverse_density") -> np.ndarray:
    """Merge one tensor of N models into the base's (float32); `rng` draws DARE's masks."""
    w = _check_args(len(models), weights, method, density, rescale)
    base = np.asarray(base, dtype=np.float32)
    models = [np.asarray(m, dtype=np.float32) for m in models]
    bad = [f"models[{i}] has shape {list(m.shape)}" for i, m in enumerate(models) if m.shape != base.shape]
    if bad:
        raise ValueError(f"shapes: base has shape {list(base.shape)} but " + ", ".join(bad))
    normalize = DEFAULT_NORMALIZE[method] if normalize is None else normalize
    wb = w.reshape((-1,) + (1,) * base.ndim)  # (N, 1, ..., 1): broadcasts over the tensor

    if method == "linear":
        # 1) Σ w_i θ_i, accumulated model by model (mergekit's addcmul_ loop); 2) / Σ w_i
        out = np.zeros_like(base)
        for theta, wi in zip(models, w):
            # out + θ_i·w_i rounded once, as torch's fused addcmul_ (a float32 product is exact in float64)
            out = (out.astype(np.float64) + theta.astype(np.float64) * np.float64(wi)).astype(np.float32)
        if normalize:
            total = w.sum(dtype=np.float32)
            if total == 0:
                raise ValueError(f"weights sum to 0 ({w.tolist()}): a normalized linear merge divides by it")
            out /= total
        return out

    # 1) task vectors, sparsified: TIES trims by magnitude, DARE drops at random
    if method.startswith("dare") and density < 1 and rng is None:
        raise ValueError(f"{method} with density < 1 needs an rng (np.random.Generator)")
    deltas = np.empty((len(models),) + base.shape, dtype=np.float32)  # (N, ...)
    for i, theta in enumerate(models):
        delta = theta - base
        deltas[i] = magnitude_trim(delta, density) if method == "ties" else dare_drop(delta, density, rng, rescale)
    weighted = deltas * wb  # (N, ...) w_i δ̂_i

    # 2) combine: a plain sum, or TIES' sign consensus over the entries that agree
    if method in ("ties", "dare_ties"):
        agree = sign_consensus(weighted)  # (N, ...)
        mixed = (weighted * agree).sum(axis=0)
        divisor = (wb * agree).sum(axis=0)  # the weights that contributed at each entry
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(axis=0)
        divisor = w.sum(dtype=np.float32)
        divisor = np.float32(1) if abs(divisor) < 1e-8 else divisor

    # 3) θ = θ_base + merged task vector
    if normalize:
        mixed = mixed / divisor
    return (base + mixed).astype(np.float32)


# ------------------------------------------------------------------ streamed, by name
class _Source:
    """Tensors by name, read on demand: a checkpoint (or Hugging Face) directory, a .safetensors file, or a dict."""

    def __init__(self, source, label: str):
        self.label = label
        if isinstance(source, Mapping):
            self._arrays = source
            self.shapes = {name: tuple(np.shape(a)) for name, a in source.items()}
            self._get: Callable[[str], np.ndarray] = lambda name: np.asarray(self._arrays[name], dtype=np.float32)
            return
        path = Path(source)
        index = tensor_index(path)
        heads = path / "minirl_heads.safetensors"  # a Hugging Face export's minirl-only heads
        if path.is_dir() and heads.is_file() and (path / "model.safetensors").is_file():
            index = {**index, **tensor_index(heads)}
        self.shapes = {name: info.shape for name, info in index.items()}
        self._get = lambda name: read_tensor(index[name])

    def __getitem__(self, name: str) -> np.ndarray:
        return self._get(name)


def _check_names(base: _Source, models: list[_Source]) -> None:
    """Raise a ValueError listing every tensor that is missing, extra or of another shape than the base's."""
    problems = []
    for m in models:
        missing = [n for n in base.shapes if n not in m.shapes]
        extra = [n for n in m.shapes if n not in base.shapes]
        shapes = [f"{n!r} {list(m.shapes[n])} (base {list(base.shapes[n])})"
                  for n in base.shapes if n in m.shapes and tuple(m.shapes[n]) != tuple(base.shapes[n])]
        for what, items in (("missing tensors", missing), ("tensors not in the base", extra),
                            ("shapes differ", shapes)):
            if items:
                more = f" (and {len(items) - 5} more)" if len(items) > 5 else ""
                problems.append(f"{m.label}: {what}: {', '.join(map(str, items[:5]))}{more}")
    if problems:
        raise ValueError(f"models do not match the base {base.label}: " + "; ".join(problems))


def merge(base, models: Sequence, weights, method: str = "linear", density: float = 1.0, seed: int = 0,
          normalize: bool | None = None, rescale: str = "inverse_density") -> dict[str, np.ndarray]:
    """Merge `models` into `base` tensor by tensor: {name: float32 array}, in the base's order.

    `base` and each model are a checkpoint directory, a Hugging Face directory,
    a .safetensors file, or a dict {name: array}; paths are streamed one
    tensor at a time. Every tensor is merged, 1-D norm weights included.
    """
    _check_args(len(models), weights, method, density, rescale)
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    base_src = _Source(base, f"base ({base if not isinstance(base, Mapping) else 'dict'})")
    sources = [_Source(m, f"models[{i}] ({m if not isinstance(m, Mapping) else 'dict'})")
               for i, m in enumerate(models)]
    _check_names(base_src, sources)
    out = {}
    for name in base_src.shapes:
        rng = tensor_rng(int(seed), name) if method.startswith("dare") else None
        out[name] = merge_tensors(base_src[name], [s[name] for s in sources], weights, method, density, rng,
                                  normalize, rescale)
    return out

