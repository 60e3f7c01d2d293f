"""Tests for minirl.merging.online: OnDARE, OnTIES, step-K, EMA, ChildTuning, the config factories, resume."""

import json
import math

import numpy as np
import pytest

from minirl.merging.online import (EMA, ChildTuning, OnDARE, OnTIES, dare_filter, merge_ratio, reference_delta,
                                   sign_consensus, topk_filter)
from minirl.optim import AdamW, OptimizerConfig, make_optimizer


class P:
    """Stand-in parameter: .data (float32) and .grad."""

    def __init__(self, data):
        self.data = np.array(data, dtype=np.float32)
        self.grad = None


SHAPES = {"a.weight": (6, 5), "b.weight": (7,), "c.weight": (2, 3, 4)}


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return [(n, P(rng.standard_normal(s))) for n, s in SHAPES.items()]


def make_ref(seed=2, scale=0.5):
    rng = np.random.default_rng(seed)
    return {n: (scale * rng.standard_normal(s)).astype(np.float32) for n, s in SHAPES.items()}


def grad_sequence(n, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(np.float32) for s in SHAPES.values()] for _ in range(n)]


def set_grads(params, gs):
    for (_, p), g in zip(params, gs):
        p.grad = g.copy()


def weights(params):
    return [p.data.copy() for _, p in params]


class Recorder(AdamW):
    """AdamW that records each parameter's raw delta (with wd = 0 it depends only on the grads)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.deltas = []

    def transform_delta(self, i, name, delta):
        if i == 0:
            self.deltas.append([])
        self.deltas[-1].append(delta.copy())
        return delta


def adamw_deltas(grads, lr=1e-2):
    """The AdamW deltas of each step for `grads` (a parameter-independent sequence when wd = 0)."""
    params = make_params()
    rec = Recorder(params, lr=lr, weight_decay=0.0)
    for gs in grads:
        set_grads(params, gs)
        rec.step()
    return rec.deltas


def ties_by_hand(delta, ref, p, alpha):
    """Top-p trim of delta (k = max(1, int(p n)), ref trimmed likewise), vote sign(ref + delta), merge."""
    def trim(x):
        k = max(1, int(p * x.size))
        order = sorted(range(x.size), key=lambda j: (-abs(float(x.flat[j])), j))
        out = np.zeros_like(x)
        out.flat[order[:k]] = x.flat[order[:k]]
        return out
    d, r = trim(delta), trim(ref)
    sign = np.where(r + d >= 0, 1.0, -1.0)
    d = np.where(np.sign(d) == sign, d, 0)
    r = np.where(np.sign(r) == sign, r, 0)
    return ((1 - alpha) * d + alpha * r).astype(np.float32)


# -- special cases --------------------------------------------------------------------------
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_ondare_alpha0_p1_is_adamw_bitwise(wd):
    grads = grad_sequence(8)
    pa, pb = make_params(), make_params()
    adam = AdamW(pa, lr=1e-2, weight_decay=wd)
    dare = OnDARE(pb, lr=1e-2, weight_decay=wd, ref_delta=make_ref(), reserve_rate=1.0, alpha=0.0)
    for gs in grads:
        set_grads(pa, gs)
        set_grads(pb, gs)
        adam.step()
        dare.step()
    for (_, a), (_, b) in zip(pa, pb):
        assert np.array_equal(a.data, b.data)


def test_ondare_alpha0_is_dropout_of_the_adamw_step():
    grads, p = grad_sequence(10), 0.3
    deltas = adamw_deltas(grads)
    params = make_params()
    opt = OnDARE(params, lr=1e-2, weight_decay=0.0, ref_delta=make_ref(), reserve_rate=p, alpha=0.0)
    kept = total = 0
    for gs, ds in zip(grads, deltas):
        before = weights(params)
        set_grads(params, gs)
        opt.step()
        for w0, (_, prm), d in zip(before, params, ds):
            moved = prm.data == w0 + d
            assert np.all(moved | (prm.data == w0))  # every entry: the AdamW step or nothing
            kept, total = kept + int(np.sum(moved & (d != 0))), total + d.size
    sigma = math.sqrt(total * p * (1 - p))
    print(f"kept {kept}/{total}, expected {p * total:.0f} ± {sigma:.1f}")
    assert abs(kept - p * total) < 6 * sigma


# -- step-K ------------------------------------------------------------------------------
def test_k1_is_online_merging_step_by_step():
    grads, alpha, ref = grad_sequence(6), 0.3, make_ref()
    deltas = adamw_deltas(grads)
    # OnDARE with p = 1: θ_t = θ_{t-1} + (1 - α) Δθ_t + α τ_r every step
    params = make_params()
    expect = weights(params)
    opt = OnDARE(params, lr=1e-2, weight_decay=0.0, ref_delta=ref, reserve_rate=1.0, alpha=alpha, merge_every=1)
    for gs, ds in zip(grads, deltas):
        set_grads(params, gs)
        opt.step()
        for w, d, r in zip(expect, ds, ref.values()):
            w += (1 - alpha) * d + alpha * r
        for w, (_, prm) in zip(expect, params):
            np.testing.assert_allclose(prm.data, w, rtol=0, atol=1e-6)
    assert all("merge_acc" not in st for st in opt.state)  # K = 1 keeps no Δc
    # OnTIES: the TIES merge of each single step
    params = make_params()
    expect = weights(params)
    opt = OnTIES(params, lr=1e-2, weight_decay=0.0, ref_delta=ref, reserve_rate=0.4, alpha=alpha, merge_every=1)
    for gs, ds in zip(grads, deltas):
        set_grads(params, gs)
        opt.step()
        for w, d, r in zip(expect, ds, ref.values()):
            w += ties_by_hand(d, r, 0.4, alpha)
    for w, (_, prm) in zip(expect, params):
        np.testing.assert_allclose(prm.data, w, rtol=0, atol=1e-6)


@pytest.mark.parametrize("K,T", [(6, 6), (3, 6)])
def test_step_k_merges_the_accumulated_delta(K, T):
    """K = T: the offline TIES merge of the whole run's delta; K = 3, T = 6: two merges of three steps each."""
    grads, alpha, p, ref = grad_sequence(T), 0.3, 0.4, make_ref()
    deltas = adamw_deltas(grads)
    params = make_params()
    w0 = weights(params)
    opt = OnTIES(params, lr=1e-2, weight_decay=0.0, ref_delta=ref, reserve_rate=p, alpha=alpha, merge_every=K)
    expect = [w.copy() for w in w0]
    for t, gs in enumerate(grads, start=1):
        set_grads(params, gs)
        opt.step()
        block = deltas[(t - 1) // K * K:t]
        if t % K:  # plain AdamW steps since the last merge
            for w, (_, prm), *ds in zip(expect, params, *block):
                np.testing.assert_allclose(prm.data, w + sum(ds), rtol=0, atol=1e-6)
        else:
            for j, (w, r) in enumerate(zip(expect, ref.values())):
                w += ties_by_hand(sum(step[j] for step in block), r, p, alpha)
            for w, (_, prm) in zip(expect, params):
                np.testing.assert_allclose(prm.data, w, rtol=0, atol=1e-6)
    assert not np.array_equal(expect[0], w0[0] + sum(d[0] for d in deltas))  # the merge did something


def test_step_k_equal_to_T_with_ondare_p1_is_linear_merge():
    grads, alpha, ref = grad_sequence(5), 0.25, make_ref()
    deltas = adamw_deltas(grads)
    params = make_params()
    w0 = weights(params)
    opt = OnDARE(params, lr=1e-2, weight_decay=0.0, ref_delta=ref, reserve_rate=1.0, alpha=alpha, merge_every=5)
    for gs in grads:
        set_grads(params, gs)
        opt.step()
    for j, (w, (_, prm), r) in enumerate(zip(w0, params, ref.values())):
        total = sum(d[j] for d in deltas)
        np.testing.assert_allclose(prm.data, w + (1 - alpha) * total + alpha * r, rtol=0, atol=1e-6)
    assert all(np.all(st["merge_acc"] == 0) for st in opt.state)


# -- the sparsifiers and the vote on hand-made tensors ------------------------------------------
def test_topk_filter_hand_made():
    x = np.array([3.0, -1.0, 2.0, -3.0, 0.5], dtype=np.float32)
    np.testing.assert_array_equal(topk_filter(x, 0.4), [3, 0, 0, -3, 0])  # k = 2
    np.testing.assert_array_equal(topk_filter(x, 0.2), [3, 0, 0, 0, 0])  # k = 1: a magnitude tie keeps the lower index
    np.testing.assert_array_equal(topk_filter(x, 0.1), [3, 0, 0, 0, 0])  # int(0.5) = 0: still one kept
    np.testing.assert_array_equal(topk_filter(x, 0.6), [3, 0, 2, -3, 0])
    np.testing.assert_allclose(topk_filter(x, 0.4, "l1"), np.array([3, 0, 0, -3, 0]) * 9.5 / 6, rtol=1e-6)
    assert topk_filter(x, 1.0) is x


def test_sign_consensus_hand_made():
    ref = np.array([1.0, -1.0, 0.0, 2.0, -0.5, 0.0], dtype=np.float32)
    delta = np.array([-1.0, -2.0, 0.0, -3.0, 0.5, -1.0], dtype=np.float32)
    # sums: 0 (tie -> +), -3, 0 (+), -1, 0 (+), -1
    r, d = sign_consensus(ref, delta)
    np.testing.assert_array_equal(r, [1, -1, 0, 0, 0, 0])
    np.testing.assert_array_equal(d, [0, -2, 0, -3, 0.5, -1])


def test_onties_merge_on_hand_made_tensors():
    ref = {"w": np.array([1.0, -1.0, 0.0, 2.0, -0.5, 0.0], dtype=np.float32)}
    delta = np.array([-1.0, -2.0, 0.0, -3.0, 0.5, -1.0], dtype=np.float32)
    opt = OnTIES([("w", P(np.zeros(6)))], ref_delta=ref, reserve_rate=1.0, alpha=0.25)
    np.testing.assert_allclose(opt.merge(0, delta), [0.25, -1.75, 0, -2.25, 0.375, -0.75], rtol=1e-7)
    # trim to k = int(0.5 * 6) = 3 first: ref keeps 2, 1, -1; delta keeps -3, -2 and, of the two
    # magnitude-1 entries at indices 0 and 5, the lower index 0
    opt = OnTIES([("w", P(np.zeros(6)))], ref_delta=ref, reserve_rate=0.5, alpha=0.25)
    np.testing.assert_array_equal(opt.ref_filtered[0], [1, -1, 0, 2, 0, 0])
    np.testing.assert_array_equal(opt.filter(delta), [-1, -2, 0, -3, 0, 0])
    # sums: 0 (+), -3, 0, -1, 0, 0 -> ref keeps 1, -1 (drops 2); delta keeps -2, -3 (drops -1 at index 0)
    np.testing.assert_allclose(opt.merge(0, delta), [0.25, -1.75, 0, -2.25, 0, 0], rtol=1e-7)


def test_dare_inverse_p_is_unbiased():
    """Mean of F_R(x) over N masks: within 6 standard deviations of x, per entry (exact Bernoulli variance)."""
    N, p = 20000, 0.3
    x = np.random.default_rng(0).standard_normal(40).astype(np.float32)
    out = dare_filter(np.broadcast_to(x, (N, x.size)).copy(), p, "inverse_p", np.random.default_rng(1))
    kept_values = out[out != 0].reshape(-1)
    np.testing.assert_allclose(kept_values, np.broadcast_to(x / np.float32(p), (N, x.size))[out != 0], rtol=1e-6)
    mean = out.mean(axis=0, dtype=np.float64)
    sigma = np.abs(x) * math.sqrt((1 - p) / (p * N))  # Var F_R(x)_j = x_j^2 (1 - p) / p per draw
    print(f"max |mean - x| / sigma = {np.max(np.abs(mean - x) / sigma):.2f}")
    assert np.all(np.abs(mean - x) <= 6 * sigma)
    # without the rescale the mean is p x, which is 100+ sigma away from x
    plain = dare_filter(np.broadcast_to(x, (N, x.size)).copy(), p, "none", np.random.default_rng(1))
    assert np.all(np.abs(plain.mean(axis=0) - p * x) <= 6 * p * sigma)
    # "l1" keeps the input's L1 norm exactly
    one = dare_filter(x, p, "l1", np.random.default_rng(3))
    assert math.isclose(np.abs(one).sum(), np.abs(x).sum(), rel_tol=1e-6)


def test_dare_fixed_mask_for_ref_and_fresh_masks_for_steps():
    ref = make_ref()
    opt = OnDARE(make_params(), ref_delta=ref, reserve_rate=0.5, alpha=0.1, seed=7)
    again = OnDARE(make_params(), ref_delta=ref, reserve_rate=0.5, alpha=0.1, seed=7)
    other = OnDARE(make_params(), ref_delta=ref, reserve_rate=0.5, alpha=0.1, seed=8)
    for a, b, c, r in zip(opt.ref_filtered, again.ref_filtered, other.ref_filtered, ref.values()):
        assert np.array_equal(a, b)  # a function of the seed
        assert np.all((a == r) | (a == 0))  # rescale "none": kept entries unchanged
    assert not all(np.array_equal(a, c) for a, c in zip(opt.ref_filtered, other.ref_filtered))
    x = np.ones((50,), dtype=np.float32)
    masks = [opt.filter(x, opt.rng) for _ in range(2)]
    assert not np.array_equal(masks[0], masks[1])


# -- baselines -----------------------------------------------------------------------------
def test_ema_is_an_average_of_the_adamw_iterate():
    grads, d = grad_sequence(6), 0.8
    deltas = adamw_deltas(grads)
    params = make_params()
    iterate, avg = weights(params), weights(params)
    opt = EMA(params, lr=1e-2, weight_decay=0.0, ema_decay=d)
    for gs, ds in zip(grads, deltas):
        set_grads(params, gs)
        opt.step()
        for it, a, delta in zip(iterate, avg, ds):
            it += delta
            a[...] = d * a + (1 - d) * it
        for a, it, (_, prm), st in zip(avg, iterate, params, opt.state):
            np.testing.assert_allclose(prm.data, a, rtol=0, atol=1e-6)
            np.testing.assert_allclose(st["iterate"], it, rtol=0, atol=1e-6)


def test_ema_decay0_is_adamw():
    grads = grad_sequence(5)
    pa, pb = make_params(), make_params()
    adam, ema = AdamW(pa, lr=1e-2, weight_decay=0.1), EMA(pb, lr=1e-2, weight_decay=0.1, ema_decay=0.0)
    for gs in grads:
        set_grads(pa, gs)
        set_grads(pb, gs)
        adam.step()
        ema.step()
    for (_, a), (_, b) in zip(pa, pb):
        np.testing.assert_allclose(b.data, a.data, rtol=0, atol=1e-6)


def test_childtuning_masks_the_gradient():
    grads, p = grad_sequence(1), 0.25
    params = make_params()
    opt = ChildTuning(params, lr=1e-2, weight_decay=0.0, reserve_rate=p)
    set_grads(params, grads[0])
    opt.step()
    for g, st in zip(grads[0], opt.state):
        m = st["exp_avg"]  # (1 - beta1) * the masked, 1/p-rescaled gradient
        kept = m != 0
        np.testing.assert_allclose(m[kept], 0.1 * g[kept] / p, rtol=1e-6)
        assert 0 < kept.sum() < g.size
    # p = 1 is AdamW, bit for bit
    pa, pb = make_params(), make_params()
    adam, child = AdamW(pa, lr=1e-2), ChildTuning(pb, lr=1e-2, reserve_rate=1.0)
    for gs in grad_sequence(4):
        set_grads(pa, gs)
        set_grads(pb, gs)
        adam.step()
        child.step()
    assert all(np.array_equal(a.data, b.data) for (_, a), (_, b) in zip(pa, pb))


# -- validation -----------------------------------------------------------------------------
REF = make_ref()


@pytest.mark.parametrize("make,field", [
    (lambda ps: OnDARE(ps, ref_delta=REF, reserve_rate=0.0), "reserve_rate"),
    (lambda ps: OnDARE(ps, ref_delta=REF, reserve_rate=1.5), "reserve_rate"),
    (lambda ps: OnDARE(ps, ref_delta=REF, alpha=-1e-3), "alpha"),
    (lambda ps: OnTIES(ps, ref_delta=REF, alpha=1.5), "alpha"),
    (lambda ps: OnDARE(ps, ref_delta=REF, merge_every=0), "merge_every"),
    (lambda ps: OnDARE(ps, ref_delta=REF, merge_every=2.5), "merge_every"),
    (lambda ps: OnDARE(ps, ref_delta=REF, rescale="inverse"), "rescale"),
    (lambda ps: OnTIES(ps, ref_delta=REF, rescale="inverse_p"), "rescale"),
    (lambda ps: OnDARE(ps, ref_delta=REF, seed=-1), "seed"),
    (lambda ps: OnDARE(ps, ref_delta={k: v for k, v in REF.items() if k != "b.weight"}), "ref_delta"),
    (lambda ps: OnTIES(ps, ref_delta={**REF, "z.weight": np.zeros(2)}), "ref_delta"),
    (lambda ps: OnDARE(ps, ref_delta={**REF, "b.weight": np.zeros(8)}), "ref_delta"),
    (lambda ps: EMA(ps, ema_decay=1.0), "ema_decay"),
    (lambda ps: ChildTuning(ps, reserve_rate=0.0), "reserve_rate"),
])
def test_bad_values_name_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make(make_params())


@pytest.mark.parametrize("kwargs,field", [
    (dict(reserve_rate=0.0), "reserve_rate"),
    (dict(merge_weight=-1e-7), "merge_weight"),
    (dict(merge_every=0), "merge_every"),
    (dict(merge_rescale="inverse"), "merge_rescale"),
    (dict(optimizer="onties", merge_rescale="inverse_p"), "merge_rescale"),
    (dict(ema_decay=1.0), "ema_decay"),
    (dict(merge_ref=""), "merge_ref"),
    (dict(mask_seed=-1), "mask_seed"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        OptimizerConfig(**kwargs)


# -- building from a config -------------------------------------------------------------------
@pytest.fixture
def fake_models(monkeypatch):
    """merge_base/merge_ref names resolved to small in-memory weights instead of checkpoints."""
    base = make_ref(seed=10)
    models = {"B": base, "S": {n: base[n] + v for n, v in make_ref(seed=11, scale=0.01).items()}}
    loaded = []

    def fake(name):
        loaded.append(name)
        return models[name]

    monkeypatch.setattr("minirl.merging.online._model_weights", fake)
    return models, loaded


def test_make_optimizer_builds_ondare_with_tau_r(fake_models):
    models, loaded = fake_models
    cfg = OptimizerConfig(optimizer="ondare", lr=1e-4, merge_base="B", merge_ref="S", reserve_rate=0.2,
                          merge_weight=1e-3, merge_every=2, merge_rescale="l1", mask_seed=5)
    opt = make_optimizer(make_params(), cfg)
    assert isinstance(opt, OnDARE) and loaded == ["B", "S"]
    assert (opt.lr, opt.reserve_rate, opt.alpha, opt.merge_every, opt.rescale, opt.seed) == (1e-4, 0.2, 1e-3, 2, "l1", 5)
    for n in SHAPES:
        np.testing.assert_array_equal(opt.ref_delta[n], models["S"][n] - models["B"][n])
    onties = make_optimizer(make_params(), OptimizerConfig(optimizer="onties", merge_base="B", merge_ref="S"))
    assert isinstance(onties, OnTIES) and onties.reserve_rate == OptimizerConfig.reserve_rate
    loaded.clear()
    assert isinstance(make_optimizer(make_params(), OptimizerConfig(optimizer="ema", ema_decay=0.9)), EMA)
    assert isinstance(make_optimizer(make_params(), OptimizerConfig(optimizer="childtuning")), ChildTuning)
    assert loaded == []  # only online merging loads models


def test_make_optimizer_refuses_lora_and_handles_heads(fake_models):
    lora = [("model.layers.0.self_attn.q_proj.lora_A.weight", P(np.zeros((2, 4))))]
    with pytest.raises(ValueError, match="full fine-tuning"):
        make_optimizer(lora, OptimizerConfig(optimizer="ondare", merge_base="B", merge_ref="S"))
    head = make_params() + [("value_head.weight", P(np.ones((1, 3))))]  # in neither model: τ_r = 0
    opt = make_optimizer(head, OptimizerConfig(optimizer="onties", merge_base="B", merge_ref="S"))
    assert np.array_equal(opt.ref_delta["value_head.weight"], np.zeros((1, 3)))
    models, _ = fake_models
    models["S"] = {**models["S"], "value_head.weight": np.ones((1, 3), dtype=np.float32)}  # in one only
    with pytest.raises(ValueError, match="merge_base"):
        make_optimizer(head, OptimizerConfig(optimizer="onties", merge_base="B", merge_ref="S"))


def test_reference_delta_from_saved_checkpoints(tmp_path):
    from minirl.loading import save_model
    from minirl.model import Transformer, TransformerConfig
    from minirl.tasks import CharTokenizer

    tok = CharTokenizer()
    config = TransformerConfig(vocab_size=tok.vocab_size, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=2)
    base, sft = Transformer(config, seed=0, tokenizer=tok), Transformer(config, seed=1, tokenizer=tok)
    save_model(tmp_path / "base", base, "fp32")
    save_model(tmp_path / "sft", sft, "fp32")
    params = list(sft.named_parameters())
    opt = make_optimizer(params, OptimizerConfig(optimizer="ondare", merge_base=str(tmp_path / "base"),
                                                 merge_ref=str(tmp_path / "sft")))
    want = {n: sft_p.data - b.data for (n, sft_p), (_, b) in zip(params, base.named_parameters())}
    for n, v in want.items():
        np.testing.assert_array_equal(opt.ref_delta[n], v)
    same = reference_delta(params, str(tmp_path / "base"), str(tmp_path / "base"))
    assert not any(v.any() for v in same.values())


# -- scale matching --------------------------------------------------------------------------
def test_merge_ratio():
    assert merge_ratio(0.5, np.full(4, 2.0), np.full(9, 0.5)) == 2.0
    ref = {"a": np.full(3, 3.0), "b": np.full(1, -3.0)}
    assert math.isclose(merge_ratio(1e-3, ref, {"a": np.full(2, 1e-3)}), 3.0)
    assert merge_ratio(1.0, ref, np.zeros(3)) == math.inf and merge_ratio(0.0, ref, np.zeros(3)) == 0.0


def test_default_alpha_matches_the_papers_ratio_on_the_shipped_models():
    """α · rms(τ_r) / lr at the presets' lr 1e-4: the paper's 1e-7 · 1e-3 / 1e-6 = 1e-4, within a factor 3."""
    from minirl.loading import load

    try:
        params = list(load("sft").named_parameters())
    except FileNotFoundError:
        pytest.skip("shipped models missing")
    tau = reference_delta(params, "base", "sft")
    ratio = merge_ratio(OptimizerConfig.merge_weight, tau, np.full(10, 1e-4))  # an Adam step ≈ lr per weight
    print(f"paper 1e-4, minirl {ratio:.2e}")
    assert 1e-4 / 3 < ratio < 3e-4


# -- resume -----------------------------------------------------------------------------------
def _build(kind, params, precision):
    common = dict(lr=1e-2, weight_decay=0.1, precision=precision)
    if kind == "ondare":
        return OnDARE(params, **common, ref_delta=make_ref(), reserve_rate=0.5, alpha=0.2, merge_every=3, seed=3)
    if kind == "onties":
        return OnTIES(params, **common, ref_delta=make_ref(), reserve_rate=0.5, alpha=0.2, merge_every=2)
    if kind == "ema":
        return EMA(params, **common, ema_decay=0.7)
    return ChildTuning(params, **common, reserve_rate=0.5, seed=3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["ondare", "onties", "ema", "childtuning"])
def test_state_dict_round_trip_resumes_bitwise(kind, precision):
    grads = grad_sequence(10)
    straight = make_params()
    opt = _build(kind, straight, precision)
    for gs in grads[:5]:
        set_grads(straight, gs)
        opt.step()
    sd = opt.state_dict()
    tensors = {k: v.copy() for k, v in sd["tensors"].items()}
    scalars = json.loads(json.dumps({k: v for k, v in sd.items() if k != "tensors"}))  # as trainer_state.json
    resumed = [(n, P(p.data)) for n, p in straight]
    opt2 = _build(kind, resumed, precision)
    opt2.load_state_dict({**scalars, "tensors": tensors})
    for gs in grads[5:]:
        set_grads(straight, gs)
        set_grads(resumed, gs)
        opt.step()
        opt2.step()
    for (_, a), (_, b) in zip(straight, resumed):
        assert np.array_equal(a.data, b.data)
    if kind in ("ondare", "childtuning"):
        no_rng = {k: v for k, v in scalars.items() if k != "rng"}
        with pytest.raises(ValueError, match="rng"):
            opt2.load_state_dict({**no_rng, "tensors": tensors})


def test_step_stats_is_the_merge_ratio_of_the_plain_adamw_step():
    """α · rms(τ_r) / rms(Δθ_t) with Δθ_t the AdamW step of that update, measured over every parameter."""
    ref = {n: np.full(s, 0.01, dtype=np.float32) for n, s in SHAPES.items()}
    plain, merged = make_params(), make_params()
    adam = AdamW(plain, lr=1e-3, weight_decay=0.0)
    opt = OnTIES(merged, lr=1e-3, weight_decay=0.0, ref_delta=ref, reserve_rate=0.5, alpha=0.02, merge_every=3)
    assert opt.step_stats() == {}  # nothing stepped yet
    for _ in range(2):
        before = {n: p.data.copy() for n, p in plain}
        for (_, a), (_, b) in zip(plain, merged):
            a.grad = b.grad = np.random.default_rng(a.data.size).normal(size=a.data.shape).astype(np.float32)
        adam.step()
        opt.step()
        step = {n: p.data - before[n] for n, p in plain}  # the plain step (same moments: same gradients)
        assert math.isclose(opt.step_stats()["merge_ratio"], merge_ratio(0.02, ref, step), rel_tol=1e-5)
    assert adam.step_stats() == {}
