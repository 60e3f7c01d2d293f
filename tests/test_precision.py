"""Tests for minirl.precision: bf16/fp16 rounding and the precision policy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minirl.precision import (
    POLICY_NAMES,
    PrecisionPolicy,
    bf16_bits,
    bfloat16,
    get_policy,
    storage_dtype,
    to_bf16,
    to_fp16,
    ulp,
)

f32_arrays = hnp.arrays(
    np.float32,
    hnp.array_shapes(max_dims=2, max_side=16),
    elements=st.floats(width=32, allow_nan=False, allow_infinity=True, allow_subnormal=True),
)


def f32_from_bits(bits):
    return np.array(bits, dtype=np.uint32).view(np.float32)


def test_ties_round_to_even():
    # bf16 keeps the top 16 bits of a float32. 0x3F80_8000 lies exactly halfway
    # between 0x3F80 (1.0, even mantissa) and 0x3F81 (odd): ties go to even = down.
    # 0x3F81_8000 lies halfway between 0x3F81 (odd) and 0x3F82 (even): goes up.
    x = f32_from_bits([0x3F808000, 0x3F818000, 0xBF808000, 0xBF818000])
    assert list(bf16_bits(x)) == [0x3F80, 0x3F82, 0xBF80, 0xBF82]
    np.testing.assert_array_equal(to_bf16(x), f32_from_bits([0x3F800000, 0x3F820000, 0xBF800000, 0xBF820000]))
    # one bit above / below the tie rounds to nearest, whatever the parity
    near = f32_from_bits([0x3F808001, 0x3F817FFF])
    assert list(bf16_bits(near)) == [0x3F81, 0x3F81]


def test_matches_integer_formula_on_a_million_bit_patterns():
    # the same rounding written twice: round-to-nearest-even on the raw bits,
    # over a strided sweep of all float32 patterns plus every exact tie
    bits = np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32)
    ties = (np.arange(0, 2**16, dtype=np.uint32) << 16) | 0x8000
    bits = np.concatenate([bits, ties])
    x = bits.view(np.float32)
    keep = ~np.isnan(x)
    b = bits[keep].astype(np.uint64)
    expected = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(bf16_bits(x[keep]), expected)


def test_fp16_ties_round_to_even():
    # 1 + 2^-11 is halfway between 1 and 1 + 2^-10 (fp16 has 10 mantissa bits): goes to 1.
    # 1 + 3 * 2^-11 is halfway between 1 + 2^-10 (odd) and 1 + 2^-9 (even): goes up.
    x = np.array([1 + 2.0**-11, 1 + 3 * 2.0**-11], dtype=np.float32)
    np.testing.assert_array_equal(to_fp16(x), np.array([1.0, 1 + 2.0**-9], dtype=np.float32))


def test_known_values_and_special_cases():
    x = np.array([1.0, 3.1, -0.0, np.inf, -np.inf, 3.4028235e38, 1e-45], dtype=np.float32)
    y = to_bf16(x)
    assert y.dtype == np.float32
    assert y[0] == 1.0 and y[1] == 3.09375
    assert np.signbit(y[2]) and y[2] == 0.0
    assert y[3] == np.inf and y[4] == -np.inf
    assert y[5] == np.inf  # float32 max is past the bf16 max + half ULP: overflows
    assert y[6] == 0.0  # smallest float32 subnormal is below half the smallest bf16 subnormal
    nan = to_bf16(np.array([np.nan, -np.nan], dtype=np.float32))
    assert np.isnan(nan).all()
    assert np.isnan(to_fp16(np.float32(np.nan)))


@settings(max_examples=100, deadline=None)
@given(f32_arrays)
def test_idempotent_and_representable(x):
    for policy in (PrecisionPolicy("bf16"), PrecisionPolicy("fp16"), PrecisionPolicy("pure_bf16")):
        once = policy.store(x)
        np.testing.assert_array_equal(policy.store(once), once)
        # exactly representable: the float32 -> storage -> float32 trip is lossless
        np.testing.assert_array_equal(once.astype(policy.storage_dtype).astype(np.float32), once)
    # the bits are the top half of the rounded float32
    widened = (bf16_bits(x).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(widened.view(np.uint32), to_bf16(x).view(np.uint32))


@settings(max_examples=100, deadline=None)
@given(f32_arrays)
def test_monotone_and_nearest(x):
    flat = np.sort(x.ravel())
    for fn in (to_bf16, to_fp16):
        y = fn(flat)
        assert np.all(y[1:] >= y[:-1])
    finite = flat[np.isfinite(flat) & (np.abs(flat) < 3.38e38)]
    err = np.abs(to_bf16(finite).astype(np.float64) - finite.astype(np.float64))
    assert np.all(err <= ulp(finite, "bf16").astype(np.float64) / 2)


@settings(max_examples=100, deadline=None)
@given(f32_arrays)
def test_nan_stays_nan(x):
    x = x.copy().ravel()
    if x.size:
        x[:: max(1, x.size // 3)] = np.nan
    for fn in (to_bf16, to_fp16):
        y = fn(x)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(x))


@settings(max_examples=100, deadline=None)
@given(f32_arrays)
def test_matches_torch_bitwise(x):
    torch = pytest.importorskip("torch")
    ref = torch.tensor(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(to_bf16(x).view(np.uint32), ref.view(np.uint32))
    ref16 = torch.tensor(x).to(torch.float16).float().numpy()
    np.testing.assert_array_equal(to_fp16(x).view(np.uint32), ref16.view(np.uint32))


def test_ulp():
    assert ulp(np.float32(1.0)) == 2.0**-7
    assert ulp(np.float32(1.99)) == 2.0**-7
    assert ulp(np.float32(-2.0)) == 2.0**-6
    assert ulp(np.float32(1.0), "fp16") == 2.0**-10
    assert ulp(np.float32(0.0)) == np.float32(2.0**-133)  # smallest bf16 subnormal
    assert ulp(np.float32(1e-39)) == np.float32(2.0**-133)
    assert ulp(np.float32(1e-7), "fp16") == np.float32(2.0**-24)  # fp16 subnormal range
    assert np.isnan(ulp(np.array([np.inf, np.nan], dtype=np.float32))).all()
    # an update below half a ULP is rounded away; one above it moves the stored weight
    w = np.float32(1.0)
    assert to_bf16(w + 0.49 * ulp(w)) == w
    assert to_bf16(w + 0.51 * ulp(w)) == w + ulp(w)


def test_policy_flags():
    assert not PrecisionPolicy("fp32").needs_master and not PrecisionPolicy("fp32").rounds
    assert PrecisionPolicy("bf16").needs_master and PrecisionPolicy("fp16").needs_master
    assert not PrecisionPolicy("pure_bf16").needs_master and PrecisionPolicy("pure_bf16").rounds
    assert PrecisionPolicy("bf16").storage_dtype == bfloat16
    assert PrecisionPolicy("pure_bf16").dtype_name == "bf16"
    assert PrecisionPolicy("fp16").storage_dtype == np.float16
    assert PrecisionPolicy("fp32").storage_dtype == np.float32
    x = np.array([1.1, 2.2], dtype=np.float32)
    assert PrecisionPolicy("fp32").store(x) is x  # identity, no copy
    assert get_policy(None).name == "fp32"
    assert get_policy("bf16") == PrecisionPolicy("bf16")
    assert storage_dtype("pure_bf16") == bfloat16 and storage_dtype("fp16") == np.float16


def test_bad_names():
    with pytest.raises(ValueError, match="fp32, bf16, pure_bf16, fp16"):
        get_policy("bfloat16")
    with pytest.raises(ValueError, match="PrecisionPolicy.name"):
        PrecisionPolicy("fp8")
    with pytest.raises(ValueError, match="dtype"):
        storage_dtype("int8")
    assert set(POLICY_NAMES) == {"fp32", "bf16", "pure_bf16", "fp16"}
