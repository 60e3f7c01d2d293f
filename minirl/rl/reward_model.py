"""A Bradley–Terry reward model: a scalar head on the last token, trained on preference pairs.

The Bradley–Terry model (Bradley & Terry, 1952; the reward model of RLHF in
Ouyang et al., InstructGPT, arXiv 2203.02155) says a completion y_c is
preferred to y_r for prompt x with probability

    P(y_c ≻ y_r | x) = σ(r(x, y_c) − r(x, y_r)),

so only reward *differences* are identified: adding a constant to r changes
nothing. Fitting r by maximum likelihood on pairs (x, chosen, rejected) is the
loss

    loss = −mean(log σ(r_c − r_r)),

which is log 2 when the model cannot tell the pair apart (r_c = r_r) and goes
to 0 as the margin r_c − r_r grows. Its gradient with respect to r_c is
−σ(r_r − r_c) / B: every step raises the chosen reward and lowers the rejected
one by the same amount, most for the pairs the model gets wrong.

r is minirl's Transformer with `reward_head=True`: a bias-free linear layer
`score` (C -> 1, the name of Hugging Face's LlamaForSequenceClassification
head) applied to the final hidden state of each sequence's last real token.
A sequence is the chat format, right-padded,

    bos + "Q:<prompt>\\nA:" + completion + eos          (`minirl.tasks.encode_chat`)

so the reward is read at the eos: the one position that has seen the whole
answer and knows it ended.

The loss is TRL's `RewardTrainer.compute_loss` (trl/trainer/reward_trainer.py,
TRL 1.16), whose lines are

    loss = -nn.functional.logsigmoid(rewards_chosen - rewards_rejected).mean()
    # with a "margin" column: logsigmoid(rewards_chosen - rewards_rejected - margin)
    if self.args.center_rewards_coefficient is not None:
        loss += self.args.center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)

The optional centring term (Eisenstein et al., arXiv 2312.09244, Eq. 2; TRL
recommends 0.01) pins the free constant so the rewards stay near zero. TRL
logs, per batch, "min_reward", "mean_reward", "max_reward" (over chosen and
rejected together), "accuracy" (the fraction with r_c > r_r) and "margin"
(mean r_c − r_r); `bradley_terry_loss` returns the same names.

A learned reward can be hacked: an RL run that maximises it may raise the
score while the verifier's accuracy stays flat. Rollouts with
`reward="rm:PATH"` (minirl/rl/rollout.py) therefore log both.

Legend: B = pairs (or sequences), T = sequence length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minirl import functional as F
from minirl.checkpoint import CONFIG_NAME, CheckpointError, tensor_names
from minirl.loading import load, resolve
from minirl.rl.preference import PreferenceAlgorithm, PreferenceConfig
from minirl.tasks import encode_chat
from minirl.tensor import Tensor, no_grad

RM_PREFIX = "rm:"
"""`reward="rm:<path>"` scores rollouts with the reward-model checkpoint at <path>."""

@dataclass
class RMConfig(PreferenceConfig):
    """The reward model's knobs; names follow TRL's RewardConfig."""

    center_rewards_coefficient: float | None = None
    """Weight of mean((r_c + r_r)^2), which keeps the rewards centred at 0 (TRL's; None: off)."""

    def _checks(self):
        return super()._checks() + [("center_rewards_coefficient", self.center_rewards_coefficient is None
                                     or self.center_rewards_coefficient >= 0, ">= 0 or None")]


class RewardModel(PreferenceAlgorithm):
    """Bradley-Terry reward model: a scalar head on the last token, trained so chosen outscores rejected."""

    name = "rm"
    reward_head = True

    def loss(self, policy, batch):
        rows, _ = batch
        r = policy.rewards(rows.tokens, rows.attention_mask)  # (2B,): chosen rows, then rejected rows
        B = rows.inputs.shape[0] // 2
        return bradley_terry_loss(r[:B], r[B:], self.config.center_rewards_coefficient)


# --------------------------------------------------------------------- loss and scoring


def bradley_terry_loss(chosen_rewards, rejected_rewards, center_rewards_coefficient: float | None = None,
                       margin=None) -> tuple[Tensor, dict]:
    """−mean(log σ(r_c − r_r − margin)) (+ coefficient · mean((r_c + r_r)²)), and TRL's batch stats: (B,), (B,) -> ()."""
    r_c = chosen_rewards if isinstance(chosen_rewards, Tensor) else Tensor(np.asarray(chosen_rewards))
    r_r = rejected_rewards if isinstance(rejected_rewards, Tensor) else Tensor(np.asarray(rejected_rewards))
    if r_c.ndim != 1 or r_c.shape[0] < 1:
        raise ValueError(f"chosen_rewards must be a non-empty (B,) vector of rewards, got shape {r_c.shape}")
    if r_r.shape != r_c.shape:
        raise ValueError(f"rejected_rewards must have the shape of chosen_rewards {r_c.shape}, got {r_r.shape}")
    logits = r_c - r_r  # (B,)
    if margin is not None:
        margin = np.asarray(margin, dtype=r_c.dtype)
        if margin.shape not in ((), r_c.shape):
            raise ValueError(f"margin must be a scalar or a {r_c.shape} vector, got shape {margin.shape}")
        logits = logits - margin
    loss = -F.mean(F.logsigmoid(logits))
    if center_rewards_coefficient is not None:
        loss = loss + float(center_rewards_coefficient) * F.mean((r_c + r_r) ** 2)
    c, r = r_c.data.astype(np.float64), r_r.data.astype(np.float64)
    both = np.concatenate([c, r])
    stats = {"min_reward": float(both.min()), "mean_reward": float(both.mean()), "max_reward": float(both.max()),
             "accuracy": float((c > r).mean()), "margin": float((c - r).mean())}
    return loss, stats


def chat_sequences(tokenizer, prompts: list[str], completions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """`encode_chat(prompt, completion)` of each pair, right-padded: tokens (B, T) int64 and mask (B, T) bool."""
    if len(prompts) != len(completions):
        raise ValueError(f"prompts and completions must have the same length, got {len(prompts)} and "
                         f"{len(completions)}")
    if not prompts:
        raise ValueError("prompts must be a non-empty list of problems")
    seqs = [p + c for p, c in (encode_chat(tokenizer, x, y) for x, y in zip(prompts, completions))]
    T = max(len(s) for s in seqs)
    tokens = np.full((len(seqs), T), tokenizer.pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), T), dtype=bool)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = s
        mask[i, :len(s)] = True
    return tokens, mask


def score(model, prompts: list[str], completions: list[str], batch_size: int = 256) -> np.ndarray:
    """The reward model's score of each (prompt, completion), read at its eos: (B,) float64, off the tape."""
    if model.tokenizer is None:
        raise ValueError("the reward model has no tokenizer; load it with load_reward_model() or set model.tokenizer")
    if len(prompts) != len(completions):
        raise ValueError(f"prompts and completions must have the same length, got {len(prompts)} and "
                         f"{len(completions)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = np.empty(len(prompts), dtype=np.float64)
    with no_grad():
        for start in range(0, len(prompts), batch_size):
            end = start + batch_size
            tokens, mask = chat_sequences(model.tokenizer, prompts[start:end], completions[start:end])
            out[start:end] = model.rewards(tokens, mask).data
    return out


def pairwise_accuracy(model, prompts: list[str], chosen: list[str], rejected: list[str]) -> float:
    """Fraction of pairs the reward model orders right: score(chosen) > score(rejected) (ties count as wrong)."""
    if not len(prompts) == len(chosen) == len(rejected) or not prompts:
        raise ValueError(f"prompts, chosen and rejected must be non-empty and of the same length, got "
                         f"{len(prompts)}, {len(chosen)} and {len(rejected)}")
    return float((score(model, prompts, chosen) > score(model, prompts, rejected)).mean())


def reward_model_path(reward: str) -> str | None:
    """The checkpoint path of a `reward="rm:<path>"` setting, None for a verifier reward."""
    return reward[len(RM_PREFIX):] if reward.startswith(RM_PREFIX) else None


def check_reward_model(path) -> Path:
    """The checkpoint directory `path`, after checking (headers only) that it holds a reward head."""
    path = resolve(path)  # FileNotFoundError naming the path
    config_file = (path if path.is_dir() else path.parent) / CONFIG_NAME
    try:
        model_cfg = json.loads(config_file.read_text()).get("model", {})
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a minirl checkpoint ({config_file}: {e})") from None
    if not model_cfg.get("reward_head") or "score.weight" not in tensor_names(path):
        raise CheckpointError(f"{path} has no reward head (score.weight): train one with `minirl run rm`")
    return path


_CACHE: dict[str, tuple[tuple, object]] = {}
"""Resolved path -> (the directory's identity when loaded, model): a rollout loads its reward model once."""


def load_reward_model(path):
    """The reward model (a Transformer with `score`) saved at `path`, loaded once per path and version."""
    path = check_reward_model(path).resolve()
    st = path.stat()
    version = (st.st_ino, st.st_mtime_ns)  # a checkpoint saved again at the same path is swapped in anew
    cached = _CACHE.get(str(path))
    if cached is None or cached[0] != version:
        # a LoRA reward model is scored with its adapters folded into the weights (one matmul per layer)
        _CACHE[str(path)] = cached = (version, load(path, merge_lora=True))
    return cached[1]
