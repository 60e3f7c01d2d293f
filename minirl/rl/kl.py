"""Per-token estimators of KL(pi || pi_ref) from tokens sampled from pi.

John Schulman, *Approximating KL Divergence* (joschu.net/blog/kl-approx.html).
With r = pi_ref(x) / pi(x) and x ~ pi:

    k1 = -log r                 unbiased, high variance, can be negative
    k2 = 0.5 (log r)^2          biased (second-order accurate), low variance, >= 0
    k3 = (r - 1) - log r        unbiased, low variance, >= 0 (log is concave)

`logp` and `ref_logp` are the log-probabilities of the sampled tokens under
the policy and the reference. Either may be a Tensor (gradients flow: GRPO's
KL penalty is k3 of the policy's logp, TRL's `per_token_kl`) or an ndarray
(statistics, rewards). PERL's KL-regularised reward uses the k1 sum over a
sequence. `exact_kl` is the ground truth for small categorical distributions.
"""

from __future__ import annotations

import numpy as np

from minirl import functional as F
from minirl.tensor import Tensor

KL_KINDS = ("k1", "k2", "k3")


def _pair(logp, ref_logp):
    """Leave Tensors alone; make everything else an ndarray."""
    if not isinstance(logp, Tensor):
        logp = np.asarray(logp)
    if not isinstance(ref_logp, Tensor):
        ref_logp = np.asarray(ref_logp)
    return logp, ref_logp


def k1(logp, ref_logp):
    """log pi(x) - log pi_ref(x)."""
    logp, ref_logp = _pair(logp, ref_logp)
    return logp - ref_logp


def k2(logp, ref_logp):
    """0.5 (log pi(x) - log pi_ref(x))^2."""
    logp, ref_logp = _pair(logp, ref_logp)
    logratio = logp - ref_logp
    return 0.5 * logratio * logratio


def k3(logp, ref_logp):
    """exp(ref_logp - logp) - (ref_logp - logp) - 1."""
    logp, ref_logp = _pair(logp, ref_logp)
    log_r = ref_logp - logp  # log(pi_ref / pi)
    if isinstance(log_r, Tensor):
        # forward: exp(log_r) - log_r - 1; backward: d/dlogp = 1 - r (exp's closure gives r)
        return F.exp(log_r) - log_r - 1.0
    # expm1 keeps k3 >= 0 in floating point too: exp(d) - d - 1 cancels to -1e-16 for tiny d
    return np.expm1(log_r) - log_r


def kl_estimate(logp, ref_logp, kind: str = "k3"):
    """The per-token estimate of KL(pi || pi_ref) named by `kind` ("k1", "k2" or "k3")."""
    if kind not in KL_KINDS:
        raise ValueError(f"kind must be one of {KL_KINDS}, got {kind!r}")
    return {"k1": k1, "k2": k2, "k3": k3}[kind](logp, ref_logp)


def exact_kl(p, q) -> np.ndarray:
    """KL(p || q) = sum_x p(x) log(p(x) / q(x)) over the last axis; terms with p(x) = 0 are 0."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {p.shape} and {q.shape}")
    with np.errstate(divide="ignore"):
        terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0)
    return terms.sum(axis=-1)
