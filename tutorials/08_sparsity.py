# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Lesson 8 — The sparsity lab: why RL updates look sparse in bf16
#
# Mukherjee et al. (*Reinforcement Learning Finetunes Small Subnetworks in
# Large Language Models*, arXiv 2505.11711; docs/PAPERS.md §1) compare a
# model before and after RL fine-tuning and find that 68.5 % to 96 % of its
# weights did not change: RL seems to train a small subnetwork. Two
# follow-ups (*The Path Not Taken*, arXiv 2511.08567, and *RL's Razor*,
# arXiv 2509.04259) explain most of that with the number format: the models
# are stored in bfloat16, which has 8 significant bits, and a stored weight
# changes only when its accumulated update crosses half a step of the bf16
# grid. With fp32 weights the same training changes nearly every weight.
#
# This lesson takes the explanation apart, from one number to a whole run:
#
# 1. the bf16 grid, its spacing (the ULP) and the half-ULP threshold
# 2. one weight's path under Adam, stored in fp32, in bf16 with an fp32
#    master copy, and in pure bf16
# 3. the sparsity of a real GRPO update, the official checker's rule
#    written by hand, and the same run with fp32 weights
# 4. `minirl reproduce sparsity`: the paper's claims and the rules that
#    give each a verdict, applied to made-up numbers
# 5. the regime map: the relative step lr / rms(w), and sparsity against it
# 6. subnetwork fine-tuning and sparsity over training, as commands
#
# The code is `minirl/precision.py` (rounding, the ULP, the storage
# policies), `minirl/optim.py` (the fp32 master), `minirl/analysis/`
# (sparsity, rank, overlap; `minirl analyze`), `minirl/experiments/sparsity.py`
# and `minirl/experiments/regime.py` (`minirl reproduce sparsity` and
# `regime`) and `minirl/subnetwork.py` (`--mask-from`). Run it with
# `python tutorials/08_sparsity.py`, or open it in Jupyter (jupytext). Every
# claim is an `assert`. With matplotlib installed it also draws three figures
# into a temporary directory; without it, the same numbers are printed as
# tables.

# %%
import shutil
import sys
import tempfile
import textwrap
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

import ml_dtypes
import numpy as np

from minirl import runs
from minirl.analysis import update_sparsity
from minirl.analysis.compare import analyze_checkpoints
from minirl.analysis.sources import open_source
from minirl.experiments.regime import POINTS
from minirl.experiments.sparsity import (ALGORITHMS, MARGIN, VARIANTS, SparsityConfig, SparsityResult, claims,
                                         planned_runs)
from minirl.optim import AdamW
from minirl.papers import papers
from minirl.plots import TUTORIAL_FIGURES, pyplot, save
from minirl.precision import bf16_bits, to_bf16, ulp

np.set_printoptions(precision=4, suppress=True)

plt = pyplot()  # figures are optional: without matplotlib (None) the lesson prints the same numbers as tables
FIG_DIR = TUTORIAL_FIGURES  # outside the repository: nothing to commit


def save_figure(fig, name: str) -> None:
    """Write `fig` to FIG_DIR/name and say where."""
    print("figure:", save(fig, FIG_DIR / name, dpi=100))


# %% [markdown]
# ## 1. The bf16 grid and the half-ULP threshold
#
# bfloat16 keeps float32's 8 exponent bits and only 7 of its 23 mantissa
# bits: a normal number is 1.m × 2^e with m written in 7 bits, so between
# 2^e and 2^(e+1) there are 128 evenly spaced values. Their spacing, the
# *unit in the last place*, is
#
#     ULP(w) = 2^(floor(log2|w|) − 7),   so   ULP(w) / |w| ∈ (2^−8, 2^−7].
#
# Writing a float32 value into bf16 rounds it to the nearest grid point (ties
# to the even mantissa). So if a stored weight w receives an update Δ,
#
#     |Δ| < ULP(w) / 2   ⇒   bf16(w + Δ) = w:
#
# the update rounds away. `minirl.precision` has the pieces: `to_bf16`
# rounds float32 to the nearest bf16 value (returned as float32, which holds
# it exactly), `bf16_bits` gives the 16-bit encoding and `ulp` the spacing.
# A weight of 0.08 lies in [2^−4, 2^−3), so its ULP is 2^−11 ≈ 4.9e-4 and
# half of it 2.4e-4:

# %%
w = to_bf16(0.08)[()]  # 0.08 is not on the grid: the nearest bf16 value is 0.080078125
u = ulp(w)[()]
print(f"bf16(0.08) = {w!r} (bits {bf16_bits(w):#06x}); ULP = {u:.4e} = 2^{np.log2(u):.0f}; half ULP = {u / 2:.4e}")
assert w == 0.080078125 and u == 2.0**-11 == 2.0 ** (np.floor(np.log2(0.08)) - 7)

print(f"\n{'step Δ':>10} {'w + Δ (fp32)':>14} {'bf16(w + Δ)':>12} {'moved (ULPs)':>12}")
STEPS = (1e-4, 1e-5, 1e-6, -1e-4, 2.0**-12, 3e-4)  # the last two: exactly half a ULP, and more than half
moved = {}
for step in STEPS:
    exact = np.float32(w) + np.float32(step)
    stored = to_bf16(exact)[()]
    moved[step] = (stored - w) / u
    print(f"{step:10.3g} {exact:14.9f} {stored:12.9f} {moved[step]:12.0f}")
assert all(moved[s] == 0 for s in (1e-4, 1e-5, 1e-6, -1e-4))  # all below half a ULP: rounded away
assert moved[2.0**-12] == 0 and bf16_bits(w) % 2 == 0  # exactly half: a tie, and w's mantissa is the even one
assert moved[3e-4] == 1  # above half a ULP: one whole ULP (4.9e-4), more than the step itself

# %% [markdown]
# Even a step of 1e-4, the learning rate of minirl's RL presets, rounds
# away at this weight in one go; a step of 3e-4 is stored as 4.9e-4. bf16
# cannot store a small change of a weight, only no change or a whole ULP.
#
# The threshold is relative: ULP/2 is between 2^−9 and 2^−8 of |w|. Over the
# shipped SFT model's weights, the fraction for which one step of size lr
# rounds away (ULP(w)/2 > lr) is:

# %%
sft_model = minirl.load("sft")
sft_w = {n: p.data.copy() for n, p in sft_model.named_parameters()}  # name -> (…) float32, on the bf16 grid
flat = np.concatenate([t.ravel() for t in sft_w.values()])  # (207936,)
nonzero = flat[flat != 0]
rel = ulp(nonzero) / np.abs(nonzero)
print(f"{flat.size:,} weights; ULP/|w| from {rel.min():.5f} to {rel.max():.5f} (2^-8 = {2**-8:.5f}, "
      f"2^-7 = {2**-7:.5f}); median |w| = {np.median(np.abs(flat)):.4f}")
assert np.array_equal(to_bf16(flat), flat)  # the shipped model is stored in bf16
assert np.all((rel > 2.0**-8) & (rel <= 2.0**-7))

print(f"\n{'lr':>7} {'one step rounds away':>21}")
lost_one_step = {}
for lr in (1e-3, 1e-4, 1e-5, 1e-6):
    lost_one_step[lr] = float(np.mean(ulp(flat) / 2 > lr))
    print(f"{lr:7.0e} {lost_one_step[lr]:21.1%}")
assert lost_one_step[1e-3] < 0.01 and lost_one_step[1e-6] > 0.99  # at the papers' lr no single step is stored
assert 0.5 < lost_one_step[1e-4] < 0.7  # at minirl's preset lr, more than half of them (59 %)

if plt is not None:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    grid = np.logspace(-4, 0, 2000, dtype=np.float32)
    a1.step(grid, ulp(grid), where="post", label="ULP(w) (bf16)")
    a1.plot(grid, grid * 2.0**-7, ":", color="gray", label="|w|·2^-7 and |w|·2^-8")
    a1.plot(grid, grid * 2.0**-8, ":", color="gray")
    for lr, color in ((1e-4, "tab:orange"), (1e-6, "tab:red")):
        a1.axhline(2 * lr, color=color, ls="--", label=f"ULP = 2·lr, lr {lr:g}: above it one step rounds away")
    a1.set(xscale="log", yscale="log", xlabel="|w|", ylabel="spacing of the bf16 grid", title="the bf16 ULP")
    a1.legend(fontsize=7)
    a2.hist(np.abs(nonzero), bins=np.logspace(-6, 0.5, 80), color="tab:blue")
    for lr, color in ((1e-4, "tab:orange"), (1e-6, "tab:red")):  # ULP(w)/2 > lr from |w| = 2^(log2(2 lr) + 7) on
        a2.axvline(2.0 ** np.ceil(np.log2(2 * lr) + 7), color=color, ls="--", label=f"one step of {lr:g} is lost "
                   "to the right")
    a2.set(xscale="log", xlabel="|w|", ylabel="weights", title="the SFT model's weights")
    a2.legend(fontsize=7)
    save_figure(fig, "08_bf16_grid.png")
else:
    print("(matplotlib is not installed: the tables above have the same numbers)")

# %% [markdown]
# The same count on the SFT models of other widths (`sft-w32`, `sft-w96`, `sft-w128` ship for the regime map's
# width axis). Wider models end up with smaller weights, so more of them are small enough for one step of
# 1e-4 to be stored: a wider model is *denser* at the same lr. `minirl reproduce regime` measured the paper
# preset (pure bf16, lr 1e-4, 300 steps) at 70.3, 60.0, 54.1 and 54.2 % unchanged for these four widths (seeds
# 0-2, README "The width axis"); the count below predicts it within 2 points, before any training.

# %%
print(f"{'model':>9} {'width':>6} {'rms(all)':>8} {'half a ULP > 1e-4':>18}")
by_width = {}
for name in ("sft-w32", "sft", "sft-w96", "sft-w128"):
    wide_model = minirl.load(name)
    width = wide_model.config.hidden_size
    weights = np.concatenate([t.data.ravel() for _, t in wide_model.named_parameters()])  # norms included
    by_width[width] = (float(np.sqrt(np.mean(weights**2))), float(np.mean(ulp(weights) / 2 > 1e-4)))
    print(f"{name:>9} {width:6d} {by_width[width][0]:8.4f} {by_width[width][1]:18.1%}")
assert by_width[32][0] > by_width[64][0] > by_width[96][0] > by_width[128][0]  # weights shrink with width
assert by_width[32][1] > by_width[64][1] > by_width[96][1]  # and fewer steps of 1e-4 are lost

# %% [markdown]
# ## 2. One weight's path under Adam
#
# Training keeps updates small, so how does a bf16 model learn at all?
# minirl has three storage policies (`minirl/precision.py`), which a run
# picks with `--precision`:
#
# - **fp32**: the weights are float32, every update is kept;
# - **bf16** (the default, and how the papers' models are trained): the
#   optimizer keeps an fp32 *master* copy, applies every update to it and
#   writes bf16(master) into the model. Updates below half a ULP accumulate
#   in the master until it crosses the midpoint between two grid values;
#   then the stored weight jumps by a whole ULP;
# - **pure_bf16**: no master; the update is added to the stored bf16 value
#   and the sum rounded, so an update below half a ULP is lost for good.
#
# minirl's optimizers take anything with `.data` and `.grad`, so one weight
# is a one-element parameter. AdamW (no weight decay) moves it by
# lr · m̂/(√v̂ + eps) per step: about lr when the gradient keeps its sign
# (m̂/√v̂ near 1), much less when its sign is random (m̂ averages to about
# zero). Two gradient streams, 200 steps each: *coherent*, −(1 + 0.5 ξ),
# which pushes the weight up every step, and *random-sign*, ξ, with ξ
# standard normal.

# %%
class Param:
    """What minirl's optimizers need of a parameter: `.data` (float32, updated in place) and `.grad`."""

    def __init__(self, data, grad=None):
        self.data, self.grad = np.array(data, np.float32), grad


def adam_path(lr: float, precision: str, grads) -> tuple[np.ndarray, np.ndarray]:
    """(stored value, weights updates are applied to) after each of the steps, starting at w: (T + 1,) each."""
    p = Param([w])
    opt = AdamW([p], lr=lr, weight_decay=0.0, precision=precision)
    stored, master = [p.data[0]], [opt.weights(0)[0]]
    for g in grads:
        p.grad = np.array([g], np.float32)
        opt.step()
        stored.append(p.data[0])
        master.append(opt.weights(0)[0])
    return np.array(stored), np.array(master)


T = 200
rng = np.random.default_rng(0)
GRADS = {"coherent": -(1.0 + 0.5 * rng.standard_normal(T)), "random sign": rng.standard_normal(T)}
paths = {(kind, lr, prec): adam_path(lr, prec, g) for kind, g in GRADS.items() for lr in (1e-5, 1e-4)
         for prec in ("fp32", "bf16", "pure_bf16")}

print(f"w = {w}, ULP {u:.3e}, {T} AdamW steps; moves in ULPs")
print(f"{'gradient':>12} {'lr':>6} | {'fp32 moved':>10} | {'bf16: master':>12} {'stored':>7} {'jumps':>6} | "
      f"{'pure bf16':>9}")
for (kind, lr, prec), (stored, master) in paths.items():
    if prec != "fp32":
        continue
    b_stored, b_master = paths[kind, lr, "bf16"]
    p_stored = paths[kind, lr, "pure_bf16"][0]
    print(f"{kind:>12} {lr:6.0e} | {(stored[-1] - w) / u:10.2f} | {(b_master[-1] - w) / u:12.2f} "
          f"{(b_stored[-1] - w) / u:7.0f} {np.count_nonzero(np.diff(b_stored)):6d} | {(p_stored[-1] - w) / u:9.0f}")

for (kind, lr, prec), (stored, master) in paths.items():
    if prec == "bf16":
        fp32_path = paths[kind, lr, "fp32"][0]
        assert np.array_equal(master, fp32_path)  # the master IS the fp32 run (Adam's step ignores w when wd = 0)
        assert np.array_equal(stored, to_bf16(master))  # and the model holds its rounding
        assert np.all(np.abs(np.diff(fp32_path)) < u / 2)  # every single step is below half a ULP
        assert set(np.abs(np.diff(stored)) / u) <= {0.0, 1.0}  # the stored value moves in whole ULPs
        assert np.array_equal(stored != w, np.abs(master - w) > u / 2)  # exactly when the master is past half a ULP
    if prec == "pure_bf16":
        assert np.all(stored == w)  # every step is below half a ULP, so every step is lost
coherent_small = paths["coherent", 1e-5, "fp32"][0][-1] - w
assert 0.8 < coherent_small / (T * 1e-5) < 1.0  # a coherent gradient: about lr per step
assert abs(paths["random sign", 1e-5, "fp32"][0][-1] - w) < 0.2 * T * 1e-5  # a random sign: much less
assert paths["coherent", 1e-5, "bf16"][0][-1] > w and paths["random sign", 1e-5, "bf16"][0][-1] == w

# %% [markdown]
# Read the table row by row:
#
# - with a **coherent** gradient, Adam moves the weight by about 0.9·lr per
#   step (m̂/√v̂ ≈ E g / √(E g²) = 1/√1.25). At lr 1e-5 the master crosses
#   half a ULP after about 28 steps, and from then on the stored weight
#   jumps one ULP every ~55 steps. The model learns, in quanta;
# - with a **random sign**, Adam's step averages out and the master wanders
#   within half a ULP of where it started: at lr 1e-5 the stored bf16 weight
#   never changes, though the fp32 run's weight did. Counted in bf16, this
#   weight is "not updated". At lr 1e-4 the same wandering is ten times
#   larger and crosses the threshold;
# - **pure bf16** never moves at either lr: each single step is below half
#   a ULP and rounds away, however many steps are taken. That is why the
#   papers' runs keep an fp32 master (and why `reproduce regime` has a
#   pure_bf16 point).
#
# The master is exactly the fp32 run (asserted bit for bit): with a master,
# bf16 storage changes what the *model holds*, not where training goes. (In
# a real model the rounded weights feed the forward pass, so the gradients
# differ slightly; section 3 measures the difference.)

# %%
if plt is not None:
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5), sharex=True)
    for row, kind in enumerate(GRADS):
        for col, lr in enumerate((1e-5, 1e-4)):
            ax = axes[row, col]
            styles = {"fp32": ("-", "fp32 (= the bf16 run's master)"), "bf16": ("-", "bf16 stored, fp32 master"),
                      "pure_bf16": ("--", "pure bf16")}
            for prec, (ls, lab) in styles.items():
                stored = paths[kind, lr, prec][0]
                ax.plot(np.arange(T + 1), (stored - w) / u, ls, drawstyle="steps-post" if prec != "fp32" else None,
                        label=lab)
            lo, hi = ax.get_ylim()
            for k in np.arange(np.floor(lo), np.ceil(hi) + 1):
                ax.axhline(k + 0.5, color="gray", lw=0.4, ls=":")
            ax.set(title=f"{kind} gradient, lr {lr:g}", ylabel="w − w0, in ULPs (dotted: midpoints)")
            if row == 1:
                ax.set_xlabel("AdamW step")
            ax.legend(fontsize=7)
    save_figure(fig, "08_adam_paths.png")
else:
    print("(matplotlib is not installed: the table above has the same numbers)")

# %% [markdown]
# ## 3. The sparsity of a real update
#
# Now a whole model. A short GRPO run from the shipped SFT model: 20 steps
# of 8 prompts at the preset's lr 1e-4, with 5 problems per task for the
# before/after accuracy (so its accuracies mean nothing; we want the
# weights). Its report holds the update's sparsity, the paper's
#
#     sparsity = 1 − ‖θ1 − θ0‖₀ / n,
#
# an entry counting as unchanged when |θ1 − θ0| ≤ tol with both models and
# the difference in bf16, at the paper's tolerances 1e-8 to 1e-5 (its
# Table 6), and *bitwise*: unchanged means the stored values are equal
# (*The Path Not Taken*'s rule, which in bf16 is exact equality).

# %%
tmp = Path(tempfile.mkdtemp(prefix="minirl_sparsity_"))
COMMON = dict(progress=False, steps=20, num_prompts=8, bench_n=5, seed=0)
t0 = time.perf_counter()
rep = runs.rl("grpo", out=tmp / "grpo", **COMMON)
print(f"20 GRPO steps in {time.perf_counter() - t0:.1f} s; relative step lr / rms(w) = "
      f"{rep['regime']['lr_over_rms']:.2e}")
sp = rep["sparsity"]
print("update sparsity (bf16): " + ", ".join(f"tol {t} {v:.2%}" for t, v in sp["by_tol"].items())
      + f", bitwise {sp['bitwise']:.2%}; rank {rep['rank']['mean_fraction']:.1%} of full")
assert sp["n_params"] == flat.size and sp["overall"] == sp["by_tol"]["1e-05"]
assert sp["bitwise"] <= sp["by_tol"]["1e-08"] <= sp["by_tol"]["1e-05"]  # a larger tol counts more as unchanged
assert 0.1 < sp["overall"] < 0.4  # dense: most weights moved (20.3 % unchanged when written)

# %% [markdown]
# The same numbers for any checkpoints: `minirl analyze A B [C ...]`, whose
# engine is `analyze_checkpoints` (`minirl/analysis/compare.py`). Its
# sources (`minirl/analysis/sources.py`) open a shipped name, a run or a
# Hugging Face directory lazily, one tensor at a time, so two 7B checkpoints
# can be compared in the memory of one tensor pair.

# %%
analysis = analyze_checkpoints(open_source("sft"), open_source(tmp / "grpo"))
upd = analysis["updates"][0]["sparsity"]
print(f"analyze sft {tmp.name}/grpo: {analysis['n_tensors']} tensors, {analysis['n_params']:,} weights; "
      f"tol 1e-5 {upd['overall']:.2%}, bitwise {upd['bitwise']:.2%}")
assert upd["overall"] == sp["overall"] and upd["bitwise"] == sp["bitwise"] and upd["by_tol"] == sp["by_tol"]

# %% [markdown]
# **The official checker, by hand.** `SagnikMukherjee/sparsity_in_rl` loads
# both models in bf16, takes Δ = θ1 − θ0 in bf16 and counts
# `torch.isclose(Δ, 0, atol=tol)`, that is |Δ| ≤ tol, with tol itself a
# bf16 number in that comparison (bf16(1e-5) = 1.0014e-5). In NumPy with
# `ml_dtypes.bfloat16`, for one tensor and for the whole model:

# %%
bf16 = ml_dtypes.bfloat16
final_w = {n: p.data for n, p in minirl.load(rep["checkpoint"]).named_parameters()}


def official_unchanged(t0: np.ndarray, t1: np.ndarray, tol: float) -> np.ndarray:
    """|θ1 − θ0| <= tol with both models, the difference and tol in bf16 (the official check_sparsity.py)."""
    delta = t1.astype(bf16) - t0.astype(bf16)  # bf16 - bf16: rounded to bf16, as torch does
    return np.abs(delta) <= bf16(tol)


name = "model.layers.0.self_attn.q_proj.weight"  # (64, 64)
print(f"{name}:")
for tol in (1e-8, 1e-7, 1e-6, 1e-5):
    by_hand = float(np.mean(official_unchanged(sft_w[name], final_w[name], tol)))
    minirls = update_sparsity(sft_w[name], final_w[name], tol)
    print(f"  tol {tol:g}: by hand {by_hand:.4%}, update_sparsity {minirls:.4%}")
    assert by_hand == minirls  # 4096 entries: every fraction of them is exact in float64, so == is the right test
assert np.mean(official_unchanged(sft_w[name], final_w[name], 1e-5)) == upd["per_tensor"][name]
assert np.mean(sft_w[name] == final_w[name]) == upd["per_tensor_bitwise"][name]
unchanged = sum(int(official_unchanged(sft_w[n], final_w[n], 1e-5).sum()) for n in sft_w)
print(f"whole model, tol 1e-5: by hand {unchanged / flat.size:.4%}, minirl {upd['overall']:.4%}")
assert flat.size - unchanged == upd["n_changed"]  # counts, not fractions: the same integer

# %% [markdown]
# **tol 1e-5 against bitwise.** They differ only where a whole ULP is at
# most 1e-5: for |w| < 2^−9 ≈ 0.002 (ULP ≤ 2^−17 ≈ 7.6e-6) a weight can move
# by a ULP or more and still count as unchanged at tol 1e-5. The paper's
# absolute tolerance therefore forgives small weights only:

# %%
before, after = [], []
for n in sft_w:
    forgiven = official_unchanged(sft_w[n], final_w[n], 1e-5) & (sft_w[n] != final_w[n])  # moved, yet "unchanged"
    before.append(sft_w[n][forgiven])
    after.append(final_w[n][forgiven])
moved0, moved1 = np.concatenate(before), np.concatenate(after)
print(f"{moved0.size} weights changed bitwise but unchanged at tol 1e-5; the largest of them: "
      f"|w| = {np.max(np.minimum(np.abs(moved0), np.abs(moved1))):.2e} (2^-9 = {2**-9:.2e})")
assert moved0.size == round((sp["overall"] - sp["bitwise"]) * flat.size) > 0
assert np.all(np.minimum(np.abs(moved0), np.abs(moved1)) < 2.0**-9)

# %% [markdown]
# **The same run with fp32 weights.** `precision="fp32"` trains without
# rounding. Its report gives two views of the same update: the paper's bf16
# lens (both models rounded to bf16 before comparing) and `fp32_exact`, the
# fraction of float32 weights that are bit for bit unchanged, the "infinite
# precision" of the paper's footnote 5.

# %%
rep32 = runs.rl("grpo", out=tmp / "grpo_fp32", precision="fp32", **COMMON)
sp32 = rep32["sparsity"]
print(f"{'run':>20} {'bf16 lens, tol 1e-5':>20} {'bitwise':>8} {'fp32 exactly unchanged':>23}")
print(f"{'bf16 (fp32 master)':>20} {sp['overall']:20.2%} {sp['bitwise']:8.2%} {sp['fp32_exact']:23.2%}")
print(f"{'fp32':>20} {sp32['overall']:20.2%} {sp32['bitwise']:8.2%} {sp32['fp32_exact']:23.2%}")
assert sp["fp32_exact"] == sp["bitwise"]  # bf16 weights: exact fp32 equality is bf16 equality
assert sp32["fp32_exact"] < 0.03  # in fp32 almost every weight changed (1.1 % did not: unseen tokens' rows)
assert sp32["overall"] > sp32["fp32_exact"] + 0.1  # the bf16 lens hides a good part of the fp32 update
assert abs(sp32["overall"] - sp["overall"]) < 0.03  # about what the bf16 run stores (19.4 against 20.3 %)

w32 = {n: p.data for n, p in minirl.load(rep32["checkpoint"]).named_parameters()}
same = {n: sft_w[n] == w32[n] for n in sft_w}  # exactly unchanged in fp32
n_same = sum(int(m.sum()) for m in same.values())
embed = same["model.embed_tokens.weight"]  # (V, C)
print(f"fp32: {n_same} weights exactly unchanged, {int(embed.all(axis=1).sum())} whole rows of the embedding "
      f"({int(embed.all(axis=1).sum()) * embed.shape[1]} weights); elsewhere {n_same - int(embed.sum())}")
assert n_same == round(sp32["fp32_exact"] * flat.size)
assert embed.all(axis=1).sum() * embed.shape[1] >= 0.99 * n_same  # nearly all of them: embedding rows

# %% [markdown]
# With fp32 weights 99 % of the entries changed, yet through the paper's
# bf16 lens a fifth of them look untouched, about as many as in the bf16
# run: the "sparsity" is a property of the lens and the step size, not of
# which weights RL decided to train. The 1 % that fp32 leaves exactly
# unchanged are, all but one, whole rows of the embedding: tokens that never
# appeared in 20 steps get no gradient, and Adam's step is exactly 0 where
# its m is 0. Those are the only weights here that RL really did not train.

# %% [markdown]
# ## 4. The lab's claims: `minirl reproduce sparsity`
#
# `minirl reproduce sparsity` turns every row of the paper's headline table
# (docs/PAPERS.md §1) into an experiment with a verdict. From the shipped
# SFT model, over seeds 0–2, it trains each algorithm's preset and five
# controlled variants:

# %%
plan = planned_runs(SparsityConfig())
print("algorithms:", ", ".join(ALGORITHMS))
for variant, (job, over) in VARIANTS.items():
    print(f"  {variant:<12} = minirl run {job} with {over}")
print(f"{len(plan)} runs; the masked ones (grpo_sub) last, since they need the GRPO runs' weights")
assert len(plan) == 3 * (len(ALGORITHMS) + len(VARIANTS)) and plan[-1]["name"] == "grpo_sub"

# %% [markdown]
# Then it measures, from the reports and checkpoints, one row per claim,
# each with the paper's number beside minirl's mean and range over seeds,
# and a verdict: *reproduced* (same direction, clear margin), *partly*, or
# *not reproduced*. Sparsities are compared in points of percent, and two
# count as equal within MARGIN = 2 points (seeds differ by about one). The
# rules, as `claims()` writes them:
#
# 1. **RL sparsity**: every algorithm's mean ≥ 68.5 − 2 % (the paper's
#    lowest), reproduced; some of them, partly.
# 2. **SFT is dense**: SFT's mean ≤ 15 + 2 % *and* the RL mean above it by
#    more than 2 points; one of the two, partly.
# 3. **in-distribution data is sparser**: RFT sparser than SFT and on-policy
#    DPO sparser than offline DPO, both by more than 2 points; one, partly
#    (and the same on `sub`, a task the model never saw, when it was run).
# 4. **the KL penalty has little effect**: GRPO with β 0.1 within 2 points
#    of GRPO without; within 4, partly.
# 5. **layers alike, norms barely updated**: GRPO's layers within 4 points
#    of each other *and* norm weights sparser than matrices by 2 points;
#    one of the two, partly.
# 6. **nearly full rank**: the lowest mean rank ≥ 99.2 − 2 %; ≥ 90 %, partly.
# 7. **overlap above chance** (across seeds, data, algorithms: three rows):
#    o1 above the chance level 1 − s_b by more than 2 points; above it by
#    less, partly.
# 8. **subnetwork fine-tuning matches**: ≥ 94 − 5 % of weights equal to the
#    full run's at tol 1e-5, and a gain no worse than the full run's (within
#    the seeds' spread); the gain alone, partly.
# 9. **few weights change between checkpoints**: at most twice the paper's
#    7 % changed between consecutive checkpoints 25 steps apart; a minority
#    (under 50 %), partly.
# 10. **the precision explanation**: the fp32 run < 1 % exactly unchanged
#     and its gain no better than the bf16 run's beyond the noise (bf16
#     storage costs nothing); the first alone, partly.
#
# The full run takes about 15 minutes on two cores, so here the rules get
# made-up numbers instead: a world in which the paper's story holds, and a
# dense one, closer to what minirl's toy runs measure (sections 3 and 5).

# %%
def made_up_world(rl: float, sft: float, kl: float, o1: float, chance: float, sub_equal: float,
                  between: float, fp32_exact: float = 0.5) -> SparsityResult:
    """A SparsityResult with the same sparsity (%) for every RL run, as tests/test_sparsity_experiment.py builds."""
    per_tensor = {f"model.layers.{i}.self_attn.q_proj.weight": rl for i in range(2)}
    per_tensor |= {f"model.layers.{i}.input_layernorm.weight": 100.0 for i in range(2)}

    def run(name, seed, sparsity, **kw):
        row = {"name": name, "seed": seed, "sparsity": sparsity, "bitwise": sparsity, "gain": 10.0, "tax": 0.0,
               "rank": 99.5, "fp32_exact": fp32_exact, "per_tensor": {}}
        return row | kw

    rows = []
    for seed in (0, 1):
        rows += [run(a, seed, rl, per_tensor=per_tensor if a == "grpo" else {}) for a in ALGORITHMS]
        rows += [run("sft_add", seed, sft), run("dpo_offline", seed, sft), run("grpo_kl", seed, kl),
                 run("grpo_fp32", seed, 0.0), run("grpo_sub", seed, rl)]
    overlap = {"o1": o1, "o2": o1, "o1_random": chance, "o2_random": chance, "jaccard": 0.4, "jaccard_random": 0.1}
    return SparsityResult(config={"algorithms": list(ALGORITHMS), "seeds": [0, 1], "quick": False}, runs=rows,
                          overlaps=[{"kind": k, **overlap} for k in ("seeds", "data", "algorithms")],
                          dynamics=[{"seed": 0, "steps": [{"sparsity": 100 - between}] * 3}],
                          subnetwork=[{"seed": 0, "1e-05": sub_equal, "0.0001": 100.0}])


papers_world = claims(made_up_world(rl=80, sft=10, kl=81, o1=0.6, chance=0.2, sub_equal=95, between=7))
dense_world = claims(made_up_world(rl=15, sft=3, kl=15.5, o1=0.87, chance=0.83, sub_equal=60, between=40))
print(f"{'claim':<60} {'paper-like':>14} {'dense toy':>14}")
for a, b in zip(papers_world, dense_world):
    print(f"{textwrap.shorten(a['claim'], 60):<60} {a['verdict']:>14} {b['verdict']:>14}")
print("\nwhere the two differ, the dense world in full:")
for c in (c for a, c in zip(papers_world, dense_world) if a["verdict"] != c["verdict"]):
    print(textwrap.fill(f"- {c['claim']}: paper {c['paper']}; minirl (made up) {c['minirl']} -> {c['verdict']}",
                        width=116, subsequent_indent="    "))


def verdict(rows, word):
    return next(c["verdict"] for c in rows if word in c["claim"])


assert len(papers_world) == len(dense_world) == 12  # 10 claims, the overlap one three times
assert {c["verdict"] for c in papers_world} == {"reproduced"}
assert verdict(dense_world, "small subnetwork") == "not reproduced"  # 15 % is far below 68.5 %
assert verdict(dense_world, "SFT updates are dense") == "reproduced"  # 3 % is dense, and RL 15 % is above it
assert verdict(dense_world, "different seeds") == "reproduced"  # 87 % against chance 83 %: more than 2 points
assert verdict(dense_world, "subnetwork reproduces") == "partly"  # same gain, but only 60 % of weights equal
assert verdict(dense_world, "consecutive checkpoints") == "partly"  # 40 % changed: a minority, not the paper's 7 %
assert MARGIN == 2.0

# %% [markdown]
# The dense world shows why each claim is judged on its own: a run can be
# far from the paper's sparsity (claim 1) and still agree on the
# *directions* (RL sparser than SFT, overlap above chance). The full run's
# numbers over seeds 0–2 go in the README's "The papers' regime" section;
# `minirl reproduce sparsity --quick` is the smoke test CI runs (12 steps a
# run: its numbers mean nothing).

# %% [markdown]
# ## 5. The regime map: the relative step
#
# Section 1 said the threshold is relative, ULP/2 ≈ 2^−9 |w|, and section 2
# that Adam moves a weight by at most about lr per step. So what decides
# how much of an update bf16 hides is the **relative step** lr / rms(w)
# (docs/PAPERS.md, "What reproduced at toy scale means"), together with the
# number of steps and how coherent each weight's gradient is.
# `runs.relative_step(lr, model)` takes rms(w) over the model's 2-D
# matrices; every run's report prints it.

# %%
scale = papers()["scale_matching"]
at_preset = runs.relative_step(1e-4, sft_model)
paper_step = scale["lr"][1] / scale["rms_w"]
matched_lr = scale["relative_step"] * at_preset["rms_w"]
print(f"the SFT model: rms(w) = {at_preset['rms_w']:.4f}; lr 1e-4 -> relative step {at_preset['lr_over_rms']:.2e}")
print(f"the papers (estimate): lr {scale['lr'][1]:g} at rms(w) {scale['rms_w']:g} -> {paper_step:.0e}; minirl's "
      f"preset steps {at_preset['lr_over_rms'] / paper_step:.0f}x larger; the papers' step here: lr {matched_lr:.1e}")
assert 0.06 < at_preset["rms_w"] < 0.08 and abs(paper_step / scale["relative_step"] - 1) < 1e-9
assert 10 < at_preset["lr_over_rms"] / paper_step < 20  # the README's "15x the papers'"

# %% [markdown]
# `minirl reproduce regime` (`minirl/experiments/regime.py`) trains GRPO's
# preset from the SFT model at each point of a grid, over seeds 0–2, and
# measures sparsity (bf16, tol 1e-5) and the gain on add:

# %%
for point, (knob, over) in POINTS.items():
    print(f"  {point:<17} {knob:<10} {over or 'the preset (lr 1e-4, eps 1e-8, bf16 with an fp32 master)'}")

# %% [markdown]
# and answers one question: is there a configuration in which a toy GRPO
# run both gains at least 10 points and is at least 50 % sparse? Its
# measured map is in the README. Here, a demonstration in miniature: 20
# steps at lr 3e-4, 3e-5 and 1e-5, beside section 3's run at 1e-4, seed 0.
# (These runs learn nothing in 20 steps; they show the weights only.)
#
# Beside each run, a *floor*: the fraction of weights whose half ULP exceeds
# steps · lr, which could only move if Adam's steps averaged more than lr.
# Everything above the floor is weights that could have crossed half a ULP
# but whose gradient's sign wavered (section 2's random-sign path).

# %%
t0 = time.perf_counter()
sweep = {1e-4: rep}
for lr in (3e-4, 3e-5, 1e-5):
    sweep[lr] = runs.rl("grpo", out=tmp / f"grpo_lr{lr:g}", lr=lr, **COMMON)
print(f"three more runs in {time.perf_counter() - t0:.1f} s")
shutil.rmtree(tmp)


def floor(lr: float, steps: int = 20) -> float:
    """Fraction of the SFT model's weights whose half ULP exceeds steps · lr."""
    return float(np.mean(ulp(flat) / 2 > steps * lr))


lrs = sorted(sweep)
print(f"{'lr':>7} {'lr / rms(w)':>11} {'sparsity (bf16, 1e-5)':>22} {'floor':>7}")
for lr in lrs:
    print(f"{lr:7.0e} {sweep[lr]['regime']['lr_over_rms']:11.2e} {sweep[lr]['sparsity']['overall']:22.1%} "
          f"{floor(lr):7.1%}")
sparsity_of = {lr: sweep[lr]["sparsity"]["overall"] for lr in lrs}
assert all(sparsity_of[a] > sparsity_of[b] for a, b in zip(lrs, lrs[1:]))  # smaller step, sparser
assert sparsity_of[1e-5] - sparsity_of[3e-4] > 0.4  # 73 % against 9 % (seed 1: 75 against 8)
assert all(sparsity_of[lr] >= floor(lr) for lr in lrs)

if plt is not None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    rel_steps = [sweep[lr]["regime"]["lr_over_rms"] for lr in lrs]
    ax.plot(rel_steps, [100 * sparsity_of[lr] for lr in lrs], "o-", label="20 GRPO steps, seed 0 (measured)")
    fine = np.logspace(-6, -3, 60)
    ax.plot(fine / at_preset["rms_w"], [100 * floor(lr) for lr in fine], "--", color="gray",
            label="floor: half ULP > 20·lr")
    ax.axvline(paper_step, color="tab:red", ls=":", label="the papers' relative step (estimate)")
    ax.axhspan(*papers()["sparsity"]["table1"]["range"], color="tab:orange", alpha=0.2,
               label="paper 1's sparsities (hundreds of steps)")
    ax.set(xscale="log", xlabel="relative step lr / rms(w)", ylabel="update sparsity, % (bf16, tol 1e-5)",
           ylim=(0, 100), title="a small regime map (demonstration)")
    ax.legend(fontsize=7)
    save_figure(fig, "08_regime.png")
else:
    print("(matplotlib is not installed: the table above has the same numbers)")

# %% [markdown]
# A smaller relative step leaves more weights unchanged in bf16: from 9 %
# at lr 3e-4 to 73 % at lr 1e-5, whose relative step (1.5e-4) is near the
# papers'. Two cautions. These are 20 steps of one seed, a demonstration,
# not a measurement: more steps let small steps accumulate, and sparsity
# falls with training time. And at such small steps the toy model barely
# learns: docs/PAPERS.md's scale-matching hypothesis says a model of width
# 64 needs a relative step about 8× larger than a 4096-wide one to change
# its function as fast, and at that step bf16 no longer hides the update.
# Whether any setting is both sparse and learning is the question
# `minirl reproduce regime` answers, with seeds 0–2; its measured map goes
# in the README's "The papers' regime" section.

# %% [markdown]
# ## 6. Subnetwork fine-tuning, and sparsity over training
#
# The paper's strongest test of "RL trains a subnetwork": take the weights a
# full run updated, m_i = 1 iff (θ_init − θ_full)_i ≠ 0 in bf16, retrain
# from θ_init with the same data, seed and steps, multiplying every gradient
# by m before the optimizer (and before the clip, `minirl/subnetwork.py`
# says why), and check that the masked run lands on the same weights and
# accuracy. `--mask-from RUN` reads θ_init from RUN's config.toml and
# θ_full from its checkpoints/final (or a checkpoint named as
# RUN/checkpoints/NAME); `--mask-tol` uses |Δ| > tol instead of ≠ 0. Masked
# weights stay bitwise fixed with AdamW and no weight decay. And
# `--keep-every K` keeps the weights every K steps, so `minirl analyze`
# measures the sparsity between consecutive checkpoints (the paper: about
# 7 % of weights change between checkpoints):
#
#     minirl run grpo --seed 0 --keep-every 25 --out RUN             # checkpoints/step_000025, step_000050, ...
#     minirl run grpo --seed 0 --mask-from RUN --out RUN-sub          # only the weights RUN updated get gradients
#     minirl analyze RUN RUN-sub --brief                              # θ0 = RUN's final weights: how far apart?
#     minirl analyze RUN/checkpoints/step_000025 RUN/checkpoints/step_000050   # what 25 steps changed
#     minirl analyze sft RUN RUN-sub --rank                           # sparsity, rank, overlap of the two updates
#     minirl run grpo --precision fp32                                # the precision explanation: dense
#     minirl reproduce sparsity                                       # every claim, seeds 0-2: about 15 minutes
#     minirl reproduce regime                                         # the regime map, seeds 0-2

# %% [markdown]
# ## What to take away
#
# - bf16 has 8 significant bits: its ULP is 2^(floor(log2|w|) − 7), between
#   2^−8 and 2^−7 of |w|, and an update smaller than half a ULP rounds back
#   to the same stored value.
# - With an fp32 master (minirl's default, and the papers' setting) small
#   updates accumulate and the stored weight jumps by whole ULPs once the
#   master crosses a midpoint; without one (pure bf16) they are lost. The
#   master is the fp32 trajectory; bf16 decides only what is stored.
# - Adam moves a weight by about lr per step when its gradient's sign holds
#   and much less when it wavers, so in bf16 "not updated" often means
#   "updated by less than half a ULP".
# - Update sparsity is 1 − ‖θ1 − θ0‖₀ / n with |Δ| ≤ tol in bf16, the
#   official checker's rule (written here by hand, equal to minirl's
#   number); bitwise is exact equality; they differ only for |w| < 2^−9.
# - With fp32 weights almost every weight changes, and the bf16 lens still
#   reports about the same sparsity: the lens, not the algorithm, makes it.
# - The regime is set by lr / rms(w) and the number of steps: minirl's
#   preset takes relative steps 15× the papers', so its updates are dense;
#   smaller steps are sparser. `minirl reproduce sparsity` and `regime`
#   measure every claim over seeds, with verdicts.
