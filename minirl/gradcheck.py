"""Gradient checking: the analytic gradient against central finite differences.

HIPS/autograd's `check_grads` idea: compare the tape's gradient with a
float64 central difference along a random direction, which checks every
entry of the gradient at the cost of two extra forward passes.
"""

from __future__ import annotations

import numpy as np

from minirl.tensor import Tensor


def numerical_directional(f, arrays: list[np.ndarray], directions: list[np.ndarray], h: float = 1e-6) -> float:
    """(f(x + h v) - f(x - h v)) / 2h for a scalar function f of arrays."""
    plus = [a + h * d for a, d in zip(arrays, directions)]
    minus = [a - h * d for a, d in zip(arrays, directions)]
    return (_scalar(f, plus) - _scalar(f, minus)) / (2 * h)


def _scalar(f, arrays) -> float:
    out = f(*[Tensor(a) for a in arrays])
    return float(np.sum(out.data))


def check_grad(f, *arrays: np.ndarray, seed: int = 0, h: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-7) -> float:
    """Assert the tape's gradient of sum(f(*tensors)) matches finite differences; return the abs error.

    `arrays` must be float64. The output is reduced with a random linear
    functional, so every output entry's gradient is exercised.
    """
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    probe = None

    def g(*tensors):
        nonlocal probe
        out = f(*tensors)
        if probe is None:
            probe = rng.standard_normal(out.shape)
        return (out * probe).sum()

    tensors = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    g(*tensors).backward()
    directions = [rng.standard_normal(a.shape) for a in arrays]
    analytic = float(np.sum([np.sum(t.grad * d) for t, d in zip(tensors, directions)]))
    numeric = numerical_directional(g, arrays, directions, h)
    err = abs(analytic - numeric)
    if err > atol + rtol * abs(numeric):
        raise AssertionError(f"gradient mismatch: analytic {analytic:.10g} vs numeric {numeric:.10g} (error {err:.3g})")
    return err
