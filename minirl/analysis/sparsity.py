"""Update sparsity: how many parameters an RL update leaves untouched.

Mukherjee, Yuan, Hakkani-Tur, Peng, *Reinforcement Learning Finetunes Small
Subnetworks in Large Language Models*, arXiv 2505.11711 (2025); official code
`SagnikMukherjee/sparsity_in_rl` (`check_sparsity.py`).

Definitions implemented here (docs/PAPERS.md, section 1):

- ``sparsity = 1 - ||θ1 - θ0||_0 / n`` over all n parameters, an entry counting
  as unchanged when ``|θ1 - θ0| <= tol`` (paper default ``tol = 1e-5``, Table 6
  also 1e-8, 1e-7, 1e-6), both models held in bfloat16 and the difference
  itself taken in bfloat16. Like ``torch.isclose(delta, 0, atol=tol)`` on bf16
  tensors (the official code), ``tol`` is itself rounded to the working dtype:
  bf16(1e-5) = 1.00136e-5.
- ``mode="bitwise"`` follows *The Path Not Taken* (arXiv 2511.08567): a weight
  is unchanged iff ``|ŵ - w| <= 1e-3 · max(|w|, |ŵ|)``. Two distinct finite
  bf16 values differ by at least 2^-8 of the larger magnitude (one ULP at the
  bottom of its binade), and 2^-8 > 1e-3, so in bf16 the rule is exact
  equality: the bit patterns are equal, except that +0 and -0 are equal
  (|0 - 0| <= 0). It is implemented as IEEE ``==`` on the stored values, which
  is also the official code's exact count ``delta != 0`` (NaN counts changed).
- Equal stored values always count as unchanged, so a model compared with
  itself has sparsity exactly 1 even if it holds inf (where Δ would be NaN);
  a NaN weight counts as changed.
- ``dtype="fp32"`` skips the bf16 cast: the difference is taken in float32,
  the setting in which the follow-ups find the updates dense.
- Per-matrix sparsity is the same metric per tensor, laid out as a
  layer × matrix grid; ``density_official`` is the official script's per-layer
  print, an unweighted mean of exact non-zero fractions (density, not
  sparsity), kept separate so a report can show the difference.

Models are streamed one tensor at a time (see ``aligned_tensors``), so a 7B
pair needs memory for one tensor pair, and results accumulate as counts.
Names present in only one model, and shape mismatches, raise ``ValueError``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

TABLE6_TOLS = (1e-8, 1e-7, 1e-6, 1e-5)
DTYPES = ("bf16", "fp32")
MODES = ("tol", "bitwise")
LAYER_COLUMNS = ("q", "k", "v", "o", "gate", "up", "down", "input_norm", "post_norm")
_COLUMN_OF_SUFFIX = {
    "self_attn.q_proj.weight": "q",
    "self_attn.k_proj.weight": "k",
    "self_attn.v_proj.weight": "v",
    "self_attn.o_proj.weight": "o",
    "mlp.gate_proj.weight": "gate",
    "mlp.up_proj.weight": "up",
    "mlp.down_proj.weight": "down",
    "input_layernorm.weight": "input_norm",
    "post_attention_layernorm.weight": "post_norm",
}
_NON_LAYER_COLUMN = {
    "model.embed_tokens.weight": "embed",
    "model.norm.weight": "norm",
    "lm_head.weight": "lm_head",
}
_LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_CHUNK = 1 << 22  # entries per slice, so one huge tensor's temporaries stay bounded

Tensors = Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]]
TensorSource = Tensors | Callable[[str], np.ndarray]


# 1) Walking two (or more) models tensor by tensor --------------------------------


def aligned_tensors(theta0: Tensors, *others: TensorSource, ignore: Collection[str] = ()) -> Iterator[tuple]:
    """Yield ``(name, t0, t1, ...)`` one tensor at a time, in θ0's order, checking names and shapes."""
    # θ0 is a mapping or an iterable of (name, array). Each other model is a
    # mapping, a callable name -> array, or an iterable of (name, array) in θ0's
    # order. Names in `ignore` are dropped from every model.
    ignore = frozenset(ignore)
    if isinstance(theta0, Mapping):
        for i, other in enumerate(others, start=1):
            if isinstance(other, Mapping):  # both known up front: name every mismatch before any work
                _raise_on_missing(set(theta0) - ignore, set(other) - ignore, i)
    theta0_items = theta0.items() if isinstance(theta0, Mapping) else theta0
    lookups = [_Lookup(other, i, ignore) for i, other in enumerate(others, start=1)]
    seen: set[str] = set()
    for name, t0 in theta0_items:
        if name in ignore:
            continue
        if name in seen:
            raise ValueError(f"tensor {name!r} appears twice in θ0")
        seen.add(name)
        t0 = np.asarray(t0)
        tensors = [t0]
        for lookup in lookups:
            t = np.asarray(lookup.get(name))
            if t.shape != t0.shape:
                raise ValueError(f"shape mismatch for tensor {name!r}: θ0 {t0.shape} vs θ{lookup.i} {t.shape}")
            tensors.append(t)
        yield (name, *tensors)
    for lookup in lookups:
        lookup.finish(seen)


def _raise_on_missing(names0: set[str], names1: set[str], i: int) -> None:
    """Raise ValueError listing names present in only one of θ0 and θi."""
    only0, only1 = sorted(names0 - names1), sorted(names1 - names0)
    if only0 or only1:
        raise ValueError(f"models differ in tensor names: only in θ0 {only0}, only in θ{i} {only1}")


class _Lookup:
    """Uniform ``get(name)`` over a mapping, a callable, or an iterable in θ0's order."""

    def __init__(self, source: TensorSource, i: int, ignore: frozenset[str]):
        self.i, self.ignore = i, ignore
        self.mapping = source if isinstance(source, Mapping) else None
        self.call = source if self.mapping is None and callable(source) else None
        self.items = iter(source) if self.mapping is None and self.call is None else None

    def _next_item(self) -> tuple[str | None, np.ndarray | None]:
        """Next (name, tensor) of a lockstep iterable, skipping ignored names."""
        for name, tensor in self.items:
            if name not in self.ignore:
                return name, tensor
        return None, None

    def get(self, name: str) -> np.ndarray:
        """The tensor called `name` in this model, or ValueError naming it."""
        if self.items is not None:
            name_i, tensor = self._next_item()
            if name_i != name:
                raise ValueError(f"tensor order differs: θ0 has {name!r} where θ{self.i} has {name_i!r}")
            return tensor
        try:
            return self.mapping[name] if self.mapping is not None else self.call(name)
        except KeyError:
            raise ValueError(f"tensor {name!r} is in θ0 but missing in θ{self.i}") from None

    def finish(self, seen: set[str]) -> None:
        """Raise ValueError naming tensors of this model that θ0 does not have."""
        if self.items is not None:
            extra = [name for name, _ in self.items if name not in self.ignore]
        elif self.mapping is not None:
            extra = sorted(set(self.mapping) - seen - self.ignore)
        else:
            extra = []  # a callable cannot list its names
        if extra:
            raise ValueError(f"tensors only in θ{self.i}: {extra}")


# 2) The rule for "unchanged" ------------------------------------------------------


def _check(tol: float | None = None, mode: str = "tol", dtype: str = "bf16") -> None:
    """Validate the shared arguments."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if tol is not None and not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")


def round_to(x, dtype: str = "bf16") -> np.ndarray:
    """x rounded to `dtype` (round-to-nearest-even), returned as float32."""
    x = np.asarray(x, dtype=np.float32)  # bf16 -> fp32 is exact; torch also rounds a double via float
    return x.astype(ml_dtypes.bfloat16).astype(np.float32) if dtype == "bf16" else x


def update_difference(theta0, theta1, dtype: str = "bf16") -> np.ndarray:
    """θ1 - θ0 with both rounded to `dtype` and the difference rounded to `dtype`, as float32."""
    _check(dtype=dtype)
    # The fp32 difference of two bf16 values, rounded once more to bf16, is the
    # correctly rounded bf16 difference (double rounding is innocuous for +/-
    # when 24 >= 2*8 + 2), i.e. what torch computes for bf16 tensors.
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf = NaN and overflow count as changed
        return round_to(round_to(theta1, dtype) - round_to(theta0, dtype), dtype)


def unchanged_mask(theta0, theta1, tol: float = 1e-5, mode: str = "tol", dtype: str = "bf16") -> np.ndarray:
    """Boolean mask of entries the update left unchanged (θ0's shape)."""
    _check(tol, mode, dtype)
    theta0, theta1 = round_to(theta0, dtype), round_to(theta1, dtype)
    equal = theta0 == theta1  # IEEE: +0 == -0, NaN != NaN
    if mode == "bitwise":
        return equal
    # equal stored values always count unchanged (only matters for inf, where Δ = inf - inf = NaN)
    return equal | (np.abs(update_difference(theta0, theta1, dtype)) <= round_to(tol, dtype))


# 3) Counting, one streaming pass --------------------------------------------------


@dataclass
class SparsityReport:
    """Update sparsity of θ1 against θ0, overall, per tensor and per tolerance."""

    overall: float
    """Paper's ``1 - ||θ1-θ0||_0 / n`` at ``tol`` over all parameters."""
    bitwise: float
    """Same with "unchanged" meaning equal stored values (Path Not Taken)."""
    per_tensor: dict[str, float]
    """Sparsity at ``tol`` of each tensor."""
    per_tensor_bitwise: dict[str, float]
    """Bitwise sparsity of each tensor."""
    n_params: int
    """Number of parameters compared."""
    n_changed: int
    """Number of entries with ``|Δ| > tol``."""
    n_changed_bitwise: int
    """Number of entries whose stored value changed."""
    by_tol: dict[float, float]
    """Overall sparsity at each tolerance (the paper's Table 6)."""
    n_changed_by_tol: dict[float, int]
    """Number of entries with ``|Δ| > tol`` at each tolerance."""
    numel: dict[str, int]
    """Number of entries of each tensor."""
    tol: float = 1e-5
    """Absolute tolerance of ``overall`` and ``per_tensor``."""
    dtype: str = "bf16"
    """Precision the models were compared in."""

    def by_layer(self, bitwise: bool = False) -> dict[int, dict[str, float]]:
        """Grid ``{layer: {column: sparsity}}`` of the ``model.layers.*`` tensors."""
        values = self.per_tensor_bitwise if bitwise else self.per_tensor
        grid: dict[int, dict[str, float]] = {}
        for name, value in values.items():
            layer, column = cell_of(name)
            if layer is not None:
                grid.setdefault(layer, {})[column] = value
        return dict(sorted(grid.items()))

    def non_layer(self, bitwise: bool = False) -> dict[str, float]:
        """Sparsity of the tensors outside the layers (embed, norm, lm_head, heads)."""
        values = self.per_tensor_bitwise if bitwise else self.per_tensor
        return {cell_of(name)[1]: value for name, value in values.items() if cell_of(name)[0] is None}

    def layer_sparsity(self, bitwise: bool = False) -> dict[int, float]:
        """Parameter-weighted sparsity of each layer (the paper's metric restricted to it)."""
        values = self.per_tensor_bitwise if bitwise else self.per_tensor
        unchanged: dict[int, float] = {}
        total: dict[int, int] = {}
        for name, value in values.items():
            layer = cell_of(name)[0]
            if layer is not None:
                # round() recovers the exact integer count from the fraction
                unchanged[layer] = unchanged.get(layer, 0) + round(value * self.numel[name])
                total[layer] = total.get(layer, 0) + self.numel[name]
        return {layer: unchanged[layer] / total[layer] for layer in sorted(total)}

    def table(self, bitwise: bool = False) -> str:
        """Plain-text layer × matrix grid of sparsity in percent, then the other tensors and tolerances."""
        grid = self.by_layer(bitwise)
        extra = sorted({c for row in grid.values() for c in row} - set(LAYER_COLUMNS))
        columns = [c for c in LAYER_COLUMNS if any(c in row for row in grid.values())] + extra
        width = max([10] + [len(c) + 1 for c in columns])
        label = "bitwise" if bitwise else f"tol {self.tol:g}"
        header = "layer" + "".join(f"{c:>{width}}" for c in columns)
        lines = [f"update sparsity (%), {self.dtype}, {label}", header]
        for layer, row in grid.items():
            cells = (f"{100 * row[c]:.2f}" if c in row else "-" for c in columns)
            lines.append(f"{layer:>5}" + "".join(f"{s:>{width}}" for s in cells))
        lines += [f"{name}: {100 * value:.2f}" for name, value in self.non_layer(bitwise).items()]
        lines.append(f"overall: {100 * (self.bitwise if bitwise else self.overall):.2f}")
        if not bitwise:
            lines += [f"tol {tol:g}: {100 * value:.2f}" for tol, value in self.by_tol.items()]
        return "\n".join(lines)


@dataclass
class SparsityAccumulator:
    """Running counts of unchanged entries, fed one tensor pair at a time."""

    tol: float = 1e-5
    tols: tuple[float, ...] = TABLE6_TOLS
    dtype: str = "bf16"
    numel: dict[str, int] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    changed_bitwise: dict[str, int] = field(default_factory=dict)
    changed_by_tol: dict[float, int] = field(default_factory=dict)

    def __post_init__(self):
        for tol in self.tols:
            _check(tol, dtype=self.dtype)
        _check(self.tol, dtype=self.dtype)
        self.tols = tuple(sorted(set(self.tols) | {self.tol}))
        self.changed_by_tol = {tol: 0 for tol in self.tols}

    def add(self, name: str, theta0: np.ndarray, theta1: np.ndarray) -> None:
        """Count the changed entries of one tensor pair."""
        if name in self.numel:
            raise ValueError(f"tensor {name!r} added twice")
        if np.shape(theta0) != np.shape(theta1):
            raise ValueError(f"shape mismatch for tensor {name!r}: θ0 {np.shape(theta0)} vs θ1 {np.shape(theta1)}")
        flat0, flat1 = np.ravel(theta0), np.ravel(theta1)  # (N,) views when contiguous
        tols = {tol: round_to(tol, self.dtype) for tol in self.tols}
        changed_bitwise, changed_by_tol = 0, dict.fromkeys(self.tols, 0)
        for start in range(0, flat0.size, _CHUNK):
            a = round_to(flat0[start : start + _CHUNK], self.dtype)  # (C,)
            b = round_to(flat1[start : start + _CHUNK], self.dtype)  # (C,)
            abs_diff = np.abs(update_difference(a, b, self.dtype))  # (C,) the difference taken in `dtype`
            equal = a == b  # (C,) same rule as unchanged_mask
            changed_bitwise += a.size - int(np.count_nonzero(equal))
            for tol, tol_rounded in tols.items():
                changed_by_tol[tol] += a.size - int(np.count_nonzero(equal | (abs_diff <= tol_rounded)))
        self.numel[name] = int(flat0.size)
        self.changed[name] = changed_by_tol[self.tol]
        self.changed_bitwise[name] = changed_bitwise
        for tol in self.tols:
            self.changed_by_tol[tol] += changed_by_tol[tol]

    def report(self) -> SparsityReport:
        """The report for the tensors added so far."""
        n = sum(self.numel.values())
        return SparsityReport(
            overall=_fraction_unchanged(sum(self.changed.values()), n),
            bitwise=_fraction_unchanged(sum(self.changed_bitwise.values()), n),
            per_tensor={k: _fraction_unchanged(self.changed[k], self.numel[k]) for k in self.numel},
            per_tensor_bitwise={k: _fraction_unchanged(self.changed_bitwise[k], self.numel[k]) for k in self.numel},
            n_params=n,
            n_changed=sum(self.changed.values()),
            n_changed_bitwise=sum(self.changed_bitwise.values()),
            by_tol={tol: _fraction_unchanged(c, n) for tol, c in self.changed_by_tol.items()},
            n_changed_by_tol=dict(self.changed_by_tol),
            numel=dict(self.numel),
            tol=self.tol,
            dtype=self.dtype,
        )


def _fraction_unchanged(n_changed: int, n: int) -> float:
    """1 - n_changed / n, nan for an empty model."""
    return 1.0 - n_changed / n if n else float("nan")


def compare_models(
    theta0_items: Tensors,
    theta1_lookup: TensorSource,
    *,
    tol: float = 1e-5,
    tols: tuple[float, ...] = TABLE6_TOLS,
    dtype: str = "bf16",
    ignore: Collection[str] = (),
) -> SparsityReport:
    """Sparsity report of θ1 against θ0, streamed one tensor at a time."""
    acc = SparsityAccumulator(tol=tol, tols=tols, dtype=dtype)
    for name, theta0, theta1 in aligned_tensors(theta0_items, theta1_lookup, ignore=ignore):
        acc.add(name, theta0, theta1)
    return acc.report()


def compare_state_dicts(d0: Mapping[str, np.ndarray], d1: Mapping[str, np.ndarray], **kwargs) -> SparsityReport:
    """Sparsity report of two in-memory state dicts (names checked up front)."""
    return compare_models(d0, d1, **kwargs)


def update_sparsity(theta0, theta1, tol: float = 1e-5, mode: str = "tol", dtype: str = "bf16") -> float:
    """``1 - ||θ1 - θ0||_0 / n`` of two arrays, or of two models (streamed)."""
    _check(tol, mode, dtype)
    if isinstance(theta0, np.ndarray):
        theta0, theta1 = {"tensor": theta0}, {"tensor": np.asarray(theta1)}
    report = compare_models(theta0, theta1, tol=tol, tols=(tol,), dtype=dtype)
    return report.bitwise if mode == "bitwise" else report.overall


def density_official(report: SparsityReport) -> dict[int, float]:
    """Official per-layer print: unweighted mean over a layer's tensors of the exact non-zero fraction."""
    # official: num_nonzero_dict[name] = (delta != 0).sum() / delta.numel(); then
    # sum(vals) / len(vals) per layer -- a density, and every tensor weighs the same.
    fractions: dict[int, list[float]] = {}
    for name, sparsity in report.per_tensor_bitwise.items():
        if name.startswith("model.layers"):
            fractions.setdefault(int(name.split(".")[2]), []).append(1.0 - sparsity)
    return {layer: sum(v) / len(v) for layer, v in sorted(fractions.items())}


def cell_of(name: str) -> tuple[int | None, str]:
    """(layer index or None, column) of a Hugging Face Llama parameter name in the sparsity grid."""
    match = _LAYER_NAME.match(name)
    if match:
        return int(match.group(1)), _COLUMN_OF_SUFFIX.get(match.group(2), match.group(2))
    return None, _NON_LAYER_COLUMN.get(name, name)
