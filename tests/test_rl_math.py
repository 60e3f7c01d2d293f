"""The RL math: advantages, KL estimators and losses, as properties, hand-computed numbers and gradient checks."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minirl.gradcheck import check_grad
from minirl.rl.advantages import discounted_returns, gae, group_advantages, rloo_advantages, whiten
from minirl.rl.grpo import LOSS_TYPES, grpo_loss
from minirl.rl.kl import exact_kl, k1, k2, k3, kl_estimate
from minirl.rl.ppo import entropy_bonus, ppo_policy_loss, ppo_value_loss
from minirl.rl.reinforce import kl_regularised_reward, reinforce_loss
from minirl.tensor import Tensor

SCALES = ("group", "batch", "none")
examples = settings(deadline=None, max_examples=60)  # local, so other test files keep their profile


# ------------------------------------------------------------------ helpers
@st.composite
def grouped_rewards(draw, min_groups=1, max_groups=5):
    """(rewards (N,), G) with N = groups * G."""
    G = draw(st.integers(2, 6))
    n_groups = draw(st.integers(min_groups, max_groups))
    rewards = draw(st.lists(st.floats(-10, 10, allow_nan=False), min_size=n_groups * G, max_size=n_groups * G))
    return np.array(rewards, dtype=np.float64), G


@st.composite
def padded_batch(draw, max_B=4, max_T=7):
    """A right-padded batch: rewards, values (B, T), mask (B, T) with lengths in [1, T]."""
    B = draw(st.integers(1, max_B))
    T = draw(st.integers(1, max_T))
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
    floats = st.floats(-5, 5, allow_nan=False)
    rewards = np.array(draw(st.lists(floats, min_size=B * T, max_size=B * T))).reshape(B, T)
    values = np.array(draw(st.lists(floats, min_size=B * T, max_size=B * T))).reshape(B, T)
    mask = (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.float64)
    return rewards, values, mask


def ragged_mask(lengths, T):
    return (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.float64)


def as_vector(loss):
    """A scalar loss as shape (1,): check_grad multiplies the output by a probe, and arithmetic on
    0-d Tensors currently comes back float32 (NumPy returns scalars there), which ruins a float64 check."""
    return loss.reshape(1)


def td_reference(rewards, values, gamma, lam, length, last_value=0.0):
    """GAE for one unpadded sequence, written the textbook way (a second, independent implementation)."""
    r, v = rewards[:length], values[:length]
    v_next = np.append(v[1:], last_value)
    deltas = r + gamma * v_next - v
    adv = np.array([sum((gamma * lam) ** k * deltas[t + k] for k in range(length - t)) for t in range(length)])
    return adv


# ========================================================= group advantages
@examples
@given(grouped_rewards(), st.sampled_from(SCALES))
def test_group_advantages_zero_mean_per_group(data, scale):
    rewards, G = data
    adv = group_advantages(rewards, G, scale_rewards=scale)
    np.testing.assert_allclose(adv.reshape(-1, G).mean(axis=1), 0.0, atol=1e-9)


@examples
@given(grouped_rewards(), st.floats(0.1, 10), st.floats(-10, 10))
def test_group_scaling_is_invariant_to_positive_affine_rewards(data, a, b):
    rewards, G = data
    # eps=0 makes the invariance exact; constant groups map to exact zeros either way
    adv = group_advantages(rewards, G, scale_rewards="group", eps=0.0)
    adv_affine = group_advantages(a * rewards + b, G, scale_rewards="group", eps=0.0)
    spread = np.ptp(rewards.reshape(-1, G), axis=1)
    assume(np.all((spread == 0) | (spread > 1e-3)))  # away from float cancellation in a*r+b
    np.testing.assert_allclose(adv_affine, adv, rtol=1e-6, atol=1e-6)


def test_group_advantages_hand_computed():
    rewards = np.array([1.0, 0.0, 0.0, 0.0, 3.0, 3.0, 5.0, 1.0])  # G=4: two prompts
    # group 1: mean 0.25, unbiased std sqrt((0.5625 + 3 * 0.0625) / 3) = 0.5
    # group 2: mean 3, unbiased std sqrt((0 + 0 + 4 + 4) / 3) = sqrt(8/3)
    none = group_advantages(rewards, 4, "none")
    np.testing.assert_allclose(none, [0.75, -0.25, -0.25, -0.25, 0, 0, 2, -2])
    group = group_advantages(rewards, 4, "group", eps=0.0)
    np.testing.assert_allclose(group, [1.5, -0.5, -0.5, -0.5, 0, 0, 2 / np.sqrt(8 / 3), -2 / np.sqrt(8 / 3)])
    batch = group_advantages(rewards, 4, "batch", eps=0.0)
    np.testing.assert_allclose(batch, none / rewards.std(ddof=1))
    # the default eps=1e-4 is added to the std, TRL's `advantages / (std_rewards + 1e-4)`
    expected = np.array([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-4)
    np.testing.assert_allclose(group_advantages(rewards, 4, "group")[:4], expected)


@examples
@given(grouped_rewards(), st.sampled_from(SCALES))
def test_group_advantages_match_trl_torch(data, scale):
    """TRL's lines, run in torch: torch.std is unbiased (ddof=1) and eps=1e-4 is added to the std."""
    torch = pytest.importorskip("torch")
    rewards_np, G = data
    rewards = torch.tensor(rewards_np)
    mean_grouped_rewards = rewards.view(-1, G).mean(dim=1).repeat_interleave(G, dim=0)
    advantages = rewards - mean_grouped_rewards
    if scale in ("group", "none"):
        std_rewards = rewards.view(-1, G).std(dim=1).repeat_interleave(G, dim=0)
    else:
        std_rewards = rewards.std().expand_as(rewards)
    if scale != "none":
        advantages = advantages / (std_rewards + 1e-4)
    np.testing.assert_allclose(group_advantages(rewards_np, G, scale), advantages.numpy(), atol=1e-9)


def test_identical_rewards_give_zero_advantages_and_exactly_zero_policy_gradient():
    rewards = np.array([0.1, 0.1, 0.1, 1.0, 0.0, 0.5])  # group 0 all equal (mean([0.1]*3) != 0.1 in floats)
    for scale in SCALES:
        adv = group_advantages(rewards, 3, scale)
        assert np.all(adv[:3] == 0.0)
        rng = np.random.default_rng(0)
        logp = Tensor(rng.normal(-1.0, 0.3, size=(6, 5)), requires_grad=True)
        old_logp = logp.data + rng.normal(0, 0.5, size=(6, 5))  # off-policy: ratios != 1, some clipped
        mask = ragged_mask([5, 3, 4, 2, 5, 1], 5)
        for loss_type in LOSS_TYPES:
            logp.grad = None
            loss, _ = grpo_loss(logp, old_logp, adv, mask, loss_type=loss_type)
            loss.backward()
            assert np.all(logp.grad[:3] == 0.0), (scale, loss_type)  # no signal, no gradient
            assert np.abs(logp.grad[3:]).sum() > 0


@examples
@given(grouped_rewards())
def test_rloo_is_reward_minus_mean_of_the_others(data):
    rewards, G = data
    adv = rloo_advantages(rewards, G)
    for i in range(rewards.size):
        start = i // G * G
        others = np.delete(rewards[start:start + G], i - start)
        assert adv[i] == pytest.approx(rewards[i] - others.mean(), abs=1e-9)
    np.testing.assert_allclose(adv.reshape(-1, G).sum(axis=1), 0.0, atol=1e-9)
    # RLOO is the group-centred reward stretched by G / (G - 1)
    np.testing.assert_allclose(adv, G / (G - 1) * group_advantages(rewards, G, "none"), atol=1e-9)


# ======================================================================= GAE
@examples
@given(padded_batch(), st.floats(0, 1))
def test_gae_lambda_one_is_discounted_return_minus_value(batch, gamma):
    rewards, values, mask = batch
    adv, returns = gae(rewards, values, mask, gamma=gamma, lam=1.0)
    expected = (discounted_returns(rewards, mask, gamma) - values) * mask
    np.testing.assert_allclose(adv, expected, atol=1e-9)
    np.testing.assert_allclose(returns, discounted_returns(rewards, mask, gamma), atol=1e-9)


@examples
@given(padded_batch(), st.floats(0, 1))
def test_gae_lambda_zero_is_the_td_residual(batch, gamma):
    rewards, values, mask = batch
    adv, returns = gae(rewards, values, mask, gamma=gamma, lam=0.0)
    next_values = np.zeros_like(values)
    next_values[:, :-1] = values[:, 1:] * mask[:, 1:]  # no bootstrap past a sequence's end
    np.testing.assert_allclose(adv, (rewards + gamma * next_values - values) * mask, atol=1e-12)
    np.testing.assert_allclose(returns, (adv + values) * mask, atol=1e-12)


@examples
@given(padded_batch(), st.floats(0, 1), st.floats(0, 1), st.booleans())
def test_gae_matches_per_sequence_textbook_formula(batch, gamma, lam, bootstrap):
    rewards, values, mask = batch
    last_value = np.linspace(-1, 1, rewards.shape[0]) if bootstrap else None
    adv, _ = gae(rewards, values, mask, gamma, lam, last_value=last_value)
    for b, length in enumerate(mask.sum(axis=1).astype(int)):
        lv = last_value[b] if bootstrap else 0.0
        expected = td_reference(rewards[b], values[b], gamma, lam, length, lv)
        np.testing.assert_allclose(adv[b, :length], expected, atol=1e-9)
        assert np.all(adv[b, length:] == 0)


def test_gae_hand_computed_with_padding_and_bootstrap():
    rewards = np.array([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
    values = np.array([[0.5, 0.5, 0.5], [1.0, 1.0, 9.0]])
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    adv, _ = gae(rewards, values, mask, gamma=0.5, lam=0.5)
    # row 1 (length 2): delta_1 = 2 - 1 = 1, delta_0 = 0 + 0.5 * 1 - 1 = -0.5; A_0 = -0.5 + 0.25 * 1
    np.testing.assert_allclose(adv[1], [-0.25, 1.0, 0.0])
    adv, _ = gae(rewards, values, mask, gamma=0.5, lam=0.5, last_value=[0.0, 4.0])
    # bootstrapping row 1 after its last token: delta_1 = 2 + 0.5 * 4 - 1 = 3
    np.testing.assert_allclose(adv[1], [-0.5 + 0.25 * 3, 3.0, 0.0])


def test_whiten_matches_trl_masked_whiten():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 100.0, -7.0]])
    mask = np.array([[1, 1, 1], [1, 0, 0]])
    kept = np.array([1.0, 2.0, 3.0, 4.0])
    expected = (x - kept.mean()) / np.sqrt(kept.var(ddof=1) + 1e-8)
    np.testing.assert_allclose(whiten(x, mask), expected)
    np.testing.assert_allclose(whiten(x, mask, shift_mean=False), expected + kept.mean())
    w = whiten(kept)
    assert w.mean() == pytest.approx(0, abs=1e-12) and w.std(ddof=1) == pytest.approx(1, abs=1e-6)


# ======================================================================== KL
@examples
@given(st.floats(-30, 0), st.floats(-30, 0))
def test_k3_and_k2_are_nonnegative(logp, ref_logp):
    logp, ref_logp = np.array([logp]), np.array([ref_logp])
    assert k3(logp, ref_logp)[0] >= 0 and k2(logp, ref_logp)[0] >= 0
    # the Tensor path computes the same numbers (without expm1's last-ulp care)
    np.testing.assert_allclose(k3(Tensor(logp), ref_logp).data, k3(logp, ref_logp), rtol=1e-9, atol=1e-12)


@st.composite
def categorical_pair(draw):
    K = draw(st.integers(2, 6))
    p = np.array(draw(st.lists(st.floats(0.01, 1), min_size=K, max_size=K)))
    q = np.array(draw(st.lists(st.floats(0.01, 1), min_size=K, max_size=K)))
    return p / p.sum(), q / q.sum()


@examples
@given(categorical_pair())
def test_k1_and_k3_are_unbiased_estimators_of_kl(pq):
    p, q = pq
    logp, ref_logp = np.log(p), np.log(q)
    for kind in ("k1", "k3"):
        expectation = np.sum(p * kl_estimate(logp, ref_logp, kind))  # E_{x ~ pi}[k(x)] summed exactly
        assert expectation == pytest.approx(exact_kl(p, q), abs=1e-10)


def test_k2_is_biased():
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    kl = exact_kl(p, q)  # 0.5 ln(0.5/0.9) + 0.5 ln(5) = 0.5108
    expectation_k2 = np.sum(p * k2(np.log(p), np.log(q)))  # 0.25 (ln(5/9)^2 + ln(5)^2) = 0.7339
    assert kl == pytest.approx(0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(5.0))
    assert expectation_k2 == pytest.approx(0.25 * (np.log(5 / 9) ** 2 + np.log(5) ** 2))
    assert expectation_k2 - kl > 0.2
    assert exact_kl(p, p) == 0.0 and exact_kl([1.0, 0.0], [0.5, 0.5]) == pytest.approx(np.log(2))


def test_k3_gradient_is_one_minus_the_probability_ratio():
    rng = np.random.default_rng(1)
    logp, ref_logp = rng.normal(-2, 1, size=(3, 4)), rng.normal(-2, 1, size=(3, 4))
    check_grad(lambda lp: k3(lp, ref_logp), logp)
    check_grad(lambda lp: k1(lp, ref_logp), logp)
    check_grad(lambda lp: k2(lp, ref_logp), logp)
    t = Tensor(logp.copy(), requires_grad=True)
    k3(t, ref_logp).sum().backward()
    np.testing.assert_allclose(t.grad, 1 - np.exp(ref_logp - logp))


# ==================================================================== GRPO
def test_grpo_loss_types_hand_computed_with_variable_lengths():
    # two sequences: lengths 3 and 1; ratio exp(log 1.1) = 1.1 everywhere, inside the clip range
    mask = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    old_logp = np.full((2, 3), -1.0)
    logp = Tensor(old_logp + np.log(1.1))
    A = np.array([1.0, -2.0])
    # per-token loss -ratio * A: 3 tokens of -1.1 and one of +2.2
    expected = {
        "grpo": ((-1.1 * 3) / 3 + 2.2 / 1) / 2,  # mean of sequence means = 0.55
        "bnpo": (-1.1 * 3 + 2.2) / 4,  # token mean = -0.275
        "dr_grpo": (-1.1 * 3 + 2.2) / (2 * 5),  # B * max_completion_length = 10
        "dapo": (-1.1 * 3 + 2.2) / 8,  # 8 tokens in the whole generation batch
    }
    for loss_type, value in expected.items():
        loss, stats = grpo_loss(logp, old_logp, A, mask, loss_type=loss_type, max_completion_length=5,
                                num_items_in_batch=8)
        assert float(loss.data) == pytest.approx(value, abs=1e-12), loss_type
        assert stats["ratio_mean"] == pytest.approx(1.1) and stats["clipfrac"] == 0.0
    # dapo without num_items_in_batch normalises by this batch's tokens, which is bnpo
    loss, _ = grpo_loss(logp, old_logp, A, mask, loss_type="dapo")
    assert float(loss.data) == pytest.approx(expected["bnpo"])


@examples
@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**31 - 1), st.floats(0, 0.5))
def test_grpo_loss_types_agree_when_all_lengths_equal(B, L, seed, beta):
    rng = np.random.default_rng(seed)
    logp = Tensor(rng.normal(-1, 0.5, size=(B, L)))
    old_logp = logp.data + rng.normal(0, 0.3, size=(B, L))
    ref_logp = logp.data + rng.normal(0, 0.3, size=(B, L))
    A = rng.normal(size=B)
    mask = np.ones((B, L))
    losses = [float(grpo_loss(logp, old_logp, A, mask, ref_logp=ref_logp, beta=beta, loss_type=t,
                              max_completion_length=L)[0].data) for t in LOSS_TYPES]
    np.testing.assert_allclose(losses, losses[0], rtol=1e-12, atol=1e-12)


def test_dapo_minibatch_losses_sum_to_the_full_batch_loss():
    """TRL sums dapo over accumulation steps (global token count) but averages bnpo: only dapo is split-invariant."""
    rng = np.random.default_rng(2)
    mask = ragged_mask([6, 1, 2, 6], 6)
    logp = Tensor(rng.normal(-1, 0.5, size=(4, 6)))
    old_logp = logp.data + rng.normal(0, 0.1, size=(4, 6))
    A = np.array([1.0, -1.0, 0.5, -0.5])
    total = mask.sum()
    full = {t: float(grpo_loss(logp, old_logp, A, mask, loss_type=t)[0].data) for t in ("bnpo", "dapo")}
    halves = [slice(0, 2), slice(2, 4)]
    dapo = sum(float(grpo_loss(logp[s], old_logp[s], A[s], mask[s], loss_type="dapo",
                               num_items_in_batch=total)[0].data) for s in halves)
    bnpo = np.mean([float(grpo_loss(logp[s], old_logp[s], A[s], mask[s], loss_type="bnpo")[0].data) for s in halves])
    assert dapo == pytest.approx(full["dapo"], abs=1e-12)
    assert abs(bnpo - full["bnpo"]) > 1e-3


def test_grpo_loss_at_ratio_one_has_zero_value_but_nonzero_gradient():
    """THE PUZZLE: the GRPO loss starts at 0, yet it trains.

    With beta = 0 and mu = 1 (one update per rollout, so old_logp == logp and
    every ratio is exactly 1), the per-token loss is -min(1 * A_i, clip(1) * A_i)
    = -A_i. Group-normalised advantages sum to zero within each group, so with
    equal lengths the loss is -mean(A) = 0 (TRL's logged loss sits at 0).

    The gradient is not zero: d ratio / d logp = ratio = 1, so the gradient of
    the per-token loss is -A_i * d logp_i. Summed over the batch this is
    exactly the REINFORCE policy gradient -sum_i A_i grad log pi(o_i), with the
    group mean as baseline. The ratio's *value* is 1 but its *derivative* is
    the score function: the loss is a surrogate whose value means nothing and
    whose gradient is the policy gradient.
    """
    rng = np.random.default_rng(3)
    B, T, G = 8, 5, 4
    A = group_advantages(rng.integers(0, 2, size=B).astype(float) + rng.normal(0, 0.1, size=B), G)
    logp = Tensor(rng.normal(-1.5, 0.5, size=(B, T)), requires_grad=True)
    mask = np.ones((B, T))
    loss, stats = grpo_loss(logp, logp.data.copy(), A, mask, beta=0.0)
    loss.backward()
    assert float(loss.data) == pytest.approx(0.0, abs=1e-12)
    assert stats["ratio_mean"] == 1.0 and stats["approx_kl"] == 0.0
    assert np.linalg.norm(logp.grad) > 0.1
    # the gradient is the REINFORCE gradient: -A_b / (B * T) on every token of sequence b
    np.testing.assert_allclose(logp.grad, np.broadcast_to(-A[:, None] / (B * T), (B, T)), atol=1e-12)
    reinforce = Tensor(logp.data.copy(), requires_grad=True)
    reinforce_loss(reinforce, A, mask)[0].backward()
    np.testing.assert_allclose(logp.grad, reinforce.grad / T, atol=1e-12)  # grpo's 1/|o_i| length normalisation


def test_grpo_clip_stats_and_kl_stat():
    mask = np.ones((2, 2))
    old_logp = np.zeros((2, 2))
    logp = Tensor(np.log(np.array([[1.5, 1.0], [0.5, 1.0]])))  # ratios 1.5 (A>0: high-clipped), 0.5 (A<0: low)
    A = np.array([1.0, -1.0])
    ref_logp = np.log(np.array([[1.5, 0.5], [0.5, 1.0]]))
    _, stats = grpo_loss(logp, old_logp, A, mask, ref_logp=ref_logp, epsilon=0.2, epsilon_high=0.28)
    assert stats["clipfrac_high"] == 0.25 and stats["clipfrac_low"] == 0.25 and stats["clipfrac"] == 0.5
    assert stats["kl"] == pytest.approx(0.25 * (0.5 - np.log(0.5) - 1))  # k3 is nonzero on one token
    assert stats["approx_kl"] == pytest.approx(0.25 * ((0.5 - np.log(1.5)) + (-0.5 - np.log(0.5))))


def test_grpo_loss_matches_trl_torch_formula():
    """TRL's _compute_loss lines in torch against minirl: values and gradients for every loss_type."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    B, T = 6, 5
    mask = ragged_mask([5, 2, 4, 1, 3, 5], T)
    logp_np = rng.normal(-1, 0.5, size=(B, T))
    old_np = logp_np + rng.normal(0, 0.3, size=(B, T))
    ref_np = logp_np + rng.normal(0, 0.3, size=(B, T))
    A_np = rng.normal(size=B)
    eps_low, eps_high, beta, max_len, n_items = 0.2, 0.28, 0.04, 7, 40.0
    for loss_type in LOSS_TYPES:
        lp = torch.tensor(logp_np, requires_grad=True)
        old, ref, adv, m = (torch.tensor(x) for x in (old_np, ref_np, A_np, mask))
        per_token_kl = torch.exp(ref - lp) - (ref - lp) - 1
        coef_1 = torch.exp(lp - old)
        coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
        per_token_loss = -torch.min(coef_1 * adv.unsqueeze(1), coef_2 * adv.unsqueeze(1)) + beta * per_token_kl
        if loss_type == "grpo":
            ref_loss = ((per_token_loss * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
        elif loss_type == "bnpo":
            ref_loss = (per_token_loss * m).sum() / m.sum().clamp(min=1.0)
        elif loss_type == "dr_grpo":
            ref_loss = (per_token_loss * m).sum() / (per_token_loss.size(0) * max_len)
        else:
            ref_loss = (per_token_loss * m).sum() / n_items
        ref_loss.backward()

        logp = Tensor(logp_np.copy(), requires_grad=True)
        loss, _ = grpo_loss(logp, old_np, A_np, mask, ref_logp=ref_np, beta=beta, epsilon=eps_low,
                            epsilon_high=eps_high, loss_type=loss_type, max_completion_length=max_len,
                            num_items_in_batch=n_items)
        loss.backward()
        assert float(loss.data) == pytest.approx(ref_loss.item(), abs=1e-12), loss_type
        np.testing.assert_allclose(logp.grad, lp.grad.numpy(), atol=1e-12, err_msg=loss_type)


# ====================================================================== PPO
@examples
@given(st.floats(0.01, 5), st.floats(-10, 10), st.floats(0.05, 0.5))
def test_clipped_objective_is_a_lower_bound_equal_inside_the_trust_region(ratio, A, eps):
    old_logp = np.zeros((1, 1))
    logp = Tensor(np.full((1, 1), np.log(ratio)))
    r = float(np.exp(logp.data - old_logp)[0, 0])  # the ratio exactly as the loss sees it
    for loss, _ in (ppo_policy_loss(logp, old_logp, np.array([[A]]), np.ones((1, 1)), clip_coef=eps),
                    grpo_loss(logp, old_logp, np.array([A]), np.ones((1, 1)), epsilon=eps)):
        clipped_objective = -float(loss.data)  # min(ratio * A, clip(ratio) * A)
        assert clipped_objective <= r * A + 1e-12
        if 1 - eps <= r <= 1 + eps:
            assert clipped_objective == pytest.approx(r * A, abs=1e-12)
        else:
            assert clipped_objective == pytest.approx(min(r * A, float(np.clip(r, 1 - eps, 1 + eps)) * A), abs=1e-12)


@examples
@given(padded_batch(), st.floats(0.05, 0.5))
def test_ppo_policy_loss_at_ratio_one_is_minus_the_mean_advantage(batch, clip_coef):
    advantages, logp_np, mask = batch
    loss, stats = ppo_policy_loss(Tensor(logp_np), logp_np, advantages, mask, clip_coef=clip_coef)
    assert float(loss.data) == pytest.approx(-(advantages * mask).sum() / mask.sum(), abs=1e-12)
    assert stats["approx_kl"] == 0.0 and stats["old_approx_kl"] == 0.0 and stats["clipfrac"] == 0.0


def test_ppo_policy_stats_hand_computed():
    logp = Tensor(np.log(np.array([[1.5, 1.1, 7.0]])))  # the padded third token must not count
    mask = np.array([[1.0, 1.0, 0.0]])
    _, stats = ppo_policy_loss(logp, np.zeros((1, 3)), np.ones((1, 3)), mask, clip_coef=0.2)
    assert stats["clipfrac"] == 0.5
    assert stats["old_approx_kl"] == pytest.approx(-(np.log(1.5) + np.log(1.1)) / 2)
    assert stats["approx_kl"] == pytest.approx(((0.5 - np.log(1.5)) + (0.1 - np.log(1.1))) / 2)


def test_ppo_value_loss_hand_computed():
    values = Tensor(np.array([[1.0, 3.0, 50.0]]))
    old_values = np.array([[0.0, 2.0, 0.0]])
    returns = np.array([[0.0, 0.0, 0.0]])
    mask = np.array([[1.0, 1.0, 0.0]])
    # token 0: unclipped 1, clipped (0 + 0.5)^2 = 0.25 -> max 1; token 1: 9 vs (2.5)^2 -> 9
    loss, stats = ppo_value_loss(values, old_values, returns, mask, clip_coef=0.5)
    assert float(loss.data) == pytest.approx(0.5 * (1 + 9) / 2) and stats["v_loss"] == float(loss.data)
    # moving past the clip towards worse values is caught by the max: v = -1 from old 0, R = 0.4
    loss, stats = ppo_value_loss(Tensor([[-1.0]]), [[0.0]], [[0.4]], [[1.0]], clip_coef=0.5)
    assert float(loss.data) == pytest.approx(0.5 * 1.4**2) and stats["vf_clipfrac"] == 0.0
    loss, stats = ppo_value_loss(Tensor([[2.0]]), [[0.0]], [[1.8]], [[1.0]], clip_coef=0.5)
    assert float(loss.data) == pytest.approx(0.5 * 1.3**2, rel=1e-6) and stats["vf_clipfrac"] == 1.0
    loss, _ = ppo_value_loss(values, None, returns, mask, clip_coef=None)
    assert float(loss.data) == pytest.approx(0.5 * (1 + 9) / 2)


# ================================================================ REINFORCE
def test_reinforce_loss_hand_computed():
    logp = Tensor(np.array([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]]))
    mask = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss, stats = reinforce_loss(logp, np.array([2.0, -1.0]), mask)
    # -(2 * (-3) + (-1) * (-1.5)) / 2 = 2.25
    assert float(loss.data) == pytest.approx(2.25) and stats["seq_logp_mean"] == pytest.approx(-2.25)
    loss, _ = reinforce_loss(logp, np.array([[2.0, 2.0, 5.0], [-1.0, -1.0, -1.0]]), mask)
    assert float(loss.data) == pytest.approx(2.25)


def test_kl_regularised_reward_is_perls_objective():
    reward = np.array([1.0, 0.0])
    logratio = np.array([[0.2, 0.3, 5.0], [-0.1, 0.0, 0.0]])  # logp - anchor_logp per token
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    out = kl_regularised_reward(reward, logratio, beta=0.05, mask=mask)
    np.testing.assert_allclose(out, [0.95 * 1.0 - 0.05 * 0.5, 0.0 - 0.05 * -0.1])
    np.testing.assert_allclose(kl_regularised_reward(reward, np.array([0.5, -0.1]), 0.05), out)
    np.testing.assert_allclose(kl_regularised_reward(reward, logratio, beta=0.0, mask=mask), reward)


# =========================================================== gradient checks
def _grpo_inputs(seed, B=4, T=5):
    """float64 inputs whose ratios sit well inside or outside [0.8, 1.2] and [0.8, 1.28], never near a clip edge."""
    rng = np.random.default_rng(seed)
    logp = rng.normal(-1.0, 0.5, size=(B, T))
    target = rng.choice([0.6, 0.9, 1.05, 1.1, 1.5], size=(B, T))  # the ratios
    old_logp = logp - np.log(target)
    ref_logp = logp + rng.normal(0, 0.3, size=(B, T))
    A = rng.normal(size=B)
    mask = ragged_mask(rng.integers(1, T + 1, size=B), T)
    return logp, old_logp, ref_logp, A, mask


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_grpo_loss_gradcheck(loss_type, beta):
    logp, old_logp, ref_logp, A, mask = _grpo_inputs(seed=5)
    check_grad(lambda lp: as_vector(grpo_loss(lp, old_logp, A, mask, ref_logp=ref_logp, beta=beta, epsilon=0.2,
                                              epsilon_high=0.28, loss_type=loss_type, max_completion_length=7)[0]),
               logp)


def test_ppo_policy_loss_gradcheck():
    logp, old_logp, _, _, mask = _grpo_inputs(seed=6)
    A = np.random.default_rng(6).normal(size=logp.shape)
    check_grad(lambda lp: as_vector(ppo_policy_loss(lp, old_logp, A, mask, clip_coef=0.2)[0]), logp)


@pytest.mark.parametrize("clip_coef", [0.2, None])
def test_ppo_value_loss_gradcheck(clip_coef):
    rng = np.random.default_rng(7)
    old_values = rng.normal(size=(3, 4))
    values = old_values + rng.choice([-0.5, -0.1, 0.1, 0.5], size=(3, 4))  # |v - v_old| away from 0.2
    returns = rng.normal(size=(3, 4))
    mask = ragged_mask([4, 2, 3], 4)
    check_grad(lambda v: as_vector(ppo_value_loss(v, old_values, returns, mask, clip_coef=clip_coef)[0]), values)


@pytest.mark.parametrize("per_token", [False, True])
def test_reinforce_loss_gradcheck(per_token):
    rng = np.random.default_rng(8)
    logp = rng.normal(-1, 0.5, size=(3, 4))
    A = rng.normal(size=(3, 4) if per_token else 3)
    check_grad(lambda lp: as_vector(reinforce_loss(lp, A, ragged_mask([4, 1, 3], 4))[0]), logp)


def test_entropy_bonus_gradcheck_and_value():
    rng = np.random.default_rng(9)
    logits = rng.normal(size=(2, 3, 5))
    mask = ragged_mask([3, 1], 3)
    check_grad(lambda x: as_vector(entropy_bonus(x, mask)), logits)
    assert float(entropy_bonus(Tensor(np.zeros((1, 2, 4))), np.ones((1, 2))).data) == pytest.approx(np.log(4))


# ================================================================ bad input
@pytest.mark.parametrize("call, field", [
    (lambda: group_advantages(np.zeros(4), 1), "group_size"),
    (lambda: group_advantages(np.zeros(5), 2), "divisible"),
    (lambda: group_advantages(np.zeros(4), 2, scale_rewards="std"), "scale_rewards"),
    (lambda: group_advantages(np.zeros(4), 2, eps=-1.0), "eps"),
    (lambda: rloo_advantages(np.zeros(6), 4), "divisible"),
    (lambda: rloo_advantages(np.zeros(3), 1), "group_size"),
    (lambda: gae(np.zeros((1, 2)), np.zeros((1, 2)), np.ones((1, 2)), gamma=1.5, lam=0.9), "gamma"),
    (lambda: gae(np.zeros((1, 2)), np.zeros((1, 2)), np.ones((1, 2)), gamma=0.9, lam=-0.1), "lam"),
    (lambda: gae(np.zeros((1, 2)), np.zeros((1, 3)), np.ones((1, 2)), gamma=0.9, lam=0.9), "values"),
    (lambda: discounted_returns(np.zeros((1, 2)), np.ones((1, 2)), gamma=-0.5), "gamma"),
    (lambda: kl_estimate(np.zeros(2), np.zeros(2), kind="k4"), "kind"),
    (lambda: grpo_loss(Tensor(np.zeros((1, 2))), np.zeros((1, 2)), np.zeros(1), np.ones((1, 2)),
                       loss_type="ppo"), "loss_type"),
    (lambda: grpo_loss(Tensor(np.zeros((1, 2))), np.zeros((1, 2)), np.zeros(1), np.ones((1, 2)), epsilon=0.0),
     "epsilon"),
    (lambda: grpo_loss(Tensor(np.zeros((1, 2))), np.zeros((1, 2)), np.zeros(1), np.ones((1, 2)),
                       ref_logp=np.zeros((1, 2)), beta=-0.1), "beta"),
    (lambda: grpo_loss(Tensor(np.zeros((1, 2))), np.zeros((1, 2)), np.zeros(1), np.ones((1, 2)), beta=0.1),
     "ref_logp"),
    (lambda: grpo_loss(Tensor(np.zeros((1, 2))), np.zeros((1, 2)), np.zeros(1), np.ones((1, 2)),
                       loss_type="dr_grpo", max_completion_length=1), "max_completion_length"),
    (lambda: grpo_loss(Tensor(np.zeros((1, 2))), np.zeros((1, 3)), np.zeros(1), np.ones((1, 2))), "old_logp"),
    (lambda: grpo_loss(Tensor(np.zeros((2, 2))), np.zeros((2, 2)), np.zeros(3), np.ones((2, 2))), "advantages"),
    (lambda: ppo_policy_loss(Tensor(np.zeros((1, 2))), np.zeros((1, 2)), np.zeros((1, 2)), np.ones((1, 2)),
                             clip_coef=0.0), "clip_coef"),
    (lambda: ppo_value_loss(Tensor(np.zeros((1, 2))), np.zeros((1, 2)), np.zeros((1, 2)), np.ones((1, 2)),
                            clip_coef=-1.0), "clip_coef"),
    (lambda: kl_regularised_reward(np.zeros(2), np.zeros(2), beta=1.5), "beta"),
])
def test_bad_input_raises_value_error_naming_the_field(call, field):
    with pytest.raises(ValueError, match=field):
        call()


def test_scale_rewards_error_lists_the_allowed_values():
    with pytest.raises(ValueError) as info:
        group_advantages(np.zeros(4), 2, scale_rewards="std")
    assert all(v in str(info.value) for v in SCALES)
    with pytest.raises(ValueError) as info:
        grpo_loss(Tensor(np.zeros((1, 2))), np.zeros((1, 2)), np.zeros(1), np.ones((1, 2)), loss_type="x")
    assert all(v in str(info.value) for v in LOSS_TYPES)
