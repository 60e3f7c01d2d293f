# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Lesson 4 — PPO for language models
#
# PPO (Schulman et al., arXiv 1707.06347) is the algorithm of classic RLHF
# (Ziegler et al., arXiv 1909.08593; InstructGPT). Unlike GRPO (lesson 3) it
# learns a **value function** and gives every token its own advantage. This
# lesson builds each piece with small arrays you can check by hand, then runs
# real PPO steps on minirl's shipped SFT model:
#
# 1. the RL framing of a completion: states, actions, per-token rewards
# 2. GAE, by hand and with `gae`; what λ = 0 and λ = 1 mean
# 3. the clipped surrogate: where its gradient vanishes
# 4. the value function: a head on the policy's trunk, the clipped value loss,
#    explained variance
# 5. the adaptive KL controller
# 6. a short real PPO run
#
# The code is `minirl/rl/advantages.py` (GAE) and `minirl/rl/ppo.py` (the
# algorithm and its two losses, read top to bottom).
# Run it with `python tutorials/04_ppo.py`, or open it in Jupyter (jupytext).
# Every claim is an `assert`.

# %%
import sys
from pathlib import Path

# minirl before NumPy: importing minirl pins BLAS to one thread, which only takes effect
# if NumPy is not loaded yet (two BLAS threads on a busy 2-core machine run this lesson ~5x slower)
try:
    import minirl
except ModuleNotFoundError:  # a source checkout without `pip install -e .`: the repo root is one level up
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    sys.path.insert(0, str(here.parent))
    import minirl

import numpy as np

from minirl.rl.advantages import discounted_returns, gae
from minirl.rl.grpo import grpo_loss
from minirl.rl.ppo import (PPO, AdaptiveKLController, PPOConfig, explained_variance, logprobs_and_values,
                           ppo_policy_loss, ppo_value_loss)
from minirl.rl.rollout import sample_rollout
from minirl.tasks import CharTokenizer, encode_chat, resolve_task
from minirl.tensor import Tensor, no_grad
from minirl.optim import OptimizerConfig
from minirl.train import TrainConfig, train

np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 1. A completion is an episode
#
# PPO needs states, actions and rewards. For a language model:
#
# - a **state** is the prefix so far: the prompt plus the completion tokens
#   already written, `s_t = prompt + y_<t`;
# - an **action** is the next token `y_t`, drawn from `π(· | s_t)`;
# - the episode ends at eos (or when the token budget runs out).
#
# The verifier judges only the finished answer, so the task reward arrives on
# the **last** token. RLHF adds a second reward on **every** token: a penalty
# for drifting from the reference model (the SFT model we started from),
#
#     r_t = -kl_coef · k1_t  (+ R on the last token),   k1_t = log π_old(y_t|s_t) - log π_ref(y_t|s_t)
#
# (TRL's original PPOTrainer, `compute_rewards`). With γ = 1 the return from
# the first token is `R - kl_coef · Σ_t k1_t`: the verifier's reward minus
# kl_coef times a sample of the sequence's KL(π‖π_ref), the objective of
# Ziegler et al.
#
# Two completions of the prompt `12+30`: "42" (right, 3 tokens with eos) and
# "4" (wrong, 2 tokens), right-padded to 3 positions. The log-probs are made
# up; in PPO they come from the policy and the reference.

# %%
tok = CharTokenizer()
task = resolve_task("add")
prompt = "12+30"
completions = ["42", "4"]
R = np.array([float(task.verify(prompt, c)) for c in completions])  # (B,) verifier rewards
mask = np.array([[1, 1, 1],     # '4' '2' <eos>
                 [1, 1, 0]],    # '4' <eos> <pad>
                dtype=np.float64)  # (B, T)
logp = np.array([[-0.10, -0.30, -0.05],      # log π_old(y_t | s_t)
                 [-0.10, -1.20, 0.00]])
ref_logp = np.array([[-0.20, -0.50, -0.05],  # log π_ref(y_t | s_t)
                     [-0.20, -2.00, 0.00]])
kl_coef = 0.05

# the lines of PPO.batch, steps 2 and 3
k1 = (logp - ref_logp) * mask  # (B, T)
token_rewards = -kl_coef * k1  # (B, T): the KL penalty on every token
last = mask.sum(axis=1).astype(int) - 1  # (B,): index of each sequence's last token
token_rewards[np.arange(2), last] += R  # the task reward on the last token

prompt_text = tok.decode(encode_chat(tok, prompt)[0])
for b, completion in enumerate(completions):
    actions = tok.encode(completion) + [tok.eos_id]
    print(f"completion {completion!r}: verifier reward R = {R[b]:.0f}")
    print(f"  {'t':>2}  {'state s_t (prefix)':<22} {'action':<7} {'k1_t':>5} {'r_t':>7}")
    for t, a in enumerate(actions):
        state = prompt_text + completion[:t]
        print(f"  {t:>2}  {state!r:<22} {tok.itos[a]!r:<7} {k1[b, t]:5.2f} {token_rewards[b, t]:7.3f}")

expected = np.array([[-0.005, -0.010, 1.0],
                     [-0.005, -0.040, 0.0]])
assert np.allclose(token_rewards, expected)
# with γ = 1 the return from the first token is R - kl_coef · (sequence KL)
G0 = discounted_returns(token_rewards, mask, gamma=1.0)[:, 0]
print("return from t = 0:", G0, " R - kl_coef·Σk1:", R - kl_coef * k1.sum(axis=1))
assert np.allclose(G0, R - kl_coef * k1.sum(axis=1))

# %% [markdown]
# ## 2. GAE: how much of the future to trust
#
# A value function `V(s_t)` predicts the return from state `s_t`. The TD
# residual `δ_t = r_t + γ V(s_{t+1}) - V(s_t)` says how much better the
# step went than predicted, and GAE (Schulman et al., arXiv 1506.02438) sums
# the residuals ahead with weights `(γλ)^k`:
#
#     A_t = δ_t + γλ δ_{t+1} + (γλ)² δ_{t+2} + ...  =  δ_t + γλ A_{t+1}
#
# After the last token the episode has ended: `V = 0` there. The backward loop
# below is CleanRL's `lastgaelam`, for one sequence: the first completion with
# made-up values. PPO's defaults are γ = 1, λ = 0.95.

# %%
gamma, lam = 1.0, 0.95
values = np.array([[0.60, 0.80, 0.90],
                   [0.50, 0.30, 0.00]]) * mask  # (B, T): V(s_t), 0 on padding
r, v = token_rewards[0], values[0]  # the first completion: 3 tokens
adv_by_hand = np.zeros(3)
lastgaelam = 0.0
for t in reversed(range(3)):
    next_value = v[t + 1] if t + 1 < 3 else 0.0  # the episode ends after the last token
    delta = r[t] + gamma * next_value - v[t]
    lastgaelam = delta + gamma * lam * lastgaelam
    adv_by_hand[t] = lastgaelam

advantages, returns = gae(token_rewards, values, mask, gamma, lam)  # (B, T) each
print("by hand:      ", adv_by_hand)
print("gae(...)[0]:  ", advantages[0])
print(f"error: {np.max(np.abs(adv_by_hand - advantages[0])):.1e}")
assert np.allclose(adv_by_hand, advantages[0], rtol=0, atol=1e-12)
assert np.allclose(returns, (advantages + values) * mask)  # the value head's regression target

# %% [markdown]
# The two ends of λ, on both sequences (the second one is padded), with γ = 0.9
# so that the discount shows:
#
# - **λ = 1**: the residuals telescope, `A_t = G_t - V(s_t)`, the discounted
#   return actually sampled minus the prediction (Monte Carlo).
# - **λ = 0**: `A_t = δ_t`, one real reward, then trust `V` for the rest.

# %%
g = 0.9
adv_l1, _ = gae(token_rewards, values, mask, g, 1.0)
mc = (discounted_returns(token_rewards, mask, g) - values) * mask
print("λ = 1:      ", adv_l1.ravel())
print("G_t - V(s_t):", mc.ravel())
assert np.allclose(adv_l1, mc, rtol=0, atol=1e-12)

adv_l0, _ = gae(token_rewards, values, mask, g, 0.0)
next_values = np.zeros_like(values)
next_values[:, :-1] = values[:, 1:] * mask[:, 1:]  # V(s_{t+1}), 0 after a sequence's last token
td = (token_rewards + g * next_values - values) * mask
print("λ = 0:      ", adv_l0.ravel())
print("δ_t:         ", td.ravel())
assert np.allclose(adv_l0, td, rtol=0, atol=1e-12)

# %% [markdown]
# λ trades bias for variance. λ = 1 uses only sampled rewards, so it is
# unbiased whatever `V` is, but it carries the randomness of every token
# sampled after `t`; λ = 0 replaces that future with `V`'s single guess, which
# has low variance but is wrong exactly where `V` is wrong.
#
# An untrained value head makes the bias obvious. With `V ≡ 0` (where minirl's
# zero-initialised head starts), λ = 0 gives the first token of the right
# answer only its own KL penalty, and it never hears of the +1 at the end:

# %%
zero_v = np.zeros_like(values)
a0 = gae(token_rewards, zero_v, mask, 1.0, 0.0)[0][0, 0]
a1 = gae(token_rewards, zero_v, mask, 1.0, 1.0)[0][0, 0]
print(f"V = 0, first token of '42': λ = 0 gives {a0:.3f}, λ = 1 gives {a1:.3f}")
assert np.isclose(a0, -0.005) and np.isclose(a1, 0.985)

# %% [markdown]
# PPO then whitens the advantages over all completion tokens of the batch
# (`whiten_advantages=True`, TRL's `masked_whiten`), so their scale does not
# depend on the reward's.
#
# ## 3. The clipped surrogate
#
# After sampling, PPO takes several gradient steps on the same batch. The
# ratio `ρ = π_θ(y_t|s_t) / π_old(y_t|s_t)` measures how far the policy has
# moved on a token, and the objective per token is
#
#     min(ρ·A, clip(ρ, 1-ε, 1+ε)·A)         (the loss is its negative, CleanRL's pg_loss)
#
# The min takes the pessimistic of the two. Tabulated with ε = 0.2:

# %%
eps = 0.2
ratios = np.round(np.arange(0.5, 1.51, 0.1), 2)
for A in (1.0, -1.0):
    print(f"A = {A:+.0f}")
    print(f"  {'ratio':>5} {'ρ·A':>6} {'clip(ρ)·A':>10} {'objective':>10}  gradient")
    for rho in ratios:
        unclipped, clipped = rho * A, np.clip(rho, 1 - eps, 1 + eps) * A
        objective = min(unclipped, clipped)
        flat = clipped < unclipped  # the min picked the constant clipped branch
        print(f"  {rho:5.1f} {unclipped:6.2f} {clipped:10.2f} {objective:10.2f}  {'0 (flat)' if flat else 'A·ρ'}")

# %% [markdown]
# For A > 0 the objective stops growing once ρ > 1 + ε: making the good token
# even more likely earns nothing more from this batch. For A < 0 it stops
# once ρ < 1 - ε. On the other side the objective is **not** clipped: a
# token whose probability moved the wrong way (A > 0, ρ < 1 - ε) still gets
# the full gradient back. That is the "pessimistic bound" of the PPO paper.
#
# The same, through minirl's autograd: one token with `logp = log ρ` and
# `old_logp = 0`. Since `dρ/dlogp = ρ`, the objective's gradient is `A·ρ`
# where it is not flat.

# %%
print(f"{'A':>3} {'ratio':>5} {'d objective / d logp':>21} {'clipfrac':>8}")
for A in (1.0, -1.0):
    for rho in (0.5, 0.9, 1.0, 1.1, 1.5):
        logp_t = Tensor(np.array([[np.log(rho)]]), requires_grad=True)  # (1, 1), float64
        pg_loss, stats = ppo_policy_loss(logp_t, np.zeros((1, 1)), np.array([A]), np.ones((1, 1)), clip_coef=eps)
        pg_loss.backward()
        dobjective = 0.0 - logp_t.grad.item()  # the loss is minus the objective (0.0 - : no "-0.000")
        print(f"{A:+3.0f} {rho:5.1f} {dobjective:21.3f} {stats['clipfrac']:8.0f}")
        flat = (A > 0 and rho > 1 + eps) or (A < 0 and rho < 1 - eps)
        assert np.isclose(dobjective, 0.0 if flat else A * rho, rtol=0, atol=1e-12)

# %% [markdown]
# Note `clipfrac`: CleanRL's diagnostic counts tokens with `|ρ - 1| > ε`,
# whatever the sign of A, so it is the fraction of tokens *outside the trust
# region*, not the fraction with zero gradient (A > 0, ρ = 0.5 counts, yet its
# gradient is the full A·ρ). minirl's `grpo_loss` reports TRL's version
# instead, which counts only the flat side (`clipfrac_low` + `clipfrac_high`):

# %%
half = np.array([[np.log(0.5)]])  # ρ = 0.5, A = +1: outside the trust region, not flat
_, ppo_stats = ppo_policy_loss(Tensor(half), np.zeros((1, 1)), np.array([1.0]), np.ones((1, 1)), clip_coef=eps)
_, grpo_stats = grpo_loss(Tensor(half), np.zeros((1, 1)), np.array([1.0]), np.ones((1, 1)), epsilon=eps)
print(f"A = +1, ratio 0.5: clipfrac {ppo_stats['clipfrac']:.0f} (ppo_policy_loss), {grpo_stats['clipfrac']:.0f} (grpo_loss)")
assert ppo_stats["clipfrac"] == 1.0 and grpo_stats["clipfrac"] == 0.0

# %% [markdown]
# ## 4. The value function
#
# **A head on the trunk.** minirl's value function is one `Linear(C, 1)` on the
# policy's final hidden states (`TransformerConfig(value_head=True)`), not a
# second transformer. One trunk forward gives both the log-probs and the
# values, so an update costs half the compute and memory of an actor plus a
# critic of the same size, and the value head reads features the policy has
# already learned about the task. The price: value and policy gradients share
# the trunk, and `vf_coef` (0.1, TRL's) sets how hard the value loss may pull
# on it. The value of the state before token `t` is read at the same position
# whose logits give `log π(y_t | s_t)`.
#
# **The clipped value loss** treats the value like the policy: around the
# value predicted at sampling time `v_old`, it takes the pessimistic of
#
#     0.5 (v - R)²   and   0.5 (v_old + clip(v - v_old, -c, c) - R)²
#
# so once the prediction has moved more than `c` towards the return `R` in
# this batch, its gradient vanishes. (Andrychowicz et al.'s large study of
# PPO's choices, arXiv 2006.05990, found no benefit from value clipping; it is
# on by default, `clip_vloss=True`, because TRL and CleanRL do it.) With
# `v_old = 0`, `R = 1`, `c = 0.2`:

# %%
v_old, R_target, c = 0.0, 1.0, 0.2
print(f"{'v':>5} {'0.5(v-R)²':>10} {'clipped':>8} {'v_loss':>7} {'d v_loss / dv':>14}")
for v_new in (-0.5, 0.1, 0.3, 0.5, 1.0):
    v_t = Tensor(np.array([[v_new]]), requires_grad=True)  # (1, 1), float64
    v_loss, _ = ppo_value_loss(v_t, np.array([[v_old]]), np.array([[R_target]]), np.ones((1, 1)), clip_coef=c)
    v_loss.backward()
    unclipped = 0.5 * (v_new - R_target) ** 2
    clipped = 0.5 * (v_old + np.clip(v_new - v_old, -c, c) - R_target) ** 2
    print(f"{v_new:5.1f} {unclipped:10.3f} {clipped:8.3f} {v_loss.item():7.3f} {v_t.grad.item() + 0.0:14.2f}")
    assert np.isclose(v_loss.item(), max(unclipped, clipped))
    moved_towards_R_too_far = v_new - v_old > c
    assert np.isclose(v_t.grad.item(), 0.0 if moved_towards_R_too_far else v_new - R_target, rtol=0, atol=1e-12)

# %% [markdown]
# **Explained variance** is the value head's report card (CleanRL logs it):
#
#     EV = 1 - Var[R - V] / Var[R]     over the completion tokens
#
# 1 is a perfect predictor, 0 is no better than a constant, and below 0 is
# worse than a constant. It ignores a constant offset: a head that is right up
# to +5 everywhere still scores 1, and every constant scores exactly 0.

# %%
rng = np.random.default_rng(0)
returns_ = rng.standard_normal((8, 25))  # (B, T)
ones = np.ones_like(returns_)
noise = rng.standard_normal(returns_.shape)
ev = {
    "perfect (V = R)": explained_variance(returns_, returns_, ones),
    "perfect + 5": explained_variance(returns_ + 5.0, returns_, ones),
    "constant (V = mean R)": explained_variance(np.full_like(returns_, returns_.mean()), returns_, ones),
    "constant (V = 0)": explained_variance(np.zeros_like(returns_), returns_, ones),
    "noisy (V = R + 0.5 noise)": explained_variance(returns_ + 0.5 * noise, returns_, ones),
    "anti (V = -R)": explained_variance(-returns_, returns_, ones),
}
for name, value in ev.items():
    print(f"{name:>26}: {value:+.3f}")
assert ev["perfect (V = R)"] == 1.0 and np.isclose(ev["perfect + 5"], 1.0)
assert abs(ev["constant (V = mean R)"]) < 1e-12 and ev["constant (V = 0)"] == 0.0
assert 0.5 < ev["noisy (V = R + 0.5 noise)"] < 0.9  # about 1 - 0.25 = 0.75
assert np.isclose(ev["anti (V = -R)"], -3.0)  # Var[2R] / Var[R] = 4

# %% [markdown]
# ## 5. The adaptive KL controller
#
# A fixed `kl_coef` is hard to choose: too small and the policy wanders off
# the reference, too large and it cannot move. Ziegler et al. (arXiv
# 1909.08593, section 2.2) adapt it towards a target sequence KL after every
# batch of `n` sequences:
#
#     e = clip(KL / target - 1, -0.2, 0.2),     kl_coef ← kl_coef · (1 + e · n / horizon)
#
# With TRL's defaults (target 6 nats, horizon 10000) and 32 sequences a batch:

# %%
n = 32
rows = {"KL = 12 (above)": 12.0, "KL = 600 (far above)": 600.0, "KL = 6.6": 6.6, "KL = 6 (on target)": 6.0,
        "KL = 3 (below)": 3.0}
coefs = {}
for name, kl in rows.items():
    ctl = AdaptiveKLController(init_kl_coef=0.05, target=6.0, horizon=10000)
    coefs[name] = [ctl.update(kl, n) for _ in range(5)]
    print(f"{name:>21}: kl_coef after 5 batches", " ".join(f"{x:.6f}" for x in coefs[name]))
assert np.isclose(coefs["KL = 12 (above)"][0], 0.05 * (1 + 0.2 * n / 10000))  # e = 1, clipped to 0.2
assert coefs["KL = 600 (far above)"] == coefs["KL = 12 (above)"]  # the clip caps the step
assert np.isclose(coefs["KL = 6.6"][0], 0.05 * (1 + 0.1 * n / 10000))
assert coefs["KL = 6 (on target)"] == [0.05] * 5
assert np.isclose(coefs["KL = 3 (below)"][-1], 0.05 * (1 - 0.2 * n / 10000) ** 5)
assert coefs["KL = 3 (below)"][-1] < 0.05 < coefs["KL = 12 (above)"][-1]

# %% [markdown]
# The controller is slow on purpose: each batch moves `kl_coef` by at most a
# factor `1 ± 0.2·n/horizon`, so doubling it takes `ln 2 / 0.2 ≈ 3.5`
# horizons of sequences at full error.

# %%
batches_to_double = np.log(2) / np.log(1 + 0.2 * n / 10000)
print(f"batches of {n} to double kl_coef at full error: {batches_to_double:.0f} "
      f"({batches_to_double * n:.0f} sequences)")
assert 1000 < batches_to_double < 1100

# %% [markdown]
# A classroom run of 60 batches of 64 sequences moves it by less than 10 %;
# the default `minirl run ppo` (its preset: 300 batches of 32 prompts x 4
# samples) could double it, were the error at its clip every step:

# %%
most = (1 + 0.2 * 64 / 10000) ** 60
print(f"largest change of kl_coef in 60 batches of 64: x{most:.3f} (or x{(1 - 0.2 * 64 / 10000) ** 60:.3f})")
assert most < 1.1
default = (1 + 0.2 * 128 / 10000) ** 300
print(f"largest change in 300 batches of 128: x{default:.2f} (or x{(1 - 0.2 * 128 / 10000) ** 300:.2f})")
assert 2 < default < 2.2

# %% [markdown]
# So to watch the controller work in minirl, lower `kl_horizon`. The target
# matters too: TRL's 6 nats was chosen for completions tens of tokens long.
# minirl's answers are a few characters; while their KL stays below the
# target, the controller only ever lowers `kl_coef`.
# `PPOConfig(kl_controller="adaptive", target_kl=..., kl_horizon=...)` turns it on.
#
# ## 6. Real PPO steps on the shipped SFT model
#
# The policy is the SFT model with a fresh value head; the reference is the
# same SFT model, frozen. The shipped SFT checkpoint has no value head, so
# `load(..., value_head=True)` adds a zero one: every value starts at 0.

# %%
policy = minirl.load("sft", value_head=True)
ref = minirl.load("sft")
assert np.all(policy.value_head.weight.data == 0)

peek = sample_rollout(policy, "add", np.random.default_rng(0), num_prompts=2, group_size=2)
with no_grad():
    peek_logp, peek_values, logits = logprobs_and_values(policy, peek, temperature=1.0)  # one trunk forward
print(f"logits {logits.shape}; log-probs {peek_logp.shape} and values {peek_values.shape} from the same forward")
print("values of a fresh head:", peek_values.data[0])
assert peek_logp.shape == peek_values.shape == peek.completion_mask.shape
assert np.all(peek_values.data == 0)

# %% [markdown]
# Five PPO steps: each samples 8 prompts × 4 completions, computes the
# per-token rewards and GAE of sections 1–2, then makes 2 epochs × 2
# minibatches = 4 updates with the losses of sections 3–4. `train` logs each
# step's mean over its 4 updates.
#
# How to read the columns:
#
# - `kl`, the batch's mean sequence KL(π‖π_ref), is 0 at step 0: the policy
#   *is* the reference (exactly, for the shipped bf16 checkpoint; the
#   optimizer's rounding of the stored weights to bf16 changes nothing).
# - `approx_kl`, CleanRL's per-token `mean((ρ - 1) - log ρ)` between the
#   policy being updated and the one that sampled the batch, is never negative
#   (but for rounding). The first update of each batch sees ρ = 1; the later
#   ones see how far the earlier ones went.
# - `clipfrac`: the fraction of tokens whose ratio left `[1 - ε, 1 + ε]`.
#   Clipping removes the incentive to go further but does not stop a large
#   step; approx_kl far above ~0.01 per token (Spinning Up's `target_kl`, at
#   which it stops a batch's updates early) with a large clipfrac means the
#   learning rate is too high for this model: try `lr=5e-5` and compare.
# - `explained_variance` is measured on each new batch before its updates,
#   so at step 0, with every value 0, it is exactly 0. `v_loss` should fall
#   as the head learns.

# %%
algo = PPO(PPOConfig(num_prompts=8, num_generations=4, update_epochs=2, num_minibatches=2), ref)
history = train(policy, algo, TrainConfig(steps=5), OptimizerConfig(lr=2e-4), progress=False).history
keys = ("reward", "kl", "approx_kl", "clipfrac", "v_loss", "explained_variance", "entropy")
print(f"{'step':>4} " + " ".join(f"{k:>18}" for k in keys))
for h_ in history:
    print(f"{h_['step']:>4} " + " ".join(f"{h_[k]:18.5f}" for k in keys))

for h_ in history:
    assert all(np.isfinite(h_[k]) for k in ("reward", "kl", "approx_kl", "clipfrac", "v_loss", "pg_loss", "entropy"))
    assert 0.0 <= h_["clipfrac"] <= 1.0
    assert h_["approx_kl"] >= -1e-6
assert abs(history[0]["kl"]) < 1e-3  # policy = reference when the first batch is sampled
ev0 = history[0]["explained_variance"]
assert np.isnan(ev0) or abs(ev0) < 1e-12  # zero values explain nothing (NaN only if all returns are equal)

# %% [markdown]
# Finally, section 1 on a real batch: the per-token rewards that `PPO.batch`
# built sum, on every completion, to its reward minus kl_coef times its
# sequence KL, and their batch mean is exactly the logged `kl`.

# %%
batch = algo.batch(policy, np.random.default_rng(1), step=5)
tr, m = batch.extra["token_rewards"], batch.completion_mask
seq_kl = (batch.rewards - tr.sum(axis=1)) / batch.stats["kl_coef"]  # Σ_t k1_t, recovered from the rewards
for i in range(0, 12, 4):  # one completion of each of three prompts
    print(f"{batch.examples[i].prompt:>8} -> {batch.completions[i]!r:<7} R = {batch.rewards[i]:.0f}  "
          f"r_t = {np.round(tr[i][m[i] > 0], 4) + 0.0}")
print(f"mean sequence KL from the token rewards {seq_kl.mean():.6f}, logged kl {batch.stats['kl']:.6f}")
assert np.isclose(seq_kl.mean(), batch.stats["kl"], rtol=1e-6, atol=1e-9)

# %% [markdown]
# ## What to take away
#
# - A completion is an episode: states are prefixes, actions are tokens; the
#   verifier pays on the last token and the KL penalty costs on every token.
# - GAE's λ slides between the TD residual (λ = 0: low variance, biased by the
#   value head) and the Monte Carlo return minus the value (λ = 1: unbiased,
#   noisy).
# - The clipped surrogate is flat only on the side that would push the ratio
#   further out of `[1 - ε, 1 + ε]`; CleanRL's `clipfrac` counts both sides.
# - The value head shares the policy's trunk; the clipped value loss limits
#   how far each batch moves it; explained variance says whether it predicts
#   anything (1 good, 0 a constant, < 0 worse).
# - The adaptive KL controller nudges `kl_coef` by at most `0.2·n/horizon`
#   per batch towards a target sequence KL.
