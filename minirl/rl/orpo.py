"""ORPO: Monolithic Preference Optimization without Reference Model (Hong et al., arXiv 2403.07691).

One stage instead of SFT then DPO: the supervised NLL on the chosen
completions plus a penalty that makes the rejected completion less likely
*relative* to the chosen one, measured in odds. With P(y|x) the
length-averaged likelihood, P = exp(c) for c the average token log-prob,
    odds(y|x) = P / (1 - P),
    log OR = log odds(y_w) - log odds(y_l) = (c - r) - (log(1 - e^c) - log(1 - e^r)),
    L = L_NLL(y_w) - λ · mean over pairs of log σ(log OR).
There is no reference model: the NLL term keeps the policy on the chosen
data, and the odds-ratio term only separates chosen from rejected. The odds
ratio differs from DPO's probability ratio near P = 1: log(1 - e^c) -> -∞ as
c -> 0, so the log-odds of a chosen completion grow without bound while its
probability saturates, and the gradient of log σ(log OR) with respect to c,
σ(-log OR) / (1 - e^c), stays finite (it tends to odds(y_l)).

What λ does: the weight of the preference term against the NLL (TRL calls it
beta, default 0.1; the paper writes λ, the authors' code `alpha`). λ = 0 is
plain SFT on the chosen completions.

The loss follows TRL `ORPOTrainer.odds_ratio_loss` and `get_batch_loss_metrics`,
trl/experimental/orpo/orpo_trainer.py, TRL v1.16.0:
    log_odds = (policy_chosen_logps - policy_rejected_logps) - (
        log1mexp(policy_chosen_logps) - log1mexp(policy_rejected_logps))
    ratio = F.logsigmoid(log_odds)
    losses = self.beta * ratio
    loss = policy_nll_loss - losses.mean()
with the log-probs averaged over completion tokens (`average_log_prob=True`)
and cast to float32 first (`.float()`, so TRL agrees with a float64 run to
float32 precision), and log1mexp(x) = log(1 - e^x) computed stably, switching at x = -ln 2
between log1p(-exp(x)) and log(-expm1(x)) (Mächler's log1mexp; `log1mexp`
below is that function with its derivative). TRL's policy_nll_loss is the
token-mean cross-entropy of the chosen sequences over the *prompt and the
completion* ("orpo chosen nll loss is computed over the full prompt and
response", labels = input_ids wherever attention_mask is 1), where the paper's
L_SFT is the NLL of the chosen response alone. `orpo_loss` takes the NLL as an
input (`chosen_nll`), so the caller decides which tokens it covers.

Stats, as ORPOTrainer logs them: rewards/chosen = β c and rewards/rejected =
β r (batch means; not rewards in DPO's sense, just the scaled average
log-probs), rewards/accuracies, rewards/margins, logps/chosen, logps/rejected,
nll_loss, and two names that read differently from what they hold:
log_odds_ratio is mean(log σ(log OR)) (the preference term before β) and
log_odds_chosen is mean(log OR). TRL's logits/* need the logits.

Shape legend: B = number of preference pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minirl import functional as F
from minirl.functional import _op
from minirl.rl.preference import (PreferenceAlgorithm, PreferenceConfig, as_logps, pair_shapes, reward_stats,
                                  sequence_logps, split_pairs)
from minirl.tensor import Tensor

LN2 = 0.6931471805599453


@dataclass
class ORPOConfig(PreferenceConfig):
    """ORPO's knobs; names and defaults follow TRL's ORPOConfig."""

    beta: float = 0.1
    """λ: weight of the odds-ratio term against the NLL on the chosen completions."""

    def _checks(self):
        return super()._checks() + [("beta", self.beta >= 0, ">= 0")]


class ORPO(PreferenceAlgorithm):
    """ORPO: supervised NLL on the chosen completions plus an odds-ratio preference term, no reference."""

    name = "orpo"

    def loss(self, policy, batch):
        rows, _ = batch
        chosen, rejected, chosen_len, rejected_len = split_pairs(sequence_logps(policy, rows), rows)
        nll = -chosen.sum() / float(chosen_len.sum())  # TRL: cross-entropy over every chosen token
        return orpo_loss(chosen / chosen_len, rejected / rejected_len, nll, beta=self.config.beta)


# --------------------------------------------------------------------- loss
def log1mexp(x: Tensor) -> Tensor:
    """log(1 - e^x) for x <= 0, accurate near 0 and far below it (TRL's ORPO `log1mexp`): (...) -> (...).

    x = 0 exactly (every token certain, in floating point) is read as -tiny,
    the negative normal number nearest 0, so the result is a large finite
    negative number (log(tiny): -708 in float64, -87 in float32) instead of -inf.
    """
    xs = np.minimum(x.data, -np.finfo(x.dtype).tiny)
    # below -ln 2, e^x is small and log1p is exact; above it, 1 - e^x cancels, so use expm1
    with np.errstate(divide="ignore"):  # np.where evaluates log1p(-1) in the branch it then discards
        out = np.where(xs < -LN2, np.log1p(-np.exp(xs)), np.log(-np.expm1(xs)))
    # forward was: out = log(1 - e^x), so dx = -e^x / (1 - e^x) = e^x / expm1(x) (no overflow for x << 0)
    return _op(out, (x,), lambda dout: (dout * np.exp(xs) / np.expm1(xs),))


def orpo_loss(
    chosen_logps,
    rejected_logps,
    chosen_nll,
    beta: float = 0.1,
) -> tuple[Tensor, dict[str, float]]:
    """ORPO's loss over B pairs: chosen_nll - β mean(log σ(log odds ratio)), as TRL's ORPOTrainer.

    chosen_logps, rejected_logps (B,) Tensors: the policy's *average* (per-token mean) completion log-probs.
    chosen_nll: scalar Tensor, the token-mean NLL on the chosen sequences (on the tape, or a constant).
    """
    # 0) validate
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0 (the weight of the odds-ratio term; 0 is plain SFT), got {beta}")
    chosen_logps = as_logps("chosen_logps", chosen_logps)
    rejected_logps = as_logps("rejected_logps", rejected_logps)
    pair_shapes(chosen_logps, rejected_logps)
    for name, x in (("chosen_logps", chosen_logps), ("rejected_logps", rejected_logps)):
        if np.any(x.data > 0):
            raise ValueError(f"{name} must be average log-probs <= 0, got a maximum of {x.data.max()}")
    if not isinstance(chosen_nll, Tensor):
        chosen_nll = Tensor(np.asarray(chosen_nll, dtype=chosen_logps.dtype))
    if chosen_nll.size != 1:
        raise ValueError(f"chosen_nll must be a scalar (the mean NLL on the chosen sequences), "
                         f"got shape {chosen_nll.shape}")
    chosen_nll = chosen_nll.reshape(())
    if not chosen_nll.data >= 0:
        raise ValueError(f"chosen_nll must be a negative log-likelihood >= 0 (not a log-prob), got {chosen_nll.item()}")

    # 1) the log odds ratio: log odds(y_w) - log odds(y_l), with log odds(y) = c - log(1 - e^c)
    log_odds = (chosen_logps - rejected_logps) - (log1mexp(chosen_logps) - log1mexp(rejected_logps))  # (B,)
    ratio = F.logsigmoid(log_odds)  # (B,)

    # 2) the full ORPO loss: NLL minus the weighted preference term
    losses = beta * ratio
    loss = chosen_nll - losses.mean()

    # 3) diagnostics under TRL's names
    c, r = chosen_logps.data, rejected_logps.data
    stats = reward_stats(beta * c, beta * r, c, r)
    stats["nll_loss"] = float(chosen_nll.data)
    stats["log_odds_ratio"] = float(ratio.data.mean())
    stats["log_odds_chosen"] = float(log_odds.data.mean())
    return loss, stats
