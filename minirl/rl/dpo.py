"""DPO: Direct Preference Optimization (Rafailov et al., arXiv 2305.18290).

Preference data: a prompt x, a chosen completion y_w and a rejected one y_l.
RLHF would fit a Bradley-Terry reward model, P(y_w > y_l) = σ(r(x, y_w) - r(x, y_l)),
then maximise E[r] - β KL(π || π_ref). DPO solves that KL-regularised problem
in closed form, π*(y|x) ∝ π_ref(y|x) exp(r(x, y) / β), and reads the reward
off the policy itself: the *implicit reward* r(x, y) = β log π(y|x) / π_ref(y|x)
(up to a term of x alone, which cancels in the difference). Fitting the
Bradley-Terry likelihood with that reward is the DPO loss,
    L = -log σ(β Δ),  Δ = (log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l)),
with log π(y) the *sum* of the completion's token log-probs. At the start,
π = π_ref, so Δ = 0 and L = log 2 for every pair.

What β does: it is the KL coefficient of the problem DPO solves, and in the
loss the temperature of the margin. The gradient is
    ∇L = -β σ(-β Δ) (∇ log π(y_w) - ∇ log π(y_l)),
so each pair pushes y_w up and y_l down, weighted by how wrongly the implicit
reward ranks it; once βΔ is a few units the pair stops counting. A large β
saturates after a small move away from π_ref (stays close); a small β lets the
log-ratios grow far before the pairs go quiet.

`loss_type` picks the per-pair loss of TRL's `DPOTrainer._compute_loss`,
trl/trainer/dpo_trainer.py, TRL v1.16.0 (with f_divergence_type="reverse_kl",
ld_alpha=None, use_weighting=False, so the scores are the plain log-ratios):
    sigmoid: -F.logsigmoid(beta * delta_score)
    hinge:   torch.relu(1 - beta * delta_score)                            (SLiC, arXiv 2305.10425)
    ipo:     (chosen_scores / len_c - rejected_scores / len_r - 1 / (2 * beta)) ** 2
             (IPO, arXiv 2310.12036, eq. 17; β is the paper's τ. TRL divides each
              log-ratio by its completion's token count, completion_mask.sum(1)
              clamped at 1, which the IPO authors confirmed matches their
              results, so the target margin 1/(2β) is per token)
    robust:  (-(1 - ε) logsigmoid(βΔ) + ε logsigmoid(-βΔ)) / (1 - 2ε)
             (rDPO, arXiv 2403.00409: if each label is flipped with probability
              ε, the expected robust loss over the flip is the clean loss)
and the loss is the mean over the batch, `per_sequence_loss.mean()`.

label_smoothing: TRL v1.16 reads it in "robust" (where it must lie in
[0, 0.5)) and in loss types minirl does not have ("exo_pair", "aot",
"aot_unpaired"); its "sigmoid", "hinge" and "ipo" silently ignore it. Older
TRL releases applied it to "sigmoid" as conservative DPO, the form
CPOTrainer still has (see simpo.py). Here a nonzero label_smoothing with
another loss_type is an error rather than a silent no-op.

Stats: TRL's logged names, each the mean over the batch: rewards/chosen
β (log π(y_w) - log π_ref(y_w)), rewards/rejected, rewards/accuracies (the
fraction of pairs the implicit reward ranks right), rewards/margins, and
logps/chosen, logps/rejected (the policy's summed log-probs). TRL's entropy,
logits/* and mean_token_accuracy need the model's logits and are not here.

Shape legend: B = number of preference pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

from minirl import functional as F
from minirl.rl.preference import (PreferenceAlgorithm, PreferenceConfig, as_constant, as_logps, pair_shapes,
                                  reward_stats, sequence_logps, split_pairs, token_counts)
from minirl.tensor import Tensor

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


@dataclass
class DPOConfig(PreferenceConfig):
    """DPO's knobs; names and defaults follow TRL's DPOConfig (beta 0.1, loss_type sigmoid)."""

    beta: float = 0.1
    """β: the strength of the KL tie to the reference; the implicit reward is β log π/π_ref."""
    loss_type: str = "sigmoid"
    """sigmoid (DPO), ipo, hinge (RSO) or robust, computed as TRL's DPOTrainer does."""
    label_smoothing: float = 0.0
    """robust only: the probability ε that a label is flipped, in [0, 0.5)."""

    def _checks(self):
        return super()._checks() + [
            ("beta", self.beta > 0, "> 0"),
            ("loss_type", self.loss_type in LOSS_TYPES, "one of " + ", ".join(LOSS_TYPES)),
            ("label_smoothing", 0 <= self.label_smoothing < 0.5 and (self.label_smoothing == 0
                                                                     or self.loss_type == "robust"),
             "in [0, 0.5), and non-zero only with loss_type robust (as current TRL)"),
        ]


@dataclass
class IPOConfig(DPOConfig):
    """IPO: DPO's pairs with a squared loss that aims the length-averaged margin at 1/(2β)."""

    loss_type: str = "ipo"
    """sigmoid (DPO), ipo, hinge (RSO) or robust, computed as TRL's DPOTrainer does."""


class DPO(PreferenceAlgorithm):
    """Direct preference optimisation: learn from chosen/rejected pairs against the frozen reference."""

    name = "dpo"
    uses_ref = True

    def loss(self, policy, batch):
        rows, (ref_chosen, ref_rejected) = batch
        chosen, rejected, chosen_len, rejected_len = split_pairs(sequence_logps(policy, rows), rows)
        c = self.config
        return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=c.beta, loss_type=c.loss_type,
                        label_smoothing=c.label_smoothing, chosen_lengths=chosen_len, rejected_lengths=rejected_len)


class IPO(DPO):
    """Identity preference optimisation: DPO's pairs, a squared loss aiming at a fixed margin."""

    name = "ipo"


# --------------------------------------------------------------------- loss
def dpo_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths=None,
    rejected_lengths=None,
) -> tuple[Tensor, dict[str, float]]:
    """DPO's loss (or IPO's, SLiC's hinge, robust DPO's) over B pairs, as TRL's DPOTrainer computes it.

    chosen_logps, rejected_logps (B,) Tensors: the policy's summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps (B,): the reference's, constants.
    chosen_lengths, rejected_lengths (B,): completion token counts, required by "ipo" (the others ignore them).
    """
    # 0) validate
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if loss_type == "robust":
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5) for loss_type='robust' "
                             f"(the probability that a label is flipped), got {label_smoothing}")
    elif label_smoothing != 0:
        raise ValueError(f"label_smoothing={label_smoothing} has no effect with loss_type={loss_type!r}: TRL applies "
                         f"it to 'robust' only and would silently ignore it; use loss_type='robust' or 0.0")
    chosen_logps = as_logps("chosen_logps", chosen_logps)
    rejected_logps = as_logps("rejected_logps", rejected_logps)
    pair_shapes(chosen_logps, rejected_logps)
    ref_chosen_logps = as_constant("ref_chosen_logps", ref_chosen_logps, chosen_logps, "chosen_logps")
    ref_rejected_logps = as_constant("ref_rejected_logps", ref_rejected_logps, chosen_logps, "chosen_logps")
    if loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss_type='ipo' needs chosen_lengths and rejected_lengths (completion token counts): "
                             "TRL's IPO divides each log-ratio by its completion's length")
        len_c = token_counts("chosen_lengths", chosen_lengths, chosen_logps)
        len_r = token_counts("rejected_lengths", rejected_lengths, chosen_logps)

    # 1) the implicit rewards' log-ratios and their difference (TRL: chosen_scores, delta_score)
    chosen_logratios = chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = rejected_logps - ref_rejected_logps  # (B,)
    delta = chosen_logratios - rejected_logratios  # (B,)

    # 2) the per-pair loss of `loss_type`, then the batch mean
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        losses = F.relu(1.0 - beta * delta)
    elif loss_type == "ipo":
        ipo_delta = chosen_logratios / len_c - rejected_logratios / len_r
        losses = (ipo_delta - 1.0 / (2.0 * beta)) ** 2
    else:  # robust
        eps = label_smoothing
        clean_loss_term = -(1.0 - eps) * F.logsigmoid(beta * delta)
        flipped_loss_term = -eps * F.logsigmoid(-beta * delta)
        losses = (clean_loss_term - flipped_loss_term) / (1.0 - 2.0 * eps)
    loss = losses.mean()

    # 3) diagnostics under TRL's names
    stats = reward_stats(beta * chosen_logratios.data, beta * rejected_logratios.data,
                       chosen_logps.data, rejected_logps.data)
    return loss, stats
