"""Whole jobs: resolve a config, make a run directory, train, evaluate, save, and write report.json.

A job is named by its command: `pretrain`, or an algorithm of `minirl run`
(sft, grpo, ppo, reinforce, rloo, ...). Its configuration is a set of config
dataclasses, one per section (`[grpo]`, `[train]`, `[optimizer]`; pretraining
also `[model]` and `[pretrain]`), resolved in layers, each overriding the last:

    1. the dataclasses' own defaults (the reference libraries' values: TRL, CleanRL, PyTorch)
    2. the algorithm's preset, `minirl/presets/<name>.toml` (the tuned toy recipe, with its reasons)
    3. a user's TOML file (`--config FILE`; a run directory's config.toml reruns that run)
    4. single settings (`--lr 1e-4` on the CLI, `lr=1e-4` from Python), routed to their section by name

so `minirl run grpo` and `minirl.runs.rl("grpo")` train exactly the same
thing. Every run writes its fully resolved config as `config.toml`.

The CLI parses options and calls these; tests and tutorials call them directly:

    from minirl import runs
    report = runs.rl("grpo", seed=1, lr=1e-4)        # = minirl run grpo --seed 1 --lr 1e-4
    report = runs.resume("runs/grpo-20261129-120000") # continue an interrupted run
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np

from minirl.checkpoint import (CheckpointError, _dumps, atomic_write_json, atomic_write_text, iter_tensors,
                               load_checkpoint, save_checkpoint)
from minirl.config import check_keys, dumps_toml, from_values, load_toml, to_values
from minirl.evaluate import benchmark
from minirl.loading import load
from minirl.lora import LoraConfig, count_trainable, inject_lora, merged_state_dict, trainable_parameters
from minirl.model import Transformer, TransformerConfig
from minirl.optim import OptimizerConfig, make_optimizer
from minirl.precision import get_policy
from minirl.rl import algorithms
from minirl.rl.preference import PreferenceData
from minirl.rl.sft import Pretrain, PretrainConfig
from minirl.subnetwork import summary as subnetwork_summary
from minirl.tasks import TASKS, CharTokenizer
from minirl.train import TrainConfig, TrainState, train

BENCH_N = 200
"""Held-out problems per task in every benchmark (the first 200 of each task's fixed held-out set)."""
TRAINED_N = 1000
"""Held-out problems of a fine-tuning run's trained task(s): its gain is the headline, and on 200 problems the
binomial noise alone is about 3.5 points (the first 1000 include the same first 200)."""
PRESETS_DIR = Path(__file__).parent / "presets"
IGNORED_IN_ANALYSIS = ("value_head.weight", "score.weight")
"""Heads a run adds to the model: not part of the update whose sparsity the papers measure."""


# ------------------------------------------------------------------------- run directories
class RunDir:
    """A run's directory.

    Layout::

        run/config.toml            the fully resolved config (`--config run/config.toml` reruns it)
        run/metrics.jsonl          one JSON object per step, appended and flushed
        run/<name>.json            other documents, e.g. report.json (atomic)
        run/checkpoints/<name>/    model.safetensors + config.json; names: last, final
        run/checkpoints/last/      also optimizer.safetensors + trainer_state.json: what --resume needs
    """

    def __init__(self, path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def metrics_path(self) -> Path:
        """The metrics.jsonl file."""
        return self.path / "metrics.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        """The directory holding checkpoints."""
        return self.path / "checkpoints"

    def write_json(self, name: str, obj) -> Path:
        """Atomically write ``run/<name>`` (".json" added if missing)."""
        file = self.path / (name if name.endswith(".json") else name + ".json")
        atomic_write_json(file, obj)
        return file

    def read_json(self, name: str):
        """Read ``run/<name>`` (".json" added if missing)."""
        return json.loads((self.path / (name if name.endswith(".json") else name + ".json")).read_text())

    def write_config(self, text: str) -> Path:
        """Atomically write the resolved config as ``run/config.toml``."""
        atomic_write_text(self.path / "config.toml", text)
        return self.path / "config.toml"

    def log(self, metrics: dict | None = None, **more) -> None:
        """Append one JSON line to metrics.jsonl and flush it."""
        line = (_dumps({**(metrics or {}), **more}) + "\n").encode("utf-8")
        with open(self.metrics_path, "ab+") as f:
            if f.tell() > 0:  # a crash mid-append left a torn line: end it so this record stays whole
                f.seek(-1, 2)
                if f.read(1) != b"\n":
                    line = b"\n" + line
            f.write(line)
            f.flush()

    def read_metrics(self) -> list[dict]:
        """Every logged record; torn lines (a crash mid-append) are skipped with a warning."""
        if not self.metrics_path.exists():
            return []
        out, torn = [], 0
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                torn += 1
        if torn:
            warnings.warn(f"{self.metrics_path}: skipped {torn} torn line(s)")
        return out

    def truncate_metrics(self, steps: int) -> list[dict]:
        """Keep the records of the first `steps` steps (those a resumed run does not redo); return them."""
        kept = [m for m in self.read_metrics() if m.get("step", 0) < steps]
        atomic_write_text(self.metrics_path, "".join(_dumps(m) + "\n" for m in kept))
        return kept

    def checkpoint_path(self, name) -> Path:
        """``checkpoints/<name>``; an int step becomes ``step_000123``."""
        return self.checkpoints_dir / (f"step_{name:06d}" if isinstance(name, int) else name)

    def save(self, name, tensors: dict[str, np.ndarray], config: dict, dtype="bf16", extra=None) -> Path:
        """Atomically save a checkpoint under ``checkpoints/<name>``."""
        return save_checkpoint(self.checkpoint_path(name), tensors, config, dtype, extra)

    def save_model(self, name, model, precision="bf16", extra=None) -> Path:
        """Save a model in the storage dtype of `precision` (a policy name), which holds its weights exactly.

        A LoRA model (`inject_lora`) saves only what training changes, its adapters and heads, and names its
        base model and LoRA config in config.json; `minirl.load` rebuilds it from the base.
        """
        if hasattr(model, "checkpoint_config"):
            config = model.checkpoint_config()
        else:
            config = getattr(model, "config", None)
            config = config.to_dict() if hasattr(config, "to_dict") else {}
        tensors = model.state_dict()
        lora = getattr(model, "lora_config", None)
        if lora is not None:
            tensors = {k: v.data.copy() for k, v in trainable_parameters(model)}
            config = {**config, "lora": to_values(lora), "base": getattr(model, "lora_base", None)}
        return self.save(name, tensors, config, get_policy(precision).dtype_name, extra)

    def save_state(self, name, model, precision, state: TrainState | None) -> Path:
        """Save the weights and, unless `state` is None, what resuming needs (atomically, together)."""
        extra = None
        if state is not None:
            opt = dict(state.optimizer)
            extra = {"optimizer.safetensors": opt.pop("tensors"),
                     "trainer_state.json": {"step": state.step, "optimizer": opt, "rng": state.rng,
                                            "algorithm": state.algorithm, "wall_seconds": state.wall_seconds,
                                            "model_rng": state.model_rng}}
        return self.save_model(name, model, precision, extra)

    def load_state(self, name, model) -> TrainState | None:
        """Load ``checkpoints/<name>`` into `model` and return its TrainState; None when there is no such checkpoint."""
        path = self.checkpoint_path(name)
        if not path.exists():
            path = path.parent / f".{path.name}.old"  # a save that crashed mid-swap left the previous one here
            if not path.is_dir():
                return None
        state_file = path / "trainer_state.json"
        if not state_file.is_file():
            raise CheckpointError(f"{path} holds weights but no trainer_state.json (it was saved after a failed "
                                  "update), so the run cannot be resumed from it; start a new run with "
                                  f"--config {self.path / 'config.toml'}")
        tensors, _ = load_checkpoint(path)
        # a LoRA model's checkpoint holds its adapters and heads only: the frozen base comes from the base model
        model.load_state_dict(tensors, strict=getattr(model, "lora_config", None) is None)
        doc = json.loads(state_file.read_text())
        optimizer = {**doc["optimizer"], "tensors": dict(iter_tensors(path / "optimizer.safetensors"))}
        return TrainState(doc["step"], optimizer, doc["rng"], doc.get("algorithm", {}), doc.get("wall_seconds", 0.0),
                          doc.get("model_rng", {}))

    def load(self, name) -> tuple[dict[str, np.ndarray], dict]:
        """Load ``checkpoints/<name>``."""
        return load_checkpoint(self.checkpoint_path(name))

    def checkpoints(self) -> list[str]:
        """Names of the saved checkpoints, sorted (step_* in step order)."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(p.name for p in self.checkpoints_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def new_run_dir(out: str | Path | None, kind: str) -> RunDir:
    """`out`, or runs/<kind>-<timestamp>; refuses to mix into a non-empty run directory."""
    path = Path(out) if out else Path("runs") / f"{kind}-{datetime.now():%Y%m%d-%H%M%S}"
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"run directory {path} already exists and is not empty; choose another --out "
                              f"(or continue it with --resume {path})")
    path.mkdir(parents=True, exist_ok=True)
    return RunDir(path)


# ------------------------------------------------------------------------- configs
def sections(name: str) -> dict[str, type]:
    """The config sections of job `name` ("pretrain" or an algorithm), section name -> dataclass."""
    if name == "pretrain":
        return {"model": TransformerConfig, "pretrain": PretrainConfig, "train": TrainConfig,
                "optimizer": OptimizerConfig}
    table = algorithms()
    if name not in table:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(table)}")
    return {name: table[name][0], "lora": LoraConfig, "train": TrainConfig, "optimizer": OptimizerConfig}


def command_of(name: str) -> str:
    return "pretrain" if name == "pretrain" else f"run {name}"


NAMED_CONFIGS = ("paper",)
"""`--config NAME` for these reads minirl/presets/NAME/<job>.toml: a variant of every algorithm's preset."""


def named_config(name: str, config) -> Path:
    """The TOML file `--config` names: a path, or a named variant of job `name`'s preset (`--config paper`)."""
    if str(config) in NAMED_CONFIGS and not Path(config).exists():
        path = PRESETS_DIR / str(config) / f"{name}.toml"
        if not path.is_file():
            have = sorted(p.stem for p in (PRESETS_DIR / str(config)).glob("*.toml"))
            raise ValueError(f"--config {config}: there is no {config} preset for `minirl {command_of(name)}` "
                             f"(there is one for: {', '.join(have)})")
        return path
    return Path(config)


def preset(name: str) -> dict:
    """The preset of job `name` as a dict (minirl/presets/<name>.toml)."""
    return load_toml(PRESETS_DIR / f"{name}.toml")


@dataclasses.dataclass
class RunSpec:
    """A job's fully resolved configuration."""

    name: str
    """The job: "pretrain" or an algorithm name."""
    init: str | None
    """The model to start from (a shipped name or a checkpoint path); None for pretraining."""
    configs: dict
    """Section name -> config dataclass instance."""

    @property
    def command(self) -> str:
        return command_of(self.name)

    def __getitem__(self, section: str):
        return self.configs[section]

    def to_dict(self) -> dict:
        top = {"command": self.command} | ({"init": self.init} if self.init is not None else {})
        return top | {sec: to_values(cfg) for sec, cfg in self.configs.items()}

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict(), header=f"minirl {self.command}: the fully resolved config of this run.\n"
                          f"Rerun it with `minirl {self.command} --config <this file>`.")


def _merge(values: dict, layer: dict, source: str, name: str, classes: dict) -> str | None:
    """Merge one TOML layer into `values` (section -> dict), checking sections, keys and the command."""
    init = None
    for key, value in layer.items():
        if isinstance(value, dict):
            if key not in classes:
                raise ValueError(f"{source}: [{key}] is not a section of `minirl {command_of(name)}` "
                                 f"(its sections: {', '.join(f'[{s}]' for s in classes)})")
            check_keys(classes[key], value, f"{source}: [{key}]")
            values[key].update(value)
        elif key == "init":
            init = value
        elif key == "command":
            if value != command_of(name):
                raise ValueError(f"{source} is the config of `minirl {value}`, not of `minirl {command_of(name)}`")
        else:
            raise ValueError(f"{source}: unknown top-level key {key!r} (allowed: command, init, and sections)")
    return init


def resolve(name: str, config=None, **overrides) -> RunSpec:
    """Job `name`'s config: dataclass defaults, then its preset, then the TOML file `config`, then `overrides`."""
    classes = sections(name)
    owner = {}
    for sec, cls in classes.items():
        for f in dataclasses.fields(cls):
            assert f.name not in owner, f"setting {f.name!r} is in both [{owner[f.name]}] and [{sec}]"
            owner[f.name] = sec
    values = {sec: {} for sec in classes}
    init = _merge(values, preset(name), f"preset {name}.toml", name, classes)
    if config is not None:
        config = named_config(name, config)
        init = _merge(values, load_toml(config), str(config), name, classes) or init
    for key, value in overrides.items():
        if key == "init":
            init = value
        elif key in owner:
            values[owner[key]][key] = value
        else:
            raise ValueError(f"unknown setting {key!r} for `minirl {command_of(name)}`; known: "
                             f"init, {', '.join(sorted(owner))}")
    configs = {sec: from_values(cls, values[sec], f"[{sec}]") for sec, cls in classes.items()}
    if "optimizer" in configs and "train" in configs and "mask_seed" not in values["optimizer"]:
        configs["optimizer"].mask_seed = configs["train"].seed  # each seed its own masks (OnDARE, ChildTuning)
    if name != "pretrain" and init is None:
        raise ValueError(f"`minirl {command_of(name)}` needs an init model (--init)")
    return RunSpec(name, None if name == "pretrain" else str(init), configs)


# ------------------------------------------------------------------------- measurements
def accuracy(model, n: dict[str, int]) -> dict[str, float]:
    """Greedy accuracy of `model` on the first n[task] held-out problems of each task."""
    return {task: benchmark(model, [task], n=k)[task] for task, k in n.items()}


def relative_step(lr: float, model) -> dict:
    """lr / rms(w) over the 2-D weight matrices: the regime knob of docs/PAPERS.md's scale matching."""
    mats = [p.data for name, p in model.named_parameters()
            if p.ndim == 2 and name not in IGNORED_IN_ANALYSIS and ".lora_" not in name]  # the model's own weights
    rms = float(np.sqrt(sum(float((m.astype(np.float64) ** 2).sum()) for m in mats) / sum(m.size for m in mats)))
    return {"lr": lr, "rms_w": rms, "lr_over_rms": lr / rms}


def final_kl(policy, ref, task: str, seed: int, n: int = 256, temperature: float = 1.0) -> dict:
    """Mean per-sequence KL(π‖π_ref) on fresh samples of the final policy (k1 and k3 estimators)."""
    from minirl.rl.kl import k1, k3
    from minirl.rl.rollout import frozen_logprobs, sample_rollout

    rollout = sample_rollout(policy, task, np.random.default_rng([seed, 7]), n, 1, temperature=temperature)
    logp, ref_logp = frozen_logprobs(policy, rollout, temperature), frozen_logprobs(ref, rollout, temperature)
    m = rollout.completion_mask
    return {"k1": float((k1(logp, ref_logp) * m).sum(1).mean()), "k3": float((k3(logp, ref_logp) * m).sum(1).mean()),
            "n": n}


def update_analysis(theta0: dict, theta1: dict, precision: str) -> dict:
    """Sparsity (bf16, every tolerance and bitwise), fp32-exact changes, per tensor, and rank of θ1 − θ0: one pass."""
    from minirl.analysis import analyze_update

    # Δ's rank is taken in the storage precision (bf16 for bf16 and fp16 runs' papers-lens view, fp32 for fp32)
    return analyze_update(theta0, theta1, rank_dtype="fp32" if precision == "fp32" else "bf16",
                          ignore=IGNORED_IN_ANALYSIS).to_dict()


def lora_update_rank(rank: dict, policy) -> dict:
    """The rank section of a LoRA run with each adapted matrix's rank taken from its ΔW = (α/r)·BA itself.

    θ1 − θ0 = (W + ΔW) − W, in bf16 or even in fp32, carries the rounding of the sum, a full-rank noise that
    swamps a small ΔW's singular values (a LoRA model's W + ΔW is computed at run time, never stored); ΔW has
    rank at most r by construction, and its own SVD shows it.
    """
    from minirl.analysis.rank import update_rank
    from minirl.lora import lora_layers

    per = dict(rank["per_tensor"])
    for name, layer in lora_layers(policy).items():
        r, full = update_rank(layer.delta())
        per[name + ".weight"] = r / full
    return {**rank, "per_tensor": per, "mean_fraction": float(np.mean(list(per.values()))) if per else float("nan")}


def paper_beside(algorithm: str) -> dict:
    """Paper 1's numbers a run's report prints beside its own, quoted from minirl/papers.toml."""
    from minirl.papers import papers

    p = papers()
    sp = p["sparsity"]
    row = sp["table1"].get(algorithm)
    return {
        "arxiv": sp["arxiv"],
        "table1_range": sp["table1"]["range"],
        "table1_row": {"algorithm": algorithm, **row} if isinstance(row, dict) else None,
        "sft_range": sp["sft"]["range"],
        "kl": sp["kl"],
        "rank_range": sp["rank"]["range"],
        "tol": sp["tol"]["value"],
        "relative_step": p["scale_matching"]["relative_step"],
        "merge_ratio": p["scale_matching"]["merge_ratio"],
        "data_distribution": {k: sp["data_distribution"][k] for k in ("in_distribution", "out_of_distribution")},
    }


# ------------------------------------------------------------------------- jobs
def _open_run(spec: RunSpec, out) -> RunDir:
    """A new run directory holding the spec's config.toml."""
    rundir = new_run_dir(out, spec.name)
    rundir.write_config(spec.to_toml())
    return rundir


def pretrain(config=None, out=None, progress: bool = True, bench_n: int | None = None, **overrides) -> dict:
    """Train a base model from scratch on the raw task mixture (`minirl pretrain`); returns the report dict."""
    return execute(resolve("pretrain", config, **overrides), out, progress, bench_n)


def _pretrain(spec: RunSpec, rundir: RunDir, progress: bool, bench_n, resume: bool) -> dict:
    bench_n = BENCH_N if bench_n is None else bench_n
    tok = CharTokenizer()
    model_cfg, data_cfg, train_cfg = spec["model"], spec["pretrain"], spec["train"]
    if model_cfg.vocab_size != tok.vocab_size:
        raise ValueError(f"TransformerConfig.vocab_size must equal the tokenizer's {tok.vocab_size}, "
                         f"got {model_cfg.vocab_size}")
    model = Transformer(model_cfg, seed=train_cfg.seed, tokenizer=tok)
    result = train(model, Pretrain(data_cfg), train_cfg, spec["optimizer"], run=rundir, progress=progress,
                   resume=resume)
    rundir.save_model("final", model, train_cfg.precision)
    report = {
        "command": "pretrain", "seed": train_cfg.seed, "steps": len(result.history),
        "interrupted": result.interrupted, "wall_seconds": result.wall_seconds,
        "parameters": model.num_parameters(), "final_loss": result.history[-1]["loss"] if result.history else None,
        "accuracy_raw": benchmark(model, data_cfg.tasks, n=bench_n, prompt_format="raw"),
        "config": spec.to_dict(), "checkpoint": str(rundir.checkpoint_path("final")), "run_dir": str(rundir.path),
    }
    rundir.write_json("report", report)
    return report


def rl(name: str, config=None, out=None, progress: bool = True, bench_n: int | None = None, **overrides) -> dict:
    """Fine-tune with algorithm `name` (grpo, ppo, sft, ...): `minirl run NAME`; returns the report dict."""
    return execute(resolve(name, config, **overrides), out, progress, bench_n)


def execute(spec: RunSpec, out=None, progress: bool = True, bench_n: int | None = None) -> dict:
    """Run a resolved job in a new run directory `out` (default runs/<name>-<time>); returns the report dict."""
    if spec.name == "pretrain":
        return _pretrain(spec, _open_run(spec, out), progress, bench_n, resume=False)
    return _finetune(spec, out, None, progress, bench_n)


def sft(config=None, out=None, progress: bool = True, bench_n: int | None = None, **overrides) -> dict:
    """Instruction-tune a model (`minirl run sft`)."""
    return rl("sft", config, out, progress, bench_n, **overrides)


def build(spec: RunSpec):
    """A fine-tuning job's policy (with the heads its algorithm trains, LoRA injected when asked), its frozen
    reference (the init model) and its algorithm: what the job, and `reproduce perl`'s cost probe, train."""
    algo_cls = algorithms()[spec.name][1]
    policy = load(spec.init, value_head=True if getattr(algo_cls, "value_head", False) else None,
                  reward_head=True if getattr(algo_cls, "reward_head", False) else None)
    ref = load(spec.init)
    if spec["lora"].enabled:  # the backbone frozen for real: only adapters and added heads get gradients
        inject_lora(policy, spec["lora"], seed=spec["train"].seed)
        policy.lora_base = spec.init
    return policy, ref, algo_cls(spec[spec.name], ref)


def _finetune(spec: RunSpec, out, rundir: RunDir | None, progress: bool, bench_n) -> dict:
    """Any algorithm from an init model: accuracy on every task before/after, KL, and what the update did.

    Resumes `rundir` when given, else makes a new run directory `out` once the init model has loaded.
    A reward model (`rm`) is measured by its pairwise accuracy on held-out pairs instead.
    """
    algo_cfg, train_cfg, optim_cfg, lora_cfg = spec[spec.name], spec["train"], spec["optimizer"], spec["lora"]
    policy, ref, algo = build(spec)
    reward_model = getattr(algo, "reward_head", False)  # it trains a scalar head: measured by pairwise accuracy
    # subnetwork fine-tuning: a mask that does not fit the policy fails here, before the run directory exists
    subnetwork = subnetwork_summary(train_cfg.mask_from, trainable_parameters(policy),
                                    train_cfg.mask_tol) if train_cfg.mask_from else None
    resume = rundir is not None
    rundir = rundir or _open_run(spec, out)
    trained = [algo_cfg.task] if hasattr(algo_cfg, "task") else list(dict.fromkeys(algo_cfg.tasks))
    if reward_model:
        heldout = heldout_pairs(algo_cfg, ref, train_cfg.seed)
        n = {algo_cfg.task: len(heldout)}
        measure = lambda model: {algo_cfg.task: pairwise_accuracy_of(model, heldout)}  # noqa: E731
    else:
        # bench_n given (tests): every task on that many problems; else the trained task(s) on TRAINED_N
        # every task the shipped models know (the tax), and a trained task they never saw (UNSEEN_TASKS) too
        n = {t: bench_n or (TRAINED_N if t in trained else BENCH_N) for t in dict.fromkeys([*TASKS, *trained])}
        measure = lambda model: accuracy(model, n)  # noqa: E731
    before = measure(policy)
    params = trainable_parameters(policy)
    optimizer = make_optimizer(params, optim_cfg, train_cfg.precision)
    theta0 = merged_state_dict(policy)  # θ0 as stored (the optimizer rounded the weights to the storage grid)
    regime = relative_step(optim_cfg.lr, policy)
    result = train(policy, algo, train_cfg, optim_cfg, run=rundir, optimizer=optimizer, progress=progress,
                   params=params, resume=resume)
    rundir.save_model("final", policy, train_cfg.precision)
    ratios = [h["merge_ratio"] for h in result.history if "merge_ratio" in h]
    if ratios:  # online merging: the reference pull against the policy's own step, averaged over the run
        regime.update(merge_weight=optim_cfg.merge_weight, merge_ratio=float(np.mean(ratios)))
    after = measure(policy)
    curves = ("loss", "reward", "accuracy", "rm_score", "rewards/accuracies", "rewards/margins")
    report = {
        "command": spec.command, "algorithm": spec.name, "init": spec.init, "seed": train_cfg.seed,
        "steps": len(result.history), "interrupted": result.interrupted, "precision": train_cfg.precision,
        "wall_seconds": result.wall_seconds, "trained_tasks": trained,
        "accuracy": {"before": before, "after": after, "n": n,
                     "metric": "pairwise" if reward_model else "greedy"},
        "curves": {k: [h.get(k, float("nan")) for h in result.history] for k in curves
                   if any(k in h for h in result.history)},
        "regime": regime, "paper": paper_beside(spec.name),
        "config": spec.to_dict(), "checkpoint": str(rundir.checkpoint_path("final")), "run_dir": str(rundir.path),
    }
    if hasattr(algo_cfg, "task") and not reward_model:
        report["kl"] = final_kl(policy, ref, algo_cfg.task, train_cfg.seed)  # the policy's KL to the reference
    if isinstance(getattr(algo, "data", None), PreferenceData):
        report["preference"] = preference_section(algo.data, result.history, rundir)
    if subnetwork is not None:
        report["subnetwork"] = subnetwork
    if lora_cfg.enabled:
        report["lora"] = {**to_values(lora_cfg), "trainable": count_trainable(policy),
                          "total": sum(v.size for v in theta0.values())}
    # a LoRA run's update is its adapters' ΔW = (α/r) B A, compared on the merged weights
    report.update(update_analysis(theta0, merged_state_dict(policy), train_cfg.precision))
    if lora_cfg.enabled:
        report["rank"] = lora_update_rank(report["rank"], policy)
    rundir.write_json("report", report)
    return report


def heldout_pairs(config, ref, seed: int, n: int = 500) -> list:
    """Held-out pairs like the training pairs: offline pairs, or the initial policy's best vs worst (on_policy).

    Their prompts are the task's fixed held-out problems, and the verifier ranks them as it ranked the training
    pairs (exact or partial credit; pairs ranked by a reward model are judged against the verifier's partial
    credit, the ground truth). A JSONL data set is judged on offline held-out pairs.
    """
    from minirl.rl.preference import Pair, verifier_pairs
    from minirl.tasks import heldout_set, resolve_task

    task = resolve_task(config.task)
    examples = heldout_set(task, n)
    rng = np.random.default_rng([seed, 11])
    if config.pairs != "on_policy":
        return [Pair(ex.prompt, ex.answer, task.wrong_answer(ex.prompt, rng)) for ex in examples]
    verifier = config.reward if config.reward in ("exact", "partial") else "partial"  # an rm: ranking: the truth
    return verifier_pairs(ref, task, [ex.prompt for ex in examples], rng, config.num_generations, config.temperature,
                          verifier)


def pairwise_accuracy_of(model, pairs: list) -> float:
    """Fraction of `pairs` whose chosen completion the reward model scores above the rejected one."""
    from minirl.rl.reward_model import pairwise_accuracy

    return pairwise_accuracy(model, [p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs])


PREFERENCE_STATS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
                    "logps/rejected", "accuracy", "margin", "kl", "nll_loss", "log_odds_ratio")
"""Per-step statistics of the preference losses whose last-tenth means the report shows (those a run logged)."""


def preference_section(data, history: list[dict], rundir: RunDir) -> dict:
    """The data a preference run learned from (saved as pairs.jsonl) and its losses' statistics at the end."""
    from minirl.rl.preference import save_jsonl

    path = save_jsonl(rundir.path / "pairs.jsonl", data.rows)
    tenth = history[-max(1, len(history) // 10):]
    final = {k: float(np.mean([h[k] for h in tenth])) for k in PREFERENCE_STATS if tenth and all(k in h for h in tenth)}
    return {"data": data.stats, "final": final, "pairs_file": str(path)}


def job_name(run_dir) -> str:
    """The job ("pretrain", "grpo", ...) whose resolved config.toml `run_dir` holds."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise FileNotFoundError(f"{run_dir} has no config.toml: not a minirl run directory")
    command = load_toml(run_dir / "config.toml").get("command", "")
    return "pretrain" if command == "pretrain" else command.removeprefix("run ")


def resume(run_dir, progress: bool = True, bench_n: int | None = None) -> dict:
    """Continue an interrupted run from its own config.toml and its checkpoints/last; returns the report dict."""
    name = job_name(run_dir)
    spec = resolve(name, Path(run_dir) / "config.toml")
    if name == "pretrain":
        return _pretrain(spec, RunDir(run_dir), progress, bench_n, resume=True)
    return _finetune(spec, None, RunDir(run_dir), progress, bench_n)
