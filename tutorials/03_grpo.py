# %% [markdown]
# # Lesson 3 — GRPO, line by line
#
# Group Relative Policy Optimization (DeepSeekMath, arXiv 2402.03300) drops
# PPO's value network. For every prompt it samples a *group* of G answers,
# scores them with a verifier, and uses each answer's reward relative to its
# group as the advantage of every token of that answer.
#
# This lesson builds each piece with small arrays you can check by hand, then
# runs real GRPO steps on minirl's shipped SFT model:
#
# 1. group-normalised advantages
# 2. the clipped surrogate and the four `loss_type` normalisations
# 3. the zero-loss puzzle: a loss of 0 whose gradient is not 0
# 4. KL estimators k1, k2, k3
# 5. a real rollout and a few GRPO updates
#
# Run it with `python tutorials/03_grpo.py`, or open it in Jupyter (jupytext).

# %%
import minirl  # before NumPy: minirl asks BLAS for one thread, faster for its small matrices
import numpy as np

from minirl import functional as F
from minirl.rl.advantages import group_advantages
from minirl.rl.grpo import grpo_loss
from minirl.rl.kl import exact_kl, k1, k2, k3
from minirl.tensor import Tensor

np.set_printoptions(precision=3, suppress=True)

# %% [markdown]
# ## 1. Group-normalised advantages
#
# Two prompts, G = 4 answers each; reward 1 when the verifier accepts.
# `A_i = (r_i - mean(group)) / (std(group) + 1e-4)`, with the unbiased std
# (torch's default, which TRL uses).

# %%
rewards = np.array([1.0, 0.0, 0.0, 1.0,    # prompt 1: two of four right
                    1.0, 1.0, 1.0, 0.0])   # prompt 2: three of four right
A = group_advantages(rewards, group_size=4, scale_rewards="group")
print("advantages:", A)
by_hand = (rewards[:4] - rewards[:4].mean()) / (rewards[:4].std(ddof=1) + 1e-4)
print("prompt 1 by hand:", by_hand)
assert np.allclose(A[:4], by_hand)
assert np.allclose(A.reshape(2, 4).sum(axis=1), 0)  # zero mean in every group

# A group where every answer is right (or every answer wrong) teaches nothing:
same = group_advantages(np.array([1.0, 1.0, 1.0, 1.0]), group_size=4)
print("all right:", same)
assert np.all(same == 0)

# Scaling is invariant to a positive affine change of the reward (std scaling):
assert np.allclose(group_advantages(3 * rewards + 5, 4), A, atol=1e-3)

# %% [markdown]
# ## 2. The clipped surrogate and the loss types
#
# Per token, with `ratio = π_θ / π_old`:
# `per_token_loss = -min(ratio·A, clip(ratio, 1-ε, 1+ε)·A)`.
# How the per-token losses are averaged is the `loss_type`; TRL defines:
#
# | loss_type | normalisation |
# |---|---|
# | grpo    | mean over sequences of (sum over the sequence's tokens / its length) |
# | bnpo    | sum over all tokens / number of tokens in the batch |
# | dr_grpo | sum over all tokens / (batch size × max completion length) |
# | dapo    | sum over all tokens / tokens in the whole generation batch |
#
# With sequences of different lengths they weigh tokens differently: `grpo`
# gives a short answer's tokens more weight each.

# %%
mask = np.array([[1, 1, 1, 1],     # a 4-token answer
                 [1, 1, 0, 0]],    # a 2-token answer
                dtype=np.float32)
adv = np.array([1.0, -1.0])
logp0 = np.log(np.full((2, 4), 0.5, dtype=np.float32))
losses = {}
for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
    loss, stats = grpo_loss(Tensor(logp0), logp0, adv, mask, loss_type=loss_type)
    losses[loss_type] = float(loss.data)
print(losses)
# ratio = 1: every token's loss is -A. grpo: mean(-1 (4 tokens/4), +1 (2/2)) = 0;
# bnpo: (-4 + 2) / 6 tokens; dr_grpo: (-4 + 2) / (2 x 4)
assert abs(losses["grpo"] - 0.0) < 1e-6
assert abs(losses["bnpo"] - (-2 / 6)) < 1e-6
assert abs(losses["dr_grpo"] - (-2 / 8)) < 1e-6

# %% [markdown]
# ## 3. The zero-loss puzzle
#
# TRL users keep asking why their GRPO loss is 0 while the model learns.
# With β = 0 and one update per rollout (μ = 1), `π_old` *is* the current
# policy, so `ratio = exp(logp - logp.detach()) = 1` exactly and every token's
# loss is `-A`. Group advantages sum to zero, so with equal lengths the
# loss is 0. But `d ratio / dθ = ratio · ∇log π = ∇log π`: the gradient is
# `-mean(A ∇log π)`, the policy gradient itself.

# %%
rng = np.random.default_rng(0)
logits = Tensor(rng.standard_normal((4, 3, 5)), requires_grad=True)  # 4 answers, 3 tokens, vocab 5
tokens = rng.integers(0, 5, (4, 3))
logp = F.gather_logprobs(logits, tokens)
adv = group_advantages(np.array([1.0, 0.0, 1.0, 0.0]), 4)
loss, _ = grpo_loss(logp, logp.data, adv, np.ones((4, 3)), loss_type="grpo")
loss.backward()
print(f"loss value {float(loss.data):.2e}, gradient norm {np.linalg.norm(logits.grad):.3f}")
assert abs(float(loss.data)) < 1e-6 and np.linalg.norm(logits.grad) > 0.1

# %% [markdown]
# ## 4. KL estimators
#
# GRPO's optional penalty `β·KL(π‖π_ref)` is estimated per token from samples
# of π (Schulman, "Approximating KL divergence"), with `r = π_ref/π` at the
# sampled token: k1 = -log r, k2 = (log r)²/2, k3 = (r - 1) - log r.
# k1 and k3 are unbiased; k3 is also never negative; k2 is biased.
# Check it exactly on a 4-outcome distribution by summing over the support:

# %%
p = np.array([0.5, 0.2, 0.2, 0.1])
q = np.array([0.25, 0.25, 0.25, 0.25])
true = float(exact_kl(p, q))
expect = {name: float(np.sum(p * est(np.log(p), np.log(q)))) for name, est in (("k1", k1), ("k2", k2), ("k3", k3))}
print(f"KL(p||q) = {true:.5f};", {k: round(v, 5) for k, v in expect.items()})
assert abs(expect["k1"] - true) < 1e-12 and abs(expect["k3"] - true) < 1e-12
assert abs(expect["k2"] - true) > 1e-3
assert np.all(k3(np.log(p), np.log(q)) >= 0)

# %% [markdown]
# ## 5. Real GRPO steps on the shipped SFT model
#
# A rollout samples G completions per prompt through the KV cache; the
# task's verifier gives each a reward. Then one GRPO update per rollout.

# %%
from minirl.rl.grpo import GRPO, GRPOConfig
from minirl.rl.rollout import sample_rollout
from minirl.optim import OptimizerConfig
from minirl.train import TrainConfig, train

policy = minirl.load("sft")
rollout = sample_rollout(policy, "add", np.random.default_rng(0), num_prompts=2, group_size=4)
for ex, completion, r in zip(rollout.examples, rollout.completions, rollout.rewards):
    print(f"{ex.prompt:>8} -> {completion:<5} reward {r:.0f}")

history = train(policy, GRPO(GRPOConfig(task="add", num_prompts=16, num_generations=8)),
                TrainConfig(steps=10, seed=0), OptimizerConfig(lr=2e-4), progress=False).history
rewards_seen = [round(h["reward"], 3) for h in history]
print("mean reward per step:", rewards_seen)
print("loss per step (≈ 0, see section 3):", [round(h["loss"], 4) for h in history])
assert all(abs(h["loss"]) < 0.05 for h in history)
