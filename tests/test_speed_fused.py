"""The fast paths that round differently from their references, within float32 rounding of them.

`functional.exact_ops()` switches these off (`tests/test_speed_bitwise.py` then compares the rest
bit for bit); here the default fast path is compared with `functional.reference_ops()`:
- row sums as a matmul with ones (`_row_sum`: attention's softmax and its backward, rms_norm's mean);
- rms_norm's backward mean as a product with its weight;
- swiglu's backward with silu' = sig + act * (1 - sig);
- rope's rotate_half as a matmul by a signed permutation (`_rotate`: the same values, but an exact
  zero may change sign).
And the bitwise ones that change layouts only: `_row_max`, rope tables expanded to q's and k's memory
layout (`model.rope_for_heads`), attention's output and gradients written in q's, k's and v's layout.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from minirl import functional as F
from minirl.gradcheck import check_grad
from minirl.model import Transformer, TransformerConfig, rope_for_heads, rope_lookup
from minirl.tensor import Tensor

RTOL = 1e-5


def _both(fn, *arrays, dtype=np.float32, seed=7):
    """fn(*Tensors) -> Tensor, fast and reference: [output, every input gradient] for each."""
    results = []
    for reference in (False, True):
        ts = [Tensor(a.astype(dtype), requires_grad=True) for a in arrays]
        with F.reference_ops() if reference else contextlib.nullcontext():
            out = fn(*ts)
            dout = np.random.default_rng(seed).standard_normal(out.shape).astype(dtype)
            out.backward(dout)
        results.append([out.data] + [t.grad for t in ts])
    return results


def _close(fast, ref, rtol=RTOL):
    """Equal dtype and shape; every entry within rtol of the largest entry of the reference."""
    for a, b in zip(fast, ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        scale = float(np.max(np.abs(b))) or 1.0
        err = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        assert err <= rtol * scale, f"max difference {err:.3g} of max {scale:.3g}"


def _projection_view(x: np.ndarray, heads: int) -> callable:
    """As the model calls rope and attention: a (B, T, n*D) projection seen as (B, n, T, D)."""
    B, T, C = x.shape
    return lambda t: t.reshape(B, T, heads, C // heads).transpose(0, 2, 1, 3)


# ------------------------------------------------------------------ row reductions
@pytest.mark.parametrize("shape", [(64, 4, 24, 24), (3, 5, 7), (200, 1), (256, 4, 1, 17)])
def test_row_max_is_the_maximum_bit_for_bit(shape):
    a = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    a[0, ..., 0] = np.nan if a.ndim == 4 else a[0, ..., 0]  # a NaN row stays NaN
    expected, got = a.max(axis=-1, keepdims=True), F._row_max(a)
    assert got.shape == expected.shape and got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_sum_is_the_sum_within_rounding_and_exact_under_exact_ops(dtype):
    a = np.random.default_rng(1).random((64, 4, 24, 24)).astype(dtype)
    fast = F._row_sum(a)
    assert fast.dtype == dtype and fast.shape == (64, 4, 24, 1)
    np.testing.assert_allclose(fast, a.sum(axis=-1, keepdims=True), rtol=1e-6 if dtype == np.float32 else 1e-14)
    with F.exact_ops():
        assert F._row_sum(a).tobytes() == a.sum(axis=-1, keepdims=True).tobytes()


# --------------------------------------------------------------------------- rope
@pytest.mark.parametrize("transpose", [False, True])
def test_rotate_as_a_matmul_gives_the_copy_values(transpose):
    x = np.random.default_rng(2).standard_normal((3, 6, 4, 8)).astype(np.float32)
    view = x.transpose(0, 2, 1, 3)  # (B, H, T, D) over (B, T, H, D) memory
    ref = (F._rotate_half_T if transpose else F._rotate_half)(view)
    got = F._rotate(view, transpose=transpose)
    assert got.shape == ref.shape and got.tobytes() == np.ascontiguousarray(ref).tobytes()
    assert got.strides == view.strides  # written in x's memory layout
    with F.exact_ops():  # the concatenation
        assert F._rotate(view, transpose=transpose).tobytes() == ref.tobytes()
    assert np.array_equal(F._rotate(x[..., ::2][..., :4]), F._rotate_half(x[..., ::2][..., :4]))  # strided: the copy


@pytest.mark.parametrize("expanded", [False, True], ids=["tables-B1TD", "tables-expanded"])
@pytest.mark.parametrize("heads", [4, 2])
def test_rope_fast_matches_reference(expanded, heads):
    rng = np.random.default_rng(3)
    B, T, D = 3, 6, 8
    cfg = TransformerConfig(hidden_size=heads * D, num_attention_heads=heads, num_key_value_heads=heads)
    cos, sin = rope_lookup(rng.integers(0, 20, (B, 1, T)), cfg)  # (B, 1, T, D)
    if expanded:
        cos, sin = rope_for_heads(cos, sin, (heads,))[heads]
    x = rng.standard_normal((B, T, heads * D))
    view = _projection_view(x, heads)
    fast, ref = _both(lambda a: F.rope(view(a), cos, sin), x)
    _close(fast, ref, rtol=0)  # the same values: only an exact zero could change sign
    assert fast[0].transpose(0, 2, 1, 3).flags.c_contiguous  # rope's output keeps the projection's layout


def test_rope_for_heads_expands_to_the_projection_layout_with_the_same_values():
    cfg = TransformerConfig()
    B, T, H, K, D = 5, 7, 4, 2, cfg.head_dim
    cos, sin = rope_lookup(np.random.default_rng(4).integers(0, 30, (B, 1, T)), cfg)
    tables = rope_for_heads(cos, sin, (H, K))
    for n in (H, K):
        for full, table in zip(tables[n], (cos, sin)):
            assert full.shape == (B, n, T, D) and full.transpose(0, 2, 1, 3).flags.c_contiguous
            assert np.array_equal(full, np.broadcast_to(table, full.shape))
    with F.reference_ops():
        assert rope_for_heads(cos, sin, (H,))[H][0] is cos


def test_rope_gradient_with_expanded_tables_in_float64():
    rng = np.random.default_rng(5)
    B, T, H, D = 2, 5, 3, 6
    cos, sin = F.rope_tables(rng.integers(0, 40, (B, 1, T)), D, dtype=np.float64)
    full = [np.ascontiguousarray(np.broadcast_to(t.transpose(0, 2, 1, 3), (B, T, H, D))).transpose(0, 2, 1, 3)
            for t in (cos, sin)]
    x = rng.standard_normal((B, T, H * D))
    check_grad(lambda a: F.rope(_projection_view(x, H)(a), *full), x)


# ---------------------------------------------------------------------- attention
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("mask_kind", [None, "bool", "bias"])
@pytest.mark.parametrize("layout", ["contiguous", "projection"])
def test_attention_fast_matches_reference(kv_heads, mask_kind, layout):
    rng = np.random.default_rng(6)
    B, H, T, S, D = 3, 4, 6, 9, 8
    mask = None
    if mask_kind is not None:
        mask = rng.random((B, 1, T, S)) < 0.7
        mask[0, 0, 1] = False  # a row with no allowed key: attends uniformly, no gradient through its scores
        mask = F.mask_bias(mask) if mask_kind == "bias" else mask
    if layout == "contiguous":
        arrays = [rng.standard_normal(shape) for shape in ((B, H, T, D), (B, kv_heads, S, D), (B, kv_heads, S, D))]
        fn = lambda a, b, c: F.attention(a, b, c, mask)  # noqa: E731
    else:  # as the model calls it (T = S): its projections seen as (B, n, T, D)
        S = T
        mask = None if mask is None else mask[..., :S]
        arrays = [rng.standard_normal((B, T, n * D)) for n in (H, kv_heads, kv_heads)]
        q_, k_ = _projection_view(arrays[0], H), _projection_view(arrays[1], kv_heads)
        fn = lambda a, b, c: F.attention(q_(a), k_(b), k_(c), mask)  # noqa: E731
    fast, ref = _both(fn, *arrays)
    _close(fast, ref)
    assert np.isfinite(fast[0]).all()


def test_attention_output_is_laid_out_as_the_projection():
    """y.transpose(0, 2, 1, 3).reshape(B, T, H*D) is then a view, not a copy."""
    rng = np.random.default_rng(7)
    B, T, H, D = 2, 5, 4, 8
    x = Tensor(rng.standard_normal((B, T, 3, H, D)).astype(np.float32), requires_grad=True)
    q, k, v = (x[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, H, T, D) over (B, T, H, D) memory
    y = F.attention(q, k, v)
    assert y.data.transpose(0, 2, 1, 3).flags.c_contiguous
    y.backward(np.ones(y.shape, np.float32))
    ref = Tensor(x.data, requires_grad=True)
    with F.reference_ops():
        F.attention(*(ref[:, :, i].transpose(0, 2, 1, 3) for i in range(3))).backward(np.ones(y.shape, np.float32))
    _close([x.grad], [ref.grad])


def test_attention_gradient_float64_padding_and_dead_rows():
    rng = np.random.default_rng(8)
    B, H, T, D = 2, 2, 5, 4
    mask = np.tril(np.ones((T, T), bool))[None, None].repeat(B, 0)
    mask[1, :, :, :2] = False  # left padding: rows 0 and 1 of batch 1 attend to nothing
    q, k, v = (rng.standard_normal((B, H, T, D)) for _ in range(3))
    check_grad(lambda a, b, c: F.attention(a, b, c, mask), q, k, v)
    check_grad(lambda a, b, c: F.attention(a, b, c, F.mask_bias(mask, np.float64)), q, k, v)


# ------------------------------------------------------------- rms_norm, swiglu
@pytest.mark.parametrize("shape", [(64, 24, 64), (3, 5, 16), (7, 1)])
def test_rms_norm_fast_matches_reference(shape):
    rng = np.random.default_rng(9)
    x, w = 3 * rng.standard_normal(shape), rng.standard_normal(shape[-1:])
    fast, ref = _both(lambda a, b: F.rms_norm(a, b, 1e-6), x, w)
    _close(fast, ref)


def test_rms_norm_and_swiglu_gradients_in_float64():
    rng = np.random.default_rng(10)
    check_grad(lambda a, b: F.rms_norm(a, b, 1e-6), rng.standard_normal((4, 6, 8)), rng.standard_normal(8))
    check_grad(F.swiglu, 3 * rng.standard_normal((4, 6, 8)), rng.standard_normal((4, 6, 8)))


@pytest.mark.parametrize("shape", [(64, 24, 176), (3, 5, 24)])
def test_swiglu_fast_matches_reference(shape):
    rng = np.random.default_rng(11)
    fast, ref = _both(F.swiglu, 4 * rng.standard_normal(shape), rng.standard_normal(shape))
    _close(fast, ref)


# ------------------------------------------------------------------- whole model
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_model_forward_and_every_gradient_match_the_reference(kv_heads):
    cfg = TransformerConfig(num_key_value_heads=kv_heads, initializer_range=0.3)
    rng = np.random.default_rng(12)
    tokens = rng.integers(0, cfg.vocab_size, (6, 10))
    mask = np.ones(tokens.shape, bool)
    mask[:2, :3] = False  # left padding
    results = []
    for reference in (False, True):
        model = Transformer(cfg, seed=1)
        with F.reference_ops() if reference else contextlib.nullcontext():
            logits = model(tokens, mask)
            F.mean(F.gather_logprobs(logits[:, :-1], tokens[:, 1:])).backward()
        results.append([logits.data] + [p.grad for p in model.parameters()])
    _close([results[0][0]], [results[1][0]])
    for fast, ref in zip(results[0][1:], results[1][1:]):
        _close([fast], [ref], rtol=1e-4)  # a gradient sums many products: allow its rounding to add up


def test_grpo_run_stays_within_rounding_of_the_reference():
    """Two GRPO steps (fp32 storage): the same samples and rewards, the losses within rounding, the same updates.

    Adam divides by the gradient's own size, so a weight whose gradient is near zero may move by up to
    lr in either direction on rounding alone: the updates are compared as a whole (their difference
    against their size) and each weight against 2 lr per step.
    """
    from minirl import runs
    from minirl.train import train

    def run(reference: bool):
        spec = runs.resolve("grpo", steps=2, num_prompts=6, precision="fp32")
        policy, _ref, algo = runs.build(spec)
        start = policy.state_dict()
        with F.reference_ops() if reference else contextlib.nullcontext():
            result = train(policy, algo, spec["train"], spec["optimizer"], progress=False)
        update = np.concatenate([(p - start[n]).ravel() for n, p in policy.state_dict().items()])
        return update, [m["loss"] for m in result.history], [m["reward"] for m in result.history], spec["optimizer"].lr

    (fast, fast_loss, fast_reward, lr), (ref, ref_loss, ref_reward, _) = run(False), run(True)
    assert fast_reward == ref_reward  # the same samples
    np.testing.assert_allclose(fast_loss, ref_loss, rtol=1e-4, atol=1e-6)
    assert np.max(np.abs(fast - ref)) <= 2 * lr * len(fast_loss)
    assert np.linalg.norm(fast - ref) <= 0.01 * np.linalg.norm(ref)
