"""Tests for minirl.optim: torch parity, precision/master weights, schedules, resume."""

import math

import numpy as np
import pytest

from minirl.optim import SGD, AdamW, LRSchedule, clip_grad_norm, constant, cosine, linear_warmup
from minirl.precision import PrecisionPolicy, to_bf16, ulp


class P:
    """Stand-in parameter: .data (float32) and .grad."""

    def __init__(self, data):
        self.data = np.array(data, dtype=np.float32)
        self.grad = None


SHAPES = [(4, 3), (5,), (2, 3, 2)]


def make_params(seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [P(rng.standard_normal(s)) for s in shapes]


def grad_sequence(n, seed=1, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(n)]


def run(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.copy()
        opt.step()


def max_rel(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_matches_torch(wd):
    torch = pytest.importorskip("torch")
    params, grads = make_params(), grad_sequence(20)
    tparams = [torch.nn.Parameter(torch.tensor(p.data.copy())) for p in params]
    opt = AdamW(params, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd)
    topt = torch.optim.AdamW(tparams, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=wd)
    for gs in grads:
        for p, tp, g in zip(params, tparams, gs):
            p.grad, tp.grad = g.copy(), torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        err = max_rel(p.data, tp.detach().numpy())
        print(f"AdamW wd={wd} max rel err {err:.2e}")
        assert err < 1e-6


@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.01)])
def test_sgd_matches_torch(momentum, wd):
    torch = pytest.importorskip("torch")
    params, grads = make_params(), grad_sequence(20)
    tparams = [torch.nn.Parameter(torch.tensor(p.data.copy())) for p in params]
    opt = SGD(params, lr=0.05, momentum=momentum, weight_decay=wd)
    topt = torch.optim.SGD(tparams, lr=0.05, momentum=momentum, weight_decay=wd)
    for gs in grads:
        for p, tp, g in zip(params, tparams, gs):
            p.grad, tp.grad = g.copy(), torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        # relative to the tensor's scale: torch's add_(buf, alpha=-lr) is a fused multiply-add,
        # ours rounds -lr * buf first, so entries that cancel to near zero differ in the last bits
        ref = tp.detach().numpy()
        assert np.abs(p.data - ref).max() / np.abs(ref).max() < 1e-6


def test_adamw_first_step_magnitude_is_lr():
    # bias correction: m_hat = g, v_hat = g^2, so the first step is lr * sign(g) (up to eps)
    params, (gs,) = make_params(), grad_sequence(1)
    before = [p.data.copy() for p in params]
    run(AdamW(params, lr=1e-3, weight_decay=0.0), params, [gs])
    for p, b, g in zip(params, before, gs):
        np.testing.assert_allclose(p.data - b, -1e-3 * np.sign(g), rtol=1e-3, atol=1e-7)


def test_weight_decay_is_decoupled():
    # zero gradient: Adam's step is 0 / (0 + eps) = 0, only the decay acts
    p = P([1.0, -2.0])
    opt = AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = np.zeros(2, np.float32)
    opt.step()
    np.testing.assert_allclose(p.data, np.array([1.0, -2.0]) * (1 - 0.1 * 0.5), rtol=1e-7)


def test_none_grad_is_skipped():
    a, b = P([1.0]), P([2.0])
    opt = AdamW([("a", a), ("b", b)], lr=0.1, weight_decay=0.1)
    a.grad = np.ones(1, np.float32)
    opt.step()
    assert b.data[0] == 2.0 and opt.state[1] == {} and opt.state[0]["step"] == 1
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_bf16_master_accumulates_tiny_updates():
    # w = 1.0: a bf16 ULP is 2^-7, so a stored change needs an accumulated update > 2^-8.
    # lr = 2^-20 (~1e-6 relative) is exactly representable, so the master moves by exactly 2^-20 a step.
    p = P(np.ones(8))
    opt = SGD([p], lr=2.0**-20, precision=PrecisionPolicy("bf16"))
    p.grad = -np.ones(8, np.float32)
    opt.step()
    assert np.all(p.data == 1.0)  # stored weights unchanged...
    assert np.all(opt.master[0] > 1.0)  # ...while the master moved
    steps = 1
    while np.all(p.data == 1.0):
        opt.step()
        steps += 1
        np.testing.assert_array_equal(p.data, to_bf16(p.data))  # always bf16-representable
    # after 2^12 steps the master sits exactly on the tie 1 + 2^-8, which rounds to even (1.0);
    # the next step crosses half a ULP and the stored weight moves by one whole ULP
    assert steps == 2**12 + 1
    assert np.all(opt.master[0] == 1.0 + (2**12 + 1) * 2.0**-20)
    assert np.all(p.data == 1.0 + 2.0**-7)


def test_pure_bf16_loses_tiny_updates_forever():
    p = P(np.ones(8))
    opt = SGD([p], lr=2.0**-20, precision="pure_bf16")
    p.grad = -np.ones(8, np.float32)
    for _ in range(5000):  # more steps than the bf16-with-master run needs to flip the weight
        opt.step()
    assert np.all(p.data == 1.0)
    assert opt.master[0] is None


def test_fp32_master_is_data():
    p = P([1.0, 2.0])
    opt = AdamW([p], lr=1e-6, precision="fp32")
    assert opt.weights(0) is p.data
    p.grad = np.ones(2, np.float32)
    opt.step()
    assert np.all(p.data < [1.0, 2.0])  # a 1e-6 step is visible in fp32


def test_bf16_stored_weights_always_representable_adamw():
    params, grads = make_params(), grad_sequence(10)
    opt = AdamW(params, lr=1e-3, precision="bf16")
    for p in params:  # construction already rounds the stored weights
        np.testing.assert_array_equal(p.data, to_bf16(p.data))
    for gs in grads:
        run(opt, params, [gs])
        for p, m in zip(params, opt.master):
            np.testing.assert_array_equal(p.data, to_bf16(m))
    # the fp32 master equals an fp32 run's weights from the same (stored) start: rounding never feeds back
    ref = make_params()
    for r in ref:
        r.data[...] = to_bf16(r.data)
    run(AdamW(ref, lr=1e-3), ref, grads)
    for m, r in zip(opt.master, ref):
        np.testing.assert_array_equal(m, r.data)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_master_starts_from_the_stored_weights_so_sub_ulp_steps_change_nothing(precision):
    # An fp32 init (off the storage grid) under bf16 storage: were the master the fp32 init, a tenth of an
    # ULP would already flip the weights that lie near a rounding boundary (9.7 % of them, measured).
    params = make_params(shapes=[(64, 64)])
    stored = PrecisionPolicy(precision).store(params[0].data)
    opt = SGD(params, lr=1.0, precision=precision)
    np.testing.assert_array_equal(opt.master[0], stored)
    params[0].grad = (-0.1 * ulp(stored, precision)).astype(np.float32)  # w += 0.1 ULP
    opt.step()
    assert np.array_equal(params[0].data, stored)  # no stored weight moved...
    assert not np.array_equal(opt.master[0], stored)  # ...while the master did


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    for max_norm in (0.5, 1e3):
        params, (gs,) = make_params(), grad_sequence(1)
        tparams = [torch.nn.Parameter(torch.tensor(p.data)) for p in params]
        for p, tp, g in zip(params, tparams, gs):
            p.grad, tp.grad = g.copy(), torch.tensor(g)
        originals = [g.copy() for g in gs]
        norm = clip_grad_norm(params, max_norm)
        tnorm = torch.nn.utils.clip_grad_norm_(tparams, max_norm)
        assert math.isclose(norm, float(tnorm), rel_tol=1e-6)
        for p, tp in zip(params, tparams):
            np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-6)
        clipped = norm > max_norm
        assert clipped == (max_norm == 0.5)
        for p, g in zip(params, originals):
            assert np.array_equal(p.grad, g) != clipped  # untouched exactly when below max_norm


def test_clip_grad_norm_values():
    a, b = P([0.0, 0.0]), P([0.0])
    a.grad, b.grad = np.array([3.0, 0.0], np.float32), np.array([4.0], np.float32)
    assert clip_grad_norm([a, b], 1.0) == 5.0
    np.testing.assert_allclose(np.concatenate([a.grad, b.grad]), [0.6, 0.0, 0.8], rtol=1e-6)
    a.grad = np.array([np.inf, 0.0], np.float32)
    assert clip_grad_norm([a, b], 1.0) == np.inf and a.grad[0] == np.inf  # left for the caller
    with pytest.raises(ValueError, match="norm"):
        clip_grad_norm([a, b], 1.0, error_if_nonfinite=True)


def test_schedules():
    assert constant()(0) == 1.0 and constant()(10**6) == 1.0
    w = linear_warmup(10)
    assert w(0) == pytest.approx(0.1) and w(4) == pytest.approx(0.5) and w(9) == 1.0 and w(50) == 1.0
    c = cosine(total_steps=110, warmup_steps=10, min_ratio=0.1)
    assert c(0) == pytest.approx(0.1)  # warmup starts at 1/warmup
    assert c(10) == 1.0  # end of warmup: the peak
    assert c(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert c(110) == pytest.approx(0.1) and c(500) == pytest.approx(0.1)
    assert cosine(100)(0) == 1.0 and cosine(100)(100) == pytest.approx(0.0, abs=1e-12)
    vals = [c(s) for s in range(10, 111)]
    assert all(x >= y for x, y in zip(vals, vals[1:]))  # decay is monotone


@pytest.mark.parametrize("kwargs,field", [
    (dict(total_steps=0), "total_steps"),
    (dict(total_steps=10, warmup_steps=20), "total_steps"),
    (dict(total_steps=10, warmup_steps=-1), "warmup_steps"),
    (dict(total_steps=10, min_ratio=1.5), "min_ratio"),
])
def test_bad_schedules(kwargs, field):
    with pytest.raises(ValueError, match=field):
        cosine(**kwargs)
    with pytest.raises(ValueError, match="step"):
        constant()(-1)
    with pytest.raises(ValueError, match="kind"):
        LRSchedule("exponential")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "pure_bf16"])
@pytest.mark.parametrize("cls", [AdamW, SGD])
def test_state_dict_round_trip(cls, precision):
    kwargs = dict(lr=1e-2, momentum=0.9) if cls is SGD else dict(lr=1e-2)
    grads = grad_sequence(10)
    params = make_params()
    opt = cls(params, precision=precision, **kwargs)
    run(opt, params, grads[:5])
    opt.lr = 3e-3  # a schedule changed it
    sd = opt.state_dict()
    snapshot = {k: v.copy() for k, v in sd["tensors"].items()}
    saved = [p.data.copy() for p in params]
    run(opt, params, grads[5:])
    for k, v in snapshot.items():  # the state dict is a copy: later steps leave it alone
        np.testing.assert_array_equal(sd["tensors"][k], v)
    # a fresh optimizer on a fresh model, restored from the state dict
    params2 = [P(d) for d in saved]
    opt2 = cls(params2, precision=precision, **kwargs)
    opt2.load_state_dict(sd)
    assert opt2.lr == 3e-3 and opt2.step_count == 5
    run(opt2, params2, grads[5:])
    for p, q in zip(params, params2):
        np.testing.assert_array_equal(p.data, q.data)


def test_load_state_dict_errors():
    params = make_params()
    opt = AdamW(list(zip(["a", "b", "c"], params)))
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="missing"):
        AdamW(list(zip(["a", "b", "x"], make_params()))).load_state_dict(sd)
    with pytest.raises(ValueError, match="precision"):
        AdamW(list(zip(["a", "b", "c"], make_params())), precision="bf16").load_state_dict(sd)


def test_transform_delta_hook():
    class HalfAdamW(AdamW):
        def transform_delta(self, i, name, delta):
            self.seen.append(name)
            return 0.5 * delta

    p, q = P([1.0, 1.0]), P([1.0, 1.0])
    full, half = AdamW([("w", p)], lr=0.1, weight_decay=0.1), HalfAdamW([("w", q)], lr=0.1, weight_decay=0.1)
    half.seen = []
    for o, x in ((full, p), (half, q)):
        x.grad = np.array([1.0, -1.0], np.float32)
        o.step()
    decayed = 1.0 * (1 - 0.1 * 0.1)
    np.testing.assert_allclose(q.data - decayed, 0.5 * (p.data - decayed), atol=1e-7)
    assert half.seen == ["w"]


@pytest.mark.parametrize("make,field", [
    (lambda ps: AdamW(ps, lr=-1.0), "lr"),
    (lambda ps: AdamW(ps, betas=(1.0, 0.999)), "betas[0]"),
    (lambda ps: AdamW(ps, betas=(0.9, -0.1)), "betas[1]"),
    (lambda ps: AdamW(ps, eps=0.0), "eps"),
    (lambda ps: AdamW(ps, weight_decay=-0.1), "weight_decay"),
    (lambda ps: SGD(ps, lr=0.1, momentum=-0.5), "momentum"),
    (lambda ps: SGD(ps, lr=0.1, weight_decay=-1), "weight_decay"),
    (lambda ps: clip_grad_norm(ps, 0.0), "max_norm"),
    (lambda ps: AdamW(ps, precision="int8"), "precision"),
])
def test_bad_hyperparameters(make, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        make(make_params())


def test_lr_setter_validates():
    opt = AdamW(make_params())
    opt.lr = 0.5
    assert opt.lr == 0.5 and opt.base_lr == 1e-3
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1e-3
