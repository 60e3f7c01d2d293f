"""The fast paths give the same bits as their plain references (llm.c's habit: the simple version is the oracle).

`functional.reference_ops()` switches every fused op (rms_norm, rope,
attention, swiglu) to its kept `*_reference` and the tape to plain gradient
sums. Each op is compared on its own, forward and backward, and whole GRPO
runs are compared by the hash of their final weights: any change of the
arithmetic, however small, fails here. (Comparing against a hash recorded on
one machine would not work: another BLAS build gives other bits.)
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from minirl import functional as F
from minirl import runs
from minirl.tensor import Tensor, no_grad
from minirl.train import train


def _same(a: np.ndarray, b: np.ndarray) -> None:
    """Equal dtype, shape and bits (so -0.0 differs from 0.0 and NaNs are compared by payload)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes(), f"max difference {np.max(np.abs(a.astype(np.float64) - b)):.3g}"


def _run_both(fn, *arrays, dtype=np.float32, grad_enabled=True):
    """fn(*Tensors) -> Tensor under the fast path and the reference: outputs and every input gradient."""
    results = []
    for reference in (False, True):
        ts = [Tensor(a.astype(dtype), requires_grad=True) for a in arrays]
        with F.reference_ops() if reference else _nothing():
            if grad_enabled:
                out = fn(*ts)
                dout = np.random.default_rng(7).standard_normal(out.shape).astype(dtype)
                out.backward(dout)
                results.append([out.data] + [t.grad for t in ts])
            else:
                with no_grad():
                    results.append([fn(*ts).data])
    for fast, ref in zip(*results):
        _same(fast, ref)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("grad_enabled", [True, False])
def test_rms_norm_and_swiglu_match_reference(dtype, grad_enabled):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((3, 5, 16)), rng.standard_normal(16)
    _run_both(lambda a, b: F.rms_norm(a, b, 1e-6), x, w, dtype=dtype, grad_enabled=grad_enabled)
    g, u = 4 * rng.standard_normal((3, 5, 24)), rng.standard_normal((3, 5, 24))
    _run_both(F.swiglu, g, u, dtype=dtype, grad_enabled=grad_enabled)


def test_rms_norm_non_contiguous_input_matches_reference():
    x = np.random.default_rng(1).standard_normal((5, 3, 16)).transpose(1, 0, 2)
    _run_both(lambda a, b: F.rms_norm(a.transpose(1, 0, 2), b), x.transpose(1, 0, 2), np.ones(16))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rope_matches_reference_on_a_transposed_view(dtype):
    rng = np.random.default_rng(2)
    B, T, H, D = 3, 6, 4, 8
    cos, sin = F.rope_tables(np.arange(T)[None, None, :].repeat(B, 0), D, dtype=dtype)  # (B, 1, T, D)
    x = rng.standard_normal((B, T, H * D))
    # as the model calls it: a (B, T, H, D) projection seen as (B, H, T, D)
    _run_both(lambda a: F.rope(a.reshape(B, T, H, D).transpose(0, 2, 1, 3), cos, sin), x, dtype=dtype)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("mask_kind", [None, "bool", "bias"])
def test_attention_matches_reference(kv_heads, mask_kind):
    rng = np.random.default_rng(3)
    B, H, T, S, D = 2, 4, 5, 7, 8
    q, k, v = rng.standard_normal((B, H, T, D)), rng.standard_normal((B, kv_heads, S, D)), rng.standard_normal((B, kv_heads, S, D))
    mask = None
    if mask_kind is not None:
        mask = rng.random((B, 1, T, S)) < 0.7
        mask[0, 0, 0] = False  # a row with no allowed key
        if mask_kind == "bias":
            mask = F.mask_bias(mask)
    _run_both(lambda a, b, c: F.attention(a, b, c, mask), q, k, v)


def test_tape_in_place_sums_match_reference():
    # one input used by three ops (as q, k, v share the normed x), an add that hands dout to both parents
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((6, 8)), rng.standard_normal((3, 8, 8))

    def fn(a, b):
        y = F.linear(a, b[0]) + F.linear(a, b[1]) * F.linear(a, b[2])
        return F.add(y, a) + a

    _run_both(fn, x, w)


def _weights_hash(model) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(np.ascontiguousarray(p.data).tobytes())
    return h.hexdigest()


def _train(reference: bool, **overrides):
    spec = runs.resolve("grpo", **overrides)
    policy, _ref, algo = runs.build(spec)
    with F.reference_ops() if reference else _nothing():
        result = train(policy, algo, spec["train"], spec["optimizer"], progress=False)
    return _weights_hash(policy), [m["loss"] for m in result.history], [m["reward"] for m in result.history]


@pytest.mark.parametrize("overrides", [
    dict(steps=3, num_prompts=8),  # the default recipe (bf16 storage, dapo, beta 0), fewer prompts
    dict(steps=2, num_prompts=6, precision="fp32", beta=0.04, num_iterations=2, temperature=0.7),  # ref and old logp
], ids=["default", "fp32-kl-mu2"])
def test_grpo_run_is_bitwise_identical_to_the_reference(overrides):
    fast, ref = _train(False, **overrides), _train(True, **overrides)
    assert fast[1] == ref[1] and fast[2] == ref[2]
    assert fast[0] == ref[0]
