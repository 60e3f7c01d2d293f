"""Storage precision: bf16 / fp16 rounding and the mixed-precision policy.

The papers' models are stored in bfloat16 and trained with fp32 master weights
(DESIGN.md, "Precision"). A stored bf16 weight changes only when its
accumulated fp32 update crosses half a bf16 ULP, which is the precision
explanation of RL's update sparsity (*The Path Not Taken*, arXiv 2511.08567;
*RL's Razor*, arXiv 2509.04259; PAPERS.md section 1). This module provides

- ``to_bf16`` / ``to_fp16``: float32 values rounded to the nearest bf16 / fp16
  value (round-to-nearest-even, via ``ml_dtypes`` / NumPy casts), returned as
  float32 so the rest of minirl keeps computing in float32;
- ``bf16_bits`` and ``ulp``: the raw bits and the spacing of the grid, for
  tests and for the sparsity analysis ("did this update cross half a ULP?");
- ``PrecisionPolicy``: what the model's stored weights become after each
  optimizer step, and whether the optimizer keeps an fp32 master copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

bfloat16 = np.dtype(ml_dtypes.bfloat16)
float16 = np.dtype(np.float16)
float32 = np.dtype(np.float32)

POLICY_NAMES = ("fp32", "bf16", "pure_bf16", "fp16")
"""Allowed ``PrecisionPolicy.name`` values."""

# Storage dtype of each policy, and the short names checkpoints use.
_STORAGE = {"fp32": float32, "bf16": bfloat16, "pure_bf16": bfloat16, "fp16": float16}
DTYPE_NAMES = {"fp32": float32, "bf16": bfloat16, "fp16": float16}
"""Short storage-dtype names (as used by ``checkpoint.save_checkpoint``)."""


def _as_f32(x) -> np.ndarray:
    """x as a float32 array (float64 inputs are rounded to float32 first)."""
    return np.asarray(x, dtype=np.float32)


def round_to(x, dtype) -> np.ndarray:
    """float32 values of x rounded (nearest-even) to ``dtype``, returned as float32."""
    dtype = np.dtype(dtype)
    x = _as_f32(x)
    if dtype == float32:
        return x
    with np.errstate(over="ignore"):  # overflow to +-inf is the correct rounding
        return x.astype(dtype).astype(np.float32)


def to_bf16(x) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), as float32."""
    return round_to(x, bfloat16)


def to_fp16(x) -> np.ndarray:
    """float32 values rounded to the nearest float16 (ties to even), as float32."""
    return round_to(x, float16)


def bf16_bits(x) -> np.ndarray:
    """The 16-bit bfloat16 encodings of x (after rounding), as uint16."""
    with np.errstate(over="ignore"):
        return _as_f32(x).astype(bfloat16).view(np.uint16)


def ulp(x, dtype="bf16") -> np.ndarray:
    """Spacing of the ``dtype`` grid at |x| (float32): the step one stored unit is worth.

    For a normal value in [2^e, 2^(e+1)) this is 2^(e - nmant) (2^(e-7) for
    bf16); below the normal range it is the smallest subnormal. A stored
    weight w moves only if its accumulated update exceeds about ulp(w) / 2.
    Infinite or NaN inputs give NaN.
    """
    dt = DTYPE_NAMES[dtype] if isinstance(dtype, str) else np.dtype(dtype)
    info = ml_dtypes.finfo(dt) if dt == bfloat16 else np.finfo(dt)
    ax = np.abs(_as_f32(x)).astype(np.float64)
    _, e = np.frexp(ax)  # ax = m * 2**e with m in [0.5, 1), so floor(log2 ax) = e - 1
    spacing = np.ldexp(1.0, e - 1 - info.nmant)
    spacing = np.where(ax == 0, 0.0, spacing)  # frexp(0) has e = 0; zero's spacing is the subnormal one
    spacing = np.maximum(spacing, float(info.smallest_subnormal))
    return np.where(np.isfinite(ax), spacing, np.nan).astype(np.float32)


@dataclass(frozen=True)
class PrecisionPolicy:
    """How the model's weights are stored, and how the optimizer updates them."""

    name: str = "bf16"
    """One of ``POLICY_NAMES``: "fp32" (no rounding), "bf16" / "fp16" (stored
    weights rounded after every step, fp32 master weights in the optimizer),
    "pure_bf16" (bf16 weights updated in place, no master copy: updates
    smaller than half a ULP are lost forever)."""

    def __post_init__(self):
        if self.name not in POLICY_NAMES:
            raise ValueError(
                f"PrecisionPolicy.name must be one of {list(POLICY_NAMES)}, got {self.name!r}"
            )

    @property
    def needs_master(self) -> bool:
        """True when the optimizer must keep fp32 master weights (bf16, fp16)."""
        return self.name in ("bf16", "fp16")

    @property
    def rounds(self) -> bool:
        """True when stored weights are rounded to a lower precision."""
        return self.name != "fp32"

    @property
    def storage_dtype(self) -> np.dtype:
        """NumPy / ml_dtypes dtype the weights are stored in (and checkpointed as)."""
        return _STORAGE[self.name]

    @property
    def dtype_name(self) -> str:
        """Short storage-dtype name: "fp32", "bf16" or "fp16"."""
        return {float32: "fp32", bfloat16: "bf16", float16: "fp16"}[self.storage_dtype]

    def store(self, master: np.ndarray) -> np.ndarray:
        """What the model's stored weights become: ``master`` rounded to the storage dtype, as float32."""
        return round_to(master, self.storage_dtype)


def get_policy(name: str | PrecisionPolicy | None) -> PrecisionPolicy:
    """The policy called ``name`` (None means fp32); a policy is returned unchanged."""
    if name is None:
        return PrecisionPolicy("fp32")
    if isinstance(name, PrecisionPolicy):
        return name
    if name not in POLICY_NAMES:
        raise ValueError(f"unknown precision {name!r}; allowed: {', '.join(POLICY_NAMES)}")
    return PrecisionPolicy(name)


def storage_dtype(name) -> np.dtype:
    """Storage dtype for a short dtype name ("fp32", "bf16", "fp16") or a policy name."""
    if isinstance(name, PrecisionPolicy):
        return name.storage_dtype
    if name in DTYPE_NAMES:
        return DTYPE_NAMES[name]
    if name in POLICY_NAMES:
        return _STORAGE[name]
    raise ValueError(
        f"dtype must be one of {sorted(set(DTYPE_NAMES) | set(POLICY_NAMES))}, got {name!r}"
    )
