# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Lesson 5 — from RLHF to DPO, line by line
#
# Classic RLHF (Ziegler et al., arXiv 1909.08593; InstructGPT, arXiv
# 2203.02155) has three stages: fit a reward model to human preferences, then
# run PPO (lesson 4) against it with a KL penalty to the SFT model. Direct
# Preference Optimization (Rafailov et al., arXiv 2305.18290) notices that the
# KL-regularised problem PPO solves has a closed-form optimum, and that the
# reward can be read off the optimal policy itself, so the reward model and
# the RL loop fold into one classification loss on preference pairs.
#
# This lesson follows that derivation with small arrays you can check by
# hand, then runs it on minirl's shipped SFT model:
#
# 1. the KL-regularised objective and its closed-form optimum
# 2. Bradley–Terry, the implicit reward, and the DPO loss
# 3. the loss family: sigmoid, hinge, IPO, robust; SimPO, ORPO, KTO
# 4. preference data: offline pairs and on-policy pairs
# 5. a short real DPO run, and what it does to log-probs
# 6. the reward model, and how `--reward rm:PATH` plugs it into RL
#
# The code is `minirl/rl/preference.py` (data, batches, summed log-probs),
# `dpo.py`, `simpo.py`, `orpo.py`, `kto.py` and `reward_model.py`.
# Run it with `python tutorials/05_preferences.py`, or open it in Jupyter
# (jupytext). Every claim is an `assert`. With matplotlib installed it also
# draws two figures into a temporary directory; without it, the same numbers
# are printed as tables.

# %%
import shutil
import sys
import tempfile
from pathlib import Path

# minirl before NumPy: importing minirl pins BLAS to one thread, which only takes effect
# if NumPy is not loaded yet (two BLAS threads on a busy 2-core machine run this lesson much slower)
try:
    import minirl
except ModuleNotFoundError:  # a source checkout without `pip install -e .`: the repo root is one level up
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    sys.path.insert(0, str(here.parent))
    import minirl

import numpy as np

from minirl.evaluate import complete
from minirl.loading import save_model
from minirl.optim import OptimizerConfig
from minirl.plots import TUTORIAL_FIGURES, pyplot, save
from minirl.rl.dpo import DPO, DPOConfig, dpo_loss
from minirl.rl.kl import exact_kl
from minirl.rl.kto import kto_loss
from minirl.rl.orpo import orpo_loss
from minirl.rl.preference import frozen_sequence_logps, offline_pairs, on_policy_pairs, pair_batch, pair_stats
from minirl.rl.reward_model import RewardModel, RMConfig, bradley_terry_loss, pairwise_accuracy, score
from minirl.rl.rollout import sample_rollout
from minirl.rl.simpo import simpo_loss
from minirl.tasks import format_prompt
from minirl.tasks.heldout import heldout_set
from minirl.tensor import Tensor
from minirl.train import TrainConfig, train

np.set_printoptions(precision=4, suppress=True)

plt = pyplot()  # figures are optional: without matplotlib (None) the lesson prints the same numbers as tables
FIG_DIR = TUTORIAL_FIGURES  # outside the repository: nothing to commit


def save_figure(fig, name: str) -> None:
    """Write `fig` to FIG_DIR/name and say where."""
    print("figure:", save(fig, FIG_DIR / name, dpi=100))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# %% [markdown]
# ## 1. The KL-regularised objective and its optimum
#
# RLHF's policy maximises reward while staying close to the reference
# (the SFT model), for each prompt x:
#
#     J(π) = E_{y~π}[r(x, y)] − β KL(π(·|x) ‖ π_ref(·|x))
#
# Over a finite set of answers this is a concave problem on the simplex, and
# its maximiser is a reweighting of the reference (a Gibbs distribution):
#
#     π*(y) = π_ref(y) exp(r(y)/β) / Z,      Z = Σ_y π_ref(y) exp(r(y)/β)
#
# Why: expand KL(π‖π*) with that π* and you get the identity
# `J(π) = β log Z − β KL(π ‖ π*)`. KL is ≥ 0 and 0 only at π = π*, so π*
# is the unique maximum and `J(π*) = β log Z`.
#
# Five answers to "12+30", a reference that prefers the right one only a
# little, and a partial-credit reward:

# %%
answers = ["42", "32", "43", "52", "4"]
pi_ref = np.array([0.40, 0.25, 0.15, 0.12, 0.08])  # (5,) the SFT model's answer distribution
r = np.array([1.0, 0.5, 0.5, 0.5, 0.0])  # (5,) the reward of each answer
beta = 0.5


def J(pi, r=r, beta=beta):
    """The objective: expected reward minus β KL(π ‖ π_ref)."""
    return float(pi @ r - beta * exact_kl(pi, pi_ref))


Z = float(np.sum(pi_ref * np.exp(r / beta)))
pi_star = pi_ref * np.exp(r / beta) / Z
print(f"{'answer':>6} {'π_ref':>6} {'r':>4} {'π*':>6}")
for a, p0, ri, ps in zip(answers, pi_ref, r, pi_star):
    print(f"{a:>6} {p0:6.3f} {ri:4.1f} {ps:6.3f}")
print(f"J(π_ref) = {J(pi_ref):.4f}, J(π*) = {J(pi_star):.4f}, β log Z = {beta * np.log(Z):.4f}")
assert np.isclose(J(pi_star), beta * np.log(Z), rtol=0, atol=1e-12)

# random perturbations of π* (in logit space, so they stay on the simplex) all score lower,
# by exactly β KL(π ‖ π*)
rng = np.random.default_rng(0)
worst_gap = np.inf
for _ in range(1000):
    logits = np.log(pi_star) + 0.5 * rng.standard_normal(5)
    pi = np.exp(logits) / np.exp(logits).sum()
    gap = J(pi_star) - J(pi)
    assert gap > 0
    assert np.isclose(gap, beta * exact_kl(pi, pi_star), rtol=0, atol=1e-12)
    worst_gap = min(worst_gap, gap)
print(f"1000 random perturbations: J(π*) − J(π) ≥ {worst_gap:.2e} > 0, and equals β KL(π ‖ π*) every time")

# %% [markdown]
# β is the exchange rate between reward and KL. A large β keeps π* near
# π_ref; a small one puts almost all the mass on the best answer:

# %%
for b in (0.05, 0.5, 5.0):
    p = pi_ref * np.exp(r / b)
    p /= p.sum()
    print(f"β = {b:4}: π* = {p},  KL(π* ‖ π_ref) = {float(exact_kl(p, pi_ref)):.3f}")
p_small, p_large = (pi_ref * np.exp(r / b) / np.sum(pi_ref * np.exp(r / b)) for b in (0.05, 5.0))
assert p_small[0] > 0.99 and np.abs(p_large - pi_ref).max() < 0.05

# %% [markdown]
# **Turn it around.** Take the log of π* and solve for the reward:
#
#     r(y) = β log π*(y)/π_ref(y) + β log Z
#
# Every reward is a log-ratio of the optimal policy to the reference, plus a
# term `β log Z` that depends on the prompt only. That is DPO's key move: a
# policy *defines* a reward, its **implicit reward** β log π/π_ref.

# %%
r_back = beta * np.log(pi_star / pi_ref) + beta * np.log(Z)
print("r recovered from π*:", r_back)
assert np.allclose(r_back, r, rtol=0, atol=1e-12)
# and adding a constant to every reward changes Z, not π*: only differences of r matter
pi_shift = pi_ref * np.exp((r + 3.0) / beta)
assert np.allclose(pi_shift / pi_shift.sum(), pi_star)

# %% [markdown]
# ## 2. Bradley–Terry, the implicit reward, and the DPO loss
#
# Human preferences are modelled by Bradley–Terry: for a prompt x, the chosen
# answer y_w beats the rejected y_l with probability
#
#     P(y_w ≻ y_l) = σ(r(y_w) − r(y_l))
#
# Plug in the implicit reward: the prompt-only `β log Z` appears in both
# terms and **cancels**,
#
#     P(y_w ≻ y_l) = σ(β log π(y_w)/π_ref(y_w) − β log π(y_l)/π_ref(y_l)) = σ(β Δ),
#
# so the likelihood of the preference data needs no reward model and no Z,
# just the policy and the reference. Maximising it is the DPO loss
#
#     L = −log σ(β Δ),   Δ = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)]
#
# where log π(y) is the *sum* of the completion's token log-probs (as in
# `sequence_logps`). On the 5-answer example, "42" against "4":

# %%
w, l = 0, 4
p_bt = sigmoid(r[w] - r[l])
p_implicit = sigmoid(beta * np.log(pi_star[w] / pi_ref[w]) - beta * np.log(pi_star[l] / pi_ref[l]))
print(f"σ(r_w − r_l) = {p_bt:.6f};  σ(βΔ) from π*, without Z: {p_implicit:.6f}")
assert np.isclose(p_bt, p_implicit, rtol=0, atol=1e-12)

# %% [markdown]
# **At the start, π = π_ref, so Δ = 0 and the loss is log 2 for every pair**
# (an invariant minirl's tests check with hypothesis). Four pairs with
# made-up summed log-probs, at DPO's default β = 0.1, through `dpo_loss` and
# minirl's autograd:

# %%
ref_chosen = np.array([-2.1, -0.7, -3.0, -1.2])  # (B,) log π_ref(y_w), summed over tokens
ref_rejected = np.array([-6.5, -4.0, -2.5, -9.0])  # (B,) log π_ref(y_l)
B, beta = 4, 0.1
chosen = Tensor(ref_chosen.copy(), requires_grad=True)  # the policy, equal to the reference
rejected = Tensor(ref_rejected.copy(), requires_grad=True)
loss, stats = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta)
loss.backward()
print(f"loss {loss.item():.6f}, log 2 = {np.log(2):.6f}")
print("d loss / d log π(y_w):", chosen.grad, "  d loss / d log π(y_l):", rejected.grad)
assert np.isclose(loss.item(), np.log(2), rtol=0, atol=1e-12)

# %% [markdown]
# The gradient is `∇L = −β σ(−βΔ) (∇log π(y_w) − ∇log π(y_l)) / B`: at Δ = 0,
# `−β/(2B) = −0.0125` on every chosen log-prob and `+0.0125` on every
# rejected one. Gradient *descent* therefore raises the chosen log-probs and
# lowers the rejected ones, each pair weighted by σ(−βΔ): how wrongly the
# implicit reward still ranks it. Move the policy and check the weight:

# %%
assert np.allclose(chosen.grad, -beta / (2 * B)) and np.allclose(rejected.grad, beta / (2 * B))

moved_c = ref_chosen + np.array([1.0, 0.0, -2.0, 5.0])  # the policy after some training
moved_r = ref_rejected + np.array([-3.0, 0.0, 1.0, -15.0])
chosen = Tensor(moved_c, requires_grad=True)
rejected = Tensor(moved_r, requires_grad=True)
loss, stats = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta)
loss.backward()
delta = (moved_c - ref_chosen) - (moved_r - ref_rejected)  # (B,) [4, 0, -3, 20]
print("Δ per pair:", delta, " weight σ(−βΔ):", sigmoid(-beta * delta))
print("d loss / d log π(y_w):", chosen.grad)
assert np.allclose(chosen.grad, -beta * sigmoid(-beta * delta) / B, rtol=0, atol=1e-12)
assert np.allclose(rejected.grad, -chosen.grad, rtol=0, atol=1e-12)

# %% [markdown]
# The logged statistics (TRL's names) are batch means of the implicit
# rewards: `rewards/chosen` = β mean(log π(y_w) − log π_ref(y_w)),
# `rewards/rejected` likewise, `rewards/margins` their difference (β mean Δ),
# `rewards/accuracies` the fraction of pairs with Δ > 0, and `logps/*` the
# policy's own summed log-probs. Pair 3 is ranked the wrong way (Δ = −3), and
# pair 2 not at all (Δ = 0, not counted as right):

# %%
for k, v in stats.items():
    print(f"{k:>20}: {v:+.4f}")
assert np.isclose(stats["rewards/chosen"], beta * np.mean(moved_c - ref_chosen))
assert np.isclose(stats["rewards/rejected"], beta * np.mean(moved_r - ref_rejected))
assert np.isclose(stats["rewards/margins"], beta * delta.mean())
assert stats["rewards/accuracies"] == 0.5  # pairs 1 and 4
assert np.isclose(stats["logps/chosen"], moved_c.mean())

# %% [markdown]
# **What β does in the loss.** The pair's predicted preference σ(βΔ)
# saturates once βΔ is a few units, after which the pair stops pulling
# (weight σ(−βΔ) → 0). To reach σ = 0.95 a pair needs Δ = ln 19 / β: about
# 29 nats of log-ratio at DPO's default β = 0.1, 1.5 nats at β = 2. A small β
# lets the policy drift far from π_ref before the pairs go quiet; a large
# β stops it after a small move (section 1: β is the KL price).

# %%
deltas = np.array([0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0])
print("σ(βΔ) for Δ =", deltas)
for b in (0.05, 0.1, 0.5, 2.0):
    print(f"  β = {b:4}: {sigmoid(b * deltas)}   Δ for σ = 0.95: {np.log(19) / b:6.2f} nats")
d95 = np.log(19) / 0.1  # through the library: the loss there is −log 0.95
assert np.isclose(dpo_loss(np.array([d95]), np.zeros(1), np.zeros(1), np.zeros(1), beta=0.1)[0].item(), -np.log(0.95))
assert 29 < d95 < 30 and 1.4 < np.log(19) / 2.0 < 1.5

# %% [markdown]
# ## 3. The loss family on the same Δ
#
# TRL's `DPOTrainer` (and `DPOConfig(loss_type=...)` here) offers other
# per-pair losses on the same Δ:
#
# | loss_type | per-pair loss | idea |
# |---|---|---|
# | sigmoid | −log σ(βΔ) | DPO: Bradley–Terry likelihood |
# | hinge | max(0, 1 − βΔ) | SLiC (arXiv 2305.10425): zero, and no gradient, once βΔ ≥ 1 |
# | ipo | (Δ_c/\|y_w\| − Δ_r/\|y_l\| − 1/(2β))² | IPO (arXiv 2310.12036): aim at a margin instead of pushing forever |
# | robust | [−(1−ε) log σ(βΔ) + ε log σ(−βΔ)] / (1−2ε) | rDPO (arXiv 2403.00409): labels flipped with prob. ε |
#
# (Δ_c, Δ_r: the chosen and rejected log-ratios, each divided by its
# completion's token count for IPO.) Per pair, with β = 0.5, ε = 0.2, and
# both completions one token long so that IPO's length-average is Δ itself:


# %%
def per_pair(delta, loss_type, beta=0.5, label_smoothing=0.0):
    """One pair's loss at margin Δ (policy: chosen log-ratio Δ, rejected 0), through `dpo_loss`."""
    loss, _ = dpo_loss(np.array([delta]), np.array([0.0]), np.zeros(1), np.zeros(1), beta=beta,
                       loss_type=loss_type, label_smoothing=label_smoothing,
                       chosen_lengths=np.ones(1), rejected_lengths=np.ones(1))
    return loss.item()


LOSSES = {"sigmoid": {}, "hinge": {}, "ipo": {}, "robust": {"label_smoothing": 0.2}}
grid = np.linspace(-6, 8, 141)
curves = {name: np.array([per_pair(d, name, **kw) for d in grid]) for name, kw in LOSSES.items()}
shown = [-4.0, -2.0, 0.0, 1.0, 2.0, 4.0, 8.0]
print(f"{'Δ':>8}" + "".join(f"{d:8.1f}" for d in shown))
for name, kw in LOSSES.items():
    print(f"{name:>8}" + "".join(f"{per_pair(d, name, **kw):8.3f}" for d in shown))

# sigmoid: log 2 at Δ = 0, falling forever; hinge: exactly 0 from βΔ = 1 (Δ = 2) on
assert np.isclose(per_pair(0.0, "sigmoid"), np.log(2)) and np.all(np.diff(curves["sigmoid"]) < 0)
assert per_pair(2.0, "hinge") == 0.0 and per_pair(8.0, "hinge") == 0.0 and per_pair(1.0, "hinge") == 0.5
# IPO: a parabola with its minimum 0 at the target margin 1/(2β) = 1
assert grid[np.argmin(curves["ipo"])] == 1.0 and per_pair(1.0, "ipo") == 0.0
assert per_pair(3.0, "ipo") > per_pair(1.0, "ipo")  # overshooting the margin is penalised too

# %% [markdown]
# **IPO's target is per token.** TRL (and minirl) divide each log-ratio by its
# completion's length, so the *length-averaged* margin aims at 1/(2β). With a
# 2-token chosen and a 4-token rejected completion the summed chosen
# log-ratio that minimises the loss (rejected log-ratio fixed at −4, i.e. −1
# per token) is 2 × (1/(2β) − 1) = 0:

# %%
beta_ipo = 0.5
grid_c = np.linspace(-3, 3, 61)
ipo = [dpo_loss(np.array([c]), np.array([-4.0]), np.zeros(1), np.zeros(1), beta=beta_ipo, loss_type="ipo",
                chosen_lengths=np.array([2.0]), rejected_lengths=np.array([4.0]))[0].item() for c in grid_c]
best = grid_c[int(np.argmin(ipo))]
print(f"best summed chosen log-ratio: {best:.2f}; length-averaged margin there {best / 2 - (-4.0) / 4:.2f} "
      f"= 1/(2β) = {1 / (2 * beta_ipo):.2f}")
assert np.isclose(best / 2 - (-4.0 / 4), 1 / (2 * beta_ipo), atol=1e-9)

# %% [markdown]
# **Robust DPO is unbiased under label noise.** If each label is flipped
# with probability ε, a pair shows up with margin Δ with probability 1 − ε
# and with −Δ (chosen and rejected swapped) with probability ε. The robust
# loss is built so that its expectation over the flip is the *clean* sigmoid
# loss:

# %%
eps = 0.2
for d in (-3.0, 0.0, 0.7, 5.0):
    expected = (1 - eps) * per_pair(d, "robust", label_smoothing=eps) + eps * per_pair(-d, "robust", label_smoothing=eps)
    print(f"Δ = {d:+.1f}: E_flip[robust] = {expected:.6f}, clean sigmoid = {per_pair(d, 'sigmoid'):.6f}")
    assert np.isclose(expected, per_pair(d, "sigmoid"), rtol=0, atol=1e-12)
# the price: it is not bounded below; for large Δ it keeps falling linearly (slope −β ε / (1 − 2ε))
assert per_pair(8.0, "robust", label_smoothing=eps) < 0

# %%
if plt is not None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        ax.plot(grid, values, label=name + (" (ε = 0.2)" if name == "robust" else ""))
    ax.axvline(1.0, color="gray", lw=0.5, ls=":")
    ax.set_ylim(-1, 6)
    ax.set_xlabel("Δ (chosen log-ratio − rejected log-ratio), β = 0.5")
    ax.set_ylabel("per-pair loss")
    ax.set_title("DPO's loss family on the same margin")
    ax.legend()
    save_figure(fig, "05_loss_family.png")
else:
    print("(matplotlib is not installed: the table above has the same curves)")

# %% [markdown]
# Three relatives that change more than the per-pair loss:
#
# **SimPO** (arXiv 2405.14734) drops the reference. Its reward is the
# length-averaged log-prob, `β · mean token log π(y)`, with a target margin γ:
# `L = −log σ(β (c − r) − γ)`, with c, r the average log-probs. At c = r the
# loss is log(1 + e^γ); it reaches log 2 when c leads by γ/β; and shifting
# both log-probs changes nothing (no reference to stay close to).

# %%
b_s, g_s = 2.0, 1.0  # the SimPO paper's β and γ (γ/β = 0.5)
at_equal = simpo_loss(np.array([-0.8]), np.array([-0.8]), beta=b_s, simpo_gamma=g_s)[0].item()
at_margin = simpo_loss(np.array([-0.3]), np.array([-0.8]), beta=b_s, simpo_gamma=g_s)[0].item()
shifted = simpo_loss(np.array([-2.3]), np.array([-2.8]), beta=b_s, simpo_gamma=g_s)[0].item()
print(f"SimPO: c = r: {at_equal:.4f} (log(1 + e^γ) = {np.log1p(np.exp(g_s)):.4f});  c − r = γ/β: {at_margin:.4f};  "
      f"both shifted by −2: {shifted:.4f}")
assert np.isclose(at_equal, np.log1p(np.exp(g_s))) and np.isclose(at_margin, np.log(2))
assert np.isclose(shifted, at_margin)

# %% [markdown]
# **ORPO** (arXiv 2403.07691) merges SFT and preference learning and also has
# no reference: the NLL of the chosen completions minus λ times
# log σ(log odds ratio), with odds(y) = P/(1 − P) of the length-averaged
# likelihood P = e^c. Where chosen and rejected are equally likely the odds
# ratio is 1 and the loss is `NLL + λ log 2`; λ = 0 is plain SFT.

# %%
nll = 0.5
same = orpo_loss(np.array([-0.5]), np.array([-0.5]), nll, beta=0.1)[0].item()
sft_only = orpo_loss(np.array([-0.1]), np.array([-1.0]), nll, beta=0.0)[0].item()
loss_or, st_or = orpo_loss(np.array([-0.1]), np.array([-1.0]), nll, beta=0.1)
log_or = (-0.1 - -1.0) - (np.log(1 - np.exp(-0.1)) - np.log(1 - np.exp(-1.0)))
print(f"ORPO: c = r: {same:.4f} (NLL + λ log 2 = {nll + 0.1 * np.log(2):.4f});  λ = 0: {sft_only:.4f};  "
      f"c = −0.1, r = −1: log OR = {st_or['log_odds_chosen']:.4f} (by hand {log_or:.4f})")
assert np.isclose(same, nll + 0.1 * np.log(2)) and sft_only == nll
assert np.isclose(st_or["log_odds_chosen"], log_or)
assert log_or > 0.9  # the odds ratio stretches the gap near P = 1: larger than c − r = 0.9

# %% [markdown]
# **KTO** (arXiv 2402.01306) needs no pairs: each completion is desirable or
# undesirable on its own. It scores DPO's log-ratio around a *reference
# point* z0, an estimate of KL(π‖π_ref) on mismatched prompt/completion
# pairs (clamped at 0, no gradient): a desirable completion's loss is
# `1 − σ(β(log-ratio − z0))`, an undesirable one's `1 − σ(β(z0 − log-ratio))`.
# At π = π_ref every loss is 1/2; a desirable completion 5 nats above z0 at
# β = 0.1 costs 1 − σ(0.5):

# %%
start, st_kto = kto_loss(np.array([-1.0, -2.0]), np.array([-3.0, -4.0]), np.array([-5.0, -6.0]),
                         np.array([-1.0, -2.0]), np.array([-3.0, -4.0]), np.array([-5.0, -6.0]), beta=0.1)
good = kto_loss(np.array([4.0]), np.zeros(0), np.array([-6.0, -5.0]),  # KL estimate −0.5: clamped to z0 = 0
                np.array([-1.0]), np.zeros(0), np.array([-5.5, -4.5]), beta=0.1)
print(f"KTO at π = π_ref: {start.item():.4f} (z0 = {st_kto['kl']:.1f});  desirable, 5 nats above z0: "
      f"{good[0].item():.4f} (1 − σ(0.5) = {1 - sigmoid(0.5):.4f}, z0 = {good[1]['kl']:.1f})")
assert np.isclose(start.item(), 0.5) and st_kto["kl"] == 0.0
assert np.isclose(good[0].item(), 1 - sigmoid(0.5)) and good[1]["kl"] == 0.0

# %% [markdown]
# ## 4. Preference data: offline and on-policy pairs
#
# minirl makes pairs from the `add` task in two ways (`DPOConfig(pairs=...)`):
#
# - **offline**: a fresh problem, its correct answer as chosen, and one of
#   the task's classic mistakes as rejected (the carry forgotten, or one digit
#   off by one). Nobody sampled either from the model.
# - **on_policy**: the SFT model samples G = 8 answers per problem; the one
#   with the best partial credit is chosen, the worst rejected (a problem
#   whose samples all score the same gives no pair).
#
# The first paper minirl reproduces (Mukherjee et al., arXiv 2505.11711)
# calls these in-distribution (on-policy, or rejection-sampled) and
# out-of-distribution data, and finds that it is *in-distribution* data that
# makes RL updates sparse (DPO: 81.4 % of weights unchanged, against 6.8 to
# 7.7 % with out-of-distribution pairs).

# %%
sft = minirl.load("sft")
tok = sft.tokenizer
offline = offline_pairs("add", np.random.default_rng(0), 256)
on_policy = on_policy_pairs(sft, "add", np.random.default_rng(1), 256, 8)
for name, pairs in (("offline", offline), ("on_policy", on_policy)):
    print(name)
    for p in pairs[:5]:
        print(f"  {p.prompt:>8}  chosen {p.chosen:>5}  rejected {p.rejected:>5}")

# %% [markdown]
# The verifier's view, and how likely the SFT model finds each side (the
# mean summed log-prob over the pairs, eos included, `frozen_sequence_logps`):

# %%
data = {}
for name, pairs in (("offline", offline), ("on_policy", on_policy)):
    lp = frozen_sequence_logps(sft, pair_batch(tok, pairs))  # (2B,): chosen rows, then rejected rows
    n = len(pairs)
    smaller = np.mean([int(p.rejected) < int(p.chosen) for p in pairs if p.rejected.isdigit()])  # as numbers
    longer = np.mean([len(p.rejected) > len(p.chosen) for p in pairs])  # more digits
    data[name] = pair_stats(pairs, "add") | {"logp_chosen": lp[:n].mean(), "logp_rejected": lp[n:].mean(),
                                              "rejected_smaller": smaller, "rejected_longer": longer}
print(f"{'':>10} {'pairs':>5} {'chosen ok':>9} {'rejected ok':>11} {'log π(y_w)':>10} {'log π(y_l)':>10} "
      f"{'y_l < y_w':>9} {'y_l longer':>10}")
for name, d in data.items():
    print(f"{name:>10} {d['pairs']:5d} {d['chosen_correct']:9.2f} {d['rejected_correct']:11.2f} "
          f"{d['logp_chosen']:10.2f} {d['logp_rejected']:10.2f} {d['rejected_smaller']:9.2f} "
          f"{d['rejected_longer']:10.2f}")
off, on = data["offline"], data["on_policy"]
assert off["chosen_correct"] == 1.0 and off["rejected_correct"] == 0.0
assert on["rejected_correct"] == 0.0  # a correct worst sample would mean every sample is correct: a tie, no pair
assert on["chosen_correct"] < 1.0  # some groups hold no right answer; their best is only the closest
# the offline mistakes are answers the model rarely writes: far less likely than its own worst samples
assert off["logp_rejected"] < on["logp_rejected"] - 1.0
print(f"typical probability of the rejected answer: offline e^{off['logp_rejected']:.1f} = "
      f"{np.exp(off['logp_rejected']):.4f}, on-policy e^{on['logp_rejected']:.1f} = {np.exp(on['logp_rejected']):.4f}")

# %% [markdown]
# Two things to notice. The on-policy rejected answers are the model's own
# mistakes (it wrote them: in-distribution); the offline ones it would seldom
# write. And in both sets the rejected answer is more often **smaller** than
# the right one: about 70 % of offline pairs (a forgotten carry can only lose
# value, and it almost never adds a digit) and about 60 % of on-policy ones.
# So a model can lower the loss on either set a little by learning "bigger is
# better" instead of addition. Watch for it below.

# %%
assert off["rejected_smaller"] > 0.6 and on["rejected_smaller"] > 0.5
assert off["rejected_longer"] < 0.05 < on["rejected_longer"]

# %% [markdown]
# ## 5. A short real DPO run, and what it does to log-probs
#
# `DPO(DPOConfig(...), ref)` is an algorithm for minirl's one training loop
# (`train`, as in lessons 3–4): at its first step it builds the pairs and
# precomputes their reference log-probs once with the frozen `ref`; each step
# samples `batch_size` pairs and takes one AdamW step on `dpo_loss`.
#
# Four runs of 30 steps of 16 pairs (lr 1e-4), each from the SFT model:
# offline and on-policy pairs (256 prompts each), at DPO's default β = 0.1
# and at β = 2.
#
# Each step logs `logps/chosen` and `logps/rejected`, but on that step's 16
# random pairs, which is noisy. To see a trajectory, `on_step` re-scores a
# fixed probe set, the first 64 training pairs, after every step. Also measured, on 200
# fixed held-out problems: greedy accuracy, and how often the greedy answer
# is larger than the right one.

# %%
heldout = heldout_set("add", 200)
PROBE = 64  # pairs of the training set re-scored after every step


def greedy_check(model):
    """Greedy accuracy on the held-out add problems, and the fraction of answers larger than the right one."""
    outs = complete(model, [format_prompt(ex.prompt) for ex in heldout], 5)
    right = np.mean([o == ex.answer for o, ex in zip(outs, heldout)])
    bigger = np.mean([o.isdigit() and int(o) > int(ex.answer) for o, ex in zip(outs, heldout)])
    return float(right), float(bigger)


def dpo_run(pairs, beta, steps=30, seed=0):
    """Train a copy of the SFT model with DPO: the fixed-set log-prob trajectory, the history, the checks."""
    policy, ref = minirl.load("sft"), minirl.load("sft")
    algo = DPO(DPOConfig(task="add", pairs=pairs, num_prompts=256, batch_size=16, beta=beta), ref)
    traj = []  # per step: (chosen, rejected) mean summed log-probs over the fixed probe set
    probe = {}

    def on_step(step, metrics):
        if step == 0:  # the data exists now; before the first update the policy was the reference
            probe["rows"] = pair_batch(policy.tokenizer, algo.data.rows[:PROBE])  # (2 PROBE, T)
            lp0 = frozen_sequence_logps(ref, probe["rows"])
            traj.append((lp0[:PROBE].mean(), lp0[PROBE:].mean()))
        lp = frozen_sequence_logps(policy, probe["rows"])  # (2 PROBE,): chosen rows, then rejected rows
        traj.append((lp[:PROBE].mean(), lp[PROBE:].mean()))

    history = train(policy, algo, TrainConfig(steps=steps, seed=seed), OptimizerConfig(lr=1e-4), progress=False,
                    on_step=on_step).history
    return {"beta": beta, "traj": np.array(traj), "history": history, "after": greedy_check(policy)}


before = greedy_check(sft)
runs = {(pairs, b): dpo_run(pairs, b) for b in (0.1, 2.0) for pairs in ("offline", "on_policy")}
print(f"SFT model: held-out greedy accuracy {before[0]:.3f}, answers larger than the right one {before[1]:.3f}")
print(f"{'pairs':>10} {'β':>4} {'Δ log π(y_w)':>12} {'Δ log π(y_l)':>12} {'β·margin':>8} {'accuracy':>8} "
      f"{'too big':>7}   (Δ: change over the run, probe set)")
for (pairs, b), run in runs.items():
    d = run["traj"][-1] - run["traj"][0]  # (chosen, rejected)
    run["d"], run["margin"] = d, b * (d[0] - d[1])
    print(f"{pairs:>10} {b:4} {d[0]:12.2f} {d[1]:12.2f} {run['margin']:8.3f} {run['after'][0]:8.3f} "
          f"{run['after'][1]:7.3f}")

print("trajectories, every 5 steps: mean summed log-prob of the probe set's chosen / rejected answers")
for (pairs, b), run in runs.items():
    t = run["traj"][::5]
    print(f"{pairs:>10} β = {b:3}: chosen   {np.round(t[:, 0], 2)}\n{'':>20} rejected {np.round(t[:, 1], 2)}")

# what `train` logs, on each step's own 16 pairs (noisier; step 0 is measured before its update, at π = π_ref)
h = runs[("on_policy", 2.0)]["history"]
for key in ("logps/chosen", "logps/rejected", "rewards/margins"):
    print(f"on_policy, β = 2, logged {key:>15} every 5 steps: {np.array([x[key] for x in h[::5]])}")

# %% [markdown]
# What holds in every seed we tried (0–2), and what it says:
#
# - **DPO only constrains the difference.** In every run the rejected
#   log-prob falls faster than the chosen one, so the implicit-reward margin
#   grows and the loss falls as promised. Nothing in the loss holds the
#   chosen log-prob up.
# - **At β = 0.1 both log-probs fall, whatever the data.** The chosen
#   (mostly correct) answers become several nats less likely too; greedy
#   accuracy on add drops by 20 to 30 points, and most of the model's answers
#   become *larger* than the right ones: it learned the shortcut of
#   section 4. At β = 0.1 the pairs are far from saturating (section 2: 29
#   nats of margin for σ = 0.95), so each step keeps pushing.
# - **At β = 2 the pairs go quiet after a small move.** With on-policy pairs
#   the chosen log-prob stays put (within a few tenths of a nat) while the
#   model's own mistakes become less likely; with offline pairs the chosen
#   log-prob still falls (by a few tenths of a nat to about one), and
#   accuracy still drops (by 4 to 20 points across seeds).
#
# In 30 steps β is the bigger lever, and on-policy data the safer one. Do not
# read accuracy *gains* into runs this short: accuracy moves a few points
# either way across seeds at β = 2. The longer runs measured for
# `minirl/presets/dpo.toml` (150 steps of 64 pairs, greedy accuracy on 1000
# held-out add problems) agree: offline pairs at β = 0.1 lost 19.7 points
# (seed 0), on-policy pairs ranked by partial credit at β = 0.1 lost 8.6,
# and on-policy pairs with `reward="exact"` (the chosen answer always right)
# from 3072 prompts × 4 samples at β = 2 gained 14.4 points (13.8 to 15.2
# over seeds 0–2): the preset.

# %%
for (pairs, b), run in runs.items():
    d = run["d"]
    assert d[1] < d[0] - 1.0, (pairs, b)  # the rejected log-prob falls faster than the chosen one
    margins = b * ((run["traj"][:, 0] - run["traj"][0, 0]) - (run["traj"][:, 1] - run["traj"][0, 1]))
    assert margins[-1] > 0.2 and margins[len(margins) // 2] > 0.1, (pairs, b)  # the margin grows
for pairs in ("offline", "on_policy"):
    low, high = runs[(pairs, 0.1)], runs[(pairs, 2.0)]
    assert low["d"][0] < -1.0 and low["d"][1] < -5.0  # β = 0.1: both log-probs fall
    assert low["after"][0] < before[0] - 0.1  # ... and accuracy on add with them
    assert low["after"][1] > before[1] + 0.2  # ... by answering too big
    assert high["d"][0] > low["d"][0] + 1.0  # β = 2 keeps the chosen log-prob much closer to the reference
assert abs(runs[("on_policy", 2.0)]["d"][0]) < 0.5  # on-policy, β = 2: the chosen log-prob holds

# %%
if plt is not None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, b in zip(axes, (0.1, 2.0)):
        for pairs, color in (("offline", "tab:red"), ("on_policy", "tab:blue")):
            t = runs[(pairs, b)]["traj"]
            ax.plot(t[:, 0] - t[0, 0], color=color, label=f"{pairs}: chosen")
            ax.plot(t[:, 1] - t[0, 1], color=color, ls="--", label=f"{pairs}: rejected")
        ax.axhline(0.0, color="gray", lw=0.5)
        ax.set_title(f"DPO, β = {b}")
        ax.set_xlabel("step")
        ax.legend()
    axes[0].set_ylabel("change of mean summed log-prob (probe set)")
    save_figure(fig, "05_dpo_logps.png")
else:
    print("(matplotlib is not installed: the tables above have the same trajectories)")

# %% [markdown]
# ## 6. The reward model
#
# Classic RLHF fits r itself: a transformer with a scalar head (`score`, on
# the hidden state of each sequence's eos) trained with the Bradley–Terry
# loss `−mean log σ(r_c − r_r)`. Like DPO's at the start, it is log 2 when
# the model cannot tell the two apart, and its gradient is ∓1/(2B) on the
# chosen and rejected rewards:

# %%
r_c = Tensor(np.array([0.3, -1.2, 2.0]), requires_grad=True)
r_r = Tensor(np.array([0.3, -1.2, 2.0]), requires_grad=True)
bt, bt_stats = bradley_terry_loss(r_c, r_r)
bt.backward()
print(f"equal rewards: loss {bt.item():.6f}, d/d r_c {r_c.grad}, d/d r_r {r_r.grad}")
assert np.isclose(bt.item(), np.log(2)) and np.allclose(r_c.grad, -1 / 6) and np.allclose(r_r.grad, 1 / 6)
assert bt_stats["accuracy"] == 0.0  # a tie counts as wrong

# %% [markdown]
# Train one briefly on offline pairs: the SFT model with a fresh reward head
# (`minirl.load("sft", reward_head=True)`), 80 steps of 32 pairs, lr 3e-4. Its
# `pairwise_accuracy` on 400 held-out offline pairs (the fraction with
# score(chosen) > score(rejected)) starts near chance:

# %%
rm = minirl.load("sft", reward_head=True)
held = offline_pairs("add", np.random.default_rng([0, 99]), 400)
held_args = ([p.prompt for p in held], [p.chosen for p in held], [p.rejected for p in held])
acc_before = pairwise_accuracy(rm, *held_args)
rm_algo = RewardModel(RMConfig(task="add", pairs="offline", num_prompts=512, batch_size=32))
rm_history = train(rm, rm_algo, TrainConfig(steps=80, seed=0), OptimizerConfig(lr=3e-4), progress=False).history
acc_after = pairwise_accuracy(rm, *held_args)
print(f"Bradley-Terry loss {rm_history[0]['loss']:.3f} -> {np.mean([h['loss'] for h in rm_history[-10:]]):.3f} "
      f"(mean of the last 10 steps)")
print(f"held-out pairwise accuracy: {acc_before:.3f} -> {acc_after:.3f}")
assert acc_after > acc_before + 0.1 and acc_after > 0.6  # seeds 0-2: 0.49-0.50 -> 0.65-0.67

# %% [markdown]
# What did it learn? Split the held-out pairs by whether the rejected answer
# is smaller than the right one, and try it on the SFT model's own on-policy
# pairs (section 4), which it never saw:

# %%
s_c, s_r = score(rm, held_args[0], held_args[1]), score(rm, held_args[0], held_args[2])
right = s_c > s_r
smaller = np.array([int(p.rejected) < int(p.chosen) for p in held])
acc_on = pairwise_accuracy(rm, [p.prompt for p in on_policy], [p.chosen for p in on_policy],
                           [p.rejected for p in on_policy])
print(f"rejected smaller than right ({smaller.mean():.0%} of pairs): accuracy {right[smaller].mean():.3f}; "
      f"rejected larger: {right[~smaller].mean():.3f}")
print(f"on-policy pairs of the SFT model: accuracy {acc_on:.3f}")
assert right[smaller].mean() > right[~smaller].mean()

# %% [markdown]
# Much of what 80 steps taught it is the same shortcut DPO found: "bigger is
# better" ranks most offline pairs right and does little on the model's own
# mistakes. A reward model is only as good as the pairs it saw, and an RL run
# that maximises it will find its blind spots (reward hacking). That is why
# `minirl/presets/rm.toml` trains on on-policy pairs instead: the SFT model's
# own right and wrong answers, which are what the reward model will score
# during RL.
#
# **Plugging it into RL.** Any rollout-based algorithm (GRPO, PPO,
# REINFORCE, RLOO) and the on-policy pair builder take `reward="rm:PATH"`
# with PATH a checkpoint that has a reward head; the samples are then scored
# by the reward model instead of the verifier. The verifier's exact-match rate
# is still logged as `accuracy`, beside `rm_score`, so reward hacking shows:
# rm_score climbs while accuracy does not. From the command line:
#
#     minirl run rm --out runs/rm --steps 150
#     minirl run grpo --reward rm:runs/rm/checkpoints/final
#     minirl run dpo --pairs on_policy --reward rm:runs/rm/checkpoints/final
#
# Here: save the reward model and score one small rollout with it (no
# training).

# %%
tmp = Path(tempfile.mkdtemp(prefix="minirl_rm_"))
try:
    save_model(tmp / "rm", rm)
    rollout = sample_rollout(sft, "add", np.random.default_rng(0), num_prompts=2, group_size=4,
                             reward=f"rm:{tmp / 'rm'}")
    for ex, c, s in zip(rollout.examples, rollout.completions, rollout.rewards):
        print(f"{ex.prompt:>8} -> {c:<5} {'right' if c == ex.answer else 'wrong':>5}  rm score {s:+.3f}")
    print({k: round(v, 3) for k, v in rollout.stats.items()})
    assert rollout.stats["rm_score"] == rollout.stats["reward"] and "accuracy" in rollout.stats
    # the rollout's rewards are the saved model's scores (bf16 weights on disk: close, not equal)
    assert np.allclose(rollout.rewards, score(rm, [ex.prompt for ex in rollout.examples], rollout.completions),
                       atol=0.1)
finally:
    shutil.rmtree(tmp)

# %% [markdown]
# ## What to take away
#
# - The KL-regularised RLHF objective has the closed-form optimum
#   π* ∝ π_ref exp(r/β), so every reward is β log π*/π_ref plus a term of the
#   prompt alone.
# - In Bradley–Terry that term cancels: the preference likelihood of the
#   implicit reward is the DPO loss −log σ(βΔ), log 2 at the start. Its
#   gradient raises chosen and lowers rejected log-probs, weighted by
#   σ(−βΔ); β sets how soon a pair goes quiet.
# - hinge stops at βΔ = 1, IPO aims at a per-token margin 1/(2β), robust DPO
#   is unbiased under flipped labels; SimPO and ORPO drop the reference, KTO
#   drops the pairs.
# - DPO constrains only the margin. At a small β it lowers the chosen
#   log-probs too and can learn a shortcut of the data (here, "bigger is
#   better"); a larger β stops sooner, and on-policy pairs (the model's own
#   samples) then keep the chosen answers where they were.
# - A reward model trained on the same pairs learns the same shortcut: check
#   it on data it did not see before trusting it as an RL reward.
