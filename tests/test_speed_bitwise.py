"""The fast paths give the same bits as their plain references (llm.c's habit: the simple version is the oracle).

`functional.reference_ops()` switches every fused op (rms_norm, rope,
attention, swiglu) to its kept `*_reference` and the tape to plain gradient
sums. The fast side runs under `functional.exact_ops()`, which switches off
only the fast paths that round differently (row sums as a matmul; those are
compared within float32 rounding in `tests/test_speed_fused.py`). Each op is
compared on its own, forward and backward, and whole GRPO runs are compared
by the hash of their final weights: any change of the arithmetic, however
small, fails here. (Comparing against a hash recorded on
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


def _blas_rows_independent() -> bool:
    """Whether this machine's BLAS gives each row of x @ W.T the same bits whatever rows come with it, once
    rows x width >= SAME_ROWS_MIN: what `model.prefill` needs for its folded repeats to equal the whole batch's
    bits (OpenBLAS on x86: yes; its small-matrix kernel, which differs, stops at M*N = 1200). Another BLAS may
    not: there the folded prefill is as valid, with other rounding, and the bitwise tests below are skipped."""
    from minirl.model import SAME_ROWS_MIN

    rng = np.random.default_rng(5)
    for width, inner in ((52, 64), (64, 64), (176, 64), (64, 176), (8, 64)):
        w = rng.standard_normal((width, inner)).astype(np.float32)
        x = rng.standard_normal((4 * SAME_ROWS_MIN // width + 64, inner)).astype(np.float32)
        full = x @ w.T
        for rows in (-(-SAME_ROWS_MIN // width), SAME_ROWS_MIN // width + 7, len(x) // 4, len(x) // 2):
            for start in (0, 3):
                if (x[start:start + rows] @ w.T).tobytes() != full[start:start + rows].tobytes():
                    return False
    return True


ROWS_INDEPENDENT = _blas_rows_independent()
needs_row_independent_blas = pytest.mark.skipif(
    not ROWS_INDEPENDENT, reason="this BLAS gives a row other bits in a smaller batch: the folded prefill rounds "
                                 "differently from the whole batch here (valid, not bitwise equal)")


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
        with F.reference_ops() if reference else F.exact_ops():
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
    with F.reference_ops() if reference else F.exact_ops():
        result = train(policy, algo, spec["train"], spec["optimizer"], progress=False)
    return _weights_hash(policy), [m["loss"] for m in result.history], [m["reward"] for m in result.history]


@needs_row_independent_blas
@pytest.mark.parametrize("overrides", [
    dict(steps=3, num_prompts=8),  # the default recipe (bf16 storage, dapo, beta 0), fewer prompts
    dict(steps=2),  # the default recipe itself: 48 prompts x 4, the prefill once per distinct prompt
    dict(steps=2, num_prompts=6, precision="fp32", beta=0.04, num_iterations=2, temperature=0.7),  # ref and old logp
], ids=["default-8-prompts", "default", "fp32-kl-mu2"])
def test_grpo_run_is_bitwise_identical_to_the_reference(overrides):
    fast, ref = _train(False, **overrides), _train(True, **overrides)
    assert fast[1] == ref[1] and fast[2] == ref[2]
    assert fast[0] == ref[0]


def _generation(model, prompts, reference: bool, **kwargs):
    with F.reference_ops() if reference else F.exact_ops():
        gen = model.generate(prompts, **kwargs)
    return [gen.tokens, gen.attention_mask, gen.completion_mask, gen.logprobs]


def test_the_blas_probe_can_tell_rows_apart():
    """The probe compares bytes: a single flipped bit in one row makes it say no."""
    a = np.ones((3, 4), dtype=np.float32)
    b = a.copy()
    b[1, 2] = np.nextafter(np.float32(1), np.float32(2))
    assert a.tobytes() != b.tobytes() and isinstance(ROWS_INDEPENDENT, bool)


@needs_row_independent_blas
@pytest.mark.parametrize("num_prompts,group", [(48, 4), (32, 8), (3, 4)], ids=["default", "32x8", "too-few-rows"])
def test_sampling_repeated_prompts_is_bitwise_identical_to_the_whole_batch(num_prompts, group):
    # the default GRPO rollout's prompts, each repeated G times: the prefill runs once per distinct prompt
    from minirl.loading import load
    from minirl.tasks import encode_chat, resolve_task

    model = load("sft")
    task, rng = resolve_task("add"), np.random.default_rng(3)
    prompts = [encode_chat(model.tokenizer, ex.prompt)[0] for ex in (task.sample(rng) for _ in range(num_prompts))
               for _ in range(group)]
    for kwargs in (dict(greedy=True), dict(temperature=1.0), dict(temperature=0.7, top_k=5)):
        fast, ref = (_generation(model, prompts, reference, max_new_tokens=6, rng=np.random.default_rng(9),
                                 **kwargs) for reference in (False, True))
        for a, b in zip(fast, ref):
            _same(a, b)


@needs_row_independent_blas
@pytest.mark.parametrize("value_head", [False, True], ids=["policy", "ppo-policy"])
def test_prefill_runs_repeats_once_and_copies_the_cache(value_head):
    from minirl.loading import load
    from minirl.model import KVCache, left_pad, prefill

    model = load("sft", value_head=value_head or None)  # a (1, C) value head is no part of the forward
    rng = np.random.default_rng(4)
    distinct = [[model.tokenizer.bos_id] + rng.integers(3, 40, rng.integers(5, 12)).tolist() for _ in range(40)]
    prompts = [distinct[i] for i in rng.integers(0, 40, 160)]  # repeats in any order, every length padded
    ids, mask = left_pad(prompts, model.tokenizer.pad_id)
    calls = []
    original = type(model).__call__
    type(model).__call__ = lambda self, *a, **k: calls.append(a[0].shape) or original(self, *a, **k)
    try:
        with no_grad():
            logits, cache = prefill(model, ids, mask, ids.shape[1] + 5)
    finally:
        type(model).__call__ = original
    assert calls == [(len({tuple(p) for p in prompts}), ids.shape[1])]  # one forward, of the distinct prompts
    whole = KVCache(model.config, len(prompts), ids.shape[1] + 5)
    with no_grad():
        _same(logits, model(ids, mask, whole).data[:, -1])
    assert cache.length == whole.length == ids.shape[1]
    for layer in range(model.config.num_hidden_layers):
        _same(cache.k[layer], whole.k[layer])
        _same(cache.v[layer], whole.v[layer])


@pytest.mark.parametrize("config", [dict(), dict(hidden_size=96, num_attention_heads=2, num_key_value_heads=2,
                                                 max_position_embeddings=300, rope_theta=500000.0)],
                         ids=["default", "d48-theta5e5"])
def test_rope_lookup_matches_rope_tables(config):
    # every position, in the shapes generation and training ask for: a table entry is computed alone
    from minirl.model import TransformerConfig, rope_lookup

    cfg = TransformerConfig(**config)
    rng = np.random.default_rng(6)
    every = np.arange(cfg.max_position_embeddings)
    for positions in (every, every[::-1].reshape(-1, 1, 1), rng.integers(0, cfg.max_position_embeddings, (48, 1, 13)),
                      rng.integers(0, cfg.max_position_embeddings, (192, 1, 1))):
        for fast, ref in zip(rope_lookup(positions, cfg), F.rope_tables(positions, cfg.head_dim, cfg.rope_theta)):
            _same(fast, ref)
