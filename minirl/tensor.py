"""Tensor: a NumPy array on a tape, and reverse-mode autodiff over that tape.

The design is micrograd's (github.com/karpathy/micrograd, engine.py) grown to
arrays: every op makes an output Tensor that remembers its parents and a
closure mapping the output's gradient to its parents' gradients. The ops
themselves, each forward beside its backward, live in `functional.py`.

Two of micrograd's known pitfalls are handled here, once:
- a node used twice receives the *sum* of its gradients (we accumulate, never
  overwrite);
- calling `backward()` twice accumulates into the leaves' `.grad` exactly as
  PyTorch does (intermediate gradients are recomputed from scratch each call,
  so nothing is counted twice).
Broadcasting is undone once, in `unbroadcast` (HIPS/autograd's approach), not
in every op.
"""

from __future__ import annotations

import contextlib

import numpy as np

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Run ops without recording them on the tape (rollouts, evaluation)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    """True unless inside `no_grad()`."""
    return _grad_enabled


def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum `grad` down to `shape`, undoing NumPy broadcasting."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


class Tensor:
    """An ndarray with an optional gradient and a place on the tape."""

    __slots__ = ("data", "grad", "requires_grad", "_prev", "_backward", "name", "__weakref__")
    __array_priority__ = 1000  # make `ndarray * Tensor` call Tensor.__rmul__

    def __init__(self, data, requires_grad: bool = False, name: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        if isinstance(data, np.generic):  # a NumPy scalar (0-d op results) keeps its dtype
            data = np.asarray(data)
        elif not isinstance(data, np.ndarray):
            data = np.asarray(data)
            if data.dtype == np.float64:  # Python floats default to float32
                data = data.astype(np.float32)
        if requires_grad and data.dtype.kind != "f":
            raise ValueError(f"requires_grad needs a floating-point tensor, got dtype {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self._prev = ()
        self._backward = None
        self.name = name

    # ----------------------------------------------------------- properties
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def T(self) -> "Tensor":
        return self.transpose()

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.data!r}{grad})"

    def item(self) -> float:
        return self.data.item()

    def numpy(self) -> np.ndarray:
        return self.data

    def detach(self) -> "Tensor":
        """The same values, cut from the tape."""
        return Tensor(self.data)

    # ------------------------------------------------------------- autodiff
    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's `.grad` that requires it."""
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no parameter with requires_grad=True led to it, or it was made under no_grad())")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar, got shape {self.shape}")
            grad = np.ones_like(self.data)
        grad = np.asarray(grad, dtype=self.data.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"gradient shape {grad.shape} does not match tensor shape {self.shape}")

        # 1) topological order by an iterative depth-first search (no recursion limit)
        order, visited, stack = [], set(), [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            for parent in node._prev:
                if parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))

        # 2) walk it backwards, summing the gradients each node receives. A sum made here is the
        # tape's own array, so the next gradient for that node is added into it in place (the same
        # a + b, without a new array); an op's gradient may be shared (add returns dout twice), so
        # it is never written to.
        grads = {id(self): grad}
        owned = set()  # ids of the nodes whose gradient array the tape made
        inplace = not F._reference  # functional.reference_ops(): the plain sums, the tests' oracle
        for node in reversed(order):
            key = id(node)
            g = grads.pop(key, None)
            if g is None:
                continue
            if node._backward is None:  # a leaf: accumulate like torch
                if node.grad is not None:
                    node.grad = node.grad + g
                else:
                    node.grad = g if inplace and key in owned else g.copy()
                continue
            for parent, pg in zip(node._prev, node._backward(g)):
                if pg is None or not parent.requires_grad:
                    continue
                pg = unbroadcast(pg, parent.data.shape)
                key = id(parent)
                if key not in grads:
                    grads[key] = pg
                elif inplace and key in owned and grads[key].dtype == np.result_type(grads[key], pg):
                    grads[key] += pg
                else:
                    grads[key] = grads[key] + pg
                    owned.add(key)

    # ----------------------------------------------------- operator sugar
    def __add__(self, other):
        return F.add(self, other)

    def __radd__(self, other):
        return F.add(other, self)

    def __sub__(self, other):
        return F.sub(self, other)

    def __rsub__(self, other):
        return F.sub(other, self)

    def __mul__(self, other):
        return F.mul(self, other)

    def __rmul__(self, other):
        return F.mul(other, self)

    def __truediv__(self, other):
        return F.div(self, other)

    def __rtruediv__(self, other):
        return F.div(other, self)

    def __neg__(self):
        return F.neg(self)

    def __pow__(self, exponent):
        return F.pow(self, exponent)

    def __matmul__(self, other):
        return F.matmul(self, other)

    def __rmatmul__(self, other):
        return F.matmul(other, self)

    def __getitem__(self, index):
        return F.getitem(self, index)

    def sum(self, axis=None, keepdims=False):
        return F.sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return F.mean(self, axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return F.max(self, axis, keepdims)

    def exp(self):
        return F.exp(self)

    def log(self):
        return F.log(self)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return F.reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return F.transpose(self, axes or None)


from minirl import functional as F  # noqa: E402  (functional needs Tensor defined first)
