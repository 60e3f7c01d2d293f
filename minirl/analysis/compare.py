"""Sparsity, rank and overlap of the updates θi - θ0 of several checkpoints, in one streamed pass.

Mukherjee et al., arXiv 2505.11711 (2025), and *The Path Not Taken*, arXiv
2511.08567 (docs/PAPERS.md, section 1). θ0 is the initial checkpoint and
θ1, θ2, ... were fine-tuned from it. One walk over ``aligned_tensors(θ0, θ1,
θ2, ...)`` holds the current tensor of each checkpoint and feeds

1) one ``SparsityAccumulator`` per update: sparsity at ``tol``, at every
   Table 6 tolerance (1e-8 ... 1e-5) and bitwise, overall and per tensor,
   in ``dtype`` (bf16 by default, as the official checker's
   ``torch.isclose(θ1 - θ0, 0, atol=tol)`` on bf16 models);
2) with ``rank=True``, one ``RankAccumulator`` per update: rank(Δ) / min(m, n)
   of every 2-D tensor (an SVD each: the slow part, so it reports progress);
3) with two updates or more, one ``OverlapAccumulator`` per pair of updates
   and rule (``tol`` and ``bitwise``): o1, o2 and Jaccard of the updated-entry
   masks, with the chance levels of independent masks of the same densities.

Masks are built in slices of ``_CHUNK`` entries, so the temporaries of a huge
tensor stay bounded; peak memory is about the current tensor of each
checkpoint as float32 plus one boolean mask per update.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from itertools import combinations

import numpy as np

from .overlap import OverlapAccumulator, updated_mask
from .rank import RankAccumulator
from .sparsity import TABLE6_TOLS, SparsityAccumulator, aligned_tensors, density_official
from .update import UpdateReport

_CHUNK = 1 << 22  # entries per slice of a mask, as sparsity.py's accumulator slices
Progress = Callable[[str, int, int, str], None]
"""progress(stage, done, total, name): stage "tensors" after each tensor, "rank" after each SVD."""


def _label(source, i: int) -> str:
    """A source's label (its name or path as typed), or θi for a plain dict."""
    return getattr(source, "label", None) or f"θ{i}"


def _shapes(source: Mapping) -> dict[str, tuple[int, ...]]:
    """Shapes by name, from the headers of a TensorSource, or from the arrays of a dict."""
    shapes = getattr(source, "shapes", None)
    return dict(shapes) if shapes is not None else {name: tuple(np.shape(a)) for name, a in source.items()}


def check_match(theta0: Mapping, *thetas: Mapping, ignore: Collection[str] = ()) -> None:
    """Raise ValueError, before any tensor is read, if the checkpoints differ in names or in shapes.

    Names go through ``aligned_tensors``' own check (it lists the names found in
    only one model); every shape mismatch is then listed at once.
    """
    legend = ", ".join(f"θ{i} = {_label(s, i)}" for i, s in enumerate((theta0, *thetas)))
    shapes = [_shapes(s) for s in (theta0, *thetas)]
    stubs = [dict.fromkeys(s, np.empty(0)) for s in shapes]  # names only: no tensor is read
    try:
        for _ in aligned_tensors(stubs[0], *stubs[1:], ignore=ignore):
            pass
    except ValueError as error:
        raise ValueError(f"{error} ({legend})") from None
    ignore = frozenset(ignore)
    mismatches = [f"{name!r}: θ0 {list(shape)} vs θ{i} {list(other[name])}"
                  for i, other in enumerate(shapes[1:], start=1)
                  for name, shape in shapes[0].items() if name not in ignore and tuple(other[name]) != tuple(shape)]
    if mismatches:
        more = f" (and {len(mismatches) - 20} more)" if len(mismatches) > 20 else ""
        raise ValueError(f"shape mismatch in {len(mismatches)} tensor(s): {'; '.join(mismatches[:20])}{more} "
                         f"({legend})")


def _chunked_mask(theta0: np.ndarray, theta1: np.ndarray, tol: float, mode: str, dtype: str) -> np.ndarray:
    """updated_mask of one tensor pair, computed slice by slice (flat, bool)."""
    flat0, flat1 = np.ravel(theta0), np.ravel(theta1)  # (N,)
    mask = np.empty(flat0.size, dtype=bool)
    for start in range(0, flat0.size, _CHUNK):
        stop = start + _CHUNK
        mask[start:stop] = updated_mask(flat0[start:stop], flat1[start:stop], tol, mode, dtype)
    return mask


def analyze_checkpoints(
    theta0: Mapping,
    *thetas: Mapping,
    tol: float = 1e-5,
    tols: tuple[float, ...] = TABLE6_TOLS,
    dtype: str = "bf16",
    rank: bool = False,
    rank_dtype: str | None = None,
    ignore: Collection[str] = (),
    progress: Progress | None = None,
) -> dict:
    """Sparsity (every tolerance, bitwise), optional rank of each update θi - θ0, and the overlap of every pair
    of updates; one streamed pass, returned as a JSON-ready dict.

    Sources are mappings name -> array (``open_source``'s lazy ones read a
    tensor only when asked); names and shapes are checked before any read.
    """
    if not thetas:
        raise ValueError("give θ0 and at least one fine-tuned checkpoint")
    start_time = time.perf_counter()
    check_match(theta0, *thetas, ignore=ignore)
    sources = (theta0, *thetas)
    shapes = _shapes(theta0)
    ignore = frozenset(ignore)
    names = [name for name in shapes if name not in ignore]
    n_matrices = sum(len(shapes[name]) == 2 for name in names) * len(thetas)

    # 1) one accumulator per update, and per pair of updates and overlap rule
    sparsity = [SparsityAccumulator(tol=tol, tols=tols, dtype=dtype) for _ in thetas]
    ranks = [RankAccumulator(rank_dtype or dtype) for _ in thetas] if rank else None
    pairs = list(combinations(range(len(thetas)), 2))
    modes = ("tol", "bitwise")
    overlap = {(a, b, mode): OverlapAccumulator() for a, b in pairs for mode in modes}

    # 2) the stream: the current tensor of each checkpoint, nothing more
    done_tensors = done_matrices = 0
    for name, t0, *ts in aligned_tensors(theta0, *thetas, ignore=ignore):
        for i, t in enumerate(ts):
            sparsity[i].add(name, t0, t)
            if ranks is not None:
                ranks[i].add(name, t0, t)
                if t0.ndim == 2:
                    done_matrices += 1
                    if progress:
                        progress("rank", done_matrices, n_matrices, name)
        for mode in modes if pairs else ():
            masks = [_chunked_mask(t0, t, tol, mode, dtype) for t in ts]  # one (N,) bool mask per update
            for a, b in pairs:
                overlap[a, b, mode].add(name, masks[a], masks[b])
            del masks
        del t0, ts
        done_tensors += 1
        if progress:
            progress("tensors", done_tensors, len(names), name)

    # 3) the reports, as JSON
    updates = []
    for i, acc in enumerate(sparsity):
        report = acc.report()
        rank_report = None if ranks is None else ranks[i].report()
        out = UpdateReport(report, rank_report).to_dict()
        out["sparsity"].update(
            dtype=report.dtype, n_changed=report.n_changed, n_changed_bitwise=report.n_changed_bitwise,
            n_changed_by_tol={f"{t:g}": n for t, n in report.n_changed_by_tol.items()},
            # the official script's per-layer print: mean over a layer's tensors of the exact non-zero fraction
            official_layer_density={str(k): v for k, v in density_official(report).items()})
        if rank_report is not None:
            out["rank"].update(rank=rank_report.rank, full=rank_report.full, skipped=rank_report.skipped,
                               dtype=rank_report.dtype)
        updates.append({"checkpoint": _label(thetas[i], i + 1), **out})
    overlaps = [{"a": _label(thetas[a], a + 1), "b": _label(thetas[b], b + 1), "updates": [a + 1, b + 1],
                 **{mode: overlap[a, b, mode].report().summary() for mode in modes}} for a, b in pairs]
    present = set().union(*(_shapes(s) for s in sources))
    return {
        "checkpoints": [s.describe() if hasattr(s, "describe") else {"name": _label(s, i)}
                        for i, s in enumerate(sources)],
        "dtype": dtype, "tol": tol, "tols": sorted(set(tols) | {tol}),
        "ignored": sorted(ignore & present),
        "n_tensors": len(names), "n_params": int(sum(np.prod(shapes[n]) for n in names)),
        "shapes": {name: list(shapes[name]) for name in names},
        "updates": updates,
        "overlap": overlaps,
        "seconds": time.perf_counter() - start_time,
    }
