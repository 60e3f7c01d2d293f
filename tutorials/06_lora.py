# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Lesson 6 — LoRA from scratch, and PERL
#
# LoRA (Hu et al., arXiv 2106.09685) fine-tunes a model without touching its
# weights: each adapted matrix W keeps its pretrained values, and a low-rank
# correction is trained beside it,
#
#     y = W x + (α / r) · B (A x),      W (out, in) frozen,  A (r, in),  B (out, r),
#
# so the layer changes by ΔW = (α / r) B A, a dense matrix of rank at most r
# held in r·(in + out) numbers instead of in·out. PERL (Sidahmed et al., arXiv
# 2403.10704; docs/PAPERS.md §3) runs the whole RLHF pipeline this way:
# adapters on every attention projection of the reward model and of the
# policy, and reports quality on par with full tuning for a fraction of the
# memory and time.
#
# This lesson builds LoRA with small arrays you can check by hand, then puts it
# on minirl's shipped SFT model:
#
# 1. LoRA on one matrix: the initialisation, and why the model starts exactly
#    at the base
# 2. its gradient by hand, and why only B moves at the first step
# 3. merging ΔW into W and taking it out again; rank(ΔW) ≤ r
# 4. LoRA on the whole model: what is trainable, and what gets no gradient
# 5. a short LoRA RL run against a full one: what each does to the weights
# 6. PERL's cost claims measured at toy scale, and why they are small here
# 7. PERL's pipeline as commands
#
# The code is `minirl/lora.py` (one file: the config, the fused op, the layer,
# injection, merging) and `minirl/experiments/perl.py` (`minirl reproduce
# perl`). Run it with `python tutorials/06_lora.py`, or open it in Jupyter
# (jupytext). Every claim is an `assert`. With matplotlib installed it also
# draws one figure into a temporary directory; without it, the same numbers
# are printed as a table.

# %%
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
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
from minirl.analysis import update_rank
from minirl.gradcheck import check_grad
from minirl.lora import (LoraConfig, LoRALinear, count_trainable, inject_lora, lora_layers, lora_linear,
                         lora_linear_reference, merged_state_dict, trainable_parameters)
from minirl.nn import Linear
from minirl.optim import OptimizerConfig, clip_grad_norm, make_optimizer
from minirl.plots import TUTORIAL_FIGURES, pyplot, save
from minirl.precision import to_bf16
from minirl.rl.sft import token_nll
from minirl.tasks.corpus import sft_batch
from minirl.tensor import Tensor

np.set_printoptions(precision=4, suppress=True)

plt = pyplot()  # figures are optional: without matplotlib (None) the lesson prints the same numbers as tables
FIG_DIR = TUTORIAL_FIGURES  # outside the repository: nothing to commit


def save_figure(fig, name: str) -> None:
    """Write `fig` to FIG_DIR/name and say where."""
    print("figure:", save(fig, FIG_DIR / name, dpi=100))


# %% [markdown]
# ## 1. LoRA on one matrix
#
# A frozen W (O, I) = (6, 5), rank r = 2, α = 4, so the scale is s = α/r = 2.
# Three input rows x (N, I) = (3, 5); in row form the layer is
# `Y = X W^T + s · (X A^T) B^T`.
#
# The initialisation is PEFT's (`init_lora_weights=True`, from microsoft's
# `loralib`): A as `nn.Linear` initialises its weight, Kaiming-uniform with
# a = √5, which works out to uniform(−1/√in, +1/√in); and **B = 0**. So
# ΔW = s B A = 0 and the adapted layer computes exactly what the base layer
# computes: not approximately, bit for bit, because the adapter branch adds
# `h B^T`, a matrix of exact zeros.

# %%
rng = np.random.default_rng(0)
O, I, R, alpha = 6, 5, 2, 4.0
s = alpha / R
W = (0.5 * rng.standard_normal((O, I))).astype(np.float32)  # (O, I) the pretrained weight
X = rng.standard_normal((3, I)).astype(np.float32)  # (N, I)

bound = 1 / np.sqrt(I)  # kaiming_uniform(a=√5): gain √(2/(1+5)) = √(1/3), bound = gain·√(3/I) = 1/√I
A = np.random.default_rng(1).uniform(-bound, bound, (R, I)).astype(np.float32)  # (R, I)
B = np.zeros((O, R), np.float32)  # (O, R)
Y = X @ W.T + ((X @ A.T) * s) @ B.T  # (N, O) LoRA from scratch

base = Linear(I, O, rng)
base.weight.data[...] = W
Y_base = base(Tensor(X)).data  # the plain layer, before it is wrapped
layer = LoRALinear(base, R, alpha, np.random.default_rng(1))  # draws A from the same generator
Y_lora = layer(Tensor(X)).data
print("A =\n", A, f"\nall |A| <= 1/sqrt({I}) = {bound:.4f}:", bool(np.all(np.abs(A) <= bound)))
print("minirl's A equals ours:", np.array_equal(layer.lora_A.weight.data, A), "; B is zero:",
      not layer.lora_B.weight.data.any())
print("max |Y_lora - Y_scratch| =", np.abs(Y_lora - Y).max(), "; max |Y_lora - Y_base| =",
      np.abs(Y_lora - Y_base).max())
assert np.array_equal(layer.lora_A.weight.data, A) and np.all(np.abs(A) <= bound)
assert np.array_equal(Y_lora, Y)  # our six lines are minirl's layer, bit for bit
assert np.array_equal(Y_lora, Y_base)  # and at B = 0 it is the base layer, bit for bit
assert layer.weight is base.weight and not layer.weight.requires_grad  # W frozen in place, not copied

# %% [markdown]
# **What is trained.** A and B: r·(in + out) numbers against in·out for W.
# The fraction is r(in + out)/(in·out), which for a square d × d matrix is
# 2r/d: it shrinks as the model widens. minirl's matrices are 64 × 64; a 7B
# Llama's are 4096 × 4096. At r = d/2 the two factors hold as many numbers as
# W itself: rank 32 on a 64-wide matrix saves nothing in size (it still
# constrains the update to rank 32).

# %%
print(f"{'matrix':>12} {'r':>3} {'in·out':>12} {'r(in+out)':>10} {'fraction':>9}")
for d in (64, 4096):
    for r in (1, 8, 32):
        print(f"{f'{d} x {d}':>12} {r:3d} {d * d:12,d} {r * 2 * d:10,d} {r * 2 * d / (d * d):9.3%}")
assert 8 * (64 + 64) / (64 * 64) == 2 * 8 / 64 == 0.25  # rank 8 on a 64-wide matrix: a quarter of its size
assert 8 * (4096 + 4096) / 4096**2 < 0.004  # and under 0.4 % at 7B width

# %% [markdown]
# ## 2. The gradient by hand
#
# Write h = s · X A^T (N, R), the rank-side activation, so Y = X W^T + h B^T.
# Given dY = ∂L/∂Y (N, O), the chain rule gives, in row form (one row per
# input) and, beside it, for a single column vector x:
#
#     dB = dY^T h         = s · dY^T (X A^T)       (O, R)    one x:  s · dy (A x)^T
#     dh = s · dY B                                (N, R)
#     dA = dh^T X         = s · B^T dY^T X         (R, I)    one x:  s · B^T dy x^T
#     dX = dY W + dh A                             (N, I)
#
# and no dW: W is frozen, so minirl's `lora_linear` never computes it.
# To see dA do something, take a B that training has already moved (random).

# %%
B_trained = (0.3 * rng.standard_normal((O, R))).astype(np.float32)  # (O, R)
dY = rng.standard_normal((3, O)).astype(np.float32)  # (N, O), as if from the loss above the layer

# forward was: h = s · X A^T, Y = X W^T + h B^T
h = s * (X @ A.T)  # (N, R)
dB = dY.T @ h  # (O, R)
dh = s * (dY @ B_trained)  # (N, R)
dA = dh.T @ X  # (R, I)
dX = dY @ W + dh @ A  # (N, I)

x_t = Tensor(X, requires_grad=True)
A_t, B_t = Tensor(A.copy(), requires_grad=True), Tensor(B_trained, requires_grad=True)
W_t = Tensor(W)  # frozen: requires_grad False
(lora_linear(x_t, W_t, A_t, B_t, s) * dY).sum().backward()  # L = Σ Y ⊙ dY, so ∂L/∂Y = dY
for name, ours, tape in (("dA", dA, A_t.grad), ("dB", dB, B_t.grad), ("dX", dX, x_t.grad)):
    print(f"{name} error vs minirl's backward: {np.abs(ours - tape).max():.1e}")
    assert np.allclose(ours, tape, rtol=1e-5, atol=1e-6)
assert W_t.grad is None  # no dW for a frozen weight

# %% [markdown]
# And against a central finite difference, in float64, entry by entry for A
# and B (22 numbers), then along a random direction through all of X, A, B
# with minirl's `check_grad`:

# %%
X64, W64, A64, B64, dY64 = (a.astype(np.float64) for a in (X, W, A, B_trained, dY))


def loss64(A_, B_):
    """L = Σ Y ⊙ dY for the layer with adapters A_, B_, in float64."""
    return float(np.sum((X64 @ W64.T + s * (X64 @ A_.T) @ B_.T) * dY64))


eps = 1e-6
worst = 0.0
for M, grad in ((A64, dA), (B64, dB)):
    for idx in np.ndindex(M.shape):
        plus, minus = M.copy(), M.copy()
        plus[idx] += eps
        minus[idx] -= eps
        args_p = (plus, B64) if M is A64 else (A64, plus)
        args_m = (minus, B64) if M is A64 else (A64, minus)
        numeric = (loss64(*args_p) - loss64(*args_m)) / (2 * eps)
        worst = max(worst, abs(numeric - grad[idx]))
print(f"dA, dB by hand vs finite differences: max error {worst:.1e} (float32 hand gradient)")
assert worst < 1e-5
err = check_grad(lambda x_, a_, b_: lora_linear(x_, Tensor(W64), a_, b_, s), X64, A64, B64)
print(f"check_grad through lora_linear (float64): error {err:.1e}")
err_ref = check_grad(lambda x_, a_, b_: lora_linear_reference(x_, Tensor(W64), a_, b_, s), X64, A64, B64)
assert err < 1e-7 and err_ref < 1e-7  # the fused op and its F.linear oracle both pass

# %% [markdown]
# **At the first step only B moves.** At initialisation B = 0, so
# dA = s · B^T dY^T X is exactly zero, whatever the data; dB = dY^T h is not,
# because A is random. After one step B ≠ 0, and from the second step on A
# gets a gradient too. (That is why B, not A, starts at zero: with both at
# zero neither would ever move.)

# %%
A0, B0 = Tensor(A.copy(), requires_grad=True), Tensor(B.copy(), requires_grad=True)  # B = 0: the init
(lora_linear(Tensor(X), W_t, A0, B0, s) * dY).sum().backward()
print("step 1: dA =\n", A0.grad, "\n        |dB| max =", np.abs(B0.grad).max())
assert not A0.grad.any() and np.abs(B0.grad).max() > 0.1
lr = 0.1
A1, B1 = Tensor(A0.data - lr * A0.grad, requires_grad=True), Tensor(B0.data - lr * B0.grad, requires_grad=True)
assert np.array_equal(A1.data, A)  # an SGD step moved B only
(lora_linear(Tensor(X), W_t, A1, B1, s) * dY).sum().backward()
print("step 2: |dA| max =", np.abs(A1.grad).max())
assert np.abs(A1.grad).max() > 1e-3

# %% [markdown]
# ## 3. Merging, unmerging, and the rank of ΔW
#
# For inference the correction can be folded in: W ← W + ΔW makes the layer
# one matmul again, at no extra cost (`merge_lora`, PEFT's
# `merge_and_unload`). `unmerge` subtracts ΔW again. Neither is exact to the
# bit: W + ΔW is rounded to float32, so the merged layer's outputs agree to
# float32 rounding, and W − ΔW after W + ΔW gives back W within
# eps·(|W| + |ΔW|) per entry.
#
# And rank(ΔW) ≤ r: ΔW = s·B A is (O, r)(r, I). On a 64 × 64 layer with
# r = 4 and a "trained" B, the SVD shows 4 singular values and then float32
# noise:

# %%
rng = np.random.default_rng(2)
big = Linear(64, 64, rng, std=0.1)
W_before = big.weight.data.copy()
lay = LoRALinear(big, 4, 8.0, rng)
lay.lora_B.weight.data[...] = 0.05 * rng.standard_normal((64, 4))  # as if trained
x = Tensor(rng.standard_normal((10, 64)).astype(np.float32))  # (N, I)
y_unmerged = lay(x).data
lay.merge()
y_merged = lay(x).data
print(f"merged vs unmerged outputs: max difference {np.abs(y_merged - y_unmerged).max():.1e} "
      f"(outputs up to {np.abs(y_unmerged).max():.2f})")
assert np.allclose(y_merged, y_unmerged, rtol=0, atol=1e-5 * np.abs(y_unmerged).max())
assert not np.array_equal(big.weight.data, W_before)  # W itself now holds W + ΔW
delta = lay.delta()  # (O, I) = s B A
lay.unmerge()
restore_err = np.abs(big.weight.data - W_before)
bound_err = np.finfo(np.float32).eps * (np.abs(W_before) + np.abs(delta))
print(f"unmerge: max |W' - W| = {restore_err.max():.1e}; entries restored bit for bit: "
      f"{np.mean(big.weight.data == W_before):.1%}")
assert np.all(restore_err <= bound_err)

sv = np.linalg.svd(delta.astype(np.float64), compute_uv=False)
print("singular values of ΔW:", sv[:6], "...", sv[-1])
print("update_rank(ΔW) =", update_rank(delta), "(rank, min(m, n))")
assert update_rank(delta) == (4, 64) and np.all(sv[4:] < 1e-6 * sv[0])

# %% [markdown]
# ## 4. LoRA on the whole model
#
# `inject_lora(model, LoraConfig(lora_rank=r))` wraps the targeted Linears of
# every decoder layer, by default PERL's: q, k, v and o of the attention, and
# freezes every other parameter (`requires_grad = False`). The SFT model has
# 4 layers of hidden size 64, so every target is 64 × 64 and the adapters hold
# 16 · r · (64 + 64) = 2048 r numbers.

# %%
RANKS = (1, 4, 8, 16, 32)
sft = minirl.load("sft")
total = sft.num_parameters()
LLAMA7B = dict(layers=32, hidden=4096, total=6_738_415_616)  # Llama-2-7B's shape, for comparison
print(f"SFT model: {total:,} parameters")
print(f"{'rank':>4} {'trainable':>10} {'% of model':>10} {'% at 7B':>8}")
trainable = {}
for r in RANKS:
    m = minirl.load("sft")
    names = inject_lora(m, LoraConfig(lora_rank=r))
    trainable[r] = count_trainable(m)
    at_7b = LLAMA7B["layers"] * 4 * r * 2 * LLAMA7B["hidden"] / LLAMA7B["total"]
    print(f"{r:4d} {trainable[r]:10,d} {trainable[r] / total:10.2%} {at_7b:8.3%}")
    assert len(names) == 16 and trainable[r] == 16 * r * (64 + 64)
assert trainable[1] / total < 0.01 and trainable[32] / total > 0.3

# %% [markdown]
# PERL trains under 0.1 % of its models' parameters. On Llama-2-7B's shapes
# the same adapters are 0.016 % (rank 1) to 0.5 % (rank 32) of the model;
# here they are 1 % to 32 %. The reason is section 1's 2r/d: minirl's
# matrices are 64 wide, 64 times narrower than a 7B model's, so the same rank
# is a 64 times larger fraction. Keep that in mind in section 6.
#
# **Frozen means no gradient at all.** One SFT loss and a backward through
# the rank-8 model: every frozen parameter's `.grad` stays None (the tape
# neither computes nor stores it), only the adapters get one, and, as section
# 2 predicted, every lora_A's gradient is exactly zero at the first step.
# The untrained adapted model is also the SFT model, bit for bit.

# %%
model = minirl.load("sft")
inject_lora(model, LoraConfig(lora_rank=8))
inputs, targets, mask = sft_batch(np.random.default_rng(0), model.tokenizer, 8)  # (B, T) each
assert np.array_equal(model(inputs).data, sft(inputs).data)  # B = 0 everywhere: the base model's logits
token_nll(model, inputs, targets, mask).backward()
params = dict(model.named_parameters())
frozen = [n for n, p in params.items() if not p.requires_grad]
adapters = [n for n, p in params.items() if p.requires_grad]
print(f"{len(frozen)} frozen tensors ({sum(params[n].size for n in frozen):,} numbers): "
      f"grad is None in {sum(params[n].grad is None for n in frozen)}")
print(f"{len(adapters)} adapter tensors ({sum(params[n].size for n in adapters):,} numbers); e.g.")
for n in adapters[:2]:
    print(f"  {n}  {params[n].shape}  max |grad| = {np.abs(params[n].grad).max():.2e}")
assert all(params[n].grad is None for n in frozen)
assert all(".lora_" in n for n in adapters) and len(adapters) == 32
assert all(not params[n].grad.any() for n in adapters if ".lora_A." in n)  # dA = 0 at B = 0
assert all(params[n].grad.any() for n in adapters if ".lora_B." in n)

# %% [markdown]
# ## 5. A LoRA RL run against a full one: what each does to the weights
#
# Two short GRPO runs from the SFT model (`runs.rl` is `minirl run`): LoRA at
# rank 8 with lr 1e-3, PERL's recipe of a learning rate about 10× full
# tuning's, and full tuning at lr 1e-4, the preset's. 20 steps of 16 prompts ×
# 4 samples each: far too short to learn anything worth measuring, and long
# enough to see the *structure* of each update, which is what this section is
# about. Each report holds what the run did to the weights: its "sparsity"
# (the fraction of weights left unchanged, per tensor too) and "rank"
# (rank(Δ)/min(m, n) per matrix), measured on θ1 − θ0 where, for LoRA, θ1 is
# the merged model W + ΔW.

# %%
tmp = Path(tempfile.mkdtemp(prefix="minirl_lora_"))
SHORT = dict(steps=20, num_prompts=16, progress=False, bench_n=50)  # bench_n: held-out problems per task
try:
    t0 = time.perf_counter()
    rep_lora = runs.rl("grpo", lora_rank=8, lr=1e-3, out=tmp / "lora", **SHORT)
    rep_full = runs.rl("grpo", lr=1e-4, out=tmp / "full", **SHORT)
    print(f"two runs in {time.perf_counter() - t0:.1f} s")
    lora_model = minirl.load(tmp / "lora")  # a LoRA run directory: the SFT base rebuilt, its adapters loaded
    theta1_lora = merged_state_dict(lora_model)  # W + ΔW in float32
    theta1_full = minirl.load(tmp / "full").state_dict()
finally:
    shutil.rmtree(tmp)
theta0 = sft.state_dict()
adapted = {f"{n}.weight" for n in lora_layers(lora_model)}  # the 16 q, k, v, o matrices

for name, rep in (("LoRA r=8", rep_lora), ("full", rep_full)):
    sp = rep["sparsity"]
    print(f"{name:>8}: trainable {rep.get('lora', {}).get('trainable', total):7,d} of {total:,}; "
          f"unchanged weights: {sp['overall']:.1%} (bf16, tol 1e-5), {sp['bitwise']:.1%} (bf16, bitwise), "
          f"{sp['fp32_exact']:.1%} (fp32, exact); mean rank fraction {rep['rank']['mean_fraction']:.2f}")
    print(f"{'':>10}add accuracy on 50 problems {rep['accuracy']['before']['add']:.2f} -> "
          f"{rep['accuracy']['after']['add']:.2f} (20 steps: noise, not a result)")

# %% [markdown]
# Per matrix, for layer 0 and the embeddings and head (the other layers look
# the same). "changed" is the fraction of entries whose bf16 value moved (one
# minus the report's per-tensor sparsity); "rank" is the report's (for a
# LoRA run, each adapted matrix's rank is taken from its ΔW itself); "rank
# fp32" is recomputed here from the fp32 weights with the same `update_rank`.

# %%
ranks_fp32 = {"lora": {}, "full": {}}
for key, theta1 in (("lora", theta1_lora), ("full", theta1_full)):
    for n, w0 in theta0.items():
        if w0.ndim == 2:
            ranks_fp32[key][n] = update_rank(theta1[n] - w0)[0]
changed_fp32 = {n: float(np.mean(theta1_lora[n] != theta0[n])) for n in theta0}  # LoRA, exact fp32 comparison
print(f"{'tensor':>32} | {'LoRA: changed':>13} {'rank':>5} {'rank fp32':>9} | {'full: changed':>13} {'rank':>5} "
      f"{'rank fp32':>9}")
for n, w0 in theta0.items():
    if w0.ndim != 2 or not ("layers.0." in n or "layers" not in n):
        continue
    full_dim = min(w0.shape)
    row = [f"{n.removeprefix('model.'):>32} |"]
    for key, rep in (("lora", rep_lora), ("full", rep_full)):
        row.append(f"{1 - rep['sparsity']['per_tensor'][n]:13.1%} {round(rep['rank']['per_tensor'][n] * full_dim):5d} "
                   f"{ranks_fp32[key][n]:9d}")
    print(" ".join(row[:2]), "|", row[2])

# %% [markdown]
# What the two updates look like, and it holds for any seed:
#
# - **LoRA changes the adapted matrices densely and nothing else.** Every
#   q, k, v, o entry moves in fp32 (ΔW = s B A has no reason to be zero
#   anywhere), and every other tensor, the MLPs, norms, embeddings and head,
#   is bitwise the SFT model's. So the fp32 "exactly unchanged" fraction is
#   the share of weights outside q, k, v, o: 142,400 of 207,936 = 68.5 %.
#   (In bf16 about one adapted entry in ten moved less than half a ULP and
#   counts as unchanged, so the report's bf16 sparsity is a little higher.)
# - **Its rank is at most r.** The fp32 difference has rank 8 in every
#   adapted matrix, and the report, which takes it from ΔW itself, says so.
#   The bf16 lens that full runs use (their weights *are* stored in bf16)
#   would say 64 here: rounding W + ΔW to bf16 adds up to half a ULP of error
#   to every entry, a full-rank noise matrix far above the rank test's
#   tolerance. A LoRA model merged and *stored* in bf16 really has a
#   full-rank change; the trained ΔW does not.
# - **Full tuning touches every matrix, at (nearly) full rank.** Every 2-D
#   tensor has changed entries, and every attention and MLP matrix's update
#   has (nearly) full rank, in bf16 and in fp32. The embedding is the
#   exception: only the rows of tokens that occur in the prompts and answers
#   get a gradient, so its rank is at most the number of those rows.

# %%
non_adapted = [n for n in theta0 if n not in adapted]
assert all(rep_lora["sparsity"]["per_tensor_bitwise"][n] == 1.0 for n in non_adapted)  # the report's view
assert all(np.array_equal(theta1_lora[n], theta0[n]) for n in non_adapted)  # and bit for bit in fp32
assert all(changed_fp32[n] > 0.9 for n in adapted)  # dense where it is applied
assert all(1 <= ranks_fp32["lora"][n] <= 8 for n in adapted)  # rank <= r
assert all(ranks_fp32["lora"][n] == 0 for n in theta0 if theta0[n].ndim == 2 and n not in adapted)
assert all(round(rep_lora["rank"]["per_tensor"][n] * min(theta0[n].shape)) <= 8 for n in adapted)  # the report
bf16_lens = {n: update_rank(to_bf16(theta1_lora[n]) - to_bf16(theta0[n]))[0] for n in adapted}
assert all(r > 8 for r in bf16_lens.values())  # the bf16 lens on W + ΔW: rounding noise, (nearly) full rank
print("rank of W + ΔW rounded to bf16, minus W:", sorted(set(bf16_lens.values())))
outside = sum(theta0[n].size for n in non_adapted) / total
assert outside == 142_400 / 207_936 and abs(rep_lora["sparsity"]["fp32_exact"] - outside) < 0.01

mats = [n for n in theta0 if theta0[n].ndim == 2]
assert all(rep_full["sparsity"]["per_tensor"][n] < 1.0 for n in mats)  # full tuning touches every matrix
layer_mats = [n for n in mats if ".layers." in n]
assert all(rep_full["rank"]["per_tensor"][n] >= 0.9 for n in layer_mats)
assert all(ranks_fp32["full"][n] >= 0.9 * min(theta0[n].shape) for n in layer_mats)
rows_moved = int(np.any(theta1_full["model.embed_tokens.weight"] != theta0["model.embed_tokens.weight"], axis=1).sum())
print(f"full tuning moved {rows_moved} of 52 embedding rows; embedding update rank "
      f"{ranks_fp32['full']['model.embed_tokens.weight']}")
assert ranks_fp32["full"]["model.embed_tokens.weight"] <= rows_moved < 52
assert rep_full["sparsity"]["bitwise"] < rep_lora["sparsity"]["bitwise"]

# %% [markdown]
# ## 6. PERL's cost claims, at toy scale
#
# PERL reports that LoRA trains the reward model with 43–74 % of full
# tuning's peak memory and 1.4–1.9× faster, and RL with 73–80 % of the memory
# and 1.15–1.3× faster. Where would the savings come from? Per parameter,
# training keeps:
#
# | what | full tuning | LoRA |
# |---|---|---|
# | the weights (float32 here) | every parameter | every parameter + the adapters |
# | gradients | every parameter | adapters only |
# | AdamW's exp_avg and exp_avg_sq | every parameter | adapters only |
# | fp32 master weights (bf16 storage) | every parameter | adapters only |
# | activations kept for backward | the inputs of every op | the same, plus h (N, r) per adapted layer |
#
# So LoRA saves 16 bytes (gradient, two moments, master) per frozen
# parameter and nothing on activations. At 7B the weights and those 16 bytes
# per parameter are the whole budget (about 14 GB of bf16 weights and over
# 100 GB of training state), and LoRA removes nearly all of the latter. At
# 200 k parameters the training state is 3 MB, while the activations of even
# a small batch are several times that.
#
# The measurement is `minirl reproduce perl`'s (`perl.step_cost`):
# tracemalloc's peak (NumPy reports its arrays to it) from before the model
# is loaded to the end of the second training step, so the weights, the
# gradients, the optimizer state, the activations and the batch are all
# counted; and the median time of later steps with tracing off (tracing slows
# every allocation). Here one SFT step on a fixed batch of 16 examples, for
# full tuning and every rank, in this process.

# %%
cost_batch = sft_batch(np.random.default_rng(0), sft.tokenizer, 16)  # (16, T) x 3, the same for every run
print("batch: inputs", cost_batch[0].shape)


def setup(rank: int):
    """The SFT model (LoRA at `rank`, or full tuning at 0) and its AdamW, as `minirl run` builds them."""
    policy = minirl.load("sft")
    if rank:
        inject_lora(policy, LoraConfig(lora_rank=rank))
    return policy, make_optimizer(trainable_parameters(policy), OptimizerConfig(lr=1e-3), "bf16")


def train_step(policy, optimizer) -> None:
    """Forward, backward, clip, AdamW."""
    loss = token_nll(policy, *cost_batch)
    optimizer.zero_grad()
    loss.backward()
    clip_grad_norm(optimizer.params, 1.0)
    optimizer.step()


cost = {}
for rank in (0, *RANKS):
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    policy, optimizer = setup(rank)
    for _ in range(2):  # the second step: Adam's moments exist
        train_step(policy, optimizer)
    peak = tracemalloc.get_traced_memory()[1] - start
    tracemalloc.stop()
    n_train = count_trainable(policy)
    n_all = sum(p.size for p in policy.parameters())
    times = []
    for _ in range(9):  # untraced
        t0 = time.perf_counter()
        train_step(policy, optimizer)
        times.append(time.perf_counter() - t0)
    cost[rank] = {"trainable": n_train, "peak_mb": peak / 2**20, "ms": 1000 * statistics.median(times[2:]),
                  "weights_mb": 4 * n_all / 2**20, "state_mb": 16 * n_train / 2**20}
    del policy, optimizer

full = cost[0]
print(f"{'':>5} {'trainable':>10} {'weights':>8} {'grad+Adam':>9} {'the rest':>8} {'peak':>8} {'vs full':>7} "
      f"{'ms/step':>7}")
print(f"{'':>5} {'':>10} {'MB':>8} {'+master':>9} {'MB':>8} {'MB':>8} {'':>7} {'':>7}")
for rank, c in cost.items():
    rest = c["peak_mb"] - c["weights_mb"] - c["state_mb"]
    print(f"{rank or 'full':>5} {c['trainable']:10,d} {c['weights_mb']:8.2f} {c['state_mb']:9.2f} {rest:8.2f} "
          f"{c['peak_mb']:8.2f} {c['peak_mb'] / full['peak_mb']:7.0%} {c['ms']:7.1f}")

# %% [markdown]
# ("the rest" is the peak minus the weights and the counted training state:
# activations, the batch and temporaries. It grows a little with the rank:
# each adapted layer keeps its (N, r) h for backward.)
#
# What holds, and what does not:
#
# - **The training state shrinks as PERL says.** Gradients, Adam's moments and
#   the master copy are 16 bytes per *trainable* parameter: 3.2 MB for full
#   tuning, 0.03 to 1 MB for ranks 1 to 32.
# - **The peak shrinks far less**, because here the activations dominate the
#   peak and LoRA keeps all of them: LoRA's peak is about 80 to 95 % of full
#   tuning's. At rank 1 the peak falls by about what the training state
#   saves; at rank 32 LoRA trains a third of the model and saves much less.
#   PERL's 43–80 % comes from models whose weights and training state, not
#   their activations, fill the accelerator.
# - **Time.** LoRA skips the weight gradient of every frozen matrix (a
#   third of the backward's matmuls) and runs AdamW over far fewer numbers,
#   but at this size a step is dominated by Python and small-matrix overhead,
#   and on a busy machine the times above move by tens of percent from run to
#   run: read them as a rough picture, not a speedup.

# %%
for rank in RANKS:
    assert cost[rank]["state_mb"] <= 0.32 * full["state_mb"]  # grad + Adam + master: from the parameter counts
assert cost[1]["state_mb"] < 0.01 * full["state_mb"]
saved = full["peak_mb"] - cost[1]["peak_mb"]  # measured
expected = full["state_mb"] - cost[1]["state_mb"]  # counted
print(f"rank 1 saves {saved:.2f} MB of peak; the training state it does not keep is {expected:.2f} MB")
assert 0.5 * expected < saved < 1.5 * expected  # the saving is the training state, not the activations
# activations dominate: what is neither weights nor training state is over twice full tuning's training state
assert all(c["peak_mb"] - c["weights_mb"] - c["state_mb"] > 2 * full["state_mb"] for c in cost.values())

# %%
if plt is not None:
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(10, 4))
    ranks = list(RANKS)
    ax_mem.plot(ranks, [cost[r]["peak_mb"] for r in ranks], "o-", label="LoRA: peak")
    ax_mem.plot(ranks, [cost[r]["weights_mb"] + cost[r]["state_mb"] for r in ranks], "s--",
                label="LoRA: weights + grad/Adam/master")
    ax_mem.axhline(full["peak_mb"], color="tab:red", label="full tuning: peak")
    ax_mem.axhline(full["weights_mb"] + full["state_mb"], color="tab:red", ls="--",
                   label="full tuning: weights + grad/Adam/master")
    ax_mem.set_ylabel("MB (tracemalloc)")
    ax_mem.set_ylim(bottom=0)
    ax_mem.legend(fontsize=8)
    ax_time.plot(ranks, [cost[r]["ms"] for r in ranks], "o-", label="LoRA")
    ax_time.axhline(full["ms"], color="tab:red", label="full tuning")
    ax_time.set_ylabel("ms per SFT step (median, untraced)")
    ax_time.set_ylim(bottom=0)
    ax_time.legend(fontsize=8)
    for ax in (ax_mem, ax_time):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ranks, [str(r) for r in ranks])
        ax.set_xlabel("LoRA rank")
    fig.suptitle("One SFT step (batch 16) on the 208 k-parameter SFT model")
    save_figure(fig, "06_lora_cost.png")
else:
    print("(matplotlib is not installed: the table above has the same numbers)")

# %% [markdown]
# ## 7. PERL's pipeline, as commands
#
# Every training command takes `--lora-rank R` (and `--lora-alpha`,
# `--lora-dropout`, `--lora-targets`; the defaults are PERL's targets q, k,
# v, o and α = 8). A LoRA run's checkpoint holds only its adapters and heads
# and names its base model; `minirl.load(run_dir)` rebuilds the rest. PERL's
# pipeline, with LoRA at 10× the preset's learning rate (PERL's own ratio):
#
#     # 1. the reward model: Bradley-Terry on the SFT model's own right and wrong answers
#     minirl run rm --lora-rank 8 --lr 3e-3 --out runs/rm-lora
#     # 2. the policy: REINFORCE on PERL's KL-regularised reward, scored by that reward model
#     minirl run reinforce --lora-rank 8 --lr 1e-3 --reward rm:runs/rm-lora/checkpoints/final --out runs/rl-lora
#     # 3. the adapters as a PEFT adapter directory, and the base model they go on
#     minirl export runs/rl-lora --format peft --out export/adapter
#     minirl export sft --format hf --out export/base
#
# and in PyTorch:
#
#     from peft import PeftModel
#     from transformers import LlamaForCausalLM
#     model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained("export/base"), "export/adapter")
#     model = model.merge_and_unload()   # = minirl.lora.merge_lora
#
# (`minirl export RUN --format hf` writes the merged model directly.) A
# reward model this small is easily hacked by RL (lesson 5), which is why
# `minirl reproduce perl` trains the RL jobs on the verifier's reward. It runs
# the comparison PERL makes: the reward model, REINFORCE and PPO, each fully
# tuned and with LoRA at ranks 1, 4, 8, 16, 32, over seeds 0–2, then each
# job's step cost alone in a fresh process as in section 6, and prints a table
# and every claim beside the paper's number with a verdict (reproduced,
# partly, not reproduced). It takes about an hour on two cores;
# `minirl reproduce perl --quick` is a smoke test of a few minutes whose
# numbers mean nothing.

# %% [markdown]
# ## What to take away
#
# - LoRA adds ΔW = (α/r) B A beside a frozen W; with B = 0 at the start the
#   model is the base model bit for bit, and the first step moves only B.
# - Its gradient is two small matmuls on the rank side (dB = dY^T h,
#   dA = s B^T dY^T X), with no dW at all for the frozen weight.
# - ΔW can be merged into W for free inference and taken out again to float32
#   rounding; its rank is at most r.
# - The fraction of parameters LoRA trains is about 2r/d per matrix: under
#   0.1 % at 7B for small ranks, 1–32 % on minirl's 64-wide model.
# - A LoRA update is dense, low rank and confined to the adapted matrices; a
#   full RL update touches every matrix at full rank. Measured through bf16,
#   the merged LoRA update looks full rank: rounding, not training.
# - LoRA saves gradients and optimizer state, not activations. At 7B that is
#   most of the memory; on a 200 k-parameter model the activations dominate,
#   so PERL's savings show only in part.
