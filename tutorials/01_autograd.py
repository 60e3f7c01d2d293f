# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 01 · Autograd: the tape, the ops, and how we know they are right
#
# Everything minirl trains runs on about 600 lines of NumPy: `minirl/tensor.py`
# (a Tensor on a tape, and `backward()`) and `minirl/functional.py` (every op as
# a forward written beside its backward). This lesson takes them apart:
#
# 1. a scalar expression differentiated by hand, then by the tape;
# 2. how an op is built: a new op (softplus) as a forward/backward pair;
# 3. broadcasting, and the one function that undoes it;
# 4. the gradient check: finite differences, why float64 and central
#    differences, and what a wrong backward looks like;
# 5. the attention backward, line by line, checked against finite differences.
#
# Run it top to bottom with `python tutorials/01_autograd.py`, or open it in
# Jupyter (it is a jupytext "percent" script). Every claim is an `assert`.

# %%
import sys
from pathlib import Path

try:
    import minirl  # before NumPy: minirl asks BLAS for one thread, faster for its small matrices
except ModuleNotFoundError:  # a source checkout without `pip install -e .`: the repo root is one level up
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    sys.path.insert(0, str(here.parent))
    import minirl  # noqa: F401

import numpy as np

from minirl import functional as F
from minirl.functional import _op
from minirl.gradcheck import check_grad
from minirl.tensor import Tensor, unbroadcast

np.set_printoptions(precision=4, suppress=True)


def scalar(v: float) -> Tensor:
    """A 0-d float64 leaf (a bare Python float would become float32, minirl's default)."""
    return Tensor(np.array(v), requires_grad=True)


# %% [markdown]
# ## 1) A scalar expression, by hand and by the tape
#
# micrograd's first example: `e = a*b; d = e + c; L = d*f`. The chain rule by
# hand walks from `L` back to the leaves, multiplying local derivatives:
# `dL/dd = f`, `dL/de = dL/dd * 1`, `dL/da = dL/de * b`, and so on.

# %%
a, b, c, f = 2.0, -3.0, 10.0, -2.0
e = a * b
d = e + c
L = d * f
# by hand, from the output back
dL_dd = f
dL_df = d
dL_de = dL_dd * 1.0  # d = e + c
dL_dc = dL_dd * 1.0
dL_da = dL_de * b  # e = a * b
dL_db = dL_de * a
by_hand = {"a": dL_da, "b": dL_db, "c": dL_dc, "f": dL_df}

ta, tb, tc, tf = scalar(a), scalar(b), scalar(c), scalar(f)
tL = (ta * tb + tc) * tf  # the same expression on the tape
tL.backward()
by_tape = {"a": ta.grad.item(), "b": tb.grad.item(), "c": tc.grad.item(), "f": tf.grad.item()}
print(f"L = {L} (tape: {tL.item()})")
for name in by_hand:
    print(f"dL/d{name}: by hand {by_hand[name]:6.1f}   tape {by_tape[name]:6.1f}")
    assert by_hand[name] == by_tape[name]

# %% [markdown]
# The tape records, for every op's output, its parents and a closure that maps
# the output's gradient to theirs. `backward()` sorts the graph topologically
# and runs those closures from the output back, **adding** what each node
# receives. Adding matters: a node used twice gets two contributions.
# micrograd's first version assigned instead of adding, so `x * x` had
# gradient `x` instead of `2x`:

# %%
x = scalar(3.0)
(x * x).backward()
print(f"d(x*x)/dx at x=3: {x.grad}  (2x = 6; the overwrite bug would give 3)")
assert x.grad == 6.0

# Calling backward() twice adds into the leaves again, exactly as PyTorch does.
x = scalar(3.0)
y = x * x
y.backward()
y.backward()
print(f"after two backward() calls: {x.grad}  (2 * 6)")
assert x.grad == 12.0

# %% [markdown]
# ## 2) How an op is built: softplus as a forward/backward pair
#
# `softplus(x) = log(1 + e^x)`. Its derivative is `e^x / (1 + e^x) =
# sigmoid(x)`. Every op in `functional.py` has the same shape: compute the
# output array, then hand `_op` the parents and a closure from `dout` to one
# gradient per parent. `np.logaddexp(0, x)` is `log(e^0 + e^x)` without
# overflowing for large `x`.


# %%
def softplus(x: Tensor) -> Tensor:
    """log(1 + exp(x)), stable for large |x|."""
    out = np.logaddexp(0.0, x.data)
    # forward was: out = log(1 + e^x), so dout/dx = e^x / (1 + e^x) = sigmoid(x)
    return _op(out, (x,), lambda dout: (dout * F._sigmoid(x.data),))


xs = np.linspace(-4, 4, 9)
print("x        ", xs)
print("softplus ", softplus(Tensor(xs)).data)
print("composed ", F.log(1.0 + F.exp(Tensor(xs))).data)
assert np.allclose(softplus(Tensor(xs)).data, np.log1p(np.exp(xs)))
big = Tensor(np.array([1000.0]))
with np.errstate(over="ignore"):
    naive = F.log(1.0 + F.exp(big)).data[0]
print(f"softplus(1000) = {softplus(big).data[0]}, the composition gives {naive} (e^1000 overflows)")
assert softplus(big).data[0] == 1000.0 and np.isinf(naive)

err = check_grad(softplus, np.random.default_rng(0).standard_normal((3, 4)))
print(f"softplus gradient check: |analytic - numeric| = {err:.2e}")
assert err < 1e-8

# %% [markdown]
# ## 3) Broadcasting and `unbroadcast`
#
# `x (2, 3) + bias (3,)` copies `bias` into both rows. In the backward pass
# each copy sends its gradient back, so `bias` receives the **sum over the
# rows**. Rather than teach every op about broadcasting, the tape calls
# `unbroadcast(grad, shape)` once on every gradient: sum the leading axes the
# input did not have, then sum (keeping the axis) where the input had size 1.

# %%
xb = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)  # (2, 3)
bias = Tensor(np.zeros(3), requires_grad=True)  # (3,)
col = Tensor(np.zeros((2, 1)), requires_grad=True)  # (2, 1)
dout = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])  # (2, 3)
(xb + bias + col).backward(dout)  # backward with an explicit output gradient
print("dout:\n", dout)
print("bias.grad (summed over rows):   ", bias.grad)
print("col.grad (summed over columns): ", col.grad.ravel())
assert np.array_equal(bias.grad, [11.0, 22.0, 33.0])
assert np.array_equal(col.grad, [[6.0], [60.0]])

g = np.ones((4, 2, 3))
for shape in [(2, 3), (3,), (1, 3), (2, 1), ()]:
    print(f"unbroadcast ones{g.shape} -> {str(shape):7} gives {unbroadcast(g, shape).ravel()}")
assert unbroadcast(g, (2, 1)).tolist() == [[12.0], [12.0]]

# %% [markdown]
# ## 4) The gradient check
#
# How do we know a hand-written backward is right? Compare it with the
# definition of the derivative. For `f(x) = tanh(x)` at `x = 0.5`, the forward
# difference `(f(x+h) - f(x)) / h` has error `O(h)`; the central difference
# `(f(x+h) - f(x-h)) / 2h` cancels the `h f''/2` term and has error `O(h^2)`.
# But shrinking `h` also divides the rounding error of `f` (about `eps·|f|`)
# by `h`, so the error bottoms out where the two meet: near `h ~ eps^(1/3)` for
# central differences. In float32 (`eps ≈ 1e-7`) the best central difference
# is off by about `1e-5`, too coarse to tell a right gradient from a slightly
# wrong one; in float64 (`eps ≈ 2e-16`) it gets to `1e-11` or better. That is
# why every check runs in float64 with central differences, at `h = 1e-6`.

# %%
x0 = 0.5
exact = 1 - np.tanh(x0) ** 2
print(f"{'h':>7} {'forward f64':>12} {'central f64':>12} {'central f32':>12}")
best = {"forward f64": 1.0, "central f64": 1.0, "central f32": 1.0}
for h in [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7]:
    fwd = abs((np.tanh(x0 + h) - np.tanh(x0)) / h - exact)
    cen = abs((np.tanh(x0 + h) - np.tanh(x0 - h)) / (2 * h) - exact)
    x32, h32 = np.float32(x0), np.float32(h)
    cen32 = abs(float((np.tanh(x32 + h32) - np.tanh(x32 - h32)) / (2 * h32)) - exact)
    print(f"{h:7.0e} {fwd:12.2e} {cen:12.2e} {cen32:12.2e}")
    for key, val in zip(best, [fwd, cen, cen32]):
        best[key] = min(best[key], val)
print("best error:", {k: f"{v:.1e}" for k, v in best.items()})
assert best["central f64"] < 1e-9 < best["central f32"]
assert best["central f64"] < best["forward f64"] / 10

# %% [markdown]
# `check_grad(f, *arrays)` does this for whole arrays at once (HIPS/autograd's
# trick): it reduces the output with a random linear functional `sum(f(x) *
# probe)` and compares the tape's gradient with a central difference along a
# random direction `v`, `(F(x + hv) - F(x - hv)) / 2h` against `grad · v`. One
# check covers every entry of every input, at the cost of two extra forwards.
#
# Now a wrong backward. RMSNorm is `y = x * rstd * w` with `rstd =
# 1/sqrt(mean(x^2) + eps)`. A tempting backward treats `rstd` as a constant
# and forgets that it depends on `x`:

# %%
def rms_norm_broken(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """RMSNorm with a backward that forgets rstd depends on x."""
    rstd = 1.0 / np.sqrt((x.data * x.data).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = x.data * rstd

    def backward(dout):
        dweight = (dout * xhat).reshape(-1, x.shape[-1]).sum(axis=0)
        dx = rstd * dout * weight.data  # wrong: misses - xhat * mean(dxhat * xhat)
        return dx, dweight

    return _op(xhat * weight.data, (x, weight), backward)


rng = np.random.default_rng(0)
xr, wr = rng.standard_normal((2, 3, 8)), rng.standard_normal(8)
ok = check_grad(F.rms_norm, xr, wr)
print(f"minirl rms_norm: error {ok:.2e}")
try:
    check_grad(rms_norm_broken, xr, wr)
    caught = False
except AssertionError as err_msg:
    print(f"broken rms_norm: {err_msg}")
    caught = True
assert caught and ok < 1e-8

# Values agree, gradients do not: only a gradient check finds this kind of bug.
assert np.allclose(rms_norm_broken(Tensor(xr), Tensor(wr)).data, F.rms_norm(Tensor(xr), Tensor(wr)).data)

# %% [markdown]
# ## 5) The attention backward, line by line
#
# Causal softmax attention for one layer (shapes: B=batch, H=heads, T=query
# positions, S=key positions, D=head dim):
#
# ```
# scores = q @ k^T * scale              # (B, H, T, S)
# scores = where(mask, scores, -inf)    # a query sees only keys at or before it
# att    = softmax(scores)              # (B, H, T, S), rows sum to 1
# out    = att @ v                      # (B, H, T, D)
# ```
#
# The backward runs these lines in reverse. Each backward line quotes the
# forward line it inverts (llm.c's habit):
#
# - `out = att @ v` is a matmul, so `datt = dout @ v^T` and `dv = att^T @ dout`.
# - `att = softmax(scores)`: the Jacobian of a softmax row is `diag(p) - p p^T`,
#   so `dscores = att * (datt - sum(datt * att))`, one row at a time.
# - `scores = where(mask, ...)`: masked scores are constants, so they pass no
#   gradient (their `att` is 0 already, so this line changes nothing unless a
#   row is fully masked).
# - `scores = q @ k^T * scale`: `dq = dscores @ k * scale`, `dk = dscores^T @ q * scale`.


# %%
def attention_forward(q, k, v, mask):  # (B, H, T, D), (B, H, S, D), (B, H, S, D), (T, S) -> out, cache
    scale = 1.0 / np.sqrt(q.shape[-1])
    scores = q @ k.swapaxes(-1, -2) * scale  # (B, H, T, S)
    scores = np.where(mask, scores, -np.inf)
    att = np.exp(scores - scores.max(axis=-1, keepdims=True))
    att /= att.sum(axis=-1, keepdims=True)  # (B, H, T, S)
    out = att @ v  # (B, H, T, D)
    return out, (q, k, v, att, mask, scale)


def attention_backward(dout, cache):  # (B, H, T, D) -> dq, dk, dv
    q, k, v, att, mask, scale = cache
    # forward was: out = att @ v
    datt = dout @ v.swapaxes(-1, -2)  # (B, H, T, S)
    dv = att.swapaxes(-1, -2) @ dout  # (B, H, S, D)
    # forward was: att = softmax(scores)
    dscores = att * (datt - (datt * att).sum(axis=-1, keepdims=True))  # (B, H, T, S)
    # forward was: scores = where(mask, scores, -inf)
    dscores = np.where(mask, dscores, 0.0)
    # forward was: scores = q @ k^T * scale
    dq = dscores @ k * scale  # (B, H, T, D)
    dk = dscores.swapaxes(-1, -2) @ q * scale  # (B, H, S, D)
    return dq, dk, dv


def numerical_grad(loss, x, h=1e-6):
    """Central difference of loss() with respect to every entry of x (changed in place, then restored)."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        plus = loss()
        x[i] = old - h
        minus = loss()
        x[i] = old
        grad[i] = (plus - minus) / (2 * h)
    return grad


B, H, T, D = 2, 2, 4, 3
rng = np.random.default_rng(42)
q, k, v = rng.standard_normal((B, H, T, D)), rng.standard_normal((B, H, T, D)), rng.standard_normal((B, H, T, D))
causal = np.tril(np.ones((T, T), dtype=bool))
dout = rng.standard_normal((B, H, T, D))  # the loss is sum(out * dout), so d loss / d out = dout

out, cache = attention_forward(q, k, v, causal)
dq, dk, dv = attention_backward(dout, cache)


def loss():
    return np.sum(attention_forward(q, k, v, causal)[0] * dout)


errors = {}
for name, analytic, x in [("dq", dq, q), ("dk", dk, k), ("dv", dv, v)]:
    errors[name] = np.max(np.abs(analytic - numerical_grad(loss, x)))
    print(f"{name} error: {errors[name]:.2e}")
assert max(errors.values()) < 1e-8

# %% [markdown]
# minirl's `F.attention` is the same backward, plus grouped KV heads: `H`
# query heads share `K = H / G` key/value heads. It reshapes `q` to
# `(B, K, G*T, D)` so that each group's `G` query heads meet their one k/v
# head in a single matmul, and `dk`, `dv` come out summed over the group. With
# `G = 1` it must agree with the plain version above, and with `G = 2` with the
# plain version run on k and v heads repeated twice (Hugging Face's
# `repeat_kv`); the gradient of the repeated heads then sums over each pair.

# %%
out_minirl = F.attention(Tensor(q), Tensor(k), Tensor(v), causal).data
print(f"F.attention vs hand-written, G=1: out error {np.max(np.abs(out_minirl - out)):.2e}")
assert np.allclose(out_minirl, out, rtol=1e-12, atol=1e-14)

G = 2
qg = rng.standard_normal((B, H * G, T, D))  # 4 query heads over 2 k/v heads
tq, tk, tv = (Tensor(a.copy(), requires_grad=True) for a in (qg, k, v))
F.sum(F.reshape(F.attention(tq, tk, tv, causal) * np.repeat(dout, G, axis=1), (-1,))).backward()
k_rep, v_rep = np.repeat(k, G, axis=1), np.repeat(v, G, axis=1)  # repeat_kv: head i reads k/v head i // G
_, cache = attention_forward(qg, k_rep, v_rep, causal)
dq_ref, dk_rep, dv_rep = attention_backward(np.repeat(dout, G, axis=1), cache)
dk_ref = dk_rep.reshape(B, H, G, T, D).sum(axis=2)  # sum the gradients of the G copies
dv_ref = dv_rep.reshape(B, H, G, T, D).sum(axis=2)
for name, got, ref in [("dq", tq.grad, dq_ref), ("dk", tk.grad, dk_ref), ("dv", tv.grad, dv_ref)]:
    diff = np.max(np.abs(got - ref))
    print(f"F.attention G={G} {name} error vs repeat_kv: {diff:.2e}")
    assert diff < 1e-12

errs = check_grad(lambda a, b, c: F.attention(a, b, c, causal), qg, k, v)
print(f"F.attention G={G} gradient check: error {errs:.2e}")
assert errs < 1e-8

# %% [markdown]
# ## What to take away
#
# - The tape adds gradients; it never overwrites them.
# - An op is a forward and a closure: the closure is the chain rule's local factor.
# - Broadcasting is undone once, by summing, in `unbroadcast`.
# - A hand-written backward is only trusted after a float64 central-difference
#   check; values agreeing says nothing about gradients.
# - `tests/test_functional.py` runs this check on every op with random shapes,
#   and `tests/test_functional_torch.py` compares every op with PyTorch.
