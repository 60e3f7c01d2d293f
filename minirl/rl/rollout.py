"""Rollouts: sample G completions per prompt with the KV cache, score them with the verifier or a reward model.

A rollout is the batch every on-policy algorithm learns from: the
`Generation` that `model.generate` returns (prompts left-padded to P, then
completions of N tokens, pad after eos) plus what only a rollout has, the
problems and their rewards. One full forward pass, `completion_logprobs`,
re-scores all completions of a Generation at once with the tape on.
`RolloutConfig` holds the sampling fields that GRPO, PPO, REINFORCE and RLOO
share (flat, as TRL's configs are: `--num-prompts` is one CLI option).

The reward is the task's verifier ("exact": 1 or 0; "partial": its partial
credit) or a learned Bradley–Terry reward model ("rm:<checkpoint path>",
minirl/rl/reward_model.py) that scores each decoded completion as
`bos + "Q:<problem>\\nA:" + completion + eos`, at its eos. The verifier's
exact-match rate is logged as "accuracy" whatever the reward, so a run that
hacks a reward model shows it: "rm_score" rises, "accuracy" does not.

Legend: B = prompts x group size (sequences), P = prompt length, N = completion length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from minirl import functional as F
from minirl.config import check_fields
from minirl.model import Generation
from minirl.tasks import Example, encode_chat, resolve_task
from minirl.tensor import Tensor, no_grad

REWARDS = ("exact", "partial")
"""The verifier rewards; `reward` may also be "rm:<path>", a reward model (minirl/rl/reward_model.py)."""
REWARD_FORMS = "'exact', 'partial' or 'rm:<path to a reward-model checkpoint>'"


class RewardError(ValueError):
    """A reward was NaN or infinite: the run stops rather than learn from it."""


@dataclass
class RolloutConfig:
    """How an on-policy algorithm samples: G completions of each of num_prompts fresh prompts of a task."""

    task: str = "add"
    """Task whose verifier gives the reward."""
    num_prompts: int = 32
    """Prompts per rollout batch (x num_generations = sequences per step)."""
    num_generations: int = 8
    """G: completions sampled per prompt (the group)."""
    temperature: float = 1.0
    """Sampling temperature (log-probs in the loss use the same temperature)."""
    max_new_tokens: int | None = None
    """Completion length limit (default: the task's longest answer + eos)."""
    reward: str = "exact"
    """exact: 1 if the verifier accepts, else 0; partial: the task's partial credit; rm:PATH: a reward model's score."""

    def __post_init__(self):
        resolve_task(self.task)  # raises naming the known tasks
        check_fields(self, self._checks())

    def _checks(self) -> list[tuple[str, bool, str]]:
        """(field, valid?, allowed range) for every field, the first failure raised.

        Subclasses extend the list; a check that tightens a rollout field goes
        before these, so the error states the tightest bound.
        """
        reward_problem = self._reward_problem()
        return [
            ("num_prompts", self.num_prompts >= 1, ">= 1"),
            ("num_generations", self.num_generations >= 1, ">= 1"),
            ("temperature", self.temperature > 0, "> 0"),
            ("max_new_tokens", self.max_new_tokens is None or self.max_new_tokens >= 1, ">= 1 or None"),
            ("reward", reward_problem is None, REWARD_FORMS + (reward_problem or "")),
        ]

    def _reward_problem(self) -> str | None:
        """Why `reward` is not usable (" (PATH has no reward head ...)"), or None."""
        from minirl.rl.reward_model import check_reward_model, reward_model_path

        path = reward_model_path(self.reward)
        if path is None:
            return None if self.reward in REWARDS else ""
        try:
            check_reward_model(path)
        except (OSError, ValueError) as e:  # a missing path, or a checkpoint without a reward head
            return f" ({e})"
        return None


@dataclass
class Rollout:
    """Sampled completions of a batch of prompts, with their rewards."""

    generation: Generation
    """The (B, P + N) sequences, their masks and the sampling log-probs, as `model.generate` returned them."""
    rewards: np.ndarray
    """(B,) rewards: the verifier's, or the reward model's scores."""
    examples: list[Example]
    """The problem behind each sequence (each repeated G times)."""
    completions: list[str]
    """Decoded completions (eos stripped)."""
    group_size: int
    """G: consecutive sequences share a prompt."""
    stats: dict = field(default_factory=dict)
    """Reward mean, accuracy, completion length: logged by the training loop."""
    extra: dict = field(default_factory=dict)
    """Per-algorithm arrays: advantages, old/ref log-probs, values, returns."""

    @property
    def completion_mask(self) -> np.ndarray:
        """(B, N) float32, 1 on completion tokens up to and including eos: what every loss averages over."""
        return self.generation.completion_mask

    def take(self, idx: np.ndarray) -> Rollout:
        """The sub-rollout of rows `idx` (extra arrays with a leading batch axis are sliced too)."""
        extra = {k: (v[idx] if isinstance(v, np.ndarray) and v.shape[:1] == (len(self.rewards),) else v)
                 for k, v in self.extra.items()}
        return Rollout(self.generation.take(idx), self.rewards[idx], [self.examples[i] for i in idx],
                       [self.completions[i] for i in idx], self.group_size, self.stats, extra)


def completion_logits(model, hidden: Tensor, prompt_len: int, temperature: float = 1.0) -> Tensor:
    """Logits that predict each completion token, at the sampling temperature: (B, P+N, C) -> (B, N, V)."""
    logits = model.logits(hidden[:, prompt_len - 1:-1])  # position t predicts token t+1
    return logits if temperature == 1.0 else logits * (1.0 / temperature)


def completion_logprobs(model, gen: Generation, temperature: float = 1.0, logits: Tensor | None = None) -> Tensor:
    """log π(completion token | prefix) for every completion position of `gen`: (B, P+N) -> (B, N), on the tape."""
    if logits is None:
        logits = completion_logits(model, model.hidden_states(gen.tokens, gen.attention_mask), gen.prompt_len,
                                   temperature)
    return F.gather_logprobs(logits, gen.completions)


def frozen_logprobs(model, rollout: Rollout, temperature: float = 1.0) -> np.ndarray:
    """Log-probs (B, N) of the rollout's completions under `model`, off the tape (reference, π_old, evaluation)."""
    with no_grad():
        return completion_logprobs(model, rollout.generation, temperature).data


def sample_rollout(policy, task, rng: np.random.Generator, num_prompts: int, group_size: int,
                   max_new_tokens: int | None = None, temperature: float = 1.0, top_k: int | None = None,
                   reward: str = "exact") -> Rollout:
    """Sample `group_size` completions for each of `num_prompts` fresh prompts of `task` and score them.

    `reward` is "exact", "partial" or "rm:<path>" (see the module docstring).
    """
    task = resolve_task(task)
    tok = policy.tokenizer
    rm = _reward_model(reward, tok)  # before sampling: a bad path fails fast
    examples = [task.sample(rng) for _ in range(num_prompts)]
    examples = [ex for ex in examples for _ in range(group_size)]  # groups of G consecutive rows
    prompts = [encode_chat(tok, ex.prompt)[0] for ex in examples]
    max_new = max_new_tokens or task.max_answer_len + 1  # +1 for eos
    gen = policy.generate(prompts, max_new, rng=rng, temperature=temperature, top_k=top_k)
    completions = gen.texts(tok)
    correct = np.array([task.verify(ex.prompt, c) for ex, c in zip(examples, completions)], dtype=bool)
    if reward == "exact":
        rewards = correct.astype(np.float64)
    elif reward == "partial":
        rewards = np.array([task.reward(ex.prompt, c) for ex, c in zip(examples, completions)], dtype=np.float64)
    else:
        from minirl.rl.reward_model import score
        rewards = score(rm, [ex.prompt for ex in examples], completions)
    check_rewards(rewards)
    ended = (gen.completions == tok.eos_id).any(axis=1)
    stats = {"reward": float(rewards.mean()), "accuracy": float(correct.mean()),
             "completion_len": float(gen.completion_mask.sum(axis=1).mean()), "eos_rate": float(ended.mean())}
    if rm is not None:
        stats["rm_score"] = float(rewards.mean())
    return Rollout(gen, rewards, examples, completions, group_size, stats)


def _reward_model(reward: str, tokenizer):
    """The reward model of `reward="rm:<path>"` (loaded once per path), None for a verifier reward."""
    # imported here, not at the top: the reward model's trainer may build on this module
    from minirl.rl.reward_model import load_reward_model, reward_model_path

    path = reward_model_path(reward)
    if path is None:
        if reward not in REWARDS:
            raise ValueError(f"reward must be {REWARD_FORMS}, got {reward!r}")
        return None
    rm = load_reward_model(path)
    if rm.tokenizer != tokenizer:
        raise ValueError(f"the reward model at {path} has tokenizer {rm.tokenizer!r}, the policy {tokenizer!r}: "
                         "a reward model scores text in its own ids, so both must use the same tokenizer")
    return rm


def check_rewards(rewards: np.ndarray) -> None:
    """Raise RewardError if any reward is NaN or infinite."""
    bad = np.flatnonzero(~np.isfinite(rewards))
    if bad.size:
        raise RewardError(f"reward of sequence {int(bad[0])} is {rewards[bad[0]]} ({bad.size} non-finite "
                          f"of {rewards.size}); rewards must be finite numbers")


def minibatch_indices(n: int, num_minibatches: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A shuffled split of range(n) into `num_minibatches` nearly equal parts."""
    if not 1 <= num_minibatches <= n:
        raise ValueError(f"num_minibatches must be in [1, {n}] (the batch size), got {num_minibatches}")
    return np.array_split(rng.permutation(n), num_minibatches)
