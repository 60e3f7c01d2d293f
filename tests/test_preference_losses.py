"""The preference losses (DPO and its variants, KTO, SimPO, ORPO): properties, gradient checks, bad input, TRL parity."""

import collections
import types
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minirl.gradcheck import check_grad
from minirl.rl.dpo import LOSS_TYPES, dpo_loss
from minirl.rl.kto import kto_loss
from minirl.rl.orpo import log1mexp, orpo_loss
from minirl.rl.simpo import simpo_loss
from minirl.tensor import Tensor

examples = settings(deadline=None, max_examples=60)  # local, so other test files keep their profile


# ------------------------------------------------------------------ helpers
def logps(n, low=-20.0, high=0.0):
    """A strategy for n float64 log-probs in [low, high]."""
    return st.lists(st.floats(low, high, allow_nan=False), min_size=n, max_size=n).map(np.array)


@st.composite
def pairs(draw, max_B=6, low=-20.0, high=0.0):
    """(chosen, rejected, ref_chosen, ref_rejected) (B,) float64 arrays."""
    B = draw(st.integers(1, max_B))
    return tuple(draw(logps(B, low, high)) for _ in range(4))


def grads(loss_fn, *arrays):
    """The loss value and d loss / d each array (as leaves of the tape)."""
    leaves = [Tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in arrays]
    loss, stats = loss_fn(*leaves)
    loss.backward()
    return float(loss.data), stats, [t.grad for t in leaves]


def scalar(loss_fn):
    """A loss as shape (1,) for check_grad (see tests/test_rl_math.py's as_vector)."""
    return lambda *tensors: loss_fn(*tensors)[0].reshape(1)


def lengths(B, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 8, size=B), rng.integers(1, 8, size=B)


betas = st.floats(0.01, 2.0)
smoothing = st.floats(0.0, 0.45)


# ====================================================================== DPO
@examples
@given(pairs(), betas, smoothing)
def test_dpo_at_the_reference_every_loss_type_has_its_known_start(batch, beta, eps):
    c, r, _, _ = batch
    len_c, len_r = lengths(len(c), 0)
    start = {"sigmoid": np.log(2), "robust": np.log(2), "hinge": 1.0, "ipo": 1 / (4 * beta**2)}
    for loss_type in LOSS_TYPES:
        loss, stats = dpo_loss(c, r, c, r, beta=beta, loss_type=loss_type, chosen_lengths=len_c,
                               rejected_lengths=len_r, label_smoothing=eps if loss_type == "robust" else 0.0)
        assert float(loss.data) == pytest.approx(start[loss_type], rel=1e-12), loss_type
        assert stats["rewards/margins"] == 0.0 and stats["rewards/accuracies"] == 0.0


@examples
@given(pairs(), betas, smoothing, st.sampled_from(LOSS_TYPES))
def test_dpo_gradient_raises_chosen_and_lowers_rejected(batch, beta, eps, loss_type):
    c, r, rc, rr = batch
    len_c, len_r = lengths(len(c), 1)
    eps = eps if loss_type == "robust" else 0.0
    _, _, (dc, dr) = grads(lambda c_, r_: dpo_loss(c_, r_, rc, rr, beta, loss_type, eps, len_c, len_r), c, r)
    if loss_type == "hinge":  # only pairs inside the margin (β Δ < 1) move, at the constant rate β / B
        active = beta * ((c - rc) - (r - rr)) < 1
        np.testing.assert_allclose(dc, np.where(active, -beta / len(c), 0.0), rtol=1e-12)
        np.testing.assert_allclose(dr, -dc, rtol=1e-12)
    elif loss_type == "ipo":  # a squared loss: up below the target margin, down above it
        below = (c - rc) / len_c - (r - rr) / len_r < 1 / (2 * beta)
        assert np.all(np.sign(dc) == np.where(below, -1.0, 1.0)) and np.all(np.sign(dr) == np.where(below, 1.0, -1.0))
    else:
        assert np.all(dc < 0) and np.all(dr > 0)


@examples
@given(pairs(), betas, smoothing)
def test_robust_dpo_is_unbiased_under_label_flips(batch, beta, eps):
    """Labels flipped with probability ε: the expected robust loss is the clean sigmoid loss."""
    c, r, rc, rr = batch
    robust = float(dpo_loss(c, r, rc, rr, beta, "robust", eps)[0].data)
    robust_flipped = float(dpo_loss(r, c, rr, rc, beta, "robust", eps)[0].data)  # Δ -> -Δ
    clean = float(dpo_loss(c, r, rc, rr, beta, "sigmoid")[0].data)
    assert (1 - eps) * robust + eps * robust_flipped == pytest.approx(clean, rel=1e-9, abs=1e-12)


@examples
@given(pairs(), betas)
def test_dpo_sigmoid_swapping_chosen_and_rejected_mirrors_the_loss(batch, beta):
    """-log σ(x) + log σ(-x) = -x, so loss(Δ) - loss(-Δ) = -β mean(Δ)."""
    c, r, rc, rr = batch
    delta = (c - rc) - (r - rr)
    loss = float(dpo_loss(c, r, rc, rr, beta)[0].data)
    swapped = float(dpo_loss(r, c, rr, rc, beta)[0].data)
    assert loss - swapped == pytest.approx(-beta * delta.mean(), rel=1e-9, abs=1e-9)


@examples
@given(betas, st.floats(-3, 3), st.integers(1, 50), st.integers(1, 50), st.floats(-5, 5), logps(2))
def test_ipo_is_minimised_at_the_length_averaged_margin_one_over_two_beta(beta, t, len_c, len_r, shift, ref):
    """IPO's loss is (h - 1/(2β))^2 for the length-averaged margin h: 0, with zero gradient, at h = 1/(2β)."""
    rc, rr = ref[:1], ref[1:]
    for offset in (0.0, t):
        h = 1 / (2 * beta) + offset
        c = rc + len_c * (h + shift)  # (c - rc)/len_c - (r - rr)/len_r = h
        r = rr + len_r * shift
        loss, _, (dc, dr) = grads(lambda c_, r_: dpo_loss(c_, r_, rc, rr, beta, "ipo", chosen_lengths=[len_c],
                                                          rejected_lengths=[len_r]), c, r)
        assert loss == pytest.approx(offset**2, abs=1e-9 * (1 + abs(c[0]) + abs(r[0])) / beta)
        if offset == 0.0:
            assert abs(dc[0]) < 1e-6 and abs(dr[0]) < 1e-6


def test_dpo_hand_computed_values_and_stats():
    c, r = np.array([-3.0, -5.0]), np.array([-4.0, -2.0])
    rc, rr = np.array([-3.5, -4.0]), np.array([-4.0, -4.0])
    # Δ = (0.5 - 0) = 0.5 and (-1 - 2) = -3; β = 0.5 -> β Δ = 0.25, -1.5
    loss, stats = dpo_loss(Tensor(c), r, rc, rr, beta=0.5)
    x = np.array([0.25, -1.5])
    assert float(loss.data) == pytest.approx(np.mean(np.log1p(np.exp(-x))), rel=1e-12)
    assert stats == pytest.approx({"rewards/chosen": 0.5 * (0.5 - 1.0) / 2, "rewards/rejected": 0.5 * (0.0 + 2.0) / 2,
                                   "rewards/accuracies": 0.5, "rewards/margins": (0.25 - 1.5) / 2,
                                   "logps/chosen": -4.0, "logps/rejected": -3.0})
    loss, _ = dpo_loss(c, r, rc, rr, beta=0.5, loss_type="hinge")
    assert float(loss.data) == pytest.approx((0.75 + 2.5) / 2)
    loss, _ = dpo_loss(c, r, rc, rr, beta=0.5, loss_type="ipo", chosen_lengths=[2, 4], rejected_lengths=[1, 0])
    # h = 0.5/2 - 0/1 = 0.25 and -1/4 - 2/1 (a zero length counts as 1, as TRL clamps) = -2.25; target 1
    assert float(loss.data) == pytest.approx(((0.25 - 1) ** 2 + (-2.25 - 1) ** 2) / 2)


def test_dpo_keeps_float64_and_reads_reference_tensors_as_constants():
    rc = Tensor(np.array([-1.0, -2.0]), requires_grad=True)
    loss, _ = dpo_loss(np.array([-1.5, -2.5]), [-2.0, -1.0], rc, np.array([-1.0, -1.0]))
    assert loss.dtype == np.float64 and loss.shape == ()
    assert not loss.requires_grad  # neither policy input was a leaf on the tape; the reference never is


# ====================================================================== KTO
@examples
@given(st.integers(0, 6), st.integers(0, 6), st.floats(0.0, 3.0), st.floats(0.0, 3.0), betas, st.data())
def test_kto_at_the_reference_with_zero_kl_is_half_the_weighted_mean(n_c, n_r, w_d, w_u, beta, data):
    if n_c + n_r == 0:
        n_c = 1
    c, r, kl = data.draw(logps(n_c)), data.draw(logps(n_r)), data.draw(logps(3))
    loss, stats = kto_loss(c, r, kl, c, r, kl, beta=beta, desirable_weight=w_d, undesirable_weight=w_u)
    assert float(loss.data) == pytest.approx((w_d * n_c + w_u * n_r) * 0.5 / (n_c + n_r), rel=1e-12, abs=1e-15)
    assert stats["kl"] == 0.0


@examples
@given(st.integers(1, 5), st.integers(1, 5), betas, st.data())
def test_kto_gradient_raises_desirable_and_lowers_undesirable(n_c, n_r, beta, data):
    # log-ratios within ±5: far beyond, 1 - σ(β x) rounds to 0 in float64 (in TRL too) and so does its gradient
    c, r, rc, rr = (data.draw(logps(n, low=-5.0)) for n in (n_c, n_r, n_c, n_r))
    kl, ref_kl = data.draw(logps(4, low=-5.0)), data.draw(logps(4, low=-5.0))
    _, _, (dc, dr) = grads(lambda c_, r_: kto_loss(c_, r_, kl, rc, rr, ref_kl, beta, 1.0, 1.5), c, r)
    assert np.all(dc < 0) and np.all(dr > 0)


def test_kto_reference_point_is_the_clamped_mean_kl_and_carries_no_gradient():
    c, r = np.array([-3.0, -4.0]), np.array([-6.0])
    rc, rr = np.array([-3.5, -3.0]), np.array([-5.0])
    beta = 0.5

    def expected(z0):
        chosen = 1 - 1 / (1 + np.exp(-beta * ((c - rc) - z0)))
        rejected = 1 - 1 / (1 + np.exp(-beta * (z0 - (r - rr))))
        return np.concatenate([chosen, 2.0 * rejected]).mean()

    ref_kl = np.array([-5.0, -6.0, -7.0])
    for kl_shift, z0 in ((0.3, 0.3), (-0.3, 0.0)):  # mean(kl - ref_kl) = kl_shift; a negative estimate clamps to 0
        kl = Tensor(ref_kl + kl_shift, requires_grad=True)
        loss, stats = kto_loss(Tensor(c, requires_grad=True), r, kl, rc, rr, ref_kl, beta=beta, undesirable_weight=2.0)
        loss.backward()
        assert float(loss.data) == pytest.approx(expected(z0), rel=1e-12)
        assert stats["kl"] == pytest.approx(z0, abs=1e-12)
        assert kl.grad is None


def test_kto_one_sided_batches_log_only_their_side():
    _, stats = kto_loss([-1.0, -2.0], np.zeros(0), [-1.0], [-1.5, -1.5], [], [-1.0], beta=0.1)
    assert set(stats) == {"kl", "rewards/chosen", "logps/chosen"}
    assert stats["rewards/chosen"] == pytest.approx(0.1 * (0.5 - 0.5) / 2) and stats["logps/chosen"] == -1.5
    loss, stats = kto_loss([], [-1.0, -3.0], [-1.0], [], [-2.0, -2.0], [-1.0], beta=0.1)
    assert set(stats) == {"kl", "rewards/rejected", "logps/rejected"}
    assert float(loss.data) == pytest.approx(np.mean(1 - 1 / (1 + np.exp(-0.1 * np.array([-1.0, 1.0])))))
    _, stats = kto_loss([-1.0], [-3.0], [-1.0], [-2.0], [-2.0], [-1.0], beta=0.1)
    assert stats["rewards/margins"] == pytest.approx(0.1 * (1.0 - (-1.0)))


# ==================================================================== SimPO
@examples
@given(pairs(), st.floats(0.1, 10), st.floats(0, 2), smoothing, st.floats(-10, 10))
def test_simpo_has_no_reference_its_value_depends_only_on_the_margin(batch, beta, gamma, eps, k):
    c, r, _, _ = batch
    loss = float(simpo_loss(c, r, beta, gamma, eps)[0].data)
    shifted = float(simpo_loss(c + k, r + k, beta, gamma, eps)[0].data)
    margin_only = float(simpo_loss(c - r, np.zeros_like(r), beta, gamma, eps)[0].data)
    assert shifted == pytest.approx(loss, rel=1e-9, abs=1e-12)
    assert margin_only == pytest.approx(loss, rel=1e-9, abs=1e-12)


@examples
@given(pairs(), st.floats(0.1, 10), st.floats(0, 2), smoothing)
def test_simpo_gradient_raises_chosen_and_lowers_rejected_up_to_the_smoothed_optimum(batch, beta, gamma, eps):
    """With ε = 0 always; with ε > 0 (conservative smoothing) only while β(c - r) - γ < log((1 - ε)/ε), its minimum."""
    c, r, _, _ = batch
    _, _, (dc, dr) = grads(lambda c_, r_: simpo_loss(c_, r_, beta, gamma, eps), c, r)
    x = beta * (c - r) - gamma
    optimum = np.log((1 - eps) / eps) if eps > 0 else np.inf
    clear = np.abs(x - optimum) > 1e-6
    assert np.all(np.sign(dc[clear]) == np.where(x < optimum, -1.0, 1.0)[clear])
    np.testing.assert_allclose(dc, -dr, rtol=1e-12)


def test_simpo_hand_computed_values_and_stats():
    beta, gamma = 2.0, 1.0
    loss, stats = simpo_loss([-0.5, -1.0], [-0.5, -1.0], beta, gamma)  # c = r: -log σ(-γ) = log(1 + e^γ)
    assert float(loss.data) == pytest.approx(np.log1p(np.e), rel=1e-12)
    assert stats == pytest.approx({"rewards/chosen": -1.5, "rewards/rejected": -1.5, "rewards/accuracies": 0.0,
                                   "rewards/margins": 0.0, "logps/chosen": -0.75, "logps/rejected": -0.75})
    loss, _ = simpo_loss([-0.5], [-0.5 - gamma / beta], beta, gamma)  # the chosen leads by γ/β: log 2
    assert float(loss.data) == pytest.approx(np.log(2), rel=1e-12)


# ===================================================================== ORPO
@examples
@given(pairs(low=-10.0), st.floats(0.0, 20.0))
def test_orpo_with_beta_zero_is_the_nll(batch, nll):
    c, r, _, _ = batch
    loss, stats, (dc, dr, dnll) = grads(lambda c_, r_, n_: orpo_loss(c_, r_, n_, beta=0.0), c, r, nll)
    assert loss == nll and stats["nll_loss"] == nll
    assert np.all(dc == 0) and np.all(dr == 0) and dnll == 1.0


@examples
@given(pairs(low=-10.0, high=-1e-6), st.floats(0.01, 2.0))
def test_orpo_gradient_raises_chosen_and_lowers_rejected(batch, beta):
    c, r, _, _ = batch
    _, _, (dc, dr, dnll) = grads(lambda c_, r_, n_: orpo_loss(c_, r_, n_, beta), c, r, 1.0)
    assert np.all(dc < 0) and np.all(dr >= 0) and dnll == 1.0  # dr underflows to 0 once the odds ratio is huge


def test_orpo_hand_computed_stats():
    c, r = np.log([0.5, 0.2]), np.log([0.5, 0.8])  # odds 1, 1/4 and 1, 4: log OR = 0 and log(1/16)
    loss, stats = orpo_loss(c, r, 2.0, beta=0.5)
    log_or = np.array([0.0, np.log(1 / 16)])
    log_sig = -np.log1p(np.exp(-log_or))
    assert float(loss.data) == pytest.approx(2.0 - 0.5 * log_sig.mean(), rel=1e-12)
    assert stats["log_odds_chosen"] == pytest.approx(log_or.mean(), rel=1e-12)
    assert stats["log_odds_ratio"] == pytest.approx(log_sig.mean(), rel=1e-12)
    assert stats["nll_loss"] == 2.0 and stats["rewards/accuracies"] == 0.0
    assert stats["rewards/chosen"] == pytest.approx(0.5 * c.mean())


def test_log1mexp_is_accurate_near_zero_and_far_below_it():
    x = np.array([-1e-12, -1e-6, -1e-3])
    series = np.log(-x) + x / 2 + x**2 / 24  # log(1 - e^x) = log(-x) + x/2 + x^2/24 + O(x^4)
    np.testing.assert_allclose(log1mexp(Tensor(x)).data, series, rtol=1e-14)
    x = np.array([-30.0, -50.0, -800.0])
    u = np.exp(x)
    np.testing.assert_allclose(log1mexp(Tensor(x)).data, -u - u**2 / 2, rtol=1e-14)  # log(1 - u) = -u - u^2/2 - ...
    x = np.array([-0.69, -0.7, -2.0])  # either side of the -ln 2 switch agrees with the textbook formula
    np.testing.assert_allclose(log1mexp(Tensor(x)).data, np.log(1 - np.exp(x)), rtol=1e-13)
    check_grad(log1mexp, np.array([-1e-2, -0.3, -0.69, -0.7, -3.0, -40.0]))  # nearer 0, h = 1e-6 is too coarse


def test_orpo_is_finite_when_a_chosen_log_prob_is_exactly_zero():
    """An average log-prob of exactly 0 (every token certain in float): TRL's log1mexp gives -inf there."""
    for dtype in (np.float32, np.float64):
        loss, stats, (dc, dr, _) = grads(lambda c_, r_, n_: orpo_loss(c_, r_, n_, beta=0.1),
                                         np.array([0.0, -0.3], dtype), np.array([-0.5, -0.2], dtype), 1.0)
        assert np.isfinite(loss) and np.all(np.isfinite(dc)) and np.all(np.isfinite(dr))
        assert stats["log_odds_chosen"] > 100  # the certain pair's log odds ratio is huge, not inf
        # its true gradient d/dc -β/B log σ(log OR) tends to -β/B · odds(y_l) = -0.05 · (e^-0.5 / (1 - e^-0.5))
        assert dc[0] == pytest.approx(-0.05 * np.exp(-0.5) / -np.expm1(-0.5), rel=1e-6)


# ========================================================== gradient checks
def _pairs_for_gradcheck(seed, B=5):
    """float64 inputs whose β Δ = 0.1 Δ sits at -0.5, 0.3, 2.0, -1.2, 0.6: away from hinge's kink at 1."""
    rng = np.random.default_rng(seed)
    rc, rr, r = rng.normal(-8, 2, size=(3, B))
    delta = np.array([-5.0, 3.0, 20.0, -12.0, 6.0])[:B]
    c = rc + (r - rr) + delta
    return c, r, rc, rr


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_dpo_loss_gradcheck(loss_type):
    c, r, rc, rr = _pairs_for_gradcheck(10)
    len_c, len_r = lengths(len(c), 10)
    eps = 0.2 if loss_type == "robust" else 0.0
    check_grad(scalar(lambda c_, r_: dpo_loss(c_, r_, rc, rr, 0.1, loss_type, eps, len_c, len_r)), c, r)


@pytest.mark.parametrize("n_c, n_r", [(3, 2), (4, 0), (0, 3)])
def test_kto_loss_gradcheck(n_c, n_r):
    rng = np.random.default_rng(11)
    c, rc = rng.normal(-8, 2, size=(2, n_c))
    r, rr = rng.normal(-8, 2, size=(2, n_r))
    kl, ref_kl = rng.normal(-8, 1, size=(2, 5))
    check_grad(scalar(lambda c_, r_: kto_loss(c_, r_, kl, rc, rr, ref_kl + 0.5, 0.3, 1.0, 1.33)), c, r)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_simpo_loss_gradcheck(label_smoothing):
    rng = np.random.default_rng(12)
    c, r = -rng.exponential(1.0, size=(2, 5))
    check_grad(scalar(lambda c_, r_: simpo_loss(c_, r_, 2.0, 1.0, label_smoothing)), c, r)


def test_orpo_loss_gradcheck():
    rng = np.random.default_rng(13)
    c, r = -rng.exponential(1.0, size=(2, 5))
    c[0], r[1] = -1e-3, -0.69  # near certainty, and at log1mexp's switch
    check_grad(scalar(lambda c_, r_, n_: orpo_loss(c_, r_, n_, 0.2)), c, r, np.array(1.7))


# ================================================================ bad input
Z1, Z2 = np.zeros(1) - 1, np.zeros(2) - 1


@pytest.mark.parametrize("call, field", [
    (lambda: dpo_loss(Z2, Z1, Z2, Z2), "rejected_logps"),
    (lambda: dpo_loss(Z2, Z2, Z1, Z2), "ref_chosen_logps"),
    (lambda: dpo_loss(Z2, Z2, Z2, Z1), "ref_rejected_logps"),
    (lambda: dpo_loss(np.zeros((2, 1)), Z2, Z2, Z2), "chosen_logps"),
    (lambda: dpo_loss(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0)), "empty"),
    (lambda: dpo_loss(Z2, Z2, Z2, Z2, loss_type="kto"), "loss_type"),
    (lambda: dpo_loss(Z2, Z2, Z2, Z2, beta=0.0), "beta"),
    (lambda: dpo_loss(Z2, Z2, Z2, Z2, beta=-0.1), "beta"),
    (lambda: dpo_loss(Z2, Z2, Z2, Z2, loss_type="robust", label_smoothing=0.5), "label_smoothing"),
    (lambda: dpo_loss(Z2, Z2, Z2, Z2, loss_type="robust", label_smoothing=-0.1), "label_smoothing"),
    (lambda: dpo_loss(Z2, Z2, Z2, Z2, label_smoothing=0.1), "silently ignore"),
    (lambda: dpo_loss(Z2, Z2, Z2, Z2, loss_type="ipo"), "chosen_lengths"),
    (lambda: dpo_loss(Z2, Z2, Z2, Z2, loss_type="ipo", chosen_lengths=[1, 2]), "rejected_lengths"),
    (lambda: dpo_loss(Z2, Z2, Z2, Z2, loss_type="ipo", chosen_lengths=[1], rejected_lengths=[1, 2]),
     "chosen_lengths"),
    (lambda: dpo_loss(Z2, Z2, Z2, Z2, loss_type="ipo", chosen_lengths=[1, -2], rejected_lengths=[1, 2]),
     "chosen_lengths"),
    (lambda: kto_loss(np.zeros(0), np.zeros(0), Z1, np.zeros(0), np.zeros(0), Z1), "both empty"),
    (lambda: kto_loss(Z2, Z1, Z1, Z1, Z1, Z1), "ref_chosen_logps"),
    (lambda: kto_loss(Z2, Z1, Z1, Z2, Z2, Z1), "ref_rejected_logps"),
    (lambda: kto_loss(Z2, Z1, np.zeros(0), Z2, Z1, np.zeros(0)), "kl_logps"),
    (lambda: kto_loss(Z2, Z1, Z2, Z2, Z1, Z1), "ref_kl_logps"),
    (lambda: kto_loss(Z2, Z1, Z1, Z2, Z1, Z1, beta=0.0), "beta"),
    (lambda: kto_loss(Z2, Z1, Z1, Z2, Z1, Z1, desirable_weight=-1.0), "desirable_weight"),
    (lambda: kto_loss(Z2, Z1, Z1, Z2, Z1, Z1, undesirable_weight=-1.0), "undesirable_weight"),
    (lambda: simpo_loss(Z2, Z1), "rejected_logps"),
    (lambda: simpo_loss(Z2, Z2, beta=0.0), "beta"),
    (lambda: simpo_loss(Z2, Z2, simpo_gamma=-0.5), "simpo_gamma"),
    (lambda: simpo_loss(Z2, Z2, label_smoothing=0.5), "label_smoothing"),
    (lambda: orpo_loss(Z2, Z1, 1.0), "rejected_logps"),
    (lambda: orpo_loss(Z2, Z2, 1.0, beta=-0.1), "beta"),
    (lambda: orpo_loss(Z2 + 1.5, Z2, 1.0), "chosen_logps"),
    (lambda: orpo_loss(Z2, Z2 + 1.5, 1.0), "rejected_logps"),
    (lambda: orpo_loss(Z2, Z2, np.ones(2)), "chosen_nll"),
    (lambda: orpo_loss(Z2, Z2, -1.0), "chosen_nll"),
])
def test_bad_input_raises_value_error_naming_the_field(call, field):
    with pytest.raises(ValueError, match=field):
        call()


def test_dpo_loss_type_error_lists_the_allowed_values():
    with pytest.raises(ValueError) as info:
        dpo_loss(Z2, Z2, Z2, Z2, loss_type="exo_pair")
    assert all(v in str(info.value) for v in LOSS_TYPES)


# ====================================================== parity with TRL 1.16
# Each test runs TRL's own code on the same numbers: its loss, every stat minirl
# logs, and the gradients with respect to the policy's log-probs.
def _trl():
    pytest.importorskip("torch")
    return pytest.importorskip("trl", minversion="1.16")


_accelerator = types.SimpleNamespace(device="cpu", gather=lambda t: t, gather_for_metrics=lambda t: t)


class _FakeModel:
    """A stand-in causal LM whose row i has summed completion log-prob table[input_ids[i, 0]].

    DPOTrainer and KTOTrainer's `_compute_loss` run the model and sum
    `outputs.log_probs` over positions; putting each row's log-prob on its last
    position makes that sum exactly the value chosen, and table a leaf of
    torch's tape. The other outputs they read for logging are zeros.
    """

    training = True

    def __init__(self, table):
        self.table = table

    def __call__(self, input_ids, **kwargs):
        import torch

        N, T = input_ids.shape
        seq = self.table[input_ids[:, 0]]  # (N,)
        log_probs = torch.cat([torch.zeros(N, T - 2, dtype=seq.dtype), seq[:, None]], dim=1)  # (N, T - 1)
        zeros = torch.zeros(N, T - 1, dtype=seq.dtype)
        return types.SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                                     is_top1=torch.zeros(N, T - 1, dtype=torch.bool))


def _metrics():
    return collections.defaultdict(lambda: collections.defaultdict(list))


def trl_dpo(c, r, rc, rr, len_c, len_r, beta, loss_type, label_smoothing):
    """TRL's DPOTrainer._compute_loss on these log-probs: (loss, metrics, d/dc, d/dr)."""
    import torch
    from trl.trainer.dpo_trainer import DPOTrainer

    B = len(c)
    T = int(max(len_c.max(), len_r.max())) + 2
    n = np.concatenate([len_c, len_r])  # (2B,): the batch is [chosen, rejected]
    pos = np.arange(T)[None, :]
    completion_mask = torch.tensor((pos >= 1) & (pos <= n[:, None]), dtype=torch.long)  # prompt at position 0
    input_ids = torch.zeros(2 * B, T, dtype=torch.long)
    input_ids[:, 0] = torch.arange(2 * B)
    table = torch.tensor(np.concatenate([c, r]), requires_grad=True)
    model = _FakeModel(table)
    trainer = types.SimpleNamespace(
        model=model, accelerator=_accelerator, aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta,
        label_smoothing=label_smoothing, use_weighting=False, _metrics=_metrics(), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "completion_mask": completion_mask,
              "ref_chosen_logps": torch.tensor(rc), "ref_rejected_logps": torch.tensor(rr)}
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    loss.backward()
    grad = table.grad.numpy()
    return loss.item(), {k: v[-1] for k, v in trainer._metrics["train"].items()}, grad[:B], grad[B:]


def trl_kto(labels, logps, ref_logps, kl, ref_kl, beta, desirable_weight, undesirable_weight):
    """TRL's KTOTrainer._compute_loss on these log-probs: (loss, metrics, d/d logps)."""
    import torch
    from trl.trainer.kto_trainer import KTOTrainer

    N, T = len(labels), 4
    table = torch.tensor(np.concatenate([logps, kl]), requires_grad=True)  # rows N.. are the KL completions
    model = _FakeModel(table)
    ids = torch.zeros(N, T, dtype=torch.long)
    ids[:, 0] = torch.arange(N)
    kl_ids = torch.zeros(len(kl), T, dtype=torch.long)
    kl_ids[:, 0] = N + torch.arange(len(kl))
    completion_mask = torch.ones(N, T, dtype=torch.long)
    completion_mask[:, 0] = 0
    trainer = types.SimpleNamespace(
        model=model, accelerator=_accelerator, aux_loss_enabled=False, precompute_ref_logps=True, calculate_KL=True,
        loss_type="kto", beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
        _metrics=_metrics(), _total_train_tokens=0, _tp_size=1)
    trainer._compute_kl_logps = lambda model, batch: KTOTrainer._compute_kl_logps(trainer, model, batch)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion_mask,
              "KL_input_ids": kl_ids, "KL_attention_mask": torch.ones_like(kl_ids),
              "KL_completion_mask": torch.ones_like(kl_ids), "label": torch.tensor(labels),
              "ref_logps": torch.tensor(ref_logps), "ref_KL_logps": torch.tensor(ref_kl)}
    loss = KTOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    loss.backward()
    return loss.item(), {k: v[-1] for k, v in trainer._metrics["train"].items()}, table.grad.numpy()


def trl_pair_metrics(trainer_cls, loss_name, c, r, nll, **attributes):
    """TRL's CPOTrainer or ORPOTrainer get_batch_loss_metrics with a stand-in forward: (loss, metrics, grads)."""
    import torch

    ct, rt = torch.tensor(c, requires_grad=True), torch.tensor(r, requires_grad=True)
    nll = torch.tensor(nll, dtype=torch.float64, requires_grad=True)
    logits = torch.zeros(len(c), 3, 5, dtype=torch.float64)
    trainer = types.SimpleNamespace(accelerator=_accelerator, aux_loss_enabled=False, **attributes)
    trainer.concatenated_forward = lambda model, batch: (ct, rt, logits, logits, nll)
    setattr(trainer, loss_name, lambda *args: getattr(trainer_cls, loss_name)(trainer, *args))
    loss, metrics = trainer_cls.get_batch_loss_metrics(trainer, None, {})
    loss.backward()
    return loss.item(), metrics, ct.grad.numpy(), rt.grad.numpy(), float(nll.grad)


def _assert_stats_match(stats, trl_metrics, rel=1e-12):
    for key, value in stats.items():
        assert value == pytest.approx(trl_metrics[key], rel=rel, abs=1e-7), key


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_dpo_matches_trl(loss_type, seed):
    _trl()
    rng = np.random.default_rng(seed)
    B, beta = 6, [0.1, 0.5][seed]
    c, r, rc, rr = rng.normal(-12, 4, size=(4, B))
    len_c, len_r = rng.integers(1, 9, size=(2, B))
    eps = 0.2 if loss_type == "robust" else 0.0
    want, trl_metrics, trl_dc, trl_dr = trl_dpo(c, r, rc, rr, len_c, len_r, beta, loss_type, eps)
    loss, stats, (dc, dr) = grads(lambda c_, r_: dpo_loss(c_, r_, rc, rr, beta, loss_type, eps, len_c, len_r), c, r)
    assert loss == pytest.approx(want, rel=1e-12)
    _assert_stats_match(stats, trl_metrics, rel=1e-6)  # TRL's accuracy is a float32 mean
    np.testing.assert_allclose(dc, trl_dc, rtol=1e-12)
    np.testing.assert_allclose(dr, trl_dr, rtol=1e-12)


@pytest.mark.parametrize("labels, kl_shift", [
    ([True, False, True, True, False, False, True], 0.4),
    ([True, False, True, False], -0.4),  # a negative KL estimate: TRL clamps z0 to 0
    ([True, True, True], 0.2),  # only desirable examples
    ([False, False], 0.3),  # only undesirable ones
])
def test_kto_matches_trl(labels, kl_shift):
    _trl()
    rng = np.random.default_rng(len(labels))
    labels = np.array(labels)
    N, beta, w_d, w_u = len(labels), 0.2, 1.0, 1.33
    logps, ref_logps = rng.normal(-12, 4, size=(2, N))
    ref_kl = rng.normal(-12, 2, size=N)
    kl = ref_kl + kl_shift + rng.normal(0, 0.05, size=N)
    want, trl_metrics, trl_grad = trl_kto(labels, logps, ref_logps, kl, ref_kl, beta, w_d, w_u)
    loss, stats, (dc, dr) = grads(
        lambda c_, r_: kto_loss(c_, r_, kl, ref_logps[labels], ref_logps[~labels], ref_kl, beta, w_d, w_u),
        logps[labels], logps[~labels])
    assert loss == pytest.approx(want, rel=1e-12)
    assert set(stats) == set(trl_metrics) - {"entropy", "num_tokens", "logits/chosen", "logits/rejected"}
    _assert_stats_match(stats, trl_metrics)
    np.testing.assert_allclose(dc, trl_grad[:N][labels], rtol=1e-12)
    np.testing.assert_allclose(dr, trl_grad[:N][~labels], rtol=1e-12)
    assert np.all(trl_grad[N:] == 0)  # TRL's KL completions carry no gradient either


@pytest.mark.parametrize("beta, simpo_gamma, label_smoothing", [(2.0, 1.0, 0.0), (2.5, 0.5, 0.1), (0.1, 0.5, 0.0)])
def test_simpo_matches_trl_cpo_trainer(beta, simpo_gamma, label_smoothing):
    _trl()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRLExperimentalWarning
        from trl.experimental.cpo import CPOTrainer
    rng = np.random.default_rng(3)
    c, r = -rng.exponential(1.0, size=(2, 7))
    want, trl_metrics, trl_dc, trl_dr, _ = trl_pair_metrics(
        CPOTrainer, "cpo_loss", c, r, 0.0, loss_type="simpo", beta=beta, simpo_gamma=simpo_gamma,
        label_smoothing=label_smoothing, alpha=0.0, cpo_alpha=0.0)
    loss, stats, (dc, dr) = grads(lambda c_, r_: simpo_loss(c_, r_, beta, simpo_gamma, label_smoothing), c, r)
    assert loss == pytest.approx(want, rel=1e-12)
    _assert_stats_match(stats, trl_metrics)
    np.testing.assert_allclose(dc, trl_dc, rtol=1e-12)
    np.testing.assert_allclose(dr, trl_dr, rtol=1e-12)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_orpo_matches_trl(beta):
    _trl()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TRLExperimentalWarning
        from trl.experimental.orpo import ORPOTrainer
    rng = np.random.default_rng(4)
    c, r = -rng.exponential(1.0, size=(2, 7))
    c[0], r[1] = -1e-4, -0.69  # near certainty, and at log1mexp's switch
    want, trl_metrics, trl_dc, trl_dr, trl_dnll = trl_pair_metrics(ORPOTrainer, "odds_ratio_loss", c, r, 1.7,
                                                                     beta=beta)
    loss, stats, (dc, dr, dnll) = grads(lambda c_, r_, n_: orpo_loss(c_, r_, n_, beta), c, r, 1.7)
    # TRL casts the log-probs to float32 inside odds_ratio_loss (.float()), so it agrees to float32 precision
    assert loss == pytest.approx(want, rel=1e-6)
    _assert_stats_match(stats, trl_metrics, rel=1e-5)
    np.testing.assert_allclose(dc, trl_dc, rtol=1e-4)
    np.testing.assert_allclose(dr, trl_dr, rtol=1e-4)
    assert dnll == trl_dnll == 1.0
