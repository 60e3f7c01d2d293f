"""Preference data from the tasks, in the settings the papers contrast, and what every preference loss shares.

The data (`PreferenceConfig.pairs`):

    offline     a fixed set: chosen = the correct answer, rejected = a plausible wrong one (the
                task's classic mistakes: the carry forgotten, two digits swapped, a letter dropped).
                Nobody sampled either from the policy: off-policy, as UltraFeedback is to Qwen.
    on_policy   G samples per prompt from the initial policy, scored by the verifier (partial
                credit, or a reward model: `reward = "rm:PATH"`), best vs worst; prompts whose
                samples all score the same give no pair. In-distribution data.
    FILE.jsonl  a user's own pairs, in TRL's formats (below).

Derived sets: `unpair` turns pairs into KTO's unpaired examples (chosen -> label
true, rejected -> label false, as TRL's `unpair_preference_dataset`), and
rejection-sampling fine-tuning (paper 1's RFT) keeps the policy's own
verified-correct samples (`rft_examples`).

JSONL, TRL's formats, one object per line:

    {"prompt": "Q:347+85\\nA:", "chosen": "432", "rejected": "422"}       preference
    {"prompt": "Q:347+85\\nA:", "completion": "432", "label": true}      unpaired (KTO)

The prompt is the text the model sees after bos (minirl's chat format), so the
same file trains the exported model in TRL; a bare task prompt ("347+85") is
accepted too. TRL's conversational form ({"prompt": [{"role": "user",
"content": "347+85"}], "chosen": [{"role": "assistant", "content": "432"}], ...})
loads as well. A malformed line is a `DataError` (a ValueError) naming the file, the line
number and the field.

What every loss shares: a batch of (prompt, completion) rows tokenised as
`bos + "Q:347+85\\nA:" + completion + eos`, right-padded, and the summed
log-probability of each completion (`sequence_logps`, TRL's "logps"): one
forward pass over chosen and rejected rows stacked (TRL's concatenated
forward). Reference log-probs are computed once per data set with the frozen
initial model (TRL's precompute_ref_log_probs).

Legend: B = rows (pairs: 2 x pairs, chosen first), T = tokens per row - 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minirl import functional as F
from minirl.config import check_fields
from minirl.tasks import encode_chat, pad_right, resolve_task
from minirl.tasks.formats import CHAT_PREFIX, CHAT_SUFFIX
from minirl.tensor import Tensor, no_grad

PAIR_SOURCES = ("offline", "on_policy")
"""Built-in pair sources; anything else is the path of a JSONL file."""


class DataError(ValueError):
    """The preference data cannot be built or read (no pairs, a malformed file): the user's to fix."""


@dataclass(frozen=True)
class Pair:
    """One preference: the same prompt answered twice, `chosen` preferred to `rejected`."""

    prompt: str
    """The task prompt, e.g. "347+85" (shown to the model as "Q:347+85\\nA:")."""
    chosen: str
    """The preferred completion (eos not included)."""
    rejected: str
    """The dispreferred completion."""


@dataclass(frozen=True)
class Unpaired:
    """One completion with a thumbs-up or thumbs-down (KTO's data)."""

    prompt: str
    """The task prompt."""
    completion: str
    """The completion (eos not included)."""
    label: bool
    """True: desirable; False: undesirable."""


@dataclass
class PreferenceConfig:
    """Where the pairs come from and how many a step sees; the fields every preference algorithm shares."""

    task: str = "add"
    """Task whose problems make the pairs (and whose held-out accuracy is the headline)."""
    pairs: str = "offline"
    """offline (correct vs a plausible mistake), on_policy (the initial policy's best vs worst sample), or a JSONL file."""
    num_prompts: int = 1024
    """Prompts the data set is built from (offline: one pair each; on_policy: at most one pair each)."""
    num_generations: int = 8
    """on_policy: samples per prompt, ranked by `reward`."""
    temperature: float = 1.0
    """on_policy: sampling temperature."""
    reward: str = "partial"
    """on_policy: how samples are ranked: exact, partial (the task's partial credit), or rm:PATH (a reward model)."""
    batch_size: int = 64
    """Pairs (or examples) per training step."""
    regenerate_every: int = 0
    """on_policy: rebuild the pairs from the current policy every this many steps (iterative DPO); 0: never."""

    def __post_init__(self):
        resolve_task(self.task)  # raises naming the known tasks
        check_fields(self, self._checks())
        if self.pairs not in PAIR_SOURCES:
            load_jsonl(self.pairs)  # a malformed line fails now, naming its number and field, not mid-run

    def _checks(self) -> list[tuple[str, bool, str]]:
        file_ok = self.pairs in PAIR_SOURCES or (self.pairs.endswith(".jsonl") and Path(self.pairs).is_file())
        reward_ok = self.reward in ("exact", "partial") or (self.reward.startswith("rm:")
                                                             and _is_reward_model(self.reward[3:]))
        return [
            ("pairs", file_ok, "offline, on_policy, or an existing .jsonl file"),
            ("reward", reward_ok, "exact, partial, or rm:PATH with PATH a reward-model checkpoint"),
            ("num_prompts", self.num_prompts >= 1, ">= 1"),
            ("num_generations", self.num_generations >= 2, ">= 2 (best vs worst needs two samples)"),
            ("temperature", self.temperature > 0, "> 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("regenerate_every", self.regenerate_every >= 0 and (self.regenerate_every == 0
                                                                  or self.pairs == "on_policy"),
             ">= 0, and > 0 only with pairs = on_policy"),
        ]


def _is_reward_model(path: str) -> bool:
    from minirl.rl.reward_model import check_reward_model  # here: reward_model.py builds on this module

    try:
        check_reward_model(path)
    except (OSError, ValueError):
        return False
    return True


# ------------------------------------------------------------------------- building pairs
def offline_pairs(task, rng: np.random.Generator, n: int) -> list[Pair]:
    """`n` pairs: a fresh problem, its answer, and one of the task's plausible mistakes."""
    task = resolve_task(task)
    return [Pair(*task.preference_pair(rng)) for _ in range(n)]


def on_policy_samples(policy, task, rng: np.random.Generator, num_prompts: int, num_generations: int,
                      temperature: float = 1.0, reward: str = "partial", batch_prompts: int = 128):
    """G scored samples of each of `num_prompts` fresh prompts: (prompts, completions, rewards, correct), grouped."""
    from minirl.rl.rollout import sample_rollout

    prompts, completions, rewards, correct = [], [], [], []
    task = resolve_task(task)
    for start in range(0, num_prompts, batch_prompts):
        k = min(batch_prompts, num_prompts - start)
        rollout = sample_rollout(policy, task, rng, k, num_generations, temperature=temperature, reward=reward)
        prompts += [ex.prompt for ex in rollout.examples]
        completions += rollout.completions
        rewards.append(rollout.rewards)
        correct += [task.verify(ex.prompt, c) for ex, c in zip(rollout.examples, rollout.completions)]
    return prompts, completions, np.concatenate(rewards), np.array(correct)


def best_vs_worst(prompts: list[str], completions: list[str], rewards: np.ndarray, group: int) -> list[Pair]:
    """One pair per group of `group` samples: the highest against the lowest reward; ties give none.

    Among equal rewards the first sample wins, so the choice is deterministic.
    """
    out = []
    for g in range(len(prompts) // group):
        r = rewards[g * group:(g + 1) * group]
        best, worst = int(np.argmax(r)), int(np.argmin(r))
        if r[best] > r[worst]:
            out.append(Pair(prompts[g * group], completions[g * group + best], completions[g * group + worst]))
    return out


def on_policy_pairs(policy, task, rng: np.random.Generator, num_prompts: int, num_generations: int,
                    temperature: float = 1.0, reward: str = "partial") -> list[Pair]:
    """Best vs worst of `num_generations` samples of `policy` per prompt (fewer pairs than prompts: ties drop)."""
    prompts, completions, rewards, _ = on_policy_samples(policy, task, rng, num_prompts, num_generations,
                                                         temperature, reward)
    return best_vs_worst(prompts, completions, rewards, num_generations)


def verifier_pairs(policy, task, prompts: list[str], rng: np.random.Generator, num_generations: int,
                   temperature: float = 1.0, reward: str = "partial", chunk: int = 512) -> list[Pair]:
    """Best vs worst, by the verifier (`reward`: exact or partial credit), of `num_generations` samples of `policy`
    for each given prompt."""
    if reward not in ("exact", "partial"):
        raise ValueError(f"reward must be 'exact' or 'partial' (the verifier's), got {reward!r}")
    task = resolve_task(task)
    tok = policy.tokenizer
    rows = [p for p in prompts for _ in range(num_generations)]
    completions = []
    for s in range(0, len(rows), chunk):
        ids = [encode_chat(tok, p)[0] for p in rows[s:s + chunk]]
        completions += policy.generate(ids, task.max_answer_len + 1, rng=rng, temperature=temperature).texts(tok)
    score = task.reward if reward == "partial" else (lambda p, c: float(task.verify(p, c)))
    rewards = np.array([score(p, c) for p, c in zip(rows, completions)])
    return best_vs_worst(rows, completions, rewards, num_generations)


def rft_examples(policy, task, rng: np.random.Generator, num_prompts: int, num_generations: int,
                 temperature: float = 1.0) -> list[Unpaired]:
    """Rejection sampling: the policy's own samples that the verifier accepts, at most one per prompt."""
    prompts, completions, _, correct = on_policy_samples(policy, task, rng, num_prompts, num_generations,
                                                         temperature, "exact")
    out, seen = [], set()
    for i, (p, c) in enumerate(zip(prompts, completions)):
        group = i // num_generations
        if correct[i] and group not in seen:
            seen.add(group)
            out.append(Unpaired(p, c, True))
    return out


def unpair(pairs: list[Pair]) -> list[Unpaired]:
    """Each pair as two unpaired examples, chosen desirable and rejected undesirable (TRL's unpairing)."""
    return [ex for p in pairs for ex in (Unpaired(p.prompt, p.chosen, True), Unpaired(p.prompt, p.rejected, False))]


def pair_stats(pairs: list[Pair], task) -> dict:
    """How good the data is by the verifier: chosen/rejected exact-match rates, and the count."""
    task = resolve_task(task)

    def rate(texts):
        ok = [_verify(task, p.prompt, t) for p, t in zip(pairs, texts)]
        return float(np.mean(ok)) if ok else float("nan")

    return {"pairs": len(pairs), "chosen_correct": rate([p.chosen for p in pairs]),
            "rejected_correct": rate([p.rejected for p in pairs])}


def _verify(task, prompt: str, completion: str) -> bool:
    """The verifier, False for a prompt that is not the task's (a user's own data)."""
    try:
        return task.verify(prompt, completion)
    except ValueError:
        return False


# ------------------------------------------------------------------------- JSONL in TRL's formats
def save_jsonl(path, rows: list[Pair] | list[Unpaired]) -> Path:
    """Write pairs ({"prompt","chosen","rejected"}) or unpaired examples ({"prompt","completion","label"})."""
    path = Path(path)
    lines = []
    for r in rows:
        prompt = CHAT_PREFIX + r.prompt + CHAT_SUFFIX
        obj = ({"prompt": prompt, "chosen": r.chosen, "rejected": r.rejected} if isinstance(r, Pair)
               else {"prompt": prompt, "completion": r.completion, "label": bool(r.label)})
        lines.append(json.dumps(obj, ensure_ascii=False))
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def load_jsonl(path) -> list[Pair] | list[Unpaired]:
    """Pairs or unpaired examples from a JSONL file in TRL's standard or conversational format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no preference data at {path}")
    rows, kind = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        this = "pair" if "chosen" in obj or "rejected" in obj else "unpaired" if "completion" in obj else None
        if this is None:
            raise DataError(f"{where}: expected the fields prompt, chosen, rejected (preference) or prompt, "
                             f"completion, label (unpaired); got {', '.join(obj) or 'none'}")
        if kind is not None and this != kind:
            raise DataError(f"{where}: a {this} line in a file of {kind} lines; use one format per file")
        kind = this
        fields = ("prompt", "chosen", "rejected") if this == "pair" else ("prompt", "completion", "label")
        missing = [f for f in fields if f not in obj]
        if missing:
            raise DataError(f"{where}: missing field {missing[0]!r} (a {this} line needs {', '.join(fields)})")
        prompt = _prompt_text(obj["prompt"], f"{where}, field 'prompt'")
        if this == "pair":
            rows.append(Pair(prompt, _completion_text(obj["chosen"], f"{where}, field 'chosen'"),
                             _completion_text(obj["rejected"], f"{where}, field 'rejected'")))
        else:
            if not isinstance(obj["label"], bool):
                raise DataError(f"{where}, field 'label': expected true or false, got {obj['label']!r}")
            rows.append(Unpaired(prompt, _completion_text(obj["completion"], f"{where}, field 'completion'"),
                                 obj["label"]))
    if not rows:
        raise DataError(f"{path} holds no examples")
    return rows


def _message(value, role: str, where: str) -> str:
    """The content of a one-message conversational field ([{"role": ..., "content": ...}])."""
    if (not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict)
            or value[0].get("role") != role or not isinstance(value[0].get("content"), str)):
        raise DataError(f"{where}: expected a string or [{{\"role\": \"{role}\", \"content\": \"...\"}}], "
                         f"got {json.dumps(value)[:80]}")
    return value[0]["content"]


def _prompt_text(value, where: str) -> str:
    text = value if isinstance(value, str) else _message(value, "user", where)
    if text.startswith(CHAT_PREFIX) and text.endswith(CHAT_SUFFIX):
        text = text[len(CHAT_PREFIX):-len(CHAT_SUFFIX)]
    if not text:
        raise DataError(f"{where}: empty prompt")
    return text


def _completion_text(value, where: str) -> str:
    return value if isinstance(value, str) else _message(value, "assistant", where)


# ------------------------------------------------------------------------- batches and log-probs
@dataclass
class SequenceBatch:
    """(prompt, completion) rows as next-token training arrays, as `sft_batch` builds them."""

    inputs: np.ndarray
    """(B, T) int64: bos + chat prompt + completion + eos, right-padded, without the last token."""
    targets: np.ndarray
    """(B, T) int64: the same rows shifted by one (the token each position predicts)."""
    mask: np.ndarray
    """(B, T) float32: 1 where the target is a completion token or the eos."""

    @property
    def lengths(self) -> np.ndarray:
        """(B,) completion tokens per row, eos included."""
        return self.mask.sum(axis=1)

    @property
    def tokens(self) -> np.ndarray:
        """(B, T + 1) the whole rows (inputs then the last target)."""
        return np.concatenate([self.inputs, self.targets[:, -1:]], axis=1)

    @property
    def attention_mask(self) -> np.ndarray:
        """(B, T + 1) bool: True on the real tokens of each row (bos up to eos)."""
        ends = (self.mask * np.arange(1, self.mask.shape[1] + 1)).max(axis=1)  # index of each row's eos in tokens
        return np.arange(self.tokens.shape[1])[None, :] <= ends[:, None]


def sequence_batch(tok, prompts: list[str], completions: list[str]) -> SequenceBatch:
    """Tokenise (prompt, completion) rows; a character the tokenizer lacks is a ValueError naming the row."""
    seqs, starts = [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        try:
            prompt_ids, completion_ids = encode_chat(tok, p, c)
        except ValueError as e:
            raise DataError(f"example {i} (prompt {p!r}, completion {c!r}): {e}") from None
        seqs.append(prompt_ids + completion_ids)
        starts.append(len(prompt_ids))
    full = pad_right(seqs, tok.pad_id)  # (B, T+1)
    t = np.arange(full.shape[1] - 1)[None, :] + 1  # targets[:, t] = full[:, t + 1]
    mask = (t >= np.array(starts)[:, None]) & (t < np.array([len(s) for s in seqs])[:, None])
    return SequenceBatch(np.ascontiguousarray(full[:, :-1]), np.ascontiguousarray(full[:, 1:]), mask.astype(np.float32))


def pair_batch(tok, pairs: list[Pair]) -> SequenceBatch:
    """Chosen rows then rejected rows, (2B, T): one forward pass scores both (TRL's concatenated forward)."""
    return sequence_batch(tok, [p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs])


def sequence_logps(model, batch: SequenceBatch) -> Tensor:
    """Summed log-prob of each row's completion (eos included): (B, T) -> (B,), on the tape."""
    logp = F.gather_logprobs(model(batch.inputs), batch.targets)  # (B, T)
    return (logp * batch.mask).sum(axis=1)


def frozen_sequence_logps(model, batch: SequenceBatch, chunk: int = 512) -> np.ndarray:
    """`sequence_logps` off the tape, in chunks of rows (reference log-probs of a whole data set)."""
    out = []
    with no_grad():
        for s in range(0, batch.inputs.shape[0], chunk):
            part = SequenceBatch(batch.inputs[s:s + chunk], batch.targets[s:s + chunk], batch.mask[s:s + chunk])
            out.append(sequence_logps(model, part).data)
    return np.concatenate(out) if out else np.zeros(0, np.float32)


# ------------------------------------------------------------------------- loss inputs and stats
def as_logps(name: str, x) -> Tensor:
    """Per-sequence log-probs as a 1-D floating Tensor (a Tensor passes through, on the tape): (B,)."""
    if not isinstance(x, Tensor):
        x = np.asarray(x)
        x = Tensor(x if x.dtype.kind == "f" else x.astype(np.float64))
    if x.ndim != 1 or x.dtype.kind != "f":
        raise ValueError(f"{name} must be a 1-D float array of per-sequence log-probs (B,), "
                         f"got shape {x.shape} and dtype {x.dtype}")
    return x


def as_constant(name: str, x, like: Tensor, like_name: str) -> np.ndarray:
    """A term the loss does not differentiate (a reference log-prob, a length) as an ndarray shaped like `like`."""
    x = np.asarray(x.data if isinstance(x, Tensor) else x, dtype=like.dtype)
    if x.shape != like.shape:
        raise ValueError(f"{name} has shape {x.shape}, expected {like.shape} (the shape of {like_name})")
    return x


def token_counts(name: str, n, like: Tensor) -> np.ndarray:
    """Completion lengths (B,) as IPO divides by them: clamped at 1, as TRL's mask.sum(dim=1).clamp(min=1.0)."""
    n = as_constant(name, n, like, "chosen_logps")
    if np.any(n < 0):
        raise ValueError(f"{name} must be token counts >= 0, got a minimum of {n.min()}")
    return np.maximum(n, 1.0)


def pair_shapes(chosen_logps: Tensor, rejected_logps: Tensor) -> None:
    """Chosen and rejected log-probs of a paired batch: the same shape (B,), B >= 1."""
    if chosen_logps.shape != rejected_logps.shape:
        raise ValueError(f"chosen_logps and rejected_logps must have the same shape (B,), "
                         f"got {chosen_logps.shape} and {rejected_logps.shape}")
    if chosen_logps.shape[0] == 0:
        raise ValueError("chosen_logps is empty: a preference batch needs at least one pair")


def reward_stats(chosen_rewards: np.ndarray, rejected_rewards: np.ndarray, chosen_logps: np.ndarray,
               rejected_logps: np.ndarray) -> dict[str, float]:
    """The reward statistics TRL's DPO, CPO and ORPO trainers log, each a batch mean: (B,) arrays -> floats."""
    return {
        "rewards/chosen": float(chosen_rewards.mean()),
        "rewards/rejected": float(rejected_rewards.mean()),
        "rewards/accuracies": float((chosen_rewards > rejected_rewards).mean()),
        "rewards/margins": float((chosen_rewards - rejected_rewards).mean()),
        "logps/chosen": float(chosen_logps.mean()),
        "logps/rejected": float(rejected_logps.mean()),
    }


# ------------------------------------------------------------------------- the data set of a run
class PreferenceData:
    """The data a preference algorithm trains on: built at its first step, rebuilt every `regenerate_every`.

    `kind` is what the loss needs: "pairs" (DPO, IPO, SimPO, ORPO, the reward
    model), "unpaired" (KTO: each pair's chosen desirable, rejected
    undesirable), or "rft" (rejection sampling: the policy's own verified
    samples with pairs = on_policy; the correct answers with pairs = offline,
    which is plain SFT on the task). With a `ref_model`, each data set's
    reference log-probs are computed once, as it is built. Each step samples
    `batch_size` rows without replacement. The rows are part of the
    algorithm's state, so a resumed run trains on the very same data.
    """

    def __init__(self, config: PreferenceConfig, kind: str, ref_model=None):
        if kind not in ("pairs", "unpaired", "rft"):
            raise ValueError(f"kind must be pairs, unpaired or rft, got {kind!r}")
        self.config, self.kind, self.ref_model = config, kind, ref_model
        self.rows: list | None = None
        self.ref_logps: np.ndarray | None = None
        self.built_at = -1
        self.stats: dict = {}

    def ensure(self, policy, rng: np.random.Generator, step: int) -> None:
        """Build the data at the first step, and rebuild it from `policy` when `regenerate_every` says so."""
        k = self.config.regenerate_every
        if self.rows is None:
            self._set(self._build(policy, rng), policy.tokenizer, step)
        elif k and step % k == 0 and step != self.built_at:
            rows = self._build(policy, rng)
            if rows:
                self._set(rows, policy.tokenizer, step)
            else:  # every prompt's samples scored the same (all right, say): keep learning from the last data
                self.stats["empty_rebuilds"] = self.stats.get("empty_rebuilds", 0) + 1

    def _build(self, policy, rng) -> list:
        c = self.config
        if c.pairs == "offline":
            pairs = offline_pairs(c.task, rng, c.num_prompts)
        elif c.pairs == "on_policy" and self.kind == "rft":
            return rft_examples(policy, c.task, rng, c.num_prompts, c.num_generations, c.temperature)
        elif c.pairs == "on_policy":
            pairs = on_policy_pairs(policy, c.task, rng, c.num_prompts, c.num_generations, c.temperature, c.reward)
        else:
            pairs = load_jsonl(c.pairs)
        if pairs and isinstance(pairs[0], Unpaired):
            if self.kind == "pairs":
                raise DataError(f"{c.pairs} holds unpaired examples (prompt, completion, label); this algorithm "
                                 "needs preference pairs (prompt, chosen, rejected)")
            return [ex for ex in pairs if ex.label] if self.kind == "rft" else pairs
        if self.kind == "rft":
            return [Unpaired(p.prompt, p.chosen, True) for p in pairs]
        return unpair(pairs) if self.kind == "unpaired" else pairs

    def _set(self, rows: list, tok, step: int) -> None:
        if not rows:
            raise DataError(f"the {self.config.pairs} data of task {self.config.task!r} gave no examples "
                             f"(on_policy: every prompt's {self.config.num_generations} samples scored the same); "
                             "raise num_prompts or num_generations, or use pairs = offline")
        self.rows, self.built_at = rows, step
        self.ref_logps = None
        if self.ref_model is not None:
            batch = pair_batch(tok, rows) if self.kind == "pairs" else self.batch_of(tok, rows)
            self.ref_logps = frozen_sequence_logps(self.ref_model, batch)
        self.stats = self.describe()

    def batch_of(self, tok, rows: list) -> SequenceBatch:
        """The rows as a SequenceBatch (pairs: chosen rows then rejected rows)."""
        if rows and isinstance(rows[0], Pair):
            return pair_batch(tok, rows)
        return sequence_batch(tok, [r.prompt for r in rows], [r.completion for r in rows])

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """Indices of this step's rows: batch_size of them without replacement (all rows when fewer)."""
        n = len(self.rows)
        return rng.choice(n, size=min(self.config.batch_size, n), replace=False)

    def ref_of(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray] | np.ndarray | None:
        """The reference log-probs of rows `idx`: (chosen, rejected) for pairs, else (B,)."""
        if self.ref_logps is None:
            return None
        if self.kind == "pairs":
            n = len(self.rows)
            return self.ref_logps[idx], self.ref_logps[n + idx]
        return self.ref_logps[idx]

    def describe(self) -> dict:
        """What the data is: source, size, and how often the verifier accepts chosen and rejected."""
        c, rows = self.config, self.rows or []
        out = {"source": c.pairs, "task": c.task, "kind": self.kind, "built_at_step": self.built_at}
        if rows and isinstance(rows[0], Pair):
            return out | pair_stats(rows, c.task)
        task = resolve_task(c.task)
        good = [r for r in rows if r.label]
        ok = [_verify(task, r.prompt, r.completion) for r in rows]
        return out | {"examples": len(rows), "desirable": len(good),
                      "desirable_correct": float(np.mean([o for o, r in zip(ok, rows) if r.label])) if good else float("nan"),
                      "undesirable_correct": float(np.mean([o for o, r in zip(ok, rows) if not r.label]))
                      if len(good) < len(rows) else float("nan")}

    def state_dict(self) -> dict:
        """The rows (and when they were built): what a resumed run needs to train on the same data."""
        if self.rows is None:
            return {}
        if isinstance(self.rows[0], Pair):
            rows = [[r.prompt, r.chosen, r.rejected] for r in self.rows]
        else:
            rows = [[r.prompt, r.completion, bool(r.label)] for r in self.rows]
        return {"rows": rows, "paired": isinstance(self.rows[0], Pair), "built_at": self.built_at}

    def load_state_dict(self, state: dict, tok) -> None:
        if not state:
            return
        cls = Pair if state["paired"] else Unpaired
        self._set([cls(*r) for r in state["rows"]], tok, state["built_at"])


class PreferenceAlgorithm:
    """What DPO, KTO, SimPO, ORPO, the reward model and RFT share: their data, its batches, its state.

    A subclass sets `kind` (what PreferenceData builds), `uses_ref` (reference
    log-probs are precomputed with the frozen initial model) and `loss`. A
    batch is `(rows, ref)`: the SequenceBatch of the step's rows (pairs:
    chosen rows then rejected rows) and their reference log-probs (None
    without a reference).
    """

    name = "preference"
    kind = "pairs"
    uses_ref = False

    def __init__(self, config: PreferenceConfig, ref_model=None):
        if self.uses_ref and ref_model is None:
            raise ValueError(f"{type(self).__name__} needs the frozen reference model (ref_model)")
        self.config, self.ref_model = config, ref_model
        self.data = PreferenceData(config, self.kind, ref_model if self.uses_ref else None)
        self._tokenizer = getattr(ref_model, "tokenizer", None)

    def batch(self, policy, rng: np.random.Generator, step: int):
        self.data.ensure(policy, rng, step)
        idx = self.data.sample(rng)
        return self.data.batch_of(policy.tokenizer, [self.data.rows[i] for i in idx]), self.data.ref_of(idx)

    def loss(self, policy, batch):
        raise NotImplementedError

    def state_dict(self) -> dict:
        return self.data.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self._tokenizer is None:
            raise ValueError(f"resuming {type(self).__name__} needs the reference model (for its tokenizer)")
        self.data.load_state_dict(state, self._tokenizer)


def split_pairs(logps: Tensor, rows: SequenceBatch) -> tuple[Tensor, Tensor, np.ndarray, np.ndarray]:
    """(2B,) log-probs of chosen-then-rejected rows -> chosen (B,), rejected (B,) and their lengths."""
    B = rows.inputs.shape[0] // 2
    lengths = rows.lengths
    return logps[:B], logps[B:], lengths[:B], lengths[B:]
