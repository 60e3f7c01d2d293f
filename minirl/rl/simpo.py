"""SimPO: Simple Preference Optimization with a reference-free reward (Meng et al., arXiv 2405.14734).

DPO's implicit reward β log π(y|x) / π_ref(y|x) needs a reference model and
sums token log-probs, so longer completions get larger rewards in magnitude.
SimPO replaces it with the *length-averaged* log-prob, with no reference:
    r(x, y) = (β / |y|) log π(y|x) = β · mean over y's tokens of log π(token),
and asks the Bradley-Terry model for a target margin γ > 0 between the two:
    L = -log σ(r(x, y_w) - r(x, y_l) - γ) = -log σ(β (c - r) - γ),
with c, r the average log-probs of the chosen and rejected completions.
The loss depends on c - r only: there is no reference to stay close to, and
shifting both log-probs by the same amount changes nothing. At c = r it is
log(1 + e^γ); it falls to log 2 once the average chosen log-prob leads by γ/β.

What β does: it scales the reward. On long completions average log-prob
gaps are small (tenths of a nat, where DPO's summed log-ratios reach tens),
so SimPO needs a much larger β than DPO to make σ informative:
the paper uses β = 2.0 or 2.5 (its authors report that even 10 can help).
γ is the margin in reward units; its authors tune the ratio γ/β, starting at
0.5 and searching [0, 1] (released models: 0.1 to 0.8).

The loss follows TRL's CPOTrainer with loss_type="simpo",
trl/experimental/cpo/cpo_trainer.py, TRL v1.16.0 (`CPOTrainer.cpo_loss`,
with alpha=0.0: no AlphaPO reward transform):
    logits = policy_chosen_logps - policy_rejected_logps
    gamma_logratios = self.simpo_gamma / self.beta
    logits = logits - gamma_logratios
    losses = (-F.logsigmoid(self.beta * logits) * (1 - self.label_smoothing)
              - F.logsigmoid(-self.beta * logits) * self.label_smoothing)
so β (logits - γ/β) = β (c - r) - γ: TRL's simpo_gamma is the paper's γ.
The log-probs are averages because CPOTrainer computes them with
`average_log_prob=self.loss_type in ["ipo", "simpo"]`. The loss is
losses.mean() + cpo_alpha · NLL(chosen); CPOConfig's cpo_alpha defaults to 1.0
(CPO's behaviour-cloning term, "CPO-SimPO"). Pure SimPO is cpo_alpha = 0
(what loss_type="alphapo" sets), and that is the loss here: add an NLL term
yourself for CPO-SimPO. label_smoothing is the conservative (cDPO) smoothing
CPOTrainer writes, an addition of TRL's, not in the SimPO paper: with ε > 0
the loss is minimised at a finite margin, β (c - r) - γ = log((1 - ε) / ε),
beyond which it pulls the two log-probs back together (robust DPO's
smoothing, in dpo.py, keeps pushing them apart instead).

Defaults: beta=2.0, simpo_gamma=1.0 (γ/β = 0.5), the SimPO authors' setting
(β = 2.0 as in their base-model runs, γ/β = 0.5, the starting point they
recommend). TRL's CPOConfig defaults are beta=0.1, simpo_gamma=0.5, CPO's
and DPO's β: with average log-probs the loss then barely moves from
log(1 + e^0.5) unless the gaps reach nats, and γ/β = 5 is far outside the
range the SimPO authors searched.

Stats as CPOTrainer logs them, batch means: rewards/chosen = β c,
rewards/rejected = β r, rewards/accuracies, rewards/margins, logps/chosen,
logps/rejected (the average log-probs). TRL's logits/* need the logits, and
its nll_loss is the CPO term this loss leaves out.

Shape legend: B = number of preference pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

from minirl import functional as F
from minirl.rl.preference import (PreferenceAlgorithm, PreferenceConfig, as_logps, pair_shapes, reward_stats,
                                  sequence_logps, split_pairs)
from minirl.tensor import Tensor


@dataclass
class SimPOConfig(PreferenceConfig):
    """SimPO's knobs; names follow TRL's CPOConfig (loss_type "simpo"), defaults the SimPO paper's."""

    beta: float = 2.0
    """β: scale of the length-normalised log-prob margin (the SimPO paper uses 2.0-2.5)."""
    simpo_gamma: float = 1.0
    """γ: the target reward margin, TRL's simpo_gamma (β 2.0 and γ/β 0.5, the SimPO paper's starting point)."""
    cpo_alpha: float = 0.0
    """Weight of an NLL term on the chosen completions (CPO-SimPO); 0: pure SimPO."""

    def _checks(self):
        return super()._checks() + [("beta", self.beta > 0, "> 0"), ("simpo_gamma", self.simpo_gamma >= 0, ">= 0"),
                                    ("cpo_alpha", self.cpo_alpha >= 0, ">= 0")]


class SimPO(PreferenceAlgorithm):
    """SimPO: a reference-free preference loss on length-normalised log-probs with a target margin."""

    name = "simpo"

    def loss(self, policy, batch):
        rows, _ = batch
        c = self.config
        chosen, rejected, chosen_len, rejected_len = split_pairs(sequence_logps(policy, rows), rows)
        loss, stats = simpo_loss(chosen / chosen_len, rejected / rejected_len, beta=c.beta, simpo_gamma=c.simpo_gamma)
        if c.cpo_alpha > 0:  # CPOTrainer: + cpo_alpha * NLL over every chosen token
            nll = -chosen.sum() / float(chosen_len.sum())
            loss = loss + c.cpo_alpha * nll
            stats["nll_loss"] = float(nll.data)
        return loss, stats


# --------------------------------------------------------------------- loss
def simpo_loss(
    chosen_logps,
    rejected_logps,
    beta: float = 2.0,
    simpo_gamma: float = 1.0,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """SimPO's loss over B pairs, as TRL's CPOTrainer(loss_type="simpo", cpo_alpha=0) computes it.

    chosen_logps, rejected_logps (B,) Tensors: the policy's *average* (per-token mean) completion log-probs.
    """
    # 0) validate
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not simpo_gamma >= 0:
        raise ValueError(f"simpo_gamma must be >= 0 (the target reward margin), got {simpo_gamma}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5) (at 0.5 the labels carry no preference), "
                         f"got {label_smoothing}")
    chosen_logps = as_logps("chosen_logps", chosen_logps)
    rejected_logps = as_logps("rejected_logps", rejected_logps)
    pair_shapes(chosen_logps, rejected_logps)

    # 1) the margin, less γ/β inside the β product (TRL's gamma_logratios)
    logits = (chosen_logps - rejected_logps) - simpo_gamma / beta  # (B,)

    # 2) Bradley-Terry with (conservative) label smoothing, then the batch mean
    losses = (-F.logsigmoid(beta * logits) * (1.0 - label_smoothing)
              - F.logsigmoid(-beta * logits) * label_smoothing)
    loss = losses.mean()

    # 3) diagnostics under TRL's names
    c, r = chosen_logps.data, rejected_logps.data
    return loss, reward_stats(beta * c, beta * r, c, r)
