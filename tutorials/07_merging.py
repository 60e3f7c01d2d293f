# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Lesson 7 — Model merging: task vectors, DARE, TIES, and merging online
#
# A fine-tuned model differs from the model it started from by a *task
# vector* (Ilharco et al., arXiv 2212.04089), and task vectors can be added,
# scaled, sparsified and voted on: that is model merging. mergekit's methods
# combine finished models after training (offline): a plain weighted average
# (model soups, arXiv 2203.05482), DARE's random drop and rescale (Yu et al.,
# arXiv 2311.03099) and TIES' trim, sign election and disjoint mean (Yadav et
# al., arXiv 2306.01708). Lu et al. (Qwen, *Online Merging Optimizers*, arXiv
# 2405.17931; docs/PAPERS.md §2) move the merge inside the optimizer: every
# RLHF step is merged with the SFT model's task vector as it is taken, to
# keep the reward and pay less *alignment tax* (what the policy forgets on
# other tasks).
#
# This lesson builds each merge by hand on small arrays you can check, then
# runs them on minirl's shipped models:
#
# 1. task vectors: the SFT model as the base plus τ_r
# 2. DARE and TIES by hand, against `merge_tensors`
# 3. offline merging of a real RL policy with the SFT model
# 4. the online merge step: OnDARE and OnTIES by hand, and what α means
# 5. the reward–tax figure of `minirl reproduce merging`, in miniature
# 6. the commands
#
# The code is `minirl/merging/offline.py` (task vectors; mergekit's linear,
# dare_linear, ties and dare_ties; the streamed `merge`),
# `minirl/merging/online.py` (OnDARE, OnTIES, the EMA and ChildTuning
# baselines, as AdamW subclasses) and `minirl/experiments/merging.py`
# (`minirl reproduce merging`). Run it with `python tutorials/07_merging.py`,
# or open it in Jupyter (jupytext). Every claim is an `assert`. With
# matplotlib installed it also draws two figures into a temporary directory;
# without it, the same numbers are printed as tables.

# %%
import math
import shutil
import sys
import tempfile
import time
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

from minirl import runs
from minirl.experiments.common import accuracy_outcome
from minirl.experiments.merging import MergingConfig, label, points, run_merging
from minirl.loading import resolve
from minirl.merging import offline, online
from minirl.merging.offline import dare_drop, magnitude_trim, merge, merge_tensors, task_vector
from minirl.merging.online import OnDARE, OnTIES, dare_filter, merge_ratio, reference_delta, topk_filter
from minirl.optim import AdamW
from minirl.plots import TUTORIAL_FIGURES, pyplot, save
from minirl.rl.sft import token_nll
from minirl.tasks.corpus import sft_batch

np.set_printoptions(precision=4, suppress=True)

plt = pyplot()  # figures are optional: without matplotlib (None) the lesson prints the same numbers as tables
FIG_DIR = TUTORIAL_FIGURES  # outside the repository: nothing to commit


def save_figure(fig, name: str) -> None:
    """Write `fig` to FIG_DIR/name and say where."""
    print("figure:", save(fig, FIG_DIR / name, dpi=100))


def rms(x) -> float:
    """Root mean square over every entry of an array or a dict of arrays (float64)."""
    arrays = list(x.values()) if isinstance(x, dict) else [x]
    return math.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in arrays) / sum(a.size for a in arrays))


# %% [markdown]
# ## 1. Task vectors
#
# minirl ships two models: `base`, pretrained on raw text, and `sft`,
# instruction-tuned from it (lesson 3's starting point). Their difference,
# tensor by tensor, is the SFT model's task vector, which paper 2 calls the
# *reference* task vector:
#
#     τ_r = θ_SFT − θ_base
#
# Both models are stored in bf16 (8 significant bits), so every entry of τ_r
# is a difference of two bf16 numbers, which float32 (24 bits) holds exactly
# here: base + τ_r gives back the SFT weights bit for bit.

# %%
base_w = {n: p.data for n, p in minirl.load("base").named_parameters()}  # name -> (…) float32
sft_w = {n: p.data for n, p in minirl.load("sft").named_parameters()}
tau_r = task_vector(sft_w, base_w)  # name -> θ_SFT − θ_base
n_weights = sum(t.size for t in tau_r.values())
zero_frac = float(np.mean(np.concatenate([t.ravel() for t in tau_r.values()]) == 0))
print(f"{len(tau_r)} tensors, {n_weights:,} weights; rms(θ_base) = {rms(base_w):.4f}, "
      f"rms(τ_r) = {rms(tau_r):.4f} ({rms(tau_r) / rms(base_w):.0%} of it); "
      f"entries of τ_r exactly 0: {zero_frac:.1%}")
name = "model.norm.weight"  # (64,) the final RMSNorm's gains: small enough to look at
print(f"{name}, first six entries:\n  base {base_w[name][:6]}\n  sft  {sft_w[name][:6]}\n  τ_r  {tau_r[name][:6]}")
assert base_w.keys() == sft_w.keys() == tau_r.keys()
assert all(np.array_equal(base_w[n] + tau_r[n], sft_w[n]) for n in tau_r)  # θ_base + τ_r = θ_SFT, exactly
assert 0.012 < rms(tau_r) < 0.015  # the 0.0134 that online merging's scale matching starts from (section 4)
assert zero_frac < 0.05  # SFT moved almost every weight

# %% [markdown]
# The SFT change is about a sixth of the weights' RMS, and it is everywhere:
# almost no entry of τ_r is zero. DARE's paper finds that a 7B chat model's
# delta is highly redundant: most entries lie within ±0.002, and dropping 90 %
# or more of them at random (rescaling the rest) costs almost nothing.
# Whether a 200 k-parameter model has that redundancy to spare is one of the
# things section 3 shows.

# %% [markdown]
# ## 2. DARE and TIES by hand
#
# Merging combines task vectors δ_i = θ_i − θ_base of N fine-tunes with
# weights w_i and a density d, entry by entry (docs/PAPERS.md §2, "Offline
# merging reference definitions", as mergekit computes them):
#
# - **linear**: θ = Σ w_i θ_i / Σ w_i (the base takes no part);
# - **dare_linear**: keep each entry of δ_i with probability d, divide what
#   is kept by d, θ = θ_base + Σ w_i δ̂_i;
# - **ties**: 1) trim each δ_i to its k = int(d · numel) largest magnitudes;
#   2) elect the sign of Σ w_i δ̂_i at each entry, a tie (0) going to +;
#   3) keep the w_i δ̂_i that agree with it (a zero never agrees) and divide
#   their sum by the weights that contributed; 4) θ = θ_base + that.
#
# Two task vectors of six entries on a six-entry base, weights 0.75 and
# 0.25, density 0.5 (k = 3). The numbers are multiples of 1/64, so float32
# does every step below exactly and the hand result must match to the bit.

# %%
theta_b = np.array([1.0, -0.5, 0.25, 2.0, 0.0, -1.0], np.float32)  # (6,) the base
delta1 = np.array([0.5, 0.125, -0.25, 0.0625, -0.75, 0.375], np.float32)  # (6,) model 1's task vector
delta2 = np.array([-0.5, 0.0625, 0.375, 0.125, 0.25, -1.125], np.float32)  # (6,) model 2's
theta1, theta2 = theta_b + delta1, theta_b + delta2
w = np.array([0.75, 0.25], np.float32)
d = 0.5

# 1) trim: the 3 largest |δ| of each
t1 = np.where(np.isin(np.arange(6), np.argsort(-np.abs(delta1))[:3]), delta1, 0).astype(np.float32)
t2 = np.where(np.isin(np.arange(6), np.argsort(-np.abs(delta2))[:3]), delta2, 0).astype(np.float32)
# 2) elect: the sign of the weighted sum, ties (0) to +
weighted = np.stack([w[0] * t1, w[1] * t2])  # (2, 6)
elected = np.where(weighted.sum(axis=0) >= 0, 1.0, -1.0)  # (6,)
# 3) disjoint mean: the agreeing entries, over the weights that contributed
agree = np.sign(weighted) == elected  # (2, 6) a zero never agrees
contributed = (w[:, None] * agree).sum(axis=0)  # (6,)
ties_hand = theta_b + (weighted * agree).sum(axis=0) / np.where(contributed == 0, 1, contributed)

print(f"{'':>10}" + "".join(f"{i:>9d}" for i in range(6)))
for row_name, row in (("trim δ1", t1), ("trim δ2", t2), ("Σ w_i δ_i", weighted.sum(axis=0)), ("elected", elected),
                      ("agree 1", agree[0]), ("agree 2", agree[1]), ("ties - θ_b", ties_hand - theta_b)):
    print(f"{row_name:>10}" + "".join(f"{float(v):9.4g}" for v in row))
ties_minirl = merge_tensors(theta_b, [theta1, theta2], w, "ties", density=d)
print("merge_tensors(ties) - θ_b:", ties_minirl - theta_b)
assert np.array_equal(t1, magnitude_trim(delta1, d)) and np.array_equal(t2, magnitude_trim(delta2, d))
assert np.array_equal(agree, offline.sign_consensus(weighted))
assert np.array_equal(ties_minirl, ties_hand)  # bit for bit
assert elected[5] == 1 and weighted[:, 5].sum() == 0  # entry 5: 0.28125 against -0.28125, a tie, goes to +
assert np.array_equal(ties_hand - theta_b, [0.5, 0, 0.375, 0, -0.75, 0.375])

# %% [markdown]
# Read the table column by column. Entry 0: both models kept it, with
# opposite signs; model 1 outweighs model 2 (0.375 against −0.125), so the
# vote is + and only model 1's 0.5 survives, divided by its own weight: the
# disjoint mean returns the *agreeing* models' values, not a watered-down
# average. Entry 5 is an exact tie, and ties go to +. Entries 1 and 3 were
# trimmed from both models: the base's value stays.
#
# **DARE** draws one Bernoulli(d) mask per model, in order, from the
# generator it is given. Drawn here from the same seed:

# %%
rng = np.random.default_rng(0)
mask1, mask2 = rng.random(6) < d, rng.random(6) < d  # model 1's mask, then model 2's
hat1, hat2 = np.where(mask1, delta1, 0) / np.float32(d), np.where(mask2, delta2, 0) / np.float32(d)
dare_hand = theta_b + (w[0] * hat1 + w[1] * hat2)
dare_minirl = merge_tensors(theta_b, [theta1, theta2], w, "dare_linear", density=d, rng=np.random.default_rng(0))
print("masks:", mask1.astype(int), mask2.astype(int))
print("dare_linear by hand:", dare_hand, "\n      merge_tensors:", dare_minirl)
assert np.array_equal(hat1, dare_drop(delta1, d, np.random.default_rng(0)))  # the first draw of the same seed
assert np.array_equal(dare_minirl, dare_hand)

# %% [markdown]
# **DARE is unbiased.** Each entry survives with probability d and is then
# multiplied by 1/d, so E[δ̂] = d · δ/d = δ: averaged over many masks, DARE
# gives back the task vector. The spread of one draw is |δ|·√((1−d)/d), here
# |δ|, so the mean of 4000 draws is within about |δ|/63 of δ; the bound
# below is five times that.

# %%
draws = 4000
rng = np.random.default_rng(1)
mean_hat = np.mean([dare_drop(delta2, d, rng) for _ in range(draws)], axis=0)
print("δ2            :", delta2, "\nmean of 4000 δ̂:", mean_hat)
assert np.all(np.abs(mean_hat - delta2) <= 5 * np.abs(delta2) * math.sqrt((1 - d) / d / draws))
one = merge_tensors(theta_b, [theta1], [1.0], "linear")
two = merge_tensors(theta_b, [theta1], [2.0], "linear")  # normalised: Σ w θ / Σ w
assert np.array_equal(one, theta1) and np.array_equal(two, theta1)  # linear of one model is that model
assert np.array_equal(merge_tensors(theta_b, [theta1], [1.0], "ties"), theta1)  # and so is TIES at density 1

# %% [markdown]
# ## 3. Offline merging of real models
#
# Paper 2's offline baseline merges the RLHF policy with the SFT model it
# started from, with weight w on the policy and 1 − w on the SFT model,
# taking task vectors against the base: the policy's δ is τ_r plus the RL
# update, the SFT model's is τ_r.
#
# A policy that gains takes the preset's 150 GRPO steps (about 40 s). To have,
# in a few seconds, a model that is clearly *different* from the SFT model,
# we take 30 steps at 5× the preset's learning rate (5e-4). The preset's notes
# say what that does: an lr this large overshoots and costs accuracy on other
# tasks. That makes a poor policy but a good specimen for merging; read the
# numbers as what this run did, not as how RL or merging performs.
#
# `merge(base, models, weights, method, density, seed)` takes checkpoint
# paths (or dicts) and streams one tensor of every model at a time; DARE's
# masks come from a generator seeded by (seed, crc32(tensor name)). Its result
# goes into the SFT model's parameters, which `runs.accuracy` then measures
# greedily on the first n held-out problems of each task (this is exactly
# what `minirl reproduce merging` does for its offline grid).

# %%
N_EVAL = {"add": 200, "sort": 100, "reverse": 100, "copy": 100, "max": 100, "count": 100}
tmp = Path(tempfile.mkdtemp(prefix="minirl_merging_"))
try:
    t0 = time.perf_counter()
    rep = runs.rl("grpo", out=tmp / "grpo", progress=False, steps=30, lr=5e-4, seed=0, bench_n=20)
    print(f"30 GRPO steps at lr 5e-4 in {time.perf_counter() - t0:.1f} s")
    policy_ckpt, base_path, sft_path = rep["checkpoint"], str(resolve("base")), str(resolve("sft"))
    policy_w = {n: p.data.copy() for n, p in minirl.load(policy_ckpt).named_parameters()}

    model = minirl.load("sft")  # its parameters receive each merge
    params = dict(model.named_parameters())
    before = runs.accuracy(model, N_EVAL)
    GRID = [("linear", 1.0, wt) for wt in (0.0, 0.25, 0.5, 0.75, 1.0)] + \
           [(m, 0.5, wt) for m in ("dare_linear", "ties") for wt in (0.0, 0.5, 1.0)]
    table = []
    t0 = time.perf_counter()
    for method, density, wt in GRID:
        merged = merge(base_path, [policy_ckpt, sft_path], [wt, 1 - wt], method, density, seed=0)
        assert merged.keys() == params.keys() and all(merged[n].shape == params[n].shape for n in params)
        if method == "linear" and wt == 1.0:
            assert all(np.array_equal(merged[n], policy_w[n]) for n in params)  # w = 1: the policy, bit for bit
        if method == "linear" and wt == 0.0:
            assert all(np.array_equal(merged[n], sft_w[n]) for n in params)  # w = 0: the SFT model
        for n, p in params.items():
            p.data[...] = merged[n]
        after = runs.accuracy(model, N_EVAL)
        table.append({**accuracy_outcome(before, after, "add"), "method": method, "density": density, "w": wt,
                      "acc": after})
    print(f"{len(GRID)} merges measured in {time.perf_counter() - t0:.1f} s")
    seeded = [merge(base_path, [policy_ckpt, sft_path], [0.5, 0.5], "dare_linear", 0.5, seed=s) for s in (0, 0, 1)]
finally:
    shutil.rmtree(tmp)

print(f"\n{'method':>11} {'d':>4} {'w':>5} | " + " ".join(f"{t:>7}" for t in N_EVAL) + " | gain   tax (points)")
print(f"{'the SFT model':>22} | " + " ".join(f"{before[t]:7.3f}" for t in N_EVAL) + " |")
for row in table:
    print(f"{row['method']:>11} {row['density']:4.1f} {row['w']:5.2f} | "
          + " ".join(f"{row['acc'][t]:7.3f}" for t in N_EVAL) + f" | {row['gain']:+5.1f} {row['tax']:+6.2f}")
assert all(0 <= a <= 1 for row in table for a in row["acc"].values())
assert all(math.isfinite(row["gain"]) and math.isfinite(row["tax"]) for row in table)
assert table[0]["acc"] == before  # linear at w = 0 is the SFT model, so it measures the same
assert all(np.array_equal(seeded[0][n], seeded[1][n]) for n in params)  # DARE: the same seed, the same masks
assert not all(np.array_equal(seeded[0][n], seeded[2][n]) for n in params)  # another seed, other masks

# %% [markdown]
# What the table shows:
#
# - **The ends of the linear line are the two models.** w = 0 is the SFT
#   model bit for bit and w = 1 the policy bit for bit (both asserted above);
#   in between, linear merging walks the straight line θ_SFT + w·(θ_policy −
#   θ_SFT). This over-eager run lost accuracy on add *and* paid a tax, and
#   each step back toward the SFT model gives some of it back; with a policy
#   that gains, the same line trades gain for tax, which is what section 5's
#   experiment measures.
# - **Sparsifying τ_r costs the SFT model itself.** The w = 0 rows of DARE
#   and TIES merge the SFT model alone: DARE keeps a random half of τ_r and
#   doubles it, TIES keeps its larger half. At 7B that is nearly free
#   (section 1); this model has no such redundancy, and losing half of τ_r
#   costs it points on several tasks. So here the offline DARE and TIES points
#   start from a handicap that has nothing to do with RL. That is a finding
#   about a 200 k-parameter model, not about the methods at scale.

# %%
line = [r for r in table if r["method"] == "linear"]  # w = 0, 0.25, ..., 1
print("linear, w from 1 down to 0: gain", [f"{r['gain']:+.1f}" for r in line[::-1]],
      "tax", [f"{r['tax']:+.1f}" for r in line[::-1]])
assert line[-1]["gain"] < 0 < line[-1]["tax"]  # what this run did (-33.5 / +8.8 when written): not noise at 100-200
assert all(a["gain"] >= b["gain"] and a["tax"] <= b["tax"] for a, b in zip(line, line[1:]))  # w down: both recover
dare0, ties0 = (next(r for r in table if r["method"] == m and r["w"] == 0.0) for m in ("dare_linear", "ties"))
print(f"the SFT model with half of τ_r dropped (DARE) or trimmed (TIES): tax {dare0['tax']:+.1f} / {ties0['tax']:+.1f}"
      " points")
assert dare0["tax"] > 2 and ties0["tax"] > 2  # measured about 10 points each: far outside the noise of 100 problems

if plt is not None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method, marker in (("linear", "o-"), ("dare_linear", "s--"), ("ties", "^:")):
        rows = [r for r in table if r["method"] == method]
        ax.plot([r["tax"] for r in rows], [r["gain"] for r in rows], marker,
                label=f"{method} (d {rows[0]['density']:g})")
        for r in rows:
            ax.annotate(f"w {r['w']:g}", (r["tax"], r["gain"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(0, color="k", lw=0.5)
    ax.set(xlabel="tax: mean drop on the five other tasks (points)", ylabel="gain on add (points)",
           title="30 GRPO steps at 5x lr, merged back with the SFT model")
    ax.legend(fontsize=8)
    save_figure(fig, "07_offline_merges.png")
else:
    print("(matplotlib is not installed: the table above has the same numbers)")

# %% [markdown]
# ## 4. The online merge step
#
# Online merging does the merge at every optimizer step. With Δθ_t the plain
# AdamW step and F a sparsifier,
#
#     θ_t = θ_{t−1} + (1 − α) F(Δθ_t) + α F(τ_r)
#
# - **OnDARE**: F keeps each entry with probability p, the *reserve rate*: a
#   fresh mask every step for Δθ_t, one mask drawn once for τ_r. The paper
#   drops DARE's 1/p (`rescale="none"`, minirl's default).
# - **OnTIES**: F keeps the top-p fraction of each tensor by magnitude; then
#   the sign vote: elected sign = sign(τ_r' + Δθ'), 0 going to +, and the
#   entries of either that disagree with it are dropped.
#
# minirl's optimizers take duck-typed parameters: anything with `.data` (a
# float32 array, updated in place) and `.grad`. Two of them here, with a
# made-up gradient and τ_r, α = 0.1 and p = 0.5, large enough to see.
#
# To read Δθ exactly, a plain AdamW runs on a copy that starts from zeros:
# with weight decay 0, Adam's step depends on the gradient and its moments,
# not on the weights, so that copy ends at Δθ itself.

# %%
class Param:
    """What minirl's optimizers need of a parameter: `.data` (float32, updated in place) and `.grad`."""

    def __init__(self, data, grad=None):
        self.data, self.grad = np.array(data, np.float32), grad


rng = np.random.default_rng(3)
SHAPES = {"w": (3, 4), "b": (4,)}
theta0 = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
grads = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
tau_toy = {n: (0.05 * rng.standard_normal(s)).astype(np.float32) for n, s in SHAPES.items()}  # a made-up τ_r
LR, ALPHA, P = 0.01, 0.1, 0.5


def params_at(start: dict) -> list:
    """(name, Param) pairs at `start`, each holding a copy of its gradient."""
    return [(n, Param(start[n], grads[n].copy())) for n in SHAPES]


# 1) the plain AdamW step Δθ, read off a copy that starts at zero
plain = params_at({n: np.zeros(s, np.float32) for n, s in SHAPES.items()})
AdamW(plain, lr=LR, weight_decay=0.0).step()
dtheta = {n: p.data.copy() for n, p in plain}
# 2) F by hand: τ_r's mask is drawn once, from [seed, 1]; each step's from [seed, 2]; parameter by parameter
ref_rng, step_rng = np.random.default_rng([0, 1]), np.random.default_rng([0, 2])
F_tau = {n: np.where(ref_rng.random(t.shape) < P, t, np.float32(0)) for n, t in tau_toy.items()}
F_dtheta = {n: np.where(step_rng.random(t.shape) < P, t, np.float32(0)) for n, t in dtheta.items()}
# 3) the merge
by_hand = {n: theta0[n] + ((1.0 - ALPHA) * F_dtheta[n] + ALPHA * F_tau[n]) for n in SHAPES}

ondare_params = params_at(theta0)
ondare = OnDARE(ondare_params, lr=LR, weight_decay=0.0, ref_delta=tau_toy, reserve_rate=P, alpha=ALPHA, seed=0)
ondare.step()
print("Δθ (b):       ", dtheta["b"], "   (Adam's first step: about -lr·sign(grad))")
print("F(Δθ) (b):    ", F_dtheta["b"], "\nF(τ_r) (b):   ", F_tau["b"])
print("θ1 by hand (b):", by_hand["b"], "\nθ1 OnDARE (b): ", dict(ondare_params)["b"].data)
assert all(np.array_equal(F_tau[n], f) for n, f in zip(ondare.names, ondare.ref_filtered))
assert all(np.array_equal(p.data, by_hand[n]) for n, p in ondare_params)  # bit for bit
assert np.allclose(np.abs(dtheta["b"]), LR, rtol=1e-3)  # |m̂/√v̂| = 1 at the first step (up to eps)
assert np.array_equal(dare_filter(tau_toy["w"], P, "none", np.random.default_rng([0, 1])), F_tau["w"])

# %% [markdown]
# **α = 0 and p = 1 is AdamW**, bit for bit: F keeps everything (and draws
# nothing), and (1 − 0)·Δθ + nothing is Δθ. Five steps with weight decay on,
# against `minirl.optim.AdamW`:

# %%
adam_params, same_params = params_at(theta0), params_at(theta0)
adam = AdamW(adam_params, lr=LR, weight_decay=0.01)
as_adam = OnDARE(same_params, lr=LR, weight_decay=0.01, ref_delta=tau_toy, reserve_rate=1.0, alpha=0.0)
for step in range(5):
    for (n, pa), (_, pb) in zip(adam_params, same_params):
        pa.grad = pb.grad = np.random.default_rng(step).standard_normal(SHAPES[n]).astype(np.float32)
    adam.step()
    as_adam.step()
assert all(np.array_equal(pa.data, pb.data) for (_, pa), (_, pb) in zip(adam_params, same_params))
print("OnDARE(α=0, p=1) after 5 steps equals AdamW bit for bit")

# %% [markdown]
# **Without 1/p, OnDARE shrinks the step.** Offline DARE rescales by 1/d to
# stay unbiased (section 2); the paper's OnDARE does not, so on average it
# takes p·Δθ: at p = 0.1, a tenth of AdamW's step, spread over a random tenth
# of the weights. That is why `reproduce merging` also trains AdamW at 0.3×
# and 0.1× its learning rate: a smaller AdamW step is the fair point to beat.

# %%
rng = np.random.default_rng(4)
x = np.full(10, 1e-4, np.float32)
mean_none = np.mean([dare_filter(x, 0.1, "none", rng) for _ in range(4000)], axis=0)
mean_inv = np.mean([dare_filter(x, 0.1, "inverse_p", rng) for _ in range(4000)], axis=0)
print(f"mean of F(x)/x over 4000 masks at p 0.1: none {np.mean(mean_none / x):.3f}, "
      f"inverse_p {np.mean(mean_inv / x):.3f}")
assert abs(np.mean(mean_none / x) - 0.1) < 0.02 and abs(np.mean(mean_inv / x) - 1.0) < 0.2  # 40,000 draws each

# %% [markdown]
# **OnTIES' vote**, on six hand-made entries of τ_r' and Δθ' (both already
# trimmed). The elected sign is that of τ_r' + Δθ' with 0 going to +; an
# entry survives only with the elected sign, so a 0 never survives:

# %%
ref6 = np.array([0.3, -0.2, 0.0, 0.1, -0.05, 0.0], np.float32)  # τ_r'
step6 = np.array([0.01, 0.01, -0.01, -0.2, 0.05, 0.0], np.float32)  # Δθ'
ref_kept, step_kept = online.sign_consensus(ref6, step6)
print("τ_r' + Δθ':", ref6 + step6, "\nτ_r' kept: ", ref_kept, "\nΔθ' kept:  ", step_kept)
assert np.array_equal(ref_kept, np.float32([0.3, -0.2, 0, 0, 0, 0]))
assert np.array_equal(step_kept, np.float32([0.01, 0, -0.01, -0.2, 0.05, 0]))  # entry 4: a tie (0), + wins

# %% [markdown]
# Entry 1 is the one to notice: the policy's step (+0.01) points against
# τ_r' (−0.2), τ_r' is larger, and the step is dropped. The vote is
# unweighted, α does not enter it. At the paper's scale τ_r is about 1e-3 and
# a step about 1e-6, so wherever τ_r' is kept the policy may only move along
# the SFT's sign. So OnTIES with α = 0 and p = 1 is *not* AdamW: it still
# votes (as the official code does). One OnTIES step by hand on the toy
# parameters, and that α = 0 check:

# %%
ties_params = params_at(theta0)
onties = OnTIES(ties_params, lr=LR, weight_decay=0.0, ref_delta=tau_toy, reserve_rate=P, alpha=ALPHA)
onties.step()
for n, p in ties_params:
    ref_t, step_t = online.sign_consensus(topk_filter(tau_toy[n], P), topk_filter(dtheta[n], P))
    assert np.array_equal(p.data, theta0[n] + ((1.0 - ALPHA) * step_t + ALPHA * ref_t))
    assert np.array_equal(topk_filter(dtheta[n], P), magnitude_trim(dtheta[n], P))  # the same trim as offline TIES

voting = params_at(theta0)
OnTIES(voting, lr=LR, weight_decay=0.0, ref_delta=tau_toy, reserve_rate=1.0, alpha=0.0).step()
moved = np.concatenate([(p.data != theta0[n]).ravel() for n, p in voting])
print(f"OnTIES step by hand: equal. OnTIES(α=0, p=1) moved {moved.mean():.0%} of the weights; AdamW moves all")
assert 0 < moved.mean() < 1  # the vote dropped the steps that point against τ_r (|τ_r| > |Δθ| here)

# %% [markdown]
# ### What α means, and why α alone means nothing
#
# The merge adds α·F(τ_r) to every step. How hard that pulls depends on how
# big τ_r is against the step, so runs print the **merge ratio**
#
#     merge_ratio = α · rms(τ_r) / rms(Δθ_t),
#
# the reference pull against the policy's own step (docs/PAPERS.md, "Scale
# matching for online merging"). Adam moves each weight by about lr per
# step, so rms(Δθ_t) ≈ lr:
#
# - paper (7B): α = 1e-7, lr = 1e-6, rms(τ_r) ≈ 1e-3 (assumed from DARE's
#   finding that 7B chat deltas lie mostly within ±0.002): ratio ≈ 1e-4;
# - minirl: rms(τ_r) = 0.0134 (section 1) and the presets' lr 1e-4, so the
#   same ratio needs α ≈ 1e-4 · 1e-4 / 0.0134 ≈ 7.5e-7; the default α is
#   1e-6 (ratio ≈ 1.3e-4).
#
# The paper's α at minirl's scale would pull ten times more weakly than the
# paper's run did. Measured on the real SFT model: one SFT-loss gradient
# (standing in for the policy's), the AdamW step it gives at lr 1e-4, and
# the ratio `merge_ratio` computes and OnDARE reports in `step_stats()`:

# %%
sft_model = minirl.load("sft")
named = list(sft_model.named_parameters())
token_nll(sft_model, *sft_batch(np.random.default_rng(0), sft_model.tokenizer, 16)).backward()
tau_real = reference_delta(named)  # θ(sft) − θ(base) for each optimised parameter: section 1's τ_r
assert all(np.array_equal(tau_real[n], tau_r[n]) for n in tau_r)
zeros = [(n, Param(np.zeros_like(p.data), p.grad.copy())) for n, p in named]
AdamW(zeros, lr=1e-4, weight_decay=0.0).step()
dtheta_real = {n: p.data for n, p in zeros}  # the plain AdamW step, exactly (it started at zero)
ratio = merge_ratio(1e-6, tau_real, dtheta_real)
probe = OnDARE([(n, Param(p.data, p.grad.copy())) for n, p in named], lr=1e-4, weight_decay=0.0,
               ref_delta=tau_real, alpha=1e-6)
probe.step()
print(f"rms(τ_r) = {rms(tau_real):.4f}, rms(Δθ) = {rms(dtheta_real):.2e} (lr 1e-4; the zero-gradient rows of the "
      f"embedding do not move)\nmerge_ratio at α 1e-6: {ratio:.2e}; OnDARE's step_stats: "
      f"{probe.step_stats()['merge_ratio']:.2e}")
assert math.isclose(probe.step_stats()["merge_ratio"], ratio, rel_tol=1e-9)
assert 1e-4 <= ratio <= 2e-4  # rms(Δθ) ≤ lr at the first step, so the ratio ≥ 1e-6 · 0.0134 / 1e-4

print(f"\n{'':>22} {'lr':>7} {'rms(τ_r)':>8} {'α':>7} {'ratio':>8}")
SCALES = (("paper, 7B", 1e-6, 1e-3, 1e-7), ("minirl, default α", 1e-4, rms(tau_r), 1e-6),
          ("minirl, paper's α", 1e-4, rms(tau_r), 1e-7), ("7B with minirl's α", 1e-6, 1e-3, 1e-6))
for who, lr, tau_rms, alpha in SCALES:
    print(f"{who:>22} {lr:7.0e} {tau_rms:8.4f} {alpha:7.0e} {alpha * tau_rms / lr:8.1e}")

# %% [markdown]
# **The reserve rate and the run's length.** With `rescale="none"` a weight
# is updated in a fraction p of the steps: about p·T times in T steps, and
# it is never touched with probability (1 − p)^T. The paper's run
# (UltraFeedback, about 61k pairs, 2 epochs, batch 8) is T ≈ 15k steps:
# p = 0.01 gives p·T ≈ 150, and the lowest p it found robust, 5e-4, about 7.6.
# minirl's presets run 150 steps: p = 0.01 would update a weight 1.5 times
# and leave a fifth of them untouched, below anything the paper tried;
# minirl's default p = 0.1 gives 15, inside the paper's robust range.

# %%
T_PAPER = 61_000 * 2 // 8
print(f"{'':>16} {'T':>6} {'p':>7} {'p·T':>6} {'never updated':>13}")
for who, T, p in (("paper", T_PAPER, 0.01), ("paper, lowest p", T_PAPER, 5e-4), ("minirl, p 0.01", 150, 0.01),
                  ("minirl, p 0.1", 150, 0.1)):
    print(f"{who:>16} {T:6d} {p:7.4f} {p * T:6.1f} {(1 - p) ** T:13.2%}")
assert abs((1 - 0.01) ** 150 - 0.22) < 0.005 and (1 - 0.1) ** 150 < 1e-6
assert 7 < 5e-4 * T_PAPER < 8 <= 0.1 * 150 < 0.01 * T_PAPER

# %% [markdown]
# ## 5. The reward–tax figure: `minirl reproduce merging`, in miniature
#
# Paper 2's claim is about two numbers per model: the *reward* it reaches and
# the *alignment tax* it pays. `minirl reproduce merging` measures them at
# toy scale. From the shipped SFT model, for DPO (the paper's setting) and
# GRPO, over seeds 0–2, it trains:
#
# - AdamW at the preset's lr, and at 0.3× and 0.1× (OnDARE's average step is
#   smaller, so a lower-lr AdamW is the fair point to beat);
# - OnDARE and OnTIES at the defaults (p 0.1, α 1e-6), and OnDARE step-K
#   (merging every 10 steps);
# - the paper's regularisers: EMA, ChildTuning, twice the KL pull, LoRA;
#
# merges each seed's AdamW policy offline with the SFT model over the
# paper's grid (linear at w 0.1 … 0.9; DARE and TIES at densities 0.3, 0.5,
# 0.7 for each w), and on DPO sweeps p down to 5e-4 and α up to 1e-2. Reward
# is the gain on the trained task (add) in points; tax is the mean drop over
# the other five tasks.
#
# **The verdict rule.** The best online point (OnDARE or OnTIES, by gain −
# tax) is *better* than a family (AdamW, the regularisers, the offline grid)
# when no member reaches its gain at its tax or lower, both by a clear margin
# (1 point of gain, 0.25 of tax, or the two points' standard errors over seeds
# if larger). The claim is *reproduced* when that holds for both DPO and
# GRPO, *not reproduced* when a member clearly beats it for both, and *partly*
# otherwise.
#
# The full run takes about 35 minutes on two cores. Here is the same
# pipeline, `run_merging`, on a sliver of it: GRPO only, AdamW, OnDARE and
# OnTIES, one seed, one offline point per method, no sweeps, in quick mode
# (12 steps of 8 prompts, 20 problems per task). **Its numbers mean nothing**:
# 20 problems move in steps of 5 points, and 12 steps teach nothing. It shows
# what the experiment computes, not what it finds.

# %%
tmp = Path(tempfile.mkdtemp(prefix="minirl_reproduce_merging_"))
try:
    t0 = time.perf_counter()
    sliver = MergingConfig(algorithms=("grpo",), methods=("adamw", "ondare", "onties"), seeds=(0,), weights=(0.5,),
                           densities=(0.5,), reserve_rates=(), alphas=(), quick=True, workers=1)
    result = run_merging(sliver, tmp, progress=print)
    print(f"quick sliver in {time.perf_counter() - t0:.1f} s")
    wrote = sorted(p.name for p in tmp.iterdir() if p.is_file())
    if plt is not None:  # the experiment's own figure, kept beside this lesson's
        FIG_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp / "pareto.png", FIG_DIR / "07_pareto_quick.png")
        print("figure:", FIG_DIR / "07_pareto_quick.png", "(the experiment's pareto.png)")
finally:
    shutil.rmtree(tmp)

pts = points(result)
print(f"\n{'point':>22} {'family':>7} {'gain':>6} {'tax':>6} {'merge ratio':>11}")
for p in pts:
    ratio_text = f"{p['merge_ratio']:.1e}" if p["merge_ratio"] is not None else "-"
    print(f"{label(p):>22} {p['family']:>7} {p['gain']:+6.1f} {p['tax']:+6.2f} {ratio_text:>11}")
for v in result.verdicts:
    print(f"\n{v['claim']}\n  paper: {v['paper']}\n  minirl: {v['minirl']}\n  verdict: {v['verdict']}"
          " (quick mode: meaningless)")
assert "merging.json" in wrote and ("pareto.png" in wrote) == (plt is not None)
assert [r["method"] for r in result.runs] == ["adamw", "ondare", "onties"]
assert sorted((r["method"], r["weight"], r["density"]) for r in result.offline) == \
    [("dare_linear", 0.5, 0.5), ("linear", 0.5, 1.0), ("ties", 0.5, 0.5)]
ratios = {r["method"]: r["merge_ratio"] for r in result.runs}
assert ratios["adamw"] is None and all(0 < ratios[m] < math.inf for m in ("ondare", "onties"))
assert all(v["verdict"] in ("reproduced", "partly", "not reproduced") for v in result.verdicts)
assert all(1e-5 < ratios[m] < 1e-2 for m in ("ondare", "onties"))  # of order 1e-4: what α = 1e-6 was chosen for

# %% [markdown]
# Each online run reports the merge ratio it actually had, averaged over its
# steps: of order 1e-4, as section 4 estimated for α = 1e-6 at lr 1e-4. It
# comes out above that first-step estimate: after the first step Adam moves a
# weight by less than lr wherever its gradient's sign wavers, so rms(Δθ_t)
# falls below lr. The verdicts above come from one seed and 20 problems per
# task, so whatever they say is noise.
#
# For the real answer run `minirl reproduce merging` (about 35 minutes on two
# cores; `--quick` is the smoke test CI runs): it prints the reward–tax table
# beside the paper's Table 4 with a verdict for each claim, and draws
# pareto.png and sweeps.png. The README's section on model merging holds the
# full run's table.

# %% [markdown]
# ## 6. The commands
#
# Offline merging writes a minirl checkpoint that every other command takes
# (`minirl eval`, `minirl export`, `--init`):
#
#     # mergekit's methods: --method linear|dare_linear|ties|dare_ties, --density, --weights per model
#     minirl merge --base base --models runs/grpo-x,sft --weights 0.5,0.5 --method ties --density 0.5 --out merged
#     minirl merge --base base --models runs/grpo-x,sft --weights 0.5,0.5 --method dare_linear --density 0.5 \
#         --seed 0 --rescale inverse_density --out merged-dare     # --rescale l1 is mergekit 0.1's choice
#     minirl eval merged
#
# (`--normalize/--no-normalize` defaults as mergekit's registry does: on for
# linear and ties, off for the DARE methods; `--dtype fp32`, the default,
# keeps the merge exact.) Online merging is an optimizer of any training job:
#
#     minirl run dpo --optimizer ondare --reserve-rate 0.1 --merge-weight 1e-6   # the defaults, written out
#     minirl run grpo --optimizer onties                                          # top-p trim and sign vote
#     minirl run grpo --optimizer ondare --merge-every 10                         # step-K: merge every 10 steps
#     minirl run dpo --optimizer ondare --merge-rescale inverse_p                 # the official code's 1/p
#     minirl run grpo --optimizer ema        # or childtuning: the paper's regularisation baselines
#
# τ_r is `--merge-ref` minus `--merge-base` (sft and base by default), and
# `--mask-seed` seeds the masks. A run's report prints its merge ratio (the
# "merge pull" row) beside its lr / rms(w). And the whole comparison:
#
#     minirl reproduce merging            # DPO and GRPO, seeds 0-2, every method and sweep: about 35 minutes
#     minirl reproduce merging --quick    # the smoke test: its numbers mean nothing

# %% [markdown]
# ## What to take away
#
# - A task vector is θ_fine-tuned − θ_base; the SFT model is the base plus
#   τ_r, exactly, and minirl's τ_r has RMS 0.0134.
# - linear averages the models; DARE drops entries at random and rescales by
#   1/d, unbiased on average; TIES trims to the largest magnitudes, elects a
#   sign per entry (ties to +) and averages only the agreeing models.
# - On a 200 k-parameter model, dropping or trimming half of τ_r hurts the
#   SFT model itself: τ_r is not the small, redundant delta of a 7B model.
# - OnDARE and OnTIES merge every AdamW step with τ_r:
#   (1 − α) F(Δθ) + α F(τ_r). α = 0, p = 1 is AdamW for OnDARE, not for
#   OnTIES, whose sign vote still lets τ_r veto steps against the SFT's sign.
#   Without 1/p, OnDARE's average step is p·Δθ.
# - α is meaningful only through the merge ratio α · rms(τ_r) / rms(Δθ):
#   the paper's 1e-7 at lr 1e-6 and minirl's 1e-6 at lr 1e-4 are both about
#   1e-4. The reserve rate is set the same way, through p·T.
# - Whether online merging buys reward with less tax is what
#   `minirl reproduce merging` measures, over seeds, with its verdict; a
#   quick run says nothing about it.
