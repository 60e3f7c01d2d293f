"""Every op in minirl.functional: gradient checks, the same formula written twice, invariants.

1) `check_grad` (analytic vs float64 central differences) for every op, with
   hypothesis drawing shapes, broadcasting pairs, axes, indices and a seed for
   the values.
2) Each fused op equals its composition from elementary ops, in value and in
   gradient (micrograd's "same formula written twice").
3) Invariants: softmax rows sum to 1, logsigmoid is finite far out, the
   entropy of uniform logits is log V, max ties split the gradient.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minirl import functional as F
from minirl.gradcheck import check_grad
from minirl.tensor import Tensor

FAST = settings(max_examples=25, deadline=None)
MORE = settings(max_examples=50, deadline=None)
seeds = st.integers(0, 2**32 - 1)
small_shapes = hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)
any_shapes = hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)  # with 0-d
broadcast_pairs = hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4)


def away_from(x: np.ndarray, points, gap: float = 0.05) -> np.ndarray:
    """Move entries within `gap` of any kink in `points` to a safe distance."""
    for p in points:
        x = np.where(np.abs(x - p) < gap, p + 2 * gap, x)
    return x


def nonzero(rng, shape, low=0.3, high=2.0) -> np.ndarray:
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(low, high, size=shape)


# ============================================================ 1) gradient checks
UNARY = {
    "neg": (F.neg, lambda rng, s: rng.standard_normal(s)),
    "exp": (F.exp, lambda rng, s: rng.standard_normal(s)),
    "log": (F.log, lambda rng, s: rng.uniform(0.2, 3.0, s)),
    "tanh": (F.tanh, lambda rng, s: 2 * rng.standard_normal(s)),
    "sigmoid": (F.sigmoid, lambda rng, s: 3 * rng.standard_normal(s)),
    "silu": (F.silu, lambda rng, s: 3 * rng.standard_normal(s)),
    "logsigmoid": (F.logsigmoid, lambda rng, s: 3 * rng.standard_normal(s)),
    "relu": (F.relu, lambda rng, s: nonzero(rng, s, 0.05)),
    "abs": (F.abs, lambda rng, s: nonzero(rng, s, 0.05)),
    "square": (lambda x: F.pow(x, 2), lambda rng, s: rng.standard_normal(s)),
    "cube": (lambda x: x**3, lambda rng, s: rng.standard_normal(s)),
}


@pytest.mark.parametrize("name", list(UNARY))
@FAST
@given(shape=any_shapes, seed=seeds)
def test_unary_gradients(name, shape, seed):
    op, sample = UNARY[name]
    check_grad(op, sample(np.random.default_rng(seed), shape), seed=seed)


@FAST
@given(shape=any_shapes, exponent=st.floats(-2.5, 3.0), seed=seeds)
def test_pow_gradient(shape, exponent, seed):
    rng = np.random.default_rng(seed)
    check_grad(lambda x: F.pow(x, exponent), rng.uniform(0.5, 2.0, shape), seed=seed)


@FAST
@given(shape=any_shapes, low=st.floats(-1.0, 0.0), width=st.floats(0.3, 2.0), seed=seeds)
def test_clip_gradient_away_from_bounds(shape, low, width, seed):
    high = low + width
    x = away_from(2 * np.random.default_rng(seed).standard_normal(shape), [low, high])
    check_grad(lambda t: F.clip(t, low, high), x, seed=seed)


def _separated(rng, shape, odd: bool) -> np.ndarray:
    """Even (or odd) integers plus noise below 0.3: any even/odd pair differs by at least 0.4."""
    return 2 * rng.integers(-2, 3, shape) + odd + rng.uniform(-0.3, 0.3, shape)


BINARY = {
    "add": (F.add, lambda rng, sa, sb: (rng.standard_normal(sa), rng.standard_normal(sb))),
    "sub": (F.sub, lambda rng, sa, sb: (rng.standard_normal(sa), rng.standard_normal(sb))),
    "mul": (F.mul, lambda rng, sa, sb: (rng.standard_normal(sa), rng.standard_normal(sb))),
    "div": (F.div, lambda rng, sa, sb: (rng.standard_normal(sa), nonzero(rng, sb, 0.5))),
    "maximum": (F.maximum, lambda rng, sa, sb: (_separated(rng, sa, False), _separated(rng, sb, True))),
    "minimum": (F.minimum, lambda rng, sa, sb: (_separated(rng, sa, False), _separated(rng, sb, True))),
}


@pytest.mark.parametrize("name", list(BINARY))
@FAST
@given(shapes=broadcast_pairs, seed=seeds)
def test_binary_gradients_with_broadcasting(name, shapes, seed):
    op, sample = BINARY[name]
    a, b = sample(np.random.default_rng(seed), *shapes.input_shapes)
    check_grad(op, a, b, seed=seed)


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div"])
def test_binary_ops_with_a_constant_on_either_side(name):
    op = BINARY[name][0]
    x = np.random.default_rng(0).uniform(0.5, 2.0, (2, 3))
    check_grad(lambda t: op(t, 1.7), x)
    check_grad(lambda t: op(-0.6, t), x)


@FAST
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=4), seed=seeds)
def test_where_gradient(shapes, seed):
    rng = np.random.default_rng(seed)
    sc, sa, sb = shapes.input_shapes
    cond = rng.random(sc) < 0.5
    check_grad(lambda a, b: F.where(cond, a, b), rng.standard_normal(sa), rng.standard_normal(sb), seed=seed)


@st.composite
def axes_for(draw, shape, allow_none=True, allow_tuple=True):
    ndim = len(shape)
    options = [st.integers(-ndim, ndim - 1)]
    if allow_none:
        options.append(st.none())
    if allow_tuple:
        options.append(hnp.valid_tuple_axes(ndim, min_size=1))
    return draw(st.one_of(options))


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@MORE
@given(data=st.data(), shape=small_shapes, keepdims=st.booleans(), seed=seeds)
def test_reduction_gradients(name, data, shape, keepdims, seed):
    axis = data.draw(axes_for(shape))
    op = getattr(F, name)
    x = np.random.default_rng(seed).standard_normal(shape)
    check_grad(lambda t: op(t, axis=axis, keepdims=keepdims), x, seed=seed)


@FAST
@given(data=st.data(), shape=small_shapes, keepdims=st.booleans(), seed=seeds)
def test_logsumexp_gradient(data, shape, keepdims, seed):
    axis = data.draw(axes_for(shape, allow_none=False, allow_tuple=False))
    x = 3 * np.random.default_rng(seed).standard_normal(shape)
    check_grad(lambda t: F.logsumexp(t, axis=axis, keepdims=keepdims), x, seed=seed)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@FAST
@given(data=st.data(), shape=small_shapes, seed=seeds)
def test_reshape_gradient(data, shape, seed):
    n = int(np.prod(shape))
    d = data.draw(st.sampled_from(_divisors(n)))
    new_shape = data.draw(st.sampled_from([(d, n // d), (-1,), (n // d, 1, d)]))
    check_grad(lambda x: F.reshape(x, new_shape), np.random.default_rng(seed).standard_normal(shape), seed=seed)


@FAST
@given(data=st.data(), shape=small_shapes, seed=seeds)
def test_transpose_gradient(data, shape, seed):
    axes = data.draw(st.none() | st.permutations(range(len(shape))).map(tuple))
    check_grad(lambda x: F.transpose(x, axes), np.random.default_rng(seed).standard_normal(shape), seed=seed)


@MORE
@given(data=st.data(), shape=small_shapes, seed=seeds)
def test_getitem_basic_index_gradient(data, shape, seed):
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    check_grad(lambda x: F.getitem(x, index), np.random.default_rng(seed).standard_normal(shape), seed=seed)


@MORE
@given(data=st.data(), shape=small_shapes, seed=seeds)
def test_getitem_fancy_index_gradient(data, shape, seed):
    index = data.draw(hnp.integer_array_indices(shape, result_shape=hnp.array_shapes(max_dims=2, max_side=6)))
    check_grad(lambda x: F.getitem(x, index), np.random.default_rng(seed).standard_normal(shape), seed=seed)


def test_getitem_repeated_fancy_indices_sum_their_gradients():
    x = Tensor(np.arange(12.0).reshape(3, 4), requires_grad=True)
    F.getitem(x, np.array([0, 2, 0, 0])).sum().backward()  # row 0 three times
    np.testing.assert_array_equal(x.grad[:, 0], [3.0, 0.0, 1.0])
    x.grad = None
    F.getitem(x, (slice(None), [1, 1, 3])).sum().backward()  # slice mixed with a repeated list
    np.testing.assert_array_equal(x.grad[0], [0.0, 2.0, 0.0, 1.0])
    x.grad = None
    F.getitem(x, x.data > 5).sum().backward()  # boolean mask
    np.testing.assert_array_equal(x.grad, (x.data > 5).astype(float))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4))
    check_grad(lambda t: F.getitem(t, (np.array([[2, 2], [0, 2]]), slice(1, None))), a)
    check_grad(lambda t: F.getitem(t, (Ellipsis, np.array([3, 3, 0]))), a)
    check_grad(lambda t: F.getitem(t, a > 0), a)


@FAST
@given(data=st.data(), shape=small_shapes, n=st.integers(1, 3), seed=seeds)
def test_concat_gradient(data, shape, n, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    sizes = data.draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    rng = np.random.default_rng(seed)
    arrays = []
    for size in sizes:
        s = list(shape)
        s[axis] = size
        arrays.append(rng.standard_normal(s))
    check_grad(lambda *ts: F.concat(list(ts), axis=axis), *arrays, seed=seed)


@FAST
@given(data=st.data(), shape=small_shapes, n=st.integers(1, 3), seed=seeds)
def test_stack_gradient(data, shape, n, seed):
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    rng = np.random.default_rng(seed)
    check_grad(lambda *ts: F.stack(list(ts), axis=axis), *[rng.standard_normal(shape) for _ in range(n)], seed=seed)


@MORE
@given(batch=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3),
       m=st.integers(1, 4), n=st.integers(1, 4), p=st.integers(1, 4), seed=seeds)
def test_matmul_gradient_with_broadcast_batch_dims(batch, m, n, p, seed):
    rng = np.random.default_rng(seed)
    sa, sb = batch.input_shapes
    check_grad(F.matmul, rng.standard_normal((*sa, m, n)), rng.standard_normal((*sb, n, p)), seed=seed)


def test_matmul_rejects_vectors():
    with pytest.raises(ValueError):
        F.matmul(Tensor(np.ones(3)), Tensor(np.ones((3, 2))))


@FAST
@given(lead=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3), c=st.integers(1, 4), o=st.integers(1, 4),
       seed=seeds)
def test_linear_gradient(lead, c, o, seed):
    rng = np.random.default_rng(seed)
    check_grad(F.linear, rng.standard_normal((*lead, c)), rng.standard_normal((o, c)), seed=seed)


@FAST
@given(v=st.integers(1, 3), c=st.integers(1, 4),
       ids_shape=hnp.array_shapes(min_dims=1, max_dims=2, min_side=4, max_side=5), seed=seeds)
def test_embedding_gradient_with_repeated_ids(v, c, ids_shape, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, v, ids_shape)  # at least 4 ids from at most 3 rows: some repeat
    check_grad(lambda w: F.embedding(w, ids), rng.standard_normal((v, c)), seed=seed)


@pytest.mark.parametrize("vocab", [4, 5000])  # a small vocabulary and one large enough for the scatter-add path
def test_embedding_gradient_counts_repeats(vocab):
    w = Tensor(np.zeros((vocab, 2)), requires_grad=True)
    ids = np.array([[1, 1], [3, 1]] * (1 if vocab < 100 else 2000))  # 4 or 8000 ids
    F.embedding(w, ids).sum().backward()
    expected = np.zeros((vocab, 2))
    expected[1], expected[3] = 3 * len(ids) // 2, len(ids) // 2
    np.testing.assert_array_equal(w.grad, expected)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@FAST
@given(data=st.data(), shape=small_shapes, seed=seeds)
def test_softmax_gradients(name, data, shape, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = 3 * np.random.default_rng(seed).standard_normal(shape)
    check_grad(lambda t: getattr(F, name)(t, axis=axis), x, seed=seed)


@FAST
@given(shape=small_shapes, seed=seeds)
def test_gather_logprobs_gradient(shape, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, shape[-1], shape[:-1])
    check_grad(lambda t: F.gather_logprobs(t, ids), 3 * rng.standard_normal(shape), seed=seed)


@FAST
@given(shape=small_shapes, seed=seeds)
def test_entropy_gradient(shape, seed):
    check_grad(F.entropy, 2 * np.random.default_rng(seed).standard_normal(shape), seed=seed)


@FAST
@given(shape=small_shapes, eps=st.sampled_from([1e-6, 1e-5, 0.1]), seed=seeds)
def test_rms_norm_gradient(shape, eps, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(shape), rng.standard_normal(shape[-1:])
    check_grad(lambda a, b: F.rms_norm(a, b, eps), x, w, seed=seed)


@st.composite
def rope_inputs(draw):
    b, h, t = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    d = 2 * draw(st.integers(1, 4))
    theta = draw(st.sampled_from([10000.0, 500000.0, 10.0]))
    rng = np.random.default_rng(draw(seeds))
    positions = rng.integers(0, 64, (b, 1, t))
    cos, sin = F.rope_tables(positions, d, theta, dtype=np.float64)  # (B, 1, T, D)
    return rng.standard_normal((b, h, t, d)), cos, sin


@FAST
@given(inputs=rope_inputs(), seed=seeds)
def test_rope_gradient(inputs, seed):
    x, cos, sin = inputs
    check_grad(lambda t: F.rope(t, cos, sin), x, seed=seed)


MASKS = ["none", "causal", "padding", "causal+padding"]


def attention_mask(kind: str, rng, b: int, t: int, s: int) -> np.ndarray | None:
    """A boolean mask (True = may attend) in which every query row keeps at least one key."""
    causal = np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t)  # (T, S); queries are the last T positions
    lengths = rng.integers(1, s + 1, b)  # right padding: keys >= length are padding
    padding = (np.arange(s)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, S)
    return {"none": None, "causal": causal, "padding": padding, "causal+padding": causal & padding}[kind]


@st.composite
def attention_inputs(draw, mask_kind=None):
    b, kv, g = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 4]))
    t = draw(st.integers(1, 4))
    s = t + draw(st.integers(0, 2))  # more keys than queries, as with a KV cache
    d = draw(st.integers(1, 4))
    kind = mask_kind or draw(st.sampled_from(MASKS))
    rng = np.random.default_rng(draw(seeds))
    q = rng.standard_normal((b, kv * g, t, d))
    k, v = rng.standard_normal((b, kv, s, d)), rng.standard_normal((b, kv, s, d))
    return q, k, v, attention_mask(kind, rng, b, t, s)


@pytest.mark.parametrize("kind", MASKS)
@MORE
@given(data=st.data(), seed=seeds)
def test_attention_gradient(kind, data, seed):
    q, k, v, mask = data.draw(attention_inputs(kind))
    check_grad(lambda a, b, c: F.attention(a, b, c, mask), q, k, v, seed=seed)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_attention_gradient_grouped_kv_heads(groups):
    rng = np.random.default_rng(groups)
    q = rng.standard_normal((2, 2 * groups, 3, 4))
    k, v = rng.standard_normal((2, 2, 3, 4)), rng.standard_normal((2, 2, 3, 4))
    check_grad(lambda a, b, c: F.attention(a, b, c, np.tril(np.ones((3, 3), bool))), q, k, v)


def test_attention_rejects_head_counts_that_do_not_divide():
    with pytest.raises(ValueError):
        F.attention(Tensor(np.ones((1, 3, 2, 2))), Tensor(np.ones((1, 2, 2, 2))), Tensor(np.ones((1, 2, 2, 2))))


def test_attention_gradient_with_fully_masked_rows():
    rng = np.random.default_rng(0)
    mask = _left_padded_causal(4)
    q, k, v = rng.standard_normal((2, 2, 4, 3)), rng.standard_normal((2, 1, 4, 3)), rng.standard_normal((2, 1, 4, 3))
    check_grad(lambda a, b, c: F.attention(a, b, c, mask), q, k, v)


def _left_padded_causal(t: int) -> np.ndarray:
    """Left padding under a causal mask: in batch 0 the first two queries may attend to no key."""
    causal = np.tril(np.ones((t, t), bool))
    left_padding = np.array([[False, False] + [True] * (t - 2), [True] * t])[:, None, None, :]  # (B, 1, 1, S)
    return causal & left_padding  # (B, 1, T, S)


@pytest.mark.parametrize("dtype", [
    np.float32,
    np.float64,
])
def test_attention_fully_masked_rows_attend_uniformly(dtype):
    rng = np.random.default_rng(0)
    mask = _left_padded_causal(4)
    q, k, v = (3 * rng.standard_normal(s).astype(dtype) for s in [(2, 2, 4, 3), (2, 1, 4, 3), (2, 1, 4, 3)])
    out = F.attention(Tensor(q), Tensor(k), Tensor(v), mask).data
    assert out.dtype == dtype
    np.testing.assert_allclose(out[0, :, :2], np.broadcast_to(v[0, :, None].mean(axis=2), (2, 2, 3)), rtol=1e-6)


@FAST
@given(data=st.data(), seed=seeds)
def test_attention_with_additive_mask_bias_equals_boolean_mask(data, seed):
    q, k, v, mask = data.draw(attention_inputs("causal+padding"))
    bias = F.mask_bias(mask, np.float64)  # 0 where allowed, -1e9 elsewhere
    assert_same_formula(lambda a, b, c: F.attention(a, b, c, bias), lambda a, b, c: F.attention(a, b, c, mask),
                        q, k, v, seed=seed, rtol=0, atol=0)


@FAST
@given(shape=any_shapes, seed=seeds)
def test_swiglu_gradient(shape, seed):
    rng = np.random.default_rng(seed)
    check_grad(F.swiglu, 3 * rng.standard_normal(shape), rng.standard_normal(shape), seed=seed)


def test_check_grad_of_a_scalar_loss():
    """A 0-d float64 result (every loss) must stay float64, or the finite difference is float32 noise."""
    x = np.random.default_rng(0).standard_normal(5)
    check_grad(lambda t: F.sum(t * t), x)
    check_grad(lambda t: F.logsumexp(t, axis=0), x)


# ==================================================== 2) same formula written twice
def assert_same_formula(fused, composed, *arrays, seed=0, rtol=1e-10, atol=1e-12):
    """Equal outputs and equal gradients of a random linear functional of the outputs."""
    probe = None
    results = []
    for f in (fused, composed):
        tensors = [Tensor(a.copy(), requires_grad=True) for a in arrays]
        out = f(*tensors)
        if probe is None:
            probe = np.random.default_rng(seed).standard_normal(out.shape)
        F.sum(F.reshape(out * probe, (-1,))).backward()
        results.append((out.data, [t.grad for t in tensors]))
    (out1, grads1), (out2, grads2) = results
    np.testing.assert_allclose(out1, out2, rtol=rtol, atol=atol)
    for g1, g2 in zip(grads1, grads2):
        np.testing.assert_allclose(g1, g2, rtol=rtol, atol=atol)


@FAST
@given(shape=small_shapes, eps=st.sampled_from([1e-6, 0.1]), seed=seeds)
def test_rms_norm_equals_composition(shape, eps, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(shape), rng.standard_normal(shape[-1:])
    assert_same_formula(lambda a, b: F.rms_norm(a, b, eps),
                        lambda a, b: a * (F.mean(a * a, axis=-1, keepdims=True) + eps) ** -0.5 * b,
                        x, w, seed=seed)


@FAST
@given(data=st.data(), shape=small_shapes, seed=seeds)
def test_log_softmax_and_softmax_equal_compositions(data, shape, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = 3 * np.random.default_rng(seed).standard_normal(shape)
    assert_same_formula(lambda a: F.log_softmax(a, axis), lambda a: a - F.logsumexp(a, axis, keepdims=True), x)
    assert_same_formula(lambda a: F.softmax(a, axis), lambda a: F.exp(a - F.logsumexp(a, axis, keepdims=True)), x)
    assert_same_formula(lambda a: F.logsumexp(a, axis), lambda a: F.log(F.sum(F.exp(a), axis)), x)


@FAST
@given(shape=small_shapes, seed=seeds)
def test_gather_logprobs_equals_log_softmax_then_getitem(shape, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, shape[-1], shape[:-1])
    index = (*np.indices(ids.shape), ids)  # picks logp[..., ids[...]]
    assert_same_formula(lambda a: F.gather_logprobs(a, ids),
                        lambda a: F.getitem(F.log_softmax(a, -1), index),
                        3 * rng.standard_normal(shape), seed=seed)


@FAST
@given(shape=small_shapes, seed=seeds)
def test_elementwise_fusions_equal_compositions(shape, seed):
    rng = np.random.default_rng(seed)
    g, u = 3 * rng.standard_normal(shape), rng.standard_normal(shape)
    assert_same_formula(F.swiglu, lambda a, b: F.silu(a) * b, g, u, seed=seed)
    assert_same_formula(F.silu, lambda a: a * F.sigmoid(a), g, seed=seed)
    assert_same_formula(F.sigmoid, lambda a: 1.0 / (1.0 + F.exp(-a)), g, seed=seed)
    assert_same_formula(F.logsigmoid, lambda a: F.log(F.sigmoid(a)), g, seed=seed)
    assert_same_formula(F.entropy, lambda a: -F.sum(F.softmax(a, -1) * F.log_softmax(a, -1), axis=-1), g, seed=seed)
    assert_same_formula(F.relu, lambda a: F.maximum(a, 0.0), nonzero(rng, shape, 0.05), seed=seed)
    assert_same_formula(F.abs, lambda a: F.where(a.data > 0, a, -a), nonzero(rng, shape, 0.05), seed=seed)


@FAST
@given(lead=hnp.array_shapes(min_dims=1, max_dims=2, max_side=3), c=st.integers(1, 4), o=st.integers(1, 4),
       seed=seeds)
def test_linear_and_embedding_equal_compositions(lead, c, o, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((*lead, c)), rng.standard_normal((o, c))
    assert_same_formula(F.linear, lambda a, b: F.matmul(a, F.transpose(b)), x, w, seed=seed)
    ids = rng.integers(0, o, lead)
    assert_same_formula(lambda b: F.embedding(b, ids), lambda b: F.getitem(b, ids), w, seed=seed)


@FAST
@given(inputs=rope_inputs(), seed=seeds)
def test_rope_equals_rotate_half_composition(inputs, seed):
    x, cos, sin = inputs
    half = x.shape[-1] // 2

    def rotate_half(a):
        return F.concat([-F.getitem(a, (Ellipsis, slice(half, None))), F.getitem(a, (Ellipsis, slice(None, half)))], -1)

    assert_same_formula(lambda a: F.rope(a, cos, sin), lambda a: a * cos + rotate_half(a) * sin, x, seed=seed)


def attention_by_composition(q, k, v, mask):
    """Repeat each k/v head G times (HF's repeat_kv), then matmul, scale, mask, softmax, matmul."""
    h, kv, d = q.shape[1], k.shape[1], q.shape[-1]
    heads = np.repeat(np.arange(kv), h // kv)  # query head i reads k/v head i // G
    k_rep = F.getitem(k, (slice(None), heads))  # (B, H, S, D)
    v_rep = F.getitem(v, (slice(None), heads))  # (B, H, S, D)
    scores = F.matmul(q, F.transpose(k_rep, (0, 1, 3, 2))) * (1.0 / np.sqrt(d))  # (B, H, T, S)
    if mask is not None:
        scores = F.where(np.broadcast_to(mask, scores.shape), scores, -1e9)
    return F.matmul(F.softmax(scores, -1), v_rep)  # (B, H, T, D)


@pytest.mark.parametrize("kind", MASKS)
@FAST
@given(data=st.data(), seed=seeds)
def test_attention_equals_composition(kind, data, seed):
    q, k, v, mask = data.draw(attention_inputs(kind))
    assert_same_formula(lambda a, b, c: F.attention(a, b, c, mask),
                        lambda a, b, c: attention_by_composition(a, b, c, mask), q, k, v, seed=seed)


@FAST
@given(data=st.data(), shape=small_shapes, seed=seeds)
def test_mean_equals_sum_over_count(data, shape, seed):
    axis = data.draw(axes_for(shape, allow_none=False))
    n = int(np.prod([shape[a] for a in np.atleast_1d(axis)]))
    x = np.random.default_rng(seed).standard_normal(shape)
    assert_same_formula(lambda a: F.mean(a, axis, keepdims=True), lambda a: F.sum(a, axis, keepdims=True) / n, x)


# ============================================================== 3) invariants
finite_floats = {np.float32: st.floats(-30, 30, width=32), np.float64: st.floats(-30, 30)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@MORE
@given(data=st.data(), shape=small_shapes)
def test_softmax_rows_sum_to_one_and_are_positive(dtype, data, shape):
    x = data.draw(hnp.arrays(dtype, shape, elements=finite_floats[dtype]))
    p = F.softmax(Tensor(x), axis=-1).data
    logp = F.log_softmax(Tensor(x), axis=-1).data
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert p.dtype == dtype and logp.dtype == dtype
    assert np.all(p > 0)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=tol)
    np.testing.assert_allclose(np.exp(logp.astype(np.float64)).sum(axis=-1), 1.0, atol=tol)
    assert np.all(logp <= 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@FAST
@given(data=st.data(), shape=small_shapes)
def test_softmax_is_stable_for_huge_logits(dtype, data, shape):
    x = data.draw(hnp.arrays(dtype, shape, elements=st.floats(-1e4, 1e4, width=32)))
    p = F.softmax(Tensor(x), axis=-1).data
    logp = F.log_softmax(Tensor(x), axis=-1).data
    assert np.all(np.isfinite(p)) and np.all(p >= 0) and np.all(np.isfinite(logp))
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@MORE
@given(data=st.data(), shape=small_shapes)
def test_logsigmoid_is_finite_far_out(dtype, data, shape):
    x = data.draw(hnp.arrays(dtype, shape, elements=st.floats(-1e4, 1e4, width=32)))
    t = Tensor(x, requires_grad=True)
    y = F.logsigmoid(t)
    F.sum(F.reshape(y, (-1,))).backward()
    assert y.dtype == dtype
    assert np.all(np.isfinite(y.data)) and np.all(y.data <= 0)
    assert np.all(np.isfinite(t.grad)) and np.all((t.grad >= 0) & (t.grad <= 1))
    exact = -np.logaddexp(0.0, -x.astype(np.float64))  # log sigmoid(x) = -log(1 + e^-x)
    np.testing.assert_allclose(y.data, exact, rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-30)


def test_logsigmoid_at_the_extremes():
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4])
    np.testing.assert_allclose(F.logsigmoid(Tensor(x)).data, [-1e4, -50.0, -np.log(2), -np.exp(-50.0), 0.0],
                               rtol=1e-15)


@FAST
@given(lead=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3), v=st.integers(1, 50), c=st.floats(-1e3, 1e3))
def test_entropy_of_uniform_logits_is_log_v(lead, v, c):
    h = F.entropy(Tensor(np.full((*lead, v), c))).data
    assert h.shape == lead
    np.testing.assert_allclose(h, np.log(v), atol=1e-12)


@FAST
@given(shape=small_shapes, seed=seeds)
def test_entropy_is_between_zero_and_log_v(shape, seed):
    h = F.entropy(Tensor(5 * np.random.default_rng(seed).standard_normal(shape))).data
    assert np.all(h >= -1e-12) and np.all(h <= np.log(shape[-1]) + 1e-12)


def test_max_ties_split_the_gradient_evenly():
    x = Tensor(np.array([1.0, 3.0, 3.0, 2.0]), requires_grad=True)
    F.max(x).backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.5, 0.5, 0.0])

    x = Tensor(np.array([[5.0, 5.0, 5.0], [1.0, 2.0, 0.0]]), requires_grad=True)
    F.sum(F.max(x, axis=1, keepdims=True)).backward()
    np.testing.assert_allclose(x.grad, [[1 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 0.0]], rtol=1e-15)

    a = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    b = Tensor(np.array([1.0, 1.0, 4.0]), requires_grad=True)
    F.sum(F.maximum(a, b) + 10 * F.minimum(a, b)).backward()  # tie at index 0 only
    np.testing.assert_array_equal(a.grad, [5.5, 1.0, 10.0])
    np.testing.assert_array_equal(b.grad, [5.5, 10.0, 1.0])


def test_clip_gradient_passes_at_the_bounds_like_torch_clamp():
    x = Tensor(np.array([-2.0, -1.0, 0.0, 1.0, 2.0]), requires_grad=True)
    F.sum(F.clip(x, -1.0, 1.0)).backward()
    np.testing.assert_array_equal(x.grad, [0.0, 1.0, 1.0, 1.0, 0.0])


@FAST
@given(d_half=st.integers(1, 4), m=st.integers(0, 100), n=st.integers(0, 100), shift=st.integers(-50, 50),
       seed=seeds)
def test_rope_scores_depend_only_on_relative_position(d_half, m, n, shift, seed):
    """<rope(q, m), rope(k, n)> = <rope(q, m + s), rope(k, n + s)>; rope keeps norms; position 0 is identity."""
    d = 2 * d_half
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((1, 1, 1, d)), rng.standard_normal((1, 1, 1, d))

    def at(x, pos):
        cos, sin = F.rope_tables(np.array([[[pos]]]), d, dtype=np.float64)
        return F.rope(Tensor(x), cos, sin).data

    shift = max(shift, -min(m, n))
    np.testing.assert_allclose(np.sum(at(q, m) * at(k, n)), np.sum(at(q, m + shift) * at(k, n + shift)),
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(at(q, m)), np.linalg.norm(q), rtol=1e-12)
    np.testing.assert_allclose(at(q, 0), q, rtol=1e-15)


FLOAT32_OPS = {
    "add": lambda a, b: a + b, "mul": lambda a, b: a * 0.5 * b, "div": lambda a, b: a / (F.abs(b) + 1.0),
    "exp_log_tanh": lambda a, b: F.log(F.exp(a) + 1.0) + F.tanh(b), "pow": lambda a, b: F.pow(F.abs(a) + 1.0, 1.5),
    "sigmoids": lambda a, b: F.sigmoid(a) + F.silu(b) + F.logsigmoid(a), "swiglu": F.swiglu,
    "reductions": lambda a, b: F.mean(a, -1) + F.max(b, -1) + F.logsumexp(a, -1) + F.sum(b, -1),
    "probabilities": lambda a, b: F.softmax(a) + F.log_softmax(b), "entropy": lambda a, b: F.entropy(a),
    "gather_logprobs": lambda a, b: F.gather_logprobs(a, np.zeros(a.shape[:-1], dtype=np.int64)),
    "matmul_linear": lambda a, b: F.matmul(a, F.transpose(b, (0, 1, 3, 2))) + F.linear(a, b[0, 0]),
    "rms_norm": lambda a, b: F.rms_norm(a, b[0, 0, 0]),
    "rope": lambda a, b: F.rope(a, *F.rope_tables(np.arange(3)[None, None], 4)),
    "attention": lambda a, b: F.attention(a, b, b, np.tril(np.ones((3, 3), bool))),
}


@pytest.mark.parametrize("name", list(FLOAT32_OPS))
def test_float32_stays_float32(name):
    """The model runs in float32: no op may promote its output or its gradients to float64."""
    rng = np.random.default_rng(0)
    a, b = (Tensor(rng.standard_normal((2, 2, 3, 4)).astype(np.float32), requires_grad=True) for _ in range(2))
    out = FLOAT32_OPS[name](a, b)
    assert out.dtype == np.float32
    F.sum(F.reshape(out, (-1,))).backward()
    assert a.grad is None or a.grad.dtype == np.float32
    assert b.grad is None or b.grad.dtype == np.float32


def test_pow_rejects_a_tensor_exponent():
    with pytest.raises(TypeError):
        F.pow(Tensor(np.ones(2)), Tensor(np.ones(2)))


def test_where_accepts_a_tensor_condition_and_constants():
    a = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    y = F.where(Tensor(a.data > 0), a, 0.0)
    F.sum(y).backward()
    np.testing.assert_array_equal(y.data, [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(a.grad, [1.0, 0.0, 1.0])
