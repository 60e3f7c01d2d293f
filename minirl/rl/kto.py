"""KTO: Kahneman-Tversky Optimization (Ethayarajh et al., arXiv 2402.01306).

Unpaired feedback: each example is one completion y for a prompt x with a
binary label, desirable (chosen) or undesirable (rejected); no pairs needed.
KTO keeps DPO's implicit reward r(x, y) = log π(y|x) / π_ref(y|x) and scores it
with a prospect-theory value function around a *reference point* z0:
    desirable:   v = λ_D σ(β (r - z0))        loss λ_D (1 - σ(β (r - z0)))
    undesirable: v = λ_U σ(β (z0 - r))        loss λ_U (1 - σ(β (z0 - r)))
so a desirable completion gains by rising above z0 and an undesirable one by
falling below it. The sigmoid is concave in gains and convex in losses, as
Kahneman and Tversky's value function, and saturates: examples far past z0
stop counting.

The reference point z0 is the policy's KL to the reference, estimated on the
batch with *mismatched* pairs: each prompt x_i is scored with another
example's completion y'_i = y_{i-1} (TRL's `KL_completion_ids` rotate the
completions by one within each batch of per_device_train_batch_size), and
    z0 = max(0, mean_i(log π(y'_i|x_i) - log π_ref(y'_i|x_i))),
computed without gradient: it is a baseline, not a term to optimise. Since
the policy starts at the reference, z0 = 0 and each example's loss is λ/2
at first.

What β does: as in DPO, the temperature of the implicit reward. A small β
makes the sigmoid wide, so examples keep pulling (gently) far from z0; a
large β makes it sharp, so they saturate after a small move from the reference.
λ_D, λ_U (`desirable_weight`, `undesirable_weight`) rebalance an unbalanced
dataset: the paper recommends λ_D n_D / (λ_U n_U) in [1, 4/3].

The loss follows TRL `KTOTrainer._compute_loss`, trl/trainer/kto_trainer.py,
TRL v1.16.0, loss_type="kto" (there is no separate kto_loss method in 1.16):
    kl = (KL_logps - ref_KL_logps).mean().detach()
    kl = gather_for_metrics(kl).mean().clamp(min=0)           # z0; one process: just clamp
    chosen_losses = 1 - F.sigmoid(self.beta * (chosen_logratios - kl))
    rejected_losses = 1 - F.sigmoid(self.beta * (kl - rejected_logratios))
    losses = torch.cat((self.desirable_weight * chosen_losses,
                        self.undesirable_weight * rejected_losses), 0)
    loss = losses.nanmean()
where the KL log-probs come from a forward pass under torch.no_grad(). The
mean runs over all n_c + n_r examples, so the weights act per example. Either
side may be empty (a batch of only desirable examples); not both.

Stats, as TRL v1.16 logs them: kl (z0 after the clamp), rewards/chosen and
logps/chosen (TRL logs the sum over the batch divided by the count, i.e. the
mean of β r and of log π over the desirable examples), rewards/rejected and
logps/rejected likewise, and rewards/margins = rewards/chosen -
rewards/rejected. As in TRL a key is absent when its side of the batch is
empty (rewards/margins needs both); averaging over steps then counts only the
steps that had such examples.

Shape legend: n_c desirable examples, n_r undesirable ones, n_kl mismatched
KL completions (TRL: one per example, n_kl = n_c + n_r).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minirl import functional as F
from minirl.rl.preference import (PreferenceAlgorithm, PreferenceConfig, Unpaired, as_constant, as_logps,
                                  frozen_sequence_logps, sequence_logps)
from minirl.tensor import Tensor


@dataclass
class KTOConfig(PreferenceConfig):
    """KTO's knobs; names and defaults follow TRL's KTOConfig."""

    beta: float = 0.1
    """β: the strength of the tie to the reference, as in DPO."""
    desirable_weight: float = 1.0
    """λ_D: weight of the desirable examples' losses."""
    undesirable_weight: float = 1.0
    """λ_U: weight of the undesirable examples' losses."""

    def _checks(self):
        return super()._checks() + [
            ("batch_size", self.batch_size >= 2, ">= 2 (the KL estimate pairs each prompt with another row's "
                                                 "completion)"),
            ("beta", self.beta > 0, "> 0"),
            ("desirable_weight", self.desirable_weight >= 0, ">= 0"),
            ("undesirable_weight", self.undesirable_weight >= 0, ">= 0"),
        ]


class KTO(PreferenceAlgorithm):
    """Kahneman-Tversky optimisation: learn from single completions marked desirable or undesirable."""

    name = "kto"
    kind = "unpaired"
    uses_ref = True

    def batch(self, policy, rng: np.random.Generator, step: int):
        self.data.ensure(policy, rng, step)
        idx = self.data.sample(rng)
        rows = [self.data.rows[i] for i in idx]
        # TRL's KL data: each prompt with the completion of the row before it, mismatched on purpose
        kl_rows = self.data.batch_of(policy.tokenizer, [Unpaired(r.prompt, rows[i - 1].completion, r.label)
                                                        for i, r in enumerate(rows)])
        labels = np.array([r.label for r in rows])
        return (self.data.batch_of(policy.tokenizer, rows), labels, self.data.ref_of(idx), kl_rows,
                frozen_sequence_logps(self.ref_model, kl_rows))

    def loss(self, policy, batch):
        rows, labels, ref_logps, kl_rows, ref_kl_logps = batch
        logps = sequence_logps(policy, rows)  # (B,)
        kl_logps = frozen_sequence_logps(policy, kl_rows)  # TRL: no gradient through the KL estimate
        good, bad = np.flatnonzero(labels), np.flatnonzero(~labels)
        c = self.config
        return kto_loss(logps[good], logps[bad], kl_logps, ref_logps[good], ref_logps[bad], ref_kl_logps,
                        beta=c.beta, desirable_weight=c.desirable_weight, undesirable_weight=c.undesirable_weight)


# --------------------------------------------------------------------- loss
def kto_loss(
    chosen_logps,
    rejected_logps,
    kl_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    ref_kl_logps,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """KTO's loss over n_c desirable and n_r undesirable examples, as TRL's KTOTrainer (loss_type="kto").

    chosen_logps (n_c,), rejected_logps (n_r,) Tensors: the policy's summed completion log-probs.
    kl_logps, ref_kl_logps (n_kl,): the policy's and the reference's log-probs of the
    mismatched completions (constants: the KL reference point carries no gradient).
    ref_chosen_logps (n_c,), ref_rejected_logps (n_r,): the reference's, constants.
    """
    # 0) validate
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    for name, w in (("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
        if not w >= 0:
            raise ValueError(f"{name} must be >= 0, got {w}")
    chosen_logps = as_logps("chosen_logps", chosen_logps)
    rejected_logps = as_logps("rejected_logps", rejected_logps)
    n_c, n_r = chosen_logps.shape[0], rejected_logps.shape[0]
    if n_c + n_r == 0:
        raise ValueError("chosen_logps and rejected_logps are both empty: a KTO batch needs at least one example")
    ref_chosen_logps = as_constant("ref_chosen_logps", ref_chosen_logps, chosen_logps, "chosen_logps")
    ref_rejected_logps = as_constant("ref_rejected_logps", ref_rejected_logps, rejected_logps, "rejected_logps")
    kl_logps, ref_kl_logps = (np.asarray(x.data if isinstance(x, Tensor) else x, dtype=np.float64)
                              for x in (kl_logps, ref_kl_logps))
    if kl_logps.ndim != 1 or kl_logps.shape[0] == 0:
        raise ValueError(f"kl_logps must be a non-empty 1-D array (n_kl,) of the mismatched completions' "
                         f"log-probs, got shape {kl_logps.shape}")
    if ref_kl_logps.shape != kl_logps.shape:
        raise ValueError(f"ref_kl_logps has shape {ref_kl_logps.shape}, expected {kl_logps.shape} "
                         f"(the shape of kl_logps)")

    # 1) the reference point z0: the KL estimate on mismatched pairs, off the tape, clamped at 0
    kl = max(float(np.mean(kl_logps - ref_kl_logps)), 0.0)

    # 2) the value of each example around z0, weighted, then the mean over all n_c + n_r examples
    chosen_logratios = chosen_logps - ref_chosen_logps  # (n_c,)
    rejected_logratios = rejected_logps - ref_rejected_logps  # (n_r,)
    chosen_losses = 1.0 - F.sigmoid(beta * (chosen_logratios - kl))  # (n_c,)
    rejected_losses = 1.0 - F.sigmoid(beta * (kl - rejected_logratios))  # (n_r,)
    losses = F.concat([desirable_weight * chosen_losses, undesirable_weight * rejected_losses])  # (n_c + n_r,)
    loss = losses.mean()

    # 3) diagnostics under TRL's names; a side with no examples logs nothing, as in TRL
    stats = {"kl": kl}
    if n_c:
        stats["rewards/chosen"] = float(np.mean(beta * chosen_logratios.data))
        stats["logps/chosen"] = float(np.mean(chosen_logps.data))
    if n_r:
        stats["rewards/rejected"] = float(np.mean(beta * rejected_logratios.data))
        stats["logps/rejected"] = float(np.mean(rejected_logps.data))
    if n_c and n_r:
        stats["rewards/margins"] = stats["rewards/chosen"] - stats["rewards/rejected"]
    return loss, stats
