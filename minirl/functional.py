"""Every op minirl differentiates, each forward written beside its backward.

An op computes its output array, then hands `_op` a closure that maps the
output's gradient `dout` to one gradient per parent (None where a parent needs
none). Broadcasting is undone by the tape (`tensor.unbroadcast`), so a closure
may return a gradient of the broadcast shape.

Shape legend: B=batch, T=time (query positions), S=key positions, C=channels,
H=query heads, K=key/value heads, D=head dim, V=vocabulary.

The fused ops at the end (linear, rms_norm, rope, attention, swiglu,
log_softmax, gather_logprobs) are the model's hot path; `tests/test_functional.py`
checks each against finite differences and against the same formula composed
from the elementary ops above it.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
from scipy.special import log_expit

from minirl.tensor import Tensor, is_grad_enabled

_reference = False
_exact = False


@contextlib.contextmanager
def reference_ops():
    """Run the plain reference of every fused op instead of its fast path (the tests' oracle).

    Each fast path (`rms_norm`, `rope`, `attention`, `swiglu`, beside its `*_reference`; the tape's
    in-place gradient sums in `Tensor.backward`; the model's RoPE table lookup
    `model.rope_lookup`, its tables expanded to q's and k's memory layout `model.rope_for_heads`, and
    its one prefill per distinct prompt `model.prefill`) does the same float32
    operations in the same order into preallocated or reused buffers, so both
    give the same bits; `tests/test_speed_bitwise.py` checks it on whole runs.
    The exceptions round differently (see `exact_ops()`, which switches only those back).
    """
    global _reference
    previous, _reference = _reference, True
    try:
        yield
    finally:
        _reference = previous


@contextlib.contextmanager
def exact_ops():
    """Keep the fast paths that give the reference's bits, switch off those that round differently.

    What rounds differently (the fused paths):
    - summing a short last axis as a matmul with a ones vector (`_row_sum`: attention's softmax and
      its backward, rms_norm's mean): BLAS adds in another order than NumPy's pairwise sum, 10x faster;
    - `rms_norm`'s backward mean(dout * weight * xhat) as a product of dout * xhat with the weight;
    - `swiglu`'s backward with silu' = sig + act * (1 - sig), one pass and one array fewer;
    - `rope`'s rotate_half as a matmul by a signed permutation (`_rotate`): the same values, but an
      exact zero may change sign and an inf or NaN spreads over its row.
    `tests/test_speed_bitwise.py` compares runs under `exact_ops()` with `reference_ops()` bit for
    bit; `tests/test_speed_fused.py` compares the default fast path with the reference within
    float32 rounding.
    """
    global _exact
    previous, _exact = _exact, True
    try:
        yield
    finally:
        _exact = previous


def _row_sum(a: np.ndarray) -> np.ndarray:
    """a.sum(axis=-1, keepdims=True) for a C-contiguous a (..., S); as `a @ ones` unless `exact_ops()`.

    NumPy reduces a short last axis row by row (about 25 ns a row); one matrix-vector product with
    ones does all rows at once, adding in BLAS's order instead of NumPy's pairwise one.
    """
    if _exact or _reference or a.ndim < 2 or not a.flags.c_contiguous:
        return a.sum(axis=-1, keepdims=True)
    S = a.shape[-1]
    return (a.reshape(-1, S) @ np.ones((S, 1), dtype=a.dtype)).reshape(a.shape[:-1] + (1,))


def _row_max(a: np.ndarray) -> np.ndarray:
    """a.max(axis=-1, keepdims=True), the same values (a maximum does not depend on the order).

    NumPy reduces a short last axis row by row (about 70 ns a row); over a transposed copy, the
    maximum runs down axis 0, S vectorised passes over all rows at once.
    """
    S = a.shape[-1]
    rows = a.size // S if S else 0
    if a.ndim < 2 or S < 2 or rows < 64 or not a.flags.c_contiguous:
        return a.max(axis=-1, keepdims=True)
    at = np.ascontiguousarray(a.reshape(rows, S).T)  # (S, rows)
    return at.max(axis=0).reshape(a.shape[:-1] + (1,))


def _op(data: np.ndarray, parents: tuple, backward) -> Tensor:
    """Wrap an op's output; put it on the tape if any parent needs a gradient."""
    out = Tensor(data)
    if is_grad_enabled() and any(p.requires_grad for p in parents):
        out.requires_grad = True
        out._prev = parents
        out._backward = backward
    return out


def as_tensor(x, like: Tensor | None = None) -> Tensor:
    """A Tensor for `x`; constants take the floating dtype of `like`."""
    if isinstance(x, Tensor):
        return x
    if like is not None and like.data.dtype.kind == "f":
        return Tensor(np.asarray(x, dtype=like.data.dtype))
    return Tensor(x)


def _pair(a, b) -> tuple[Tensor, Tensor]:
    if not isinstance(a, Tensor):
        a = as_tensor(a, like=b)
    if not isinstance(b, Tensor):
        b = as_tensor(b, like=a)
    return a, b


# --------------------------------------------------------------- elementwise
def add(a, b) -> Tensor:
    a, b = _pair(a, b)
    return _op(a.data + b.data, (a, b), lambda dout: (dout, dout))


def sub(a, b) -> Tensor:
    a, b = _pair(a, b)
    return _op(a.data - b.data, (a, b), lambda dout: (dout, -dout))


def mul(a, b) -> Tensor:
    a, b = _pair(a, b)
    return _op(a.data * b.data, (a, b), lambda dout: (dout * b.data, dout * a.data))


def div(a, b) -> Tensor:
    a, b = _pair(a, b)
    out = a.data / b.data
    # forward was: out = a / b, so dout/db = -a / b^2 = -out / b
    return _op(out, (a, b), lambda dout: (dout / b.data, -dout * out / b.data))


def neg(a: Tensor) -> Tensor:
    return _op(-a.data, (a,), lambda dout: (-dout,))


def pow(a: Tensor, exponent: float) -> Tensor:
    """a ** exponent for a constant exponent."""
    if isinstance(exponent, Tensor):
        raise TypeError("pow takes a constant exponent; use exp(b * log(a)) for a tensor exponent")
    e = a.data.dtype.type(exponent)
    return _op(a.data**e, (a,), lambda dout: (dout * e * a.data ** (e - 1),))


def exp(a: Tensor) -> Tensor:
    out = np.exp(a.data)
    return _op(out, (a,), lambda dout: (dout * out,))


def log(a: Tensor) -> Tensor:
    return _op(np.log(a.data), (a,), lambda dout: (dout / a.data,))


def tanh(a: Tensor) -> Tensor:
    out = np.tanh(a.data)
    return _op(out, (a,), lambda dout: (dout * (1 - out * out),))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function 1 / (1 + exp(-x)), in place on one buffer.

    exp(-x) overflows to inf for x < -88 (float32), giving exactly 0: the
    right limit, so the overflow warning is silenced. Measured 1.8x faster
    than scipy's expit on the MLP's activations.
    """
    with np.errstate(over="ignore"):
        e = np.asarray(np.negative(x))  # asarray: NumPy returns a scalar for 0-d input
        if e.dtype.kind == "f":
            np.exp(e, out=e)  # exp(-x) in the same buffer
        else:
            e = np.asarray(np.exp(e))
    e += 1
    return np.reciprocal(e, out=e)


def sigmoid(a: Tensor) -> Tensor:
    out = _sigmoid(a.data)
    return _op(out, (a,), lambda dout: (dout * out * (1 - out),))


def silu(a: Tensor) -> Tensor:
    """x * sigmoid(x), Llama's MLP activation."""
    sig = _sigmoid(a.data)
    return _op(a.data * sig, (a,), lambda dout: (dout * sig * (1 + a.data * (1 - sig)),))


def logsigmoid(a: Tensor) -> Tensor:
    """log sigmoid(x) = min(x, 0) - log1p(exp(-|x|)), stable for large |x|."""
    x = a.data
    return _op(log_expit(x), (a,), lambda dout: (dout * _sigmoid(-x),))


def relu(a: Tensor) -> Tensor:
    return _op(np.maximum(a.data, 0), (a,), lambda dout: (dout * (a.data > 0),))


def abs(a: Tensor) -> Tensor:
    return _op(np.abs(a.data), (a,), lambda dout: (dout * np.sign(a.data),))


def where(cond, a, b) -> Tensor:
    """cond ? a : b elementwise; cond is a constant boolean array."""
    cond = np.asarray(cond.data if isinstance(cond, Tensor) else cond, dtype=bool)
    a, b = _pair(a, b)
    return _op(np.where(cond, a.data, b.data), (a, b),
               lambda dout: (np.where(cond, dout, 0), np.where(cond, 0, dout)))


def _pick(a: Tensor, b: Tensor, take_a: np.ndarray, tie: np.ndarray, out: np.ndarray) -> Tensor:
    # ties split the gradient evenly between the two inputs, as torch.maximum does
    wa = np.where(tie, 0.5, take_a).astype(out.dtype)
    return _op(out, (a, b), lambda dout: (dout * wa, dout * (1 - wa)))


def maximum(a, b) -> Tensor:
    a, b = _pair(a, b)
    return _pick(a, b, a.data > b.data, a.data == b.data, np.maximum(a.data, b.data))


def minimum(a, b) -> Tensor:
    a, b = _pair(a, b)
    return _pick(a, b, a.data < b.data, a.data == b.data, np.minimum(a.data, b.data))


def clip(a: Tensor, low: float, high: float) -> Tensor:
    """Clamp to [low, high]; the gradient passes where low <= a <= high (torch.clamp)."""
    inside = (a.data >= low) & (a.data <= high)
    return _op(np.clip(a.data, low, high), (a,), lambda dout: (dout * inside,))


# ---------------------------------------------------------------- reductions
def _expand(dout: np.ndarray, shape: tuple, axis, keepdims: bool) -> np.ndarray:
    """Reshape a reduced gradient so it broadcasts back over the reduced axes."""
    if axis is not None and not keepdims:
        dout = np.expand_dims(dout, axis)
    return np.broadcast_to(dout, shape)


def sum(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    out = a.data.sum(axis=axis, keepdims=keepdims)
    return _op(np.asarray(out), (a,), lambda dout: (_expand(dout, a.shape, axis, keepdims),))


def mean(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    out = np.asarray(a.data.mean(axis=axis, keepdims=keepdims))
    n = a.data.size // out.size if out.size else 1
    return _op(out, (a,), lambda dout: (_expand(dout, a.shape, axis, keepdims) / n,))


def max(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """Maximum over axes; tied maxima share the gradient evenly."""
    out = a.data.max(axis=axis, keepdims=True)
    hit = (a.data == out).astype(a.data.dtype)
    hit /= hit.sum(axis=axis, keepdims=True)
    result = out if keepdims else (out.reshape(()) if axis is None else np.squeeze(out, axis))

    def backward(dout):
        return (_expand(dout, a.shape, axis, keepdims) * hit,)

    return _op(np.asarray(result), (a,), backward)


def logsumexp(a: Tensor, axis: int = -1, keepdims: bool = False) -> Tensor:
    m = a.data.max(axis=axis, keepdims=True)
    lse = m + np.log(np.exp(a.data - m).sum(axis=axis, keepdims=True))
    p = np.exp(a.data - lse)  # softmax
    out = lse if keepdims else np.squeeze(lse, axis)
    return _op(out, (a,), lambda dout: (_expand(dout, a.shape, axis, keepdims) * p,))


# --------------------------------------------------------------------- shape
def reshape(a: Tensor, shape: tuple) -> Tensor:
    return _op(a.data.reshape(shape), (a,), lambda dout: (dout.reshape(a.shape),))


def transpose(a: Tensor, axes=None) -> Tensor:
    axes = tuple(reversed(range(a.ndim))) if axes is None else tuple(axes)
    inverse = tuple(np.argsort(axes))
    return _op(a.data.transpose(axes), (a,), lambda dout: (dout.transpose(inverse),))


def _is_basic_index(index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, (int, np.integer, slice)) or p is None or p is Ellipsis for p in parts)


def getitem(a: Tensor, index) -> Tensor:
    """a[index]; fancy indices that repeat an entry sum its gradients."""
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    basic = _is_basic_index(index)

    def backward(dout):
        da = np.zeros_like(a.data)
        if basic:
            da[index] = dout
        else:
            np.add.at(da, index, dout)
        return (da,)

    return _op(np.asarray(a.data[index]), (a,), backward)


def concat(tensors: list, axis: int = 0) -> Tensor:
    tensors = [as_tensor(t) for t in tensors]
    sizes = [t.shape[axis] for t in tensors]
    cuts = np.cumsum(sizes)[:-1]
    return _op(np.concatenate([t.data for t in tensors], axis=axis), tuple(tensors),
               lambda dout: tuple(np.split(dout, cuts, axis=axis)))


def stack(tensors: list, axis: int = 0) -> Tensor:
    tensors = [as_tensor(t) for t in tensors]
    n = len(tensors)
    return _op(np.stack([t.data for t in tensors], axis=axis), tuple(tensors),
               lambda dout: tuple(np.take(dout, i, axis=axis) for i in range(n)))


# ------------------------------------------------------------------- linear
def matmul(a, b) -> Tensor:
    """Batched a @ b with broadcast batch dimensions (both at least 2-D)."""
    a, b = _pair(a, b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul needs operands with at least 2 dimensions, got {a.shape} and {b.shape}")

    def backward(dout):
        # forward was: out = a @ b
        da = dout @ b.data.swapaxes(-1, -2) if a.requires_grad else None
        db = a.data.swapaxes(-1, -2) @ dout if b.requires_grad else None
        return da, db

    return _op(a.data @ b.data, (a, b), backward)


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """x @ weight.T, the bias-free nn.Linear: (..., C) x (O, C) -> (..., O)."""
    lead = x.shape[:-1]
    x2 = x.data.reshape(-1, x.shape[-1])  # (N, C)

    def backward(dout):
        dout2 = dout.reshape(-1, dout.shape[-1])  # (N, O)
        dx = (dout2 @ weight.data).reshape(x.shape) if x.requires_grad else None
        dw = dout2.T @ x2 if weight.requires_grad else None  # (O, C)
        return dx, dw

    out = (x2 @ weight.data.T).reshape(*lead, weight.shape[0])
    return _op(out, (x, weight), backward)


def embedding(weight: Tensor, ids: np.ndarray) -> Tensor:
    """Rows of `weight` (V, C) picked by integer `ids` (...) -> (..., C)."""
    ids = np.asarray(ids)

    def backward(dout):
        flat, dflat = ids.reshape(-1), dout.reshape(-1, weight.shape[1])  # (N,), (N, C)
        if flat.size * weight.shape[0] <= 2**24:
            # forward was: out = weight[ids] = onehot(ids) @ weight, so dweight = onehot^T @ dout
            onehot = (flat[:, None] == np.arange(weight.shape[0])).astype(dout.dtype)  # (N, V)
            return (onehot.T @ dflat,)
        dweight = np.zeros_like(weight.data)
        np.add.at(dweight, flat, dflat)  # a large vocabulary: scatter-add instead
        return (dweight,)

    return _op(weight.data[ids], (weight,), backward)


# ------------------------------------------------------------ probabilities
def softmax(a: Tensor, axis: int = -1) -> Tensor:
    z = a.data - a.data.max(axis=axis, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=axis, keepdims=True)
    # forward was: p = exp(x) / sum(exp(x)), so dx = p * (dout - sum(dout * p))
    return _op(p, (a,), lambda dout: (p * (dout - (dout * p).sum(axis=axis, keepdims=True)),))


def log_softmax(a: Tensor, axis: int = -1) -> Tensor:
    z = a.data - a.data.max(axis=axis, keepdims=True)
    out = z - np.log(np.exp(z).sum(axis=axis, keepdims=True))
    # forward was: out = x - logsumexp(x), so dx = dout - softmax(x) * sum(dout)
    return _op(out, (a,), lambda dout: (dout - np.exp(out) * dout.sum(axis=axis, keepdims=True),))


def gather_logprobs(logits: Tensor, ids: np.ndarray) -> Tensor:
    """log softmax(logits)[..., ids]: (..., V), (...) -> (...), without materialising log_softmax on the tape."""
    ids = np.asarray(ids)
    z = logits.data - logits.data.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=-1, keepdims=True))
    out = np.take_along_axis(z, ids[..., None], axis=-1)[..., 0] - logz[..., 0]

    def backward(dout):
        # forward was: out = x[ids] - logsumexp(x): dx = onehot(ids) * dout - softmax(x) * dout
        dlogits = -np.exp(z - logz) * dout[..., None]
        np.put_along_axis(dlogits, ids[..., None],
                          np.take_along_axis(dlogits, ids[..., None], axis=-1) + dout[..., None], axis=-1)
        return (dlogits,)

    return _op(out, (logits,), backward)


def entropy(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last axis: (..., V) -> (...)."""
    logp = log_softmax(logits, axis=-1)
    return neg(sum(mul(exp(logp), logp), axis=-1))


# ----------------------------------------------------------- fused model ops
def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """Llama's RMSNorm: x / sqrt(mean(x^2) + eps) * weight, over the last axis."""
    if _reference or not x.data.flags.c_contiguous or x.data.dtype != weight.data.dtype:
        return rms_norm_reference(x, weight, eps)
    # the reference's operations in its order (but the row sums: `_row_sum`); the (..., C) temporaries
    # reuse two buffers
    C = x.shape[-1]
    buf = x.data * x.data  # (..., C)
    rstd = 1.0 / np.sqrt(_row_sum(buf) / C + eps)  # (..., 1): the mean of x^2 (`_row_sum`: see there)
    if rstd.dtype != buf.dtype:  # an eps that promotes (a NumPy float64): the reference's dtypes
        return rms_norm_reference(x, weight, eps)
    xhat = np.multiply(x.data, rstd, out=buf)  # (..., C)
    if not (is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return Tensor(np.multiply(xhat, weight.data, out=xhat))

    def backward(dout):
        if not dout.flags.c_contiguous or dout.dtype != xhat.dtype:
            return _rms_norm_backward_reference(dout, x, weight, xhat, rstd)
        t = dout * xhat
        dweight = t.reshape(-1, C).sum(axis=0) if weight.requires_grad else None
        if _exact or _reference:
            dxhat = dout * weight.data
            np.multiply(dxhat, xhat, out=t)
            m = t.mean(axis=-1, keepdims=True)
        else:
            # mean(dxhat * xhat) = mean(dout * xhat * weight): one matrix-vector product with the
            # weight, from the product dweight already needs (rounds differently: a fused path)
            m = (t.reshape(-1, C) @ weight.data).reshape(rstd.shape) / C  # (..., 1)
            dxhat = dout * weight.data
        # forward was: xhat = x * rstd with rstd depending on x through mean(x^2)
        np.multiply(xhat, m, out=t)
        dxhat -= t
        dxhat *= rstd
        return dxhat, dweight

    return _op(xhat * weight.data, (x, weight), backward)


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """rms_norm written plainly: the oracle of the fast path above."""
    rstd = 1.0 / np.sqrt((x.data * x.data).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = x.data * rstd  # (..., C)
    return _op(xhat * weight.data, (x, weight),
               lambda dout: _rms_norm_backward_reference(dout, x, weight, xhat, rstd))


def _rms_norm_backward_reference(dout, x, weight, xhat, rstd):
    dweight = (dout * xhat).reshape(-1, x.shape[-1]).sum(axis=0) if weight.requires_grad else None
    dxhat = dout * weight.data
    # forward was: xhat = x * rstd with rstd depending on x through mean(x^2)
    dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dweight


def _rotate_half(x: np.ndarray) -> np.ndarray:
    """Hugging Face's rotate_half: [x1, x2] -> [-x2, x1] on the last axis."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _rotate_half_T(y: np.ndarray) -> np.ndarray:
    """The transpose of rotate_half: [y1, y2] -> [y2, -y1]."""
    half = y.shape[-1] // 2
    return np.concatenate([y[..., half:], -y[..., :half]], axis=-1)


def rope_tables(positions: np.ndarray, head_dim: int, theta: float = 10000.0, dtype=np.float32):
    """cos and sin tables (..., D) for integer positions (...), Hugging Face Llama layout."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (D/2,)
    angles = np.asarray(positions, dtype=np.float64)[..., None] * inv_freq  # (..., D/2)
    angles = np.concatenate([angles, angles], axis=-1)  # (..., D)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def _memory_order(a: np.ndarray) -> list[int] | None:
    """Axes of `a` from the outermost in memory to the last, if `a.transpose(order)` is C-contiguous; else None.

    The model's (B, T, H, D) projection seen as (B, H, T, D) gives [0, 2, 1, 3]: a row-wise op can then
    run over all last-axis vectors as one (rows, D) matrix, in memory order.
    """
    if a.ndim < 2 or a.strides[-1] != a.itemsize:
        return None
    order = sorted(range(a.ndim - 1), key=lambda i: -a.strides[i]) + [a.ndim - 1]
    return order if a.transpose(order).flags.c_contiguous else None


@functools.lru_cache(maxsize=32)
def _rotation(D: int, dtype: np.dtype) -> np.ndarray:
    """The (D, D) matrix of rotate_half as a right product: x @ R = [-x2, x1]; its transpose is rotate_half_T."""
    R = np.zeros((D, D), dtype=dtype)
    h = D // 2
    R[np.arange(h, D), np.arange(h)] = -1  # out[:, i] = -x[:, i + h]
    R[np.arange(h), np.arange(h, D)] = 1  # out[:, i + h] = x[:, i]
    R.flags.writeable = False
    return R


def _rotate(x: np.ndarray, transpose: bool = False) -> np.ndarray:
    """rotate_half(x) (or rotate_half_T) as one matmul by a signed permutation, in x's memory layout.

    Each output is one input times +-1 plus zeros times the others, so the values are the copy's
    (but an exact zero may come out with the other sign, and an inf or NaN spreads over its row: a
    fused path, off under `exact_ops()`). Measured 2x faster than the concatenation, whose inner
    loops run over D/2 elements.
    """
    order = _memory_order(x)
    if _exact or _reference or order is None:
        return _rotate_half_T(x) if transpose else _rotate_half(x)
    R = _rotation(x.shape[-1], x.dtype)
    xm = x.transpose(order)  # C-contiguous
    out = np.empty(xm.shape, dtype=x.dtype)
    np.matmul(xm.reshape(-1, x.shape[-1]), R.T if transpose else R, out=out.reshape(-1, x.shape[-1]))
    return out.transpose(np.argsort(order))  # x's shape, in x's memory layout


def rope(x: Tensor, cos: np.ndarray, sin: np.ndarray) -> Tensor:
    """Rotary embedding, rotate-half convention: x*cos + rotate_half(x)*sin. x (B, H, T, D); cos, sin (B, 1, T, D).

    cos and sin may also be given expanded to x's shape and memory layout (`model.rope_for_heads`): the
    products then run over contiguous memory instead of inner loops of D elements, 2x faster.
    """
    if _reference or not x.data.dtype == cos.dtype == sin.dtype:
        return rope_reference(x, cos, sin)
    # the reference's x*cos + rotate_half(x)*sin, its two products and the sum in two buffers
    out = x.data * cos  # (B, H, T, D), in x's memory layout
    rot = _rotate(x.data)
    rot *= sin
    out += rot

    def backward(dout):
        # forward is linear in x: out = x*cos + R(x)*sin, so dx = dout*cos + R^T(dout*sin)
        if dout.dtype != cos.dtype:
            return (dout * cos + _rotate_half_T(dout * sin),)
        rot = _rotate(dout * sin, transpose=True)
        dx = dout * cos
        dx += rot
        return (dx,)

    return _op(out, (x,), backward)


def rope_reference(x: Tensor, cos: np.ndarray, sin: np.ndarray) -> Tensor:
    """rope written plainly with rotate_half: the oracle of the fast path above."""
    out = x.data * cos + _rotate_half(x.data) * sin
    return _op(out, (x,), lambda dout: (dout * cos + _rotate_half_T(dout * sin),))


def mask_bias(mask: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Boolean attention mask -> additive bias: 0 where allowed, -1e9 (weight exp(-1e9) = 0) elsewhere."""
    return np.where(mask, 0.0, -1e9).astype(dtype)


def _matmul_like(a: np.ndarray, b: np.ndarray, like: np.ndarray) -> np.ndarray:
    """a @ b with the shape of `like`, written in `like`'s memory layout where BLAS can (the same values).

    The model's q, k and v are its (B, T, H, D) projections seen as (B, H, T, D); attention's output and
    gradients laid out the same way need no copy to go back to (B, T, H*D).
    """
    dtype = np.result_type(a, b)
    out = np.empty_like(like, dtype=dtype)  # like's memory layout
    if out.size == 0 or a.shape[:-1] + b.shape[-1:] != like.shape:  # grouped heads: (B, K, G*T, D) is not (B, H, T, D)
        out[...] = (a @ b).reshape(like.shape)
    else:
        np.matmul(a, b, out=out)
    return out


def attention(q: Tensor, k: Tensor, v: Tensor, mask: np.ndarray | None = None) -> Tensor:
    """Softmax attention with grouped KV heads.

    q (B, H, T, D), k and v (B, K, S, D) with H a multiple of K; `mask` is a
    boolean array broadcastable to (B, 1, T, S), True where a query may attend
    to a key, or the equivalent additive float bias (0 or -1e9) from
    `mask_bias`. Returns (B, H, T, D). Rows with no allowed key attend uniformly
    (their outputs belong to padding and are never used).
    """
    if _reference:
        return attention_reference(q, k, v, mask)
    B, H, T, D = q.shape
    K = k.shape[1]
    if H % K:
        raise ValueError(f"number of query heads {H} is not a multiple of key/value heads {K}")
    G = H // K
    scale = float(D) ** -0.5  # a Python float: NumPy 2 keeps float32 arrays float32
    qg = q.data.reshape(B, K, G * T, D)  # query heads of a group share k and v: (B, K, G*T, D)
    # the reference's operations in its order, in one (B, H, T, S) buffer (but the row sums: `_row_sum`)
    scores = (qg @ k.data.swapaxes(-1, -2)).reshape(B, H, T, -1)  # (B, H, T, S)
    keep = None
    if mask is not None:
        allowed = mask if mask.dtype == bool else mask == 0  # broadcastable to (B, 1, T, S)
        # the reference's where(allowed, scores * scale, -1e9) as two products (a masked copy is
        # 10x slower): scores * (scale or 0) + (0 or -1e9), the same value for finite scores
        keep = np.where(allowed, np.asarray(scale, scores.dtype), np.asarray(0, scores.dtype))
        scores *= keep
        scores += np.where(allowed, np.asarray(0, scores.dtype), np.asarray(-1e9, scores.dtype))
    else:
        scores *= scale
    scores -= _row_max(scores)
    att = np.exp(scores, out=scores)
    att /= _row_sum(att)  # (B, H, T, S)
    attg = att.reshape(B, K, G * T, -1)  # (B, K, G*T, S)
    out = _matmul_like(attg, v.data, q.data)  # (B, H, T, D) in q's memory layout (the model's (B, T, H, D))

    def backward(dout):
        doutg = dout.reshape(B, K, G * T, D)
        # forward was: out = att @ v
        datt = doutg @ v.data.swapaxes(-1, -2)  # (B, K, G*T, S)
        dv = _matmul_like(attg.swapaxes(-1, -2), doutg, v.data)  # (B, K, S, D), summed over the group
        # forward was: att = softmax(scores); dscores = att * (datt - sum(datt * att)) * scale, in datt's buffer
        datt -= _row_sum(datt * attg)
        datt *= attg
        dscores = datt
        if keep is not None:
            # forward was: scores = where(allowed, scores * scale, -1e9): masked scores get no gradient.
            # keep is 0 there; "+ 0" turns the -0 of a negative gradient times 0 into the reference's +0
            dscores4 = dscores.reshape(B, H, T, -1)
            dscores4 *= keep
            dscores4 += 0.0
        else:
            dscores *= scale
        # forward was: scores = q @ k^T * scale
        dq = _matmul_like(dscores, k.data, q.data)  # (B, H, T, D)
        dk = _matmul_like(dscores.swapaxes(-1, -2), qg, k.data)  # (B, K, S, D)
        return dq, dk, dv

    return _op(out, (q, k, v), backward)


def attention_reference(q: Tensor, k: Tensor, v: Tensor, mask: np.ndarray | None = None) -> Tensor:
    """attention written plainly: the oracle of the fast path above."""
    B, H, T, D = q.shape
    K = k.shape[1]
    if H % K:
        raise ValueError(f"number of query heads {H} is not a multiple of key/value heads {K}")
    G = H // K
    scale = float(D) ** -0.5  # a Python float: NumPy 2 keeps float32 arrays float32
    qg = q.data.reshape(B, K, G * T, D)  # query heads of a group share k and v: (B, K, G*T, D)
    scores = (qg @ k.data.swapaxes(-1, -2)).reshape(B, H, T, -1) * scale  # (B, H, T, S)
    if mask is not None:
        allowed = mask if mask.dtype == bool else mask == 0  # broadcastable to (B, 1, T, S)
        # replace, not add: a masked score is a constant (no gradient), and a row
        # with no allowed key then attends uniformly instead of following q and k
        scores = np.where(allowed, scores, np.asarray(-1e9, dtype=scores.dtype))
    scores -= scores.max(axis=-1, keepdims=True)
    att = np.exp(scores)
    att /= att.sum(axis=-1, keepdims=True)  # (B, H, T, S)
    attg = att.reshape(B, K, G * T, -1)  # (B, K, G*T, S)
    out = (attg @ v.data).reshape(B, H, T, D)

    def backward(dout):
        doutg = dout.reshape(B, K, G * T, D)
        # forward was: out = att @ v
        datt = doutg @ v.data.swapaxes(-1, -2)  # (B, K, G*T, S)
        dv = attg.swapaxes(-1, -2) @ doutg  # (B, K, S, D), summed over the group
        # forward was: att = softmax(scores)
        dscores = attg * (datt - (datt * attg).sum(axis=-1, keepdims=True)) * scale
        if mask is not None:
            # forward was: scores = where(allowed, scores, -1e9): masked scores get no gradient
            dscores = np.where(allowed, dscores.reshape(B, H, T, -1), 0).reshape(B, K, G * T, -1)
        # forward was: scores = q @ k^T * scale
        dq = (dscores @ k.data).reshape(B, H, T, D)
        dk = dscores.swapaxes(-1, -2) @ qg  # (B, K, S, D)
        return dq, dk, dv

    return _op(out, (q, k, v), backward)


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """silu(gate) * up, Llama's gated MLP nonlinearity."""
    if _reference:
        return swiglu_reference(gate, up)
    g, u = gate.data, up.data
    sig = _sigmoid(g)
    if not (is_grad_enabled() and (gate.requires_grad or up.requires_grad)):
        act = np.multiply(g, sig, out=sig) if sig.dtype == np.result_type(g, sig) else g * sig
        return Tensor(np.multiply(act, u, out=act) if act.dtype == np.result_type(act, u) else act * u)
    act = g * sig

    def backward(dout):
        if _exact or _reference or dout.dtype != sig.dtype:
            # forward was: out = silu(gate) * up, silu'(gate) = sig * (1 + gate * (1 - sig)); the reference's order
            dsilu = np.subtract(1, sig)
            dsilu *= g
            dsilu += 1
            dgate = dout * u
            dgate *= sig
            dgate *= dsilu
            return dgate, dout * act
        # silu'(gate) = sig + act * (1 - sig), in one buffer that becomes dgate: one pass and one
        # (..., I) array fewer than the reference's order (rounds differently: a fused path)
        dgate = np.subtract(1, sig)
        dgate *= act
        dgate += sig
        dgate *= u
        dgate *= dout
        return dgate, dout * act

    return _op(act * u, (gate, up), backward)


def swiglu_reference(gate: Tensor, up: Tensor) -> Tensor:
    """swiglu written plainly: the oracle of the fast path above."""
    sig = _sigmoid(gate.data)
    act = gate.data * sig

    def backward(dout):
        dgate = dout * up.data * sig * (1 + gate.data * (1 - sig))
        return dgate, dout * act

    return _op(act * up.data, (gate, up), backward)
