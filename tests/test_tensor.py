"""The tape's semantics (minirl.tensor): gradient accumulation, no_grad, errors, dtypes, unbroadcast."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minirl import functional as F
from minirl.tensor import Tensor, is_grad_enabled, no_grad, unbroadcast


def leaf(values) -> Tensor:
    return Tensor(np.array(values, dtype=np.float64), requires_grad=True)


# ------------------------------------------------- a node used more than once
def test_square_by_self_gets_both_gradients():
    """y = x * x: micrograd's original bug overwrote instead of summing, giving x instead of 2x."""
    x = leaf([3.0, -2.0])
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [6.0, -4.0])


def test_self_addition_gets_gradient_two():
    a = leaf(5.0)
    (a + a).backward()
    assert a.grad == 2.0


def test_diamond_graph_sums_both_paths():
    """a -> b = 2a, a -> c = 3a, d = b * c = 6 a^2, so dd/da = 12 a."""
    a = leaf(1.5)
    b = a * 2.0
    c = a * 3.0
    d = b * c
    d.backward()
    assert a.grad == pytest.approx(12 * 1.5)


def test_intermediate_used_twice():
    """h = x^2 feeds y = h + h*h twice: dy/dx = (1 + 2h) * 2x."""
    x = leaf([0.5, -1.25, 2.0])
    h = x * x
    y = (h + h * h).sum()
    y.backward()
    xv = x.data
    np.testing.assert_allclose(x.grad, (1 + 2 * xv**2) * 2 * xv, rtol=1e-15)


def test_leaf_broadcast_into_larger_shape_sums():
    x = leaf([1.0, 2.0, 3.0])  # (3,)
    y = x + np.ones((4, 3))  # (4, 3)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [4.0, 4.0, 4.0])


# ------------------------------------------------ calling backward() twice
def test_second_backward_doubles_leaf_gradients_like_torch():
    x = leaf([0.3, -0.7])
    w = leaf([[1.0, 2.0], [3.0, 4.0]])
    h = F.tanh(x.reshape(1, 2) @ w)  # (1, 2), an intermediate
    loss = (h * h).sum() + h.sum()  # h used twice
    loss.backward()
    gx1, gw1 = x.grad.copy(), w.grad.copy()
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * gx1, rtol=1e-15)
    np.testing.assert_allclose(w.grad, 2 * gw1, rtol=1e-15)

    # 3) the same numbers by hand: loss = sum(h^2 + h), h = tanh(x @ w)
    hv = np.tanh(x.data @ w.data)
    dz = (2 * hv + 1) * (1 - hv**2)  # dloss/d(x @ w)
    np.testing.assert_allclose(gx1, dz @ w.data.T, rtol=1e-13)
    np.testing.assert_allclose(gw1, np.outer(x.data, dz), rtol=1e-13)


def test_two_losses_sharing_an_intermediate_accumulate_once_each():
    x = leaf([0.8])
    h = F.exp(x)  # shared intermediate
    y = (h * 3.0).sum()
    z = (h * h).sum()
    y.backward()
    z.backward()
    e = np.exp(0.8)
    np.testing.assert_allclose(x.grad, [3 * e + 2 * e * e], rtol=1e-14)


def test_intermediate_nodes_keep_no_grad():
    x = leaf(2.0)
    h = x * 3.0
    (h * h).backward()
    assert h.grad is None
    assert x.grad == pytest.approx(2 * 9 * 2.0)


# ------------------------------------------------------------------ no_grad
def test_no_grad_records_nothing():
    x = leaf([1.0, 2.0])
    with no_grad():
        assert not is_grad_enabled()
        y = F.exp(x * 2.0).sum()
    assert is_grad_enabled()
    assert not y.requires_grad
    assert y._prev == () and y._backward is None
    with pytest.raises(RuntimeError):
        y.backward()


def test_nested_no_grad_restores_state():
    with no_grad():
        with no_grad():
            assert not is_grad_enabled()
        assert not is_grad_enabled()
    assert is_grad_enabled()


def test_no_grad_restores_state_after_exception():
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            with no_grad():
                1 / 0
    assert is_grad_enabled()
    with no_grad():
        with pytest.raises(ValueError):
            with no_grad():
                raise ValueError
        assert not is_grad_enabled()
    assert is_grad_enabled()
    x = leaf(1.0)
    assert (x * 2.0).requires_grad


# ------------------------------------------------------------------- errors
def test_backward_on_non_scalar_without_grad_raises():
    x = leaf([1.0, 2.0])
    with pytest.raises(RuntimeError, match="scalar"):
        (x * 2.0).backward()


def test_backward_on_non_scalar_with_grad_is_a_vector_jacobian_product():
    x = leaf([1.0, 2.0, 3.0])
    (x * x).backward(np.array([1.0, 0.0, -1.0]))
    np.testing.assert_array_equal(x.grad, [2.0, 0.0, -6.0])
    with pytest.raises(ValueError, match="shape"):
        (x * x).backward(np.ones(2))


def test_backward_on_tensor_not_requiring_grad_raises():
    c = Tensor(np.array(3.0))
    with pytest.raises(RuntimeError):
        c.backward()
    with pytest.raises(RuntimeError):
        (c * 2.0 + c).backward()


def test_requires_grad_on_integers_raises():
    with pytest.raises(ValueError):
        Tensor(np.arange(3), requires_grad=True)


# --------------------------------------------------------------- unbroadcast
def unbroadcast_by_loop(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Every output entry adds into the input entry that broadcasting copied it from."""
    out = np.zeros(shape, dtype=grad.dtype)
    offset = grad.ndim - len(shape)
    for idx in itertools.product(*map(range, grad.shape)):
        src = tuple(0 if n == 1 else i for i, n in zip(idx[offset:], shape))
        out[src] += grad[idx]
    return out


@settings(max_examples=50, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=3),
       seed=st.integers(0, 2**32 - 1))
def test_unbroadcast_sums_over_broadcast_axes(shapes, seed):
    rng = np.random.default_rng(seed)
    grad = rng.integers(-5, 6, size=shapes.result_shape).astype(np.float64)  # integers: sums are exact
    for shape in shapes.input_shapes:
        got = unbroadcast(grad, shape)
        assert got.shape == shape
        np.testing.assert_array_equal(got, unbroadcast_by_loop(grad, shape))
        # adjoint identity: <unbroadcast(g), v> = <g, broadcast(v)>
        v = rng.integers(-5, 6, size=shape).astype(np.float64)
        assert np.sum(got * v) == np.sum(grad * np.broadcast_to(v, grad.shape))


@settings(max_examples=25, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3))
def test_binary_op_gradients_have_input_shapes(shapes):
    sa, sb = shapes.input_shapes
    a = Tensor(np.ones(sa), requires_grad=True)
    b = Tensor(np.full(sb, 2.0), requires_grad=True)
    (a * b).sum().backward()
    n = int(np.prod(shapes.result_shape))
    assert a.grad.shape == sa and b.grad.shape == sb
    assert a.grad.sum() == pytest.approx(2.0 * n) and b.grad.sum() == pytest.approx(n)


# --------------------------------------------------------------------- dtypes
def test_python_floats_become_float32():
    assert Tensor(1.5).dtype == np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(3).dtype.kind == "i"


def test_ndarrays_keep_their_dtype():
    assert Tensor(np.ones(2, dtype=np.float64)).dtype == np.float64
    assert Tensor(np.ones(2, dtype=np.float32)).dtype == np.float32
    assert Tensor(np.ones(2, dtype=np.float16)).dtype == np.float16


def test_python_constants_take_the_tensor_dtype():
    x64 = leaf([1.0, 2.0])
    assert (x64 * 2.5).dtype == np.float64
    assert (1.0 - x64).dtype == np.float64
    x32 = Tensor(np.ones(2, dtype=np.float32), requires_grad=True)
    y = (x32 * 0.1 + 1.0) / 3.0
    assert y.dtype == np.float32
    y.sum().backward()
    assert x32.grad.dtype == np.float32
    (x64 * x64).sum().backward()
    assert x64.grad.dtype == np.float64


def test_numpy_float64_scalars_stay_float64():
    """NumPy returns 0-d op results as scalars (np.float64); they must not drop to float32 like Python floats."""
    assert Tensor(np.float64(2.0)).dtype == np.float64
    assert Tensor(np.float32(2.0)).dtype == np.float32


def test_ops_on_zero_dim_float64_stay_float64():
    x = leaf(0.8)  # 0-d float64, e.g. a loss
    results = {"exp": F.exp(x), "mul": x * 3.0, "add": x + x, "log": F.log(x), "tanh": F.tanh(x),
               "sum_of_sum": x.sum() * 2.0}
    assert {name: y.dtype for name, y in results.items()} == {name: np.float64 for name in results}


def test_scalar_float64_loss_is_exact():
    """A float64 scalar loss must carry float64 precision: exp(x) * 3 at x = 0.8."""
    x = leaf(0.8)
    y = F.exp(x) * 3.0
    y.backward()
    assert y.item() == 3 * np.exp(0.8)
    assert x.grad == pytest.approx(3 * np.exp(0.8), rel=1e-15)


# ----------------------------------------------------- ndarray on the left
def test_ndarray_on_the_left_returns_a_tensor():
    x = leaf([1.0, 2.0, 4.0])
    a = np.array([3.0, -1.0, 0.5])
    results = {"mul": a * x, "add": a + x, "sub": a - x, "div": a / x}
    for name, y in results.items():
        assert isinstance(y, Tensor), name
        assert y.requires_grad, name
    np.testing.assert_array_equal(results["sub"].data, a - x.data)
    np.testing.assert_array_equal(results["div"].data, a / x.data)
    (a / x).sum().backward()
    np.testing.assert_allclose(x.grad, -a / x.data**2, rtol=1e-15)
    m = np.eye(3)
    assert isinstance(m @ Tensor(np.ones((3, 2))), Tensor)


def test_tensor_methods_match_functional():
    x = leaf(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(x.T.data, x.data.T)
    np.testing.assert_array_equal(x.reshape(3, 2).data, x.data.reshape(3, 2))
    np.testing.assert_array_equal(x.transpose(1, 0).data, x.data.T)
    assert x.sum().item() == 15.0 and x.mean().item() == 2.5 and x.max().item() == 5.0
    d = x.detach()
    assert not d.requires_grad and d.data is x.data


# ------------------------------------------------------------- deep graphs
def test_deep_chain_backpropagates_without_recursion_error():
    x = leaf([1.0])
    y = x
    for _ in range(5000):
        y = y * 1.0001 + 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0001**5000], rtol=1e-12)
    del y  # freeing a 10000-node chain must not blow the stack either
