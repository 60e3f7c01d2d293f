"""Tests of minirl.analysis: update sparsity, rank and overlap (arXiv 2505.11711, 2511.08567)."""

import json
import math
from collections import Counter

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minirl.analysis import (
    LAYER_COLUMNS,
    TABLE6_TOLS,
    OverlapAccumulator,
    RankAccumulator,
    SparsityAccumulator,
    analyze_update,
    compare_models,
    compare_state_dicts,
    density_official,
    rank_report,
    round_to,
    run_overlap,
    subnetwork_agreement,
    subnetwork_overlap,
    unchanged_mask,
    update_difference,
    update_rank,
    update_sparsity,
    updated_mask,
)
from minirl.analysis import sparsity as sparsity_module

FAST = settings(max_examples=40, deadline=None)
MATRIX_SUFFIXES = {
    "q": "self_attn.q_proj.weight",
    "k": "self_attn.k_proj.weight",
    "v": "self_attn.v_proj.weight",
    "o": "self_attn.o_proj.weight",
    "gate": "mlp.gate_proj.weight",
    "up": "mlp.up_proj.weight",
    "down": "mlp.down_proj.weight",
    "input_norm": "input_layernorm.weight",
    "post_norm": "post_attention_layernorm.weight",
}


def tiny_llama(rng, n_layers=2, d=8, vocab=12, ffn=16):
    """A Hugging Face-named Llama state dict of float32 arrays."""
    shapes = {"model.embed_tokens.weight": (vocab, d)}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (d, d),
            p + "self_attn.k_proj.weight": (d // 2, d),
            p + "self_attn.v_proj.weight": (d // 2, d),
            p + "self_attn.o_proj.weight": (d, d),
            p + "mlp.gate_proj.weight": (ffn, d),
            p + "mlp.up_proj.weight": (ffn, d),
            p + "mlp.down_proj.weight": (d, ffn),
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
        }
    shapes |= {"model.norm.weight": (d,), "lm_head.weight": (vocab, d)}
    return {name: (0.02 * rng.standard_normal(shape)).astype(np.float32) for name, shape in shapes.items()}


def perturbed(model, rng, fraction=0.3, scale=1e-3):
    """A copy of `model` with a random `fraction` of entries moved by `scale`-sized steps."""
    out = {}
    for name, w in model.items():
        move = rng.random(w.shape) < fraction
        out[name] = (w + move * scale * rng.standard_normal(w.shape)).astype(np.float32)
    return out


# --- update sparsity -------------------------------------------------------------


@FAST
@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=6), elements=st.floats(width=32)))
def test_sparsity_of_a_tensor_against_itself_is_one(w):
    for mode in ("tol", "bitwise"):
        for dtype in ("bf16", "fp32"):
            expected = 1.0 - np.count_nonzero(np.isnan(w)) / w.size  # a NaN weight never counts unchanged
            assert update_sparsity(w, w.copy(), mode=mode, dtype=dtype) == expected


def test_sparsity_of_a_model_against_itself_is_one():
    model = tiny_llama(np.random.default_rng(0))
    report = compare_state_dicts(model, {k: v.copy() for k, v in model.items()})
    assert report.overall == 1.0 and report.bitwise == 1.0 and report.n_changed == 0
    assert all(v == 1.0 for v in report.by_tol.values())
    assert report.n_params == sum(v.size for v in model.values())


@pytest.mark.parametrize("mode", ["tol", "bitwise"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_k_large_moves_give_sparsity_one_minus_k_over_n(mode, dtype):
    rng = np.random.default_rng(1)
    model = tiny_llama(rng)
    flat0 = np.concatenate([w.ravel() for w in model.values()])
    n, k = flat0.size, 37
    flat1 = flat0.copy()
    flat1[rng.choice(n, size=k, replace=False)] += 1.0
    moved, start = {}, 0
    for name, w in model.items():
        moved[name] = flat1[start : start + w.size].reshape(w.shape)
        start += w.size
    assert update_sparsity(model, moved, mode=mode, dtype=dtype) == 1.0 - k / n
    report = compare_state_dicts(model, moved, dtype=dtype)
    assert (report.n_changed, report.n_changed_bitwise, report.n_params) == (k, k, n)


def test_update_below_half_a_bf16_ulp_is_invisible_in_bf16_but_visible_in_fp32():
    rng = np.random.default_rng(2)
    w = round_to(rng.uniform(0.5, 1.0, size=1000))  # bf16-exact weights in [0.5, 1): ULP 2^-8
    w_new = w + np.float32(2.0**-10)  # a quarter ULP: 9.8e-4, far above tol 1e-5
    for mode in ("tol", "bitwise"):
        assert update_sparsity(w, w_new, mode=mode, dtype="bf16") == 1.0
        assert update_sparsity(w, w_new, mode=mode, dtype="fp32") == 0.0


def test_absolute_tol_hides_moves_of_small_weights_that_bitwise_sees():
    # |w| < 2^-9: bf16 ULP <= 2^-17 = 7.6e-6 <= 1e-5, so a move of one ULP (or
    # two ULPs below 2^-10) stays within tol; from 2^-9 up one ULP is 1.5e-5 > tol.
    w_tiny = np.float32(1.5 * 2**-11)  # ULP 2^-18
    w_small = np.float32(1.5 * 2**-10)  # ULP 2^-17
    w_edge = np.float32(1.5 * 2**-9)  # ULP 2^-16
    theta0 = np.array([w_tiny, -w_tiny, w_small, w_edge], np.float32)
    theta1 = theta0 + np.array([2 * 2**-18, -2 * 2**-18, 2**-17, 2**-16], np.float32)
    assert np.array_equal(round_to(theta1), theta1)  # the moves are whole bf16 ULPs
    assert list(unchanged_mask(theta0, theta1, tol=1e-5)) == [True, True, True, False]
    assert list(unchanged_mask(theta0, theta1, mode="bitwise")) == [False, False, False, False]
    assert update_sparsity(theta0, theta1) == 0.75
    assert update_sparsity(theta0, theta1, mode="bitwise") == 0.0


def test_tol_is_rounded_to_bf16_like_torch_isclose():
    delta = float(np.float32(1e-5).astype(ml_dtypes.bfloat16))
    assert delta == 1.0013580322265625e-05  # bf16(1e-5) > 1e-5
    zero, moved = np.zeros(1, np.float32), np.array([delta], np.float32)
    assert update_sparsity(zero, moved, tol=1e-5, dtype="bf16") == 1.0  # |Δ| <= bf16(tol)
    assert update_sparsity(zero, moved, tol=1e-5, dtype="fp32") == 0.0  # |Δ| > fp32(tol)


def test_difference_is_taken_in_bf16():
    rng = np.random.default_rng(3)
    a = rng.standard_normal(10_000).astype(np.float32) * rng.choice([1e-4, 1.0, 1e3], 10_000).astype(np.float32)
    b = a + rng.standard_normal(10_000).astype(np.float32) * 1e-2
    bf16_arithmetic = (b.astype(ml_dtypes.bfloat16) - a.astype(ml_dtypes.bfloat16)).astype(np.float32)
    assert np.array_equal(update_difference(a, b), bf16_arithmetic)
    assert not np.array_equal(update_difference(a, b), round_to(b) - round_to(a))  # not the fp32 difference


def _finite_bf16_bits():
    """Every finite bf16 bit pattern as uint16."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    return bits[np.isfinite(bits.view(ml_dtypes.bfloat16).astype(np.float32))]


def test_path_not_taken_relative_rule_is_bitwise_equality_in_bf16():
    rng = np.random.default_rng(4)
    x = _finite_bf16_bits()
    pairs = [(x, x)]
    for step in (-2, -1, 1, 2):  # every finite value against its bit neighbours
        y = (x.astype(np.int32) + step) % (1 << 16)
        pairs.append((x, y.astype(np.uint16)))
    pairs.append((rng.choice(x, 200_000), rng.choice(x, 200_000)))  # random pairs
    pairs.append((np.array([0x0000, 0x8000], np.uint16), np.array([0x8000, 0x0000], np.uint16)))  # +0 / -0
    for xb, yb in pairs:
        xv, yv = xb.view(ml_dtypes.bfloat16).astype(np.float32), yb.view(ml_dtypes.bfloat16).astype(np.float32)
        finite = np.isfinite(yv)
        xb, yb, xv, yv = xb[finite], yb[finite], xv[finite], yv[finite]
        x64, y64 = xv.astype(np.float64), yv.astype(np.float64)
        relative_rule = np.abs(y64 - x64) <= 1e-3 * np.maximum(np.abs(x64), np.abs(y64))
        same_bits = (xb == yb) | ((xv == 0) & (yv == 0))  # bit patterns equal, +0 and -0 identified
        assert np.array_equal(unchanged_mask(xv, yv, mode="bitwise"), relative_rule)
        assert np.array_equal(relative_rule, same_bits)


def test_multi_tol_table_counts_each_band():
    zero = np.zeros(5, np.float32)
    moved = round_to([3e-9, 3e-8, 3e-7, 3e-6, 3e-5])
    report = compare_models({"w": zero}, {"w": moved}, tols=TABLE6_TOLS)
    assert report.n_changed_by_tol == {1e-8: 4, 1e-7: 3, 1e-6: 2, 1e-5: 1}
    assert report.by_tol == {1e-8: 1 - 4 / 5, 1e-7: 1 - 3 / 5, 1e-6: 1 - 2 / 5, 1e-5: 1 - 1 / 5}
    assert report.overall == 1 - 1 / 5 and report.bitwise == 0.0


@FAST
@given(st.integers(0, 2**32 - 1), st.sampled_from(["bf16", "fp32"]))
def test_multi_tol_table_is_monotone_in_tol(seed, dtype):
    rng = np.random.default_rng(seed)
    theta0 = (0.02 * rng.standard_normal(500)).astype(np.float32)
    theta1 = theta0 + (10.0 ** rng.uniform(-10, -3, 500) * rng.choice([-1, 1], 500)).astype(np.float32)
    by_tol = compare_models({"w": theta0}, {"w": theta1}, dtype=dtype).by_tol
    values = [by_tol[tol] for tol in sorted(by_tol)]
    assert all(lo <= hi for lo, hi in zip(values, values[1:]))
    assert by_tol[1e-5] >= compare_models({"w": theta0}, {"w": theta1}, dtype=dtype).bitwise


def test_streaming_equals_whole_dict(monkeypatch):
    rng = np.random.default_rng(5)
    model = tiny_llama(rng)
    trained = perturbed(model, rng)
    whole = compare_state_dicts(model, trained)
    from_callable = compare_models(((k, v) for k, v in model.items()), trained.__getitem__)
    lockstep = compare_models(iter(list(model.items())), iter(list(trained.items())))
    monkeypatch.setattr(sparsity_module, "_CHUNK", 7)  # slice every tensor into ragged chunks
    chunked = compare_models(iter(model.items()), trained.__getitem__)
    assert whole == from_callable == lockstep == chunked
    assert 0.0 < whole.bitwise <= whole.overall < 1.0
    acc = SparsityAccumulator()
    for name in reversed(list(model)):
        acc.add(name, model[name], trained[name])
    assert acc.report().overall == whole.overall and acc.report().n_changed == whole.n_changed


def test_shape_mismatch_raises_naming_tensor_and_shapes():
    model = tiny_llama(np.random.default_rng(6))
    broken = dict(model)
    broken["model.layers.1.mlp.up_proj.weight"] = np.zeros((3, 8), np.float32)
    for theta1 in (broken, broken.__getitem__, iter(broken.items())):
        with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\(16, 8\).*\(3, 8\)"):
            compare_models(iter(model.items()), theta1)
    with pytest.raises(ValueError, match="up_proj"):
        SparsityAccumulator().add("model.layers.1.mlp.up_proj.weight", np.zeros((16, 8)), np.zeros((3, 8)))
    with pytest.raises(ValueError, match="up_proj"):
        rank_report(model, broken)


def test_missing_names_raise_naming_them():
    model = tiny_llama(np.random.default_rng(7))
    with_head = dict(model, **{"value_head.weight": np.zeros((1, 8), np.float32)})
    without_norm = {k: v for k, v in model.items() if k != "model.norm.weight"}
    with pytest.raises(ValueError, match=r"only in θ0 \['model.norm.weight'\], only in θ1 \['value_head.weight'\]"):
        compare_state_dicts(model, {k: v for k, v in with_head.items() if k != "model.norm.weight"})
    with pytest.raises(ValueError, match=r"'model.norm.weight' is in θ0 but missing in θ1"):
        compare_models(iter(model.items()), without_norm.__getitem__)
    with pytest.raises(ValueError, match=r"tensors only in θ1: \['value_head.weight'\]"):
        compare_models(iter(model.items()), with_head)
    with pytest.raises(ValueError, match=r"tensors only in θ1: \['value_head.weight'\]"):
        compare_models(iter(model.items()), iter(with_head.items()))
    with pytest.raises(ValueError, match="tensor order differs"):
        compare_models(iter(model.items()), iter(reversed(list(model.items()))))
    report = compare_models(iter(with_head.items()), model, ignore={"value_head.weight"})
    assert report.overall == 1.0 and "value_head.weight" not in report.per_tensor


def test_grid_places_each_name_in_its_cell():
    # every tensor has 64 entries and a different number k of moved entries,
    # so its sparsity 1 - k/64 identifies it
    names = ["model.embed_tokens.weight"]
    names += [f"model.layers.{i}.{MATRIX_SUFFIXES[c]}" for i in range(3) for c in LAYER_COLUMNS]
    names += ["model.norm.weight", "lm_head.weight", "value_head.weight"]
    theta0 = {name: np.zeros(64 if "norm" in name else (8, 8), np.float32) for name in names}
    theta1 = {}
    for k, (name, w) in enumerate(theta0.items(), start=1):
        moved = w.ravel().copy()
        moved[:k] = 1.0
        theta1[name] = moved.reshape(w.shape)
    report = compare_state_dicts(theta0, theta1)
    grid = report.by_layer()
    assert list(grid) == [0, 1, 2] and all(list(row) == list(LAYER_COLUMNS) for row in grid.values())
    for i in range(3):
        for j, column in enumerate(LAYER_COLUMNS):
            k = 1 + 1 + 9 * i + j  # embed is tensor 1
            assert grid[i][column] == 1.0 - k / 64
    assert report.non_layer() == {"embed": 1 - 1 / 64, "norm": 1 - 29 / 64, "lm_head": 1 - 30 / 64,
                                  "value_head.weight": 1 - 31 / 64}
    lines = report.table().splitlines()
    assert lines[1].split() == ["layer", *LAYER_COLUMNS]
    assert lines[3].split() == ["1"] + [f"{100 * (1 - k / 64):.2f}" for k in range(11, 20)]


def test_official_density_is_one_minus_sparsity_only_for_equal_sizes():
    names = [f"model.layers.0.{MATRIX_SUFFIXES[c]}" for c in ("q", "input_norm")]
    equal = {names[0]: np.zeros((8, 8), np.float32), names[1]: np.zeros(64, np.float32)}
    moved = {names[0]: np.ones((8, 8), np.float32) * (np.arange(64) < 32).reshape(8, 8),
             names[1]: np.zeros(64, np.float32)}
    report = compare_state_dicts(equal, moved)
    assert density_official(report) == {0: 0.25}
    assert 1 - report.layer_sparsity(bitwise=True)[0] == 0.25
    # same moved entries, but the norm has 8 entries instead of 64
    unequal, moved[names[1]] = dict(equal, **{names[1]: np.zeros(8, np.float32)}), np.zeros(8, np.float32)
    report = compare_state_dicts(unequal, moved)
    assert density_official(report) == {0: 0.25}  # (32/64 + 0/8) / 2
    assert 1 - report.layer_sparsity(bitwise=True)[0] == pytest.approx(32 / 72, abs=1e-15)


# --- update rank -----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_rank_of_a_low_rank_product_is_exact(seed):
    rng = np.random.default_rng(seed)
    r = int(rng.integers(1, 6))
    m, n = int(rng.integers(2 * r, 50)), int(rng.integers(2 * r, 50))
    product = (rng.standard_normal((m, r)) @ rng.standard_normal((r, n))).astype(np.float32)  # (m, n)
    assert update_rank(product) == (r, min(m, n))
    assert update_rank(product)[0] == np.linalg.matrix_rank(product)


def test_full_gaussian_has_full_rank_and_zero_has_rank_zero():
    rng = np.random.default_rng(8)
    assert update_rank(rng.standard_normal((30, 20))) == (20, 20)
    assert update_rank(np.zeros((7, 5), np.float32)) == (0, 5)
    with pytest.raises(ValueError, match="2-D"):
        update_rank(np.zeros(4))


def test_rank_report_skips_norms_and_averages_fractions():
    rng = np.random.default_rng(9)
    model = tiny_llama(rng, n_layers=1)
    zero = {k: np.zeros_like(v) for k, v in model.items()}
    update = dict(zero)
    update["model.embed_tokens.weight"] = (rng.standard_normal((12, 3)) @ rng.standard_normal((3, 8))).astype(np.float32)
    update["lm_head.weight"] = rng.standard_normal((12, 8)).astype(np.float32)
    report = rank_report(zero, update, dtype="fp32")
    assert report.skipped == ["model.layers.0.input_layernorm.weight",
                              "model.layers.0.post_attention_layernorm.weight", "model.norm.weight"]
    assert report.rank["model.embed_tokens.weight"] == 3 and report.per_tensor["lm_head.weight"] == 1.0
    assert report.per_tensor["model.layers.0.self_attn.q_proj.weight"] == 0.0
    assert report.mean_fraction == pytest.approx((3 / 8 + 1.0) / 9)  # 9 matrices: 7 in the layer + embed + head
    # in bf16 the stored update is the rounded product, which is no longer rank 3
    assert rank_report(zero, update).rank["model.embed_tokens.weight"] > 3


# --- overlap ---------------------------------------------------------------------


@FAST
@given(st.data())
def test_overlap_identity_holds(data):
    n = data.draw(st.integers(1, 300))
    mask_a = data.draw(hnp.arrays(bool, n))
    mask_b = data.draw(hnp.arrays(bool, n))
    report = subnetwork_overlap(mask_a, mask_b)
    if report.n_a and report.n_b:
        assert math.isclose(report.o1 * (1 - report.s_a), report.o2 * (1 - report.s_b), rel_tol=1e-12)
        assert math.isclose(report.o1 * (1 - report.s_a), np.mean(mask_a & mask_b), rel_tol=1e-12, abs_tol=1e-15)
    assert report.o1_random == pytest.approx(np.mean(mask_b)) and report.o2_random == pytest.approx(np.mean(mask_a))


def test_independent_masks_overlap_at_chance():
    rng = np.random.default_rng(10)
    n = 200_000
    mask_a, mask_b = rng.random(n) < 0.3, rng.random(n) < 0.2
    report = subnetwork_overlap(mask_a, mask_b)
    se_o1 = math.sqrt(report.o1_random * (1 - report.o1_random) / report.n_a)
    se_o2 = math.sqrt(report.o2_random * (1 - report.o2_random) / report.n_b)
    assert abs(report.o1 - report.o1_random) < 4 * se_o1
    assert abs(report.o2 - report.o2_random) < 4 * se_o2
    assert abs(report.jaccard - report.jaccard_random) < 0.005  # chance 0.06/0.44 = 0.136
    assert report.jaccard_random == pytest.approx(
        (1 - report.s_a) * (1 - report.s_b) / ((1 - report.s_a) + (1 - report.s_b) - (1 - report.s_a) * (1 - report.s_b)))


def test_identical_masks_overlap_fully_and_empty_sets_give_nan():
    mask = np.random.default_rng(11).random(1000) < 0.1
    report = subnetwork_overlap(mask, mask)
    assert report.o1 == report.o2 == report.jaccard == 1.0
    empty = np.zeros(1000, bool)
    report = subnetwork_overlap(empty, mask)
    assert math.isnan(report.o1) and report.o2 == 0.0 and report.jaccard == 0.0 and report.s_a == 1.0
    report = subnetwork_overlap(empty, empty)
    assert math.isnan(report.o1) and math.isnan(report.o2) and math.isnan(report.jaccard)
    assert math.isnan(report.jaccard_random)
    assert math.isnan(subnetwork_overlap(np.zeros(0, bool), np.zeros(0, bool)).s_a)


def test_accumulated_overlap_equals_overlap_of_concatenated_masks():
    rng = np.random.default_rng(12)
    masks = {f"t{i}": (rng.random(50 * (i + 1)) < 0.4, rng.random(50 * (i + 1)) < 0.2) for i in range(4)}
    acc = OverlapAccumulator()
    for name, (a, b) in masks.items():
        acc.add(name, a, b)
    overall = acc.report()
    concatenated = subnetwork_overlap(*(np.concatenate(m) for m in zip(*masks.values())))
    assert overall == concatenated and overall.o1 == concatenated.o1
    assert overall.per_tensor["t2"] == subnetwork_overlap(*masks["t2"])


def test_run_overlap_counts_known_update_sets():
    theta0 = {"a": np.zeros(10, np.float32), "b": np.zeros((2, 5), np.float32)}
    run_a = {"a": np.r_[np.ones(4), np.zeros(6)].astype(np.float32), "b": np.zeros((2, 5), np.float32)}
    run_b = {"a": np.r_[np.zeros(2), np.ones(4), np.zeros(4)].astype(np.float32), "b": np.ones((2, 5), np.float32)}
    report = run_overlap(theta0, run_a, run_b.__getitem__)
    assert (report.n_params, report.n_a, report.n_b, report.n_both) == (20, 4, 14, 2)
    assert (report.o1, report.o2, report.s_a, report.s_b) == (0.5, 2 / 14, 1 - 4 / 20, 1 - 14 / 20)
    assert report.o1_random == pytest.approx(0.7) and report.o2_random == pytest.approx(0.2)
    assert report.per_tensor["b"].n_b == 10 and math.isnan(report.per_tensor["b"].o1)


def test_updated_mask_agrees_with_sparsity():
    rng = np.random.default_rng(13)
    theta0 = (0.02 * rng.standard_normal((20, 30))).astype(np.float32)
    theta1 = perturbed({"w": theta0}, rng, scale=1e-4)["w"]
    for mode in ("tol", "bitwise"):
        mask = updated_mask(theta0, theta1, mode=mode)
        assert mask.shape == (20, 30)
        assert 1 - mask.mean() == update_sparsity(theta0, theta1, mode=mode)


def test_subnetwork_agreement_at_each_tol():
    theta_full = np.zeros(1000, np.float32)
    theta_sub = theta_full.copy()
    theta_sub[:30], theta_sub[30:40] = 5e-5, 1e-3
    expected = {1e-5: 1 - 40 / 1000, 1e-4: 1 - 10 / 1000}
    assert subnetwork_agreement(theta_sub, theta_full) == expected
    assert subnetwork_agreement({"w": theta_sub}, iter([("w", theta_full)])) == expected


# --- parity with the official PyTorch code ---------------------------------------


def test_matches_official_torch_code():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(14)
    theta0 = (0.02 * rng.standard_normal((64, 48))).astype(np.float32)
    step = 10.0 ** rng.uniform(-9, -2, theta0.shape) * rng.choice([-1, 1], theta0.shape)
    theta1 = (theta0 + step * (rng.random(theta0.shape) < 0.7)).astype(np.float32)
    theta0[0, :4], theta1[0, :4] = 0.0, round_to(TABLE6_TOLS)  # |Δ| = bf16(tol) exactly: the edge cases
    # check_sparsity.py: delta = rl - sft on bf16 tensors; isclose(delta, 0, atol=tol); delta != 0
    delta = torch.from_numpy(theta1).bfloat16() - torch.from_numpy(theta0).bfloat16()
    report = compare_models({"w": theta0}, {"w": theta1})
    assert np.array_equal(update_difference(theta0, theta1), delta.float().numpy())
    for tol in TABLE6_TOLS:
        n_close = torch.isclose(delta, torch.zeros_like(delta), atol=tol).sum().item()
        assert report.n_params - report.n_changed_by_tol[tol] == n_close
    assert report.n_changed_bitwise == (delta != 0).sum().item()
    # update_rank.py: torch.linalg.matrix_rank(delta.float())
    low_rank = torch.from_numpy(theta0[:, :3] @ theta0[:3, :])
    for matrix in (delta.float(), low_rank, torch.zeros(5, 4)):
        assert update_rank(matrix.numpy())[0] == torch.linalg.matrix_rank(matrix).item()


# --- one pass: everything a run measures about its update -------------------------

HEADS = ("value_head.weight", "score.weight")


def update_analysis_three_passes(theta0, theta1, precision, ignore=HEADS):
    """The oracle: minirl/runs.py's update_analysis before the one-pass analysis, verbatim."""
    theta0 = {k: v for k, v in theta0.items() if k not in ignore}
    theta1 = {k: v for k, v in theta1.items() if k not in ignore}
    sp = compare_state_dicts(theta0, theta1, tol=1e-5, dtype="bf16")
    rk = rank_report(theta0, theta1, dtype="bf16" if precision != "fp32" else "fp32")
    out = {
        "sparsity": {
            "overall": sp.overall, "bitwise": sp.bitwise, "tol": 1e-5, "n_params": sp.n_params,
            "per_tensor": sp.per_tensor, "per_tensor_bitwise": sp.per_tensor_bitwise,
            "by_tol": {f"{t:g}": v for t, v in sp.by_tol.items()},
        },
        "rank": {"mean_fraction": rk.mean_fraction, "per_tensor": rk.per_tensor},
    }
    if precision == "fp32":
        fp = compare_state_dicts(theta0, theta1, tol=0.0, dtype="fp32")
        out["sparsity"]["fp32_exact"] = fp.bitwise
    return out


def trained_pair(seed, storage):
    """(θ0, θ1) stored in `storage`, with a value head, one untouched matrix, and every norm moved."""
    rng = np.random.default_rng(seed)
    theta0 = tiny_llama(rng) | {"value_head.weight": rng.standard_normal((1, 8)).astype(np.float32)}
    theta1 = perturbed(theta0, rng, fraction=0.5, scale=1e-3)
    theta1["model.layers.0.self_attn.k_proj.weight"] = theta0["model.layers.0.self_attn.k_proj.weight"].copy()
    theta1["model.norm.weight"] = theta0["model.norm.weight"] + 1e-3
    theta1["value_head.weight"] = theta0["value_head.weight"] + 1.0
    store = (lambda w: round_to(w, "bf16")) if storage == "bf16" else (lambda w: w)
    return {k: store(v) for k, v in theta0.items()}, {k: store(v) for k, v in theta1.items()}


@pytest.mark.parametrize("storage", ["bf16", "fp32"])
def test_one_pass_equals_the_three_separate_measurements(storage):
    theta0, theta1 = trained_pair(15, storage)
    report = analyze_update(theta0, theta1, rank_dtype=storage, ignore=HEADS)
    kept0 = {k: v for k, v in theta0.items() if k not in HEADS}
    kept1 = {k: v for k, v in theta1.items() if k not in HEADS}
    assert report.sparsity == compare_state_dicts(kept0, kept1, tol=1e-5, dtype="bf16")
    assert report.rank == rank_report(kept0, kept1, dtype=storage)
    exact = compare_state_dicts(kept0, kept1, tol=0.0, dtype="fp32")
    assert report.fp32_exact == exact.bitwise and report.fp32_exact_per_tensor == exact.per_tensor_bitwise
    # the dict report.json holds is the old one, plus fp32_exact for bf16 runs
    expected = update_analysis_three_passes(theta0, theta1, storage)
    expected["sparsity"].setdefault("fp32_exact", report.sparsity.bitwise)
    assert report.to_dict() == expected
    # the untouched matrix, the skipped norms and the ignored head
    k_proj = "model.layers.0.self_attn.k_proj.weight"
    assert report.sparsity.per_tensor_bitwise[k_proj] == report.fp32_exact_per_tensor[k_proj] == 1.0
    assert report.rank.rank[k_proj] == 0
    assert report.sparsity.per_tensor_bitwise["model.norm.weight"] == 0.0
    assert "model.norm.weight" in report.rank.skipped and len(report.rank.skipped) == 5
    assert "value_head.weight" not in report.sparsity.per_tensor
    assert 0.3 < report.sparsity.bitwise < 0.7
    if storage == "bf16":  # bf16 -> fp32 is exact, so exact fp32 equality is bitwise bf16 equality
        assert report.fp32_exact == report.sparsity.bitwise
    else:  # moves below half a bf16 ULP are invisible to the bitwise rule but not to exact fp32 equality
        assert report.fp32_exact < report.sparsity.bitwise


def test_one_pass_reads_each_tensor_once():
    theta0, theta1 = trained_pair(16, "bf16")
    names = [k for k in theta0 if k not in HEADS]

    def counted(reads, items):
        for name, tensor in items:
            reads[name] += 1
            yield name, tensor

    def lookup(name):
        reads1[name] += 1
        return theta1[name]

    reads0, reads1 = Counter(), Counter()
    streamed = analyze_update(counted(reads0, theta0.items()), lookup, ignore=HEADS)
    assert reads0 == Counter({name: 1 for name in theta0}) and reads1 == Counter(names)
    reads0, reads1 = Counter(), Counter()
    lockstep = analyze_update(counted(reads0, theta0.items()), counted(reads1, theta1.items()), ignore=HEADS)
    assert reads0 == reads1 == Counter({name: 1 for name in theta0})
    assert streamed.to_dict() == lockstep.to_dict() == analyze_update(theta0, theta1, ignore=HEADS).to_dict()
    # the three separate measurements read every tensor of θ1 three times
    reads1 = Counter()
    compare_models(theta0, lookup, ignore=HEADS), rank_report(theta0, lookup, ignore=HEADS)
    compare_models(theta0, lookup, tol=0.0, dtype="fp32", ignore=HEADS)
    assert reads1 == Counter({name: 3 for name in names})


def test_one_pass_errors_name_the_tensor():
    theta0, theta1 = trained_pair(17, "bf16")
    broken = dict(theta1, **{"model.layers.1.mlp.up_proj.weight": np.zeros((3, 8), np.float32)})
    for source in (broken, broken.__getitem__, iter(broken.items())):
        with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\(16, 8\).*\(3, 8\)"):
            analyze_update(iter(theta0.items()), source)
    without_norm = {k: v for k, v in theta1.items() if k != "model.norm.weight"}
    with pytest.raises(ValueError, match=r"only in θ0 \['model.norm.weight'\]"):
        analyze_update(theta0, without_norm)
    with pytest.raises(ValueError, match=r"'model.norm.weight' is in θ0 but missing in θ1"):
        analyze_update(iter(theta0.items()), without_norm.__getitem__)
    with pytest.raises(ValueError, match=r"tensors only in θ1: \['score.weight'\]"):
        analyze_update(iter(theta0.items()), dict(theta1, **{"score.weight": np.zeros(2, np.float32)}))
    nan = dict(theta1, **{"lm_head.weight": np.full((12, 8), np.nan, np.float32)})
    with pytest.raises(ValueError, match="lm_head"):  # a NaN update has no rank: say which matrix
        analyze_update(theta0, nan)
    assert analyze_update(theta0, nan, rank=False).sparsity.per_tensor["lm_head.weight"] == 0.0


def test_to_dict_shape_and_options():
    theta0, theta1 = trained_pair(18, "fp32")
    report = analyze_update(theta0, theta1, ignore=HEADS)
    d = json.loads(json.dumps(report.to_dict()))
    assert list(d) == ["sparsity", "rank"] and list(d["rank"]) == ["mean_fraction", "per_tensor"]
    assert list(d["sparsity"]) == ["overall", "bitwise", "tol", "n_params", "per_tensor", "per_tensor_bitwise",
                                   "by_tol", "fp32_exact"]
    assert list(d["sparsity"]["by_tol"]) == ["1e-08", "1e-07", "1e-06", "1e-05"]
    assert d["sparsity"]["n_params"] == sum(v.size for k, v in theta0.items() if k not in HEADS)
    bare = analyze_update(theta0, theta1, rank=False, fp32_exact=False, ignore=HEADS)
    assert bare.rank is None and bare.fp32_exact is None and bare.fp32_exact_per_tensor is None
    assert bare.to_dict() == {"sparsity": {k: v for k, v in report.to_dict()["sparsity"].items() if k != "fp32_exact"}}
    loose = analyze_update(theta0, theta1, tol=1e-4, tols=(1e-6,), dtype="fp32", ignore=HEADS)
    assert loose.sparsity.tol == loose.to_dict()["sparsity"]["tol"] == 1e-4
    assert list(loose.to_dict()["sparsity"]["by_tol"]) == ["1e-06", "0.0001"]
    assert loose.rank.dtype == "fp32" and report.rank.dtype == "bf16"
    with pytest.raises(ValueError, match="RankAccumulator.dtype"):
        analyze_update(theta0, theta1, rank_dtype="fp16")


BF16_VALUES = st.floats(width=32).map(lambda x: float(round_to(x, "bf16")))


@FAST
@given(st.data())
def test_exact_fp32_equality_is_bitwise_sparsity_for_bf16_weights(data):
    shape = data.draw(hnp.array_shapes(max_dims=2, max_side=6))
    theta0 = data.draw(hnp.arrays(np.float32, shape, elements=BF16_VALUES))  # NaN, inf and ±0 included
    moved = data.draw(hnp.arrays(np.float32, shape, elements=BF16_VALUES))
    keep = data.draw(hnp.arrays(bool, shape))
    theta1 = np.where(keep, theta0, moved)
    report = analyze_update({"w": theta0}, {"w": theta1}, rank=False)
    assert report.fp32_exact == report.sparsity.bitwise
    # fp32 weights: exact equality is the stricter rule
    nudge = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(-(2**-20), 2**-20, width=32)))
    fine = (theta1 + nudge).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        report = analyze_update({"w": theta0}, {"w": fine}, rank=False)
    assert report.fp32_exact <= report.sparsity.bitwise


def test_rank_accumulator_in_any_order_equals_rank_report():
    theta0, theta1 = trained_pair(19, "bf16")
    acc = RankAccumulator()
    for name in reversed(list(theta0)):
        acc.add(name, theta0[name], theta1[name])
    whole = rank_report(theta0, theta1)
    assert acc.report().per_tensor == whole.per_tensor
    assert acc.report().mean_fraction == pytest.approx(whole.mean_fraction)  # summed in another order
    with pytest.raises(ValueError, match="added twice"):
        acc.add("lm_head.weight", theta0["lm_head.weight"], theta1["lm_head.weight"])
    with pytest.raises(ValueError, match="up_proj"):
        acc.add("model.layers.9.mlp.up_proj.weight", np.zeros((16, 8)), np.zeros((3, 8)))
