"""`minirl export RUN_OR_CONFIG --format trl`: the same experiment as a TRL recipe that runs on GPUs.

The directory it writes (TRL 1.16's trainers; `minirl.export.trl_files` holds the files' text):

    model/                the run's init model as a Hugging Face Llama (chat template, bos added);
                          left out with --model NAME_OR_PATH, which train.py then loads instead
    data/train.jsonl      TRL's conversational format: prompts (GRPO, RLOO) with each problem's answer,
                          preference pairs (DPO, IPO, SimPO, ORPO) or unpaired examples (KTO)
    reward.py             the task's verifier as a TRL reward function (GRPO, RLOO), same partial credit
    recipe.json           the trainer, its config (every field minirl sets, TRL's own defaults that differ
                          made explicit), the optimizer, LoRA
    MAPPING.md            the field-by-field mapping with a reason per row, and the warnings
    train.py              `python train.py` on one device, `accelerate launch train.py` on several
    merging_optim.py      OnDARE / OnTIES in torch (`minirl.export.torch_optim`), when the run used them,
    ref_delta.safetensors with τ_r = θ(merge_ref) - θ(merge_base) by parameter name
    accelerate/           multi_gpu.yaml (DDP), deepspeed_zero2.yaml
    README.md             how to run it, and how the result comes back to `minirl eval` / `minirl analyze`

The mapping is data (`ALGORITHMS`, `common_rows`, `algorithm_rows`): each row says
which minirl field sets which TRL field, the value, and why. A minirl knob TRL
has no place for is a row with a warning, printed with the table.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minirl.checkpoint import atomic_write_text

ALGORITHMS = {
    "grpo": ("trl", "GRPOTrainer", "GRPOConfig", "prompts"),
    "rloo": ("trl", "RLOOTrainer", "RLOOConfig", "prompts"),
    "dpo": ("trl", "DPOTrainer", "DPOConfig", "pairs"),
    "ipo": ("trl", "DPOTrainer", "DPOConfig", "pairs"),
    "kto": ("trl", "KTOTrainer", "KTOConfig", "unpaired"),
    "simpo": ("trl.experimental.cpo", "CPOTrainer", "CPOConfig", "pairs"),
    "orpo": ("trl.experimental.orpo", "ORPOTrainer", "ORPOConfig", "pairs"),
}
"""minirl algorithm -> (TRL module, trainer, config class, what data/train.jsonl holds)."""

UNSUPPORTED = {
    "ppo": "TRL 1.16 has no PPOTrainer (PPO left trl, and trl.experimental has none); GRPO or RLOO is the nearest",
    "reinforce": "TRL has no REINFORCE trainer; RLOO (`minirl run rloo`) is its leave-one-out variant and exports",
    "rft": "rejection-sampling fine-tuning is SFT on the policy's own correct samples; TRL's SFTTrainer on "
           "minirl's pairs.jsonl does it, but minirl does not export it yet",
    "sft": "minirl does not export SFT to TRL yet (TRL's SFTTrainer on the task's chat data would do it)",
    "rm": "minirl does not export reward-model training to TRL yet (TRL's RewardTrainer would do it)",
    "pretrain": "pretraining is not an RL fine-tuning recipe",
}


@dataclass
class Row:
    """One line of the mapping: minirl's field, TRL's, the value TRL gets, why; a warning if TRL lacks the knob."""

    minirl: str
    """The minirl field ("[optimizer] lr"), or "-" for a TRL default set explicitly."""
    trl: str
    """The TRL field it sets ("learning_rate"), or "-" if TRL has none."""
    value: object
    """What the TRL field gets."""
    reason: str
    """Why this mapping (or why this default is set)."""
    warning: bool = False
    """True when TRL cannot do what minirl does here."""


def _row(rows: list, config: dict, minirl: str, trl: str, value, reason: str, warning: bool = False) -> None:
    """Append a row and, when it names a TRL field, set it in `config`."""
    rows.append(Row(minirl, trl, value, reason, warning))
    if trl != "-":
        config[trl] = value


# -- the mapping ----------------------------------------------------------------------------------------------
def common_rows(spec, config: dict) -> list[Row]:
    """[train] and [optimizer], and TRL defaults minirl does not share, for every trainer."""
    rows: list[Row] = []
    train, opt = spec["train"], spec["optimizer"]
    _row(rows, config, "[train] steps", "max_steps", train.steps, "one optimizer update per minirl step")
    _row(rows, config, "[train] seed", "seed", train.seed, "TRL's seed for init, sampling and shuffling (not minirl's "
         "bits: data/train.jsonl is drawn with minirl's seed)")
    _row(rows, config, "[train] grad_clip", "max_grad_norm", train.grad_clip or 0.0,
         "global-norm clipping, torch's clip_grad_norm_ in both (0: off)")
    precision_warn = train.precision != "fp32"
    _row(rows, config, "[train] precision", "bf16", False,
         f"minirl's {train.precision!r} " + ("stores the weights in bf16 after every step with fp32 master weights; "
                                             "TRL has no storage mode: its bf16=True is autocast (bf16 compute, "
                                             "fp32 weights, fp32 update). The recipe trains in fp32; the update's "
                                             "sparsity (PAPERS.md §1) depends on this" if precision_warn
                                             else "is fp32 throughout, as TRL with bf16=False"), precision_warn)
    _row(rows, config, "-", "fp16", False, "no fp16 autocast either")
    if train.mask_from:
        _row(rows, config, "[train] mask_from", "-", train.mask_from,
             "subnetwork fine-tuning (a fixed gradient mask) has no TRL option; the recipe trains every weight", True)
    if train.checkpoint_every:
        _row(rows, config, "[train] checkpoint_every", "save_steps", train.checkpoint_every,
             "a resumable checkpoint every so many steps")
        config["save_strategy"] = "steps"
    else:
        _row(rows, config, "[train] checkpoint_every", "save_strategy", "no",
             "minirl saves at the end only; train.py saves the final model (TRL's default saves every 500 steps)")

    _row(rows, config, "[optimizer] lr", "learning_rate", opt.lr, "peak learning rate (TRL's default is 1e-6)")
    warm = opt.warmup_steps
    if opt.schedule == "cosine":
        _row(rows, config, "[optimizer] schedule", "lr_scheduler_type", "cosine_with_min_lr",
             "warmup, then cosine to min_lr_ratio x lr over the run, as minirl's")
        _row(rows, config, "[optimizer] min_lr_ratio", "lr_scheduler_kwargs", {"min_lr_rate": opt.min_lr_ratio},
             "the cosine's floor as a fraction of the peak")
    else:
        kind = "constant_with_warmup" if warm else "constant"
        _row(rows, config, "[optimizer] schedule", "lr_scheduler_type", kind,
             f"minirl's {opt.schedule!r}: flat after warmup (TRL's default is 'linear' decay to 0)")
    _row(rows, config, "[optimizer] warmup_steps", "warmup_steps", warm,
         "linear warmup over this many updates" + (": transformers' multiplier is step/warmup from 0, minirl's "
                                                   "(step+1)/warmup, one step ahead" if warm else ""), bool(warm))
    _row(rows, config, "[optimizer] betas", "adam_beta1", opt.betas[0], "Adam's first-moment decay")
    _row(rows, config, "[optimizer] betas", "adam_beta2", opt.betas[1], "Adam's second-moment decay")
    _row(rows, config, "[optimizer] eps", "adam_epsilon", opt.eps, "Adam's epsilon, added after sqrt(v_hat) in both")
    _row(rows, config, "[optimizer] weight_decay", "weight_decay", opt.weight_decay, "decoupled, torch's AdamW order")
    if opt.optimizer == "adamw":
        _row(rows, config, "[optimizer] optimizer", "optim", "adamw_torch",
             "minirl's AdamW is torch.optim.AdamW's arithmetic")
    elif opt.optimizer in ("ondare", "onties"):
        _row(rows, config, "[optimizer] optimizer", "-", opt.optimizer,
             f"TRL has no online merging: train.py passes merging_optim.{'OnDARE' if opt.optimizer == 'ondare' else 'OnTIES'} "
             f"(minirl.export.torch_optim) as optimizers=(opt, None); reserve_rate={opt.reserve_rate}, "
             f"alpha={opt.merge_weight}, rescale={opt.merge_rescale!r}, merge_every={opt.merge_every}, "
             f"seed={opt.mask_seed} (torch's masks: the same distribution as minirl's, not the same bits)")
    else:
        raise ValueError(f"optimizer {opt.optimizer!r} has no TRL export (adamw, ondare and onties do)")

    # TRL defaults that would silently change the comparison
    _row(rows, config, "-", "gradient_checkpointing", False,
         "TRL's default True recomputes activations; minirl keeps them (same gradients, slower)")
    _row(rows, config, "-", "logging_steps", 1, "minirl logs every step (TRL's default: every 10)")
    _row(rows, config, "-", "report_to", "none", "metrics to the console and output/log_history.json only")
    _row(rows, config, "-", "gradient_accumulation_steps", 1,
         "one batch is one update; train.py divides the per-device batch by the number of processes")
    if spec["lora"].enabled:
        lora = spec["lora"]
        _row(rows, config, "[lora] lora_rank", "-", lora.lora_rank,
             f"train.py passes peft.LoraConfig(r={lora.lora_rank}, lora_alpha={lora.lora_alpha}, "
             f"lora_dropout={lora.lora_dropout}, target_modules={list(lora.lora_targets)}) as peft_config")
    return rows


def algorithm_rows(spec, config: dict) -> list[Row]:
    """The algorithm section, field by field."""
    from minirl.tasks import max_seq_len, resolve_task

    name, c = spec.name, spec[spec.name]
    rows: list[Row] = []
    sec = f"[{name}]"
    task = resolve_task(c.task)
    if ALGORITHMS[name][3] == "prompts":
        group = c.num_prompts * c.num_generations
        _row(rows, config, f"{sec} num_generations", "num_generations", c.num_generations, "G, the group size")
        _row(rows, config, f"{sec} num_prompts", "per_device_train_batch_size", group,
             f"num_prompts x G = {group} completions per update (train.py divides it by the number of processes)")
        _row(rows, config, "-", "steps_per_generation", 1, "one rollout per update, as minirl")
        max_new = c.max_new_tokens or task.max_answer_len + 1
        _row(rows, config, f"{sec} max_new_tokens", "max_completion_length", max_new,
             "the completion length limit (minirl's default: the task's longest answer + eos)")
        _row(rows, config, f"{sec} temperature", "temperature", c.temperature, "sampling temperature")
        _row(rows, config, "-", "top_p", 1.0, "minirl samples the full distribution")
        _row(rows, config, "-", "top_k", 0, "no top-k either")
        _row(rows, config, f"{sec} reward", "-", c.reward,
             f"reward.py: the {task.name} verifier, " + ("1 if exact else 0" if c.reward == "exact"
                                                         else "with its partial credit"))
        if name == "grpo":
            _row(rows, config, f"{sec} beta", "beta", c.beta, "the k3 KL term's weight in the loss, as TRL's")
        else:  # minirl's RLOO rewards PERL's (1 - β) r - β KL; TRL's RLOOTrainer r·w - β KL, both before the baseline
            _row(rows, config, f"{sec} beta", "beta", c.beta,
                 "the sequence k1 KL's weight in the reward (not a loss term), before the leave-one-out baseline, "
                 "in both (minirl.rl.reinforce, TRL's _generate_and_score_completions)")
            _row(rows, config, f"{sec} beta", "reward_weights", [1.0 - c.beta],
                 "minirl's reward is PERL's (1 - β) r - β KL; TRL's is Σ w·r - β KL, so w = 1 - β makes them equal "
                 "(TRL's logged 'reward' is then (1 - β) r; rewards/task_reward/mean is r)")
        if name == "grpo":
            _row(rows, config, f"{sec} epsilon", "epsilon", c.epsilon, "lower clip range")
            _row(rows, config, f"{sec} epsilon_high", "epsilon_high", c.epsilon_high, "upper clip range (None: epsilon)")
            _row(rows, config, f"{sec} loss_type", "loss_type", c.loss_type,
                 "the same normalisation (minirl.rl.grpo follows TRL's _compute_loss)")
            _row(rows, config, f"{sec} scale_rewards", "scale_rewards", c.scale_rewards, "advantage scaling")
            _row(rows, config, f"{sec} num_iterations", "num_iterations", c.num_iterations, "μ, updates per rollout")
            _row(rows, config, "-", "importance_sampling_level", "token", "minirl's ratio is per token")
        else:
            _row(rows, config, f"{sec} whiten_advantages", "normalize_advantages", c.whiten_advantages,
                 "normalise the leave-one-out advantages over the batch")
            _row(rows, config, "-", "num_iterations", 1, "one update per rollout, as minirl's RLOO")
        _row(rows, config, "-", "mask_truncated_completions", False, "minirl scores truncated completions too")
        _row(rows, config, "-", "disable_dropout", True, "the model has no dropout; set so a --model's is off too")
        return rows

    # preference algorithms: the data rows, then the loss
    _row(rows, config, f"{sec} pairs", "-", c.pairs,
         "data/train.jsonl: the run's pairs.jsonl when the run directory has it (the very pairs it trained on), "
         "else built as minirl builds them from [train] seed")
    _row(rows, config, f"{sec} batch_size", "per_device_train_batch_size", c.batch_size,
         "pairs (KTO: examples) per update (train.py divides it by the number of processes)")
    _row(rows, config, "-", "max_length", max_seq_len(task), "the task's longest chat sequence: nothing truncated")
    _row(rows, config, "-", "disable_dropout", True, "as TRL's default (the model has none)")
    if c.regenerate_every:
        _row(rows, config, f"{sec} regenerate_every", "-", c.regenerate_every,
             "iterative DPO (pairs rebuilt from the policy) has no TRL option: TRL trains on the fixed pairs", True)
    if name in ("dpo", "ipo"):
        _row(rows, config, f"{sec} beta", "beta", c.beta, "β")
        _row(rows, config, f"{sec} loss_type", "loss_type", [c.loss_type], "TRL 1.16 takes a list of loss types")
        _row(rows, config, f"{sec} label_smoothing", "label_smoothing", c.label_smoothing, "conservative DPO's ε")
        _row(rows, config, "-", "precompute_ref_log_probs", True, "minirl computes reference log-probs once per data set")
    elif name == "kto":
        _row(rows, config, f"{sec} beta", "beta", c.beta, "β")
        _row(rows, config, f"{sec} desirable_weight", "desirable_weight", c.desirable_weight, "λ_D")
        _row(rows, config, f"{sec} undesirable_weight", "undesirable_weight", c.undesirable_weight, "λ_U")
        _row(rows, config, "-", "loss_type", "kto", "the KTO loss")
        _row(rows, config, "-", "precompute_ref_log_probs", True, "minirl computes reference log-probs once per data set")
    elif name == "simpo":
        _row(rows, config, "-", "loss_type", "simpo", "SimPO is CPOTrainer's loss_type 'simpo'")
        _row(rows, config, f"{sec} beta", "beta", c.beta, "β (SimPO's reward scale)")
        _row(rows, config, f"{sec} simpo_gamma", "simpo_gamma", c.simpo_gamma, "target reward margin γ")
        _row(rows, config, f"{sec} cpo_alpha", "cpo_alpha", c.cpo_alpha, "the NLL term's weight (TRL's default 1.0)")
    elif name == "orpo":
        _row(rows, config, f"{sec} beta", "beta", c.beta, "λ, the odds-ratio term's weight")
    return rows


def trl_recipe(spec) -> tuple[dict, list[Row]]:
    """(TRL config kwargs, the mapping rows) of a resolved minirl RunSpec."""
    if spec.name not in ALGORITHMS:
        raise ValueError(f"`minirl run {spec.name}` has no TRL export: {UNSUPPORTED.get(spec.name, 'unknown')}")
    c = spec[spec.name]
    reward = getattr(c, "reward", "exact")
    if ALGORITHMS[spec.name][3] == "prompts" and reward not in ("exact", "partial"):
        raise ValueError(f"reward {reward!r}: a reward model's score is not exported yet (export the reward model "
                         "with --format hf and pass its path to reward_funcs)")
    config: dict = {}
    rows = algorithm_rows(spec, config) + common_rows(spec, config)
    return config, rows


def mapping_markdown(spec, rows: list[Row]) -> str:
    """MAPPING.md: the table and the warnings."""
    lines = [f"# minirl `{spec.command}` -> TRL {ALGORITHMS[spec.name][2]}", "",
             "| minirl | TRL | value | why |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.minirl} | {r.trl} | `{json.dumps(r.value)}` | {'**warning**: ' if r.warning else ''}"
                     f"{r.reason} |")
    warnings = [r for r in rows if r.warning]
    if warnings:
        lines += ["", "## Warnings: what TRL does differently", ""]
        lines += [f"- {r.minirl}: {r.reason}" for r in warnings]
    return "\n".join(lines) + "\n"


def mapping_table(spec, rows: list[Row]):
    """The mapping as a rich Table (warnings in yellow)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"minirl {spec.command} -> TRL {ALGORITHMS[spec.name][2]}")
    for col in ("minirl", "TRL", "value", "why"):
        table.add_column(col, overflow="fold")
    for r in rows:
        style = "yellow" if r.warning else None
        table.add_row(escape(r.minirl), r.trl, escape(json.dumps(r.value)),
                      escape(("warning: " if r.warning else "") + r.reason), style=style)
    return table


# -- the data ---------------------------------------------------------------------------------------------------
def _user(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def data_rows(spec, run_dir: Path | None) -> list[dict]:
    """data/train.jsonl's rows in TRL's conversational format."""
    from minirl.rl.preference import load_jsonl, offline_pairs, on_policy_pairs, unpair
    from minirl.tasks import resolve_task

    c, seed = spec[spec.name], spec["train"].seed
    task = resolve_task(c.task)
    rng = np.random.default_rng(seed)
    kind = ALGORITHMS[spec.name][3]
    if kind == "prompts":  # fresh prompts every step, as minirl samples them
        examples = [task.sample(rng) for _ in range(c.num_prompts * max(1, spec["train"].steps))]
        return [{"prompt": _user(ex.prompt), "answer": ex.answer} for ex in examples]
    saved = run_dir / "pairs.jsonl" if run_dir is not None else None
    if saved is not None and saved.is_file():
        rows = load_jsonl(saved)
    elif c.pairs == "offline":
        rows = offline_pairs(task, rng, c.num_prompts)
    elif c.pairs == "on_policy":
        from minirl.loading import load

        rows = on_policy_pairs(load(spec.init), task, rng, c.num_prompts, c.num_generations, c.temperature, c.reward)
    else:
        rows = load_jsonl(c.pairs)
    if kind == "unpaired" and rows and hasattr(rows[0], "chosen"):
        rows = unpair(rows)
    if kind == "unpaired":
        return [{"prompt": _user(r.prompt), "completion": _assistant(r.completion), "label": bool(r.label)}
                for r in rows]
    if rows and not hasattr(rows[0], "chosen"):
        raise ValueError(f"{spec.name} needs preference pairs; the data holds unpaired examples")
    return [{"prompt": _user(r.prompt), "chosen": _assistant(r.chosen), "rejected": _assistant(r.rejected)}
            for r in rows]


PARTIAL_CREDIT = {"add": ("right", 1)}
"""Tasks whose partial credit is not Task.reward's: (alignment, the largest length difference still scored)."""


def partial_credit_rule(task) -> tuple[str, int | None]:
    """(align, max_len_diff) of the task's partial credit, so reward.py computes the same (the tests check every task)."""
    from minirl.tasks.base import Task

    if type(task).reward is Task.reward:
        return "left", None
    if task.name in PARTIAL_CREDIT:
        return PARTIAL_CREDIT[task.name]
    raise ValueError(f"task {task.name!r} has its own partial credit, which reward.py does not mirror yet")


# -- the export -------------------------------------------------------------------------------------------------
def load_spec(run_or_config):
    """(RunSpec, run directory or None) of a run directory (its config.toml) or a config TOML file."""
    from minirl.config import load_toml
    from minirl.runs import job_name, resolve

    path = Path(run_or_config)
    if path.is_dir():
        return resolve(job_name(path), path / "config.toml"), path
    if path.is_file():
        command = load_toml(path).get("command", "")
        if not command.startswith("run "):
            raise ValueError(f"{path}: its 'command' is {command!r}; a TRL export needs the config of `minirl run ALGO`")
        return resolve(command.removeprefix("run "), path), None
    raise FileNotFoundError(f"{path}: neither a run directory nor a config file")


def export_trl(run_or_config, out_dir, model: str | None = None) -> tuple[Path, list[Row], object]:
    """Write the TRL recipe of a minirl run (or config) to `out_dir`; returns (out_dir, mapping rows, spec)."""
    from minirl.export import trl_files
    from minirl.export.hf import export_hf, write_json
    from minirl.loading import load
    from minirl.tasks import resolve_task

    spec, run_dir = load_spec(run_or_config)
    config, rows = trl_recipe(spec)
    c, opt = spec[spec.name], spec["optimizer"]
    module, trainer, config_class, kind = ALGORITHMS[spec.name]
    online = opt.optimizer in ("ondare", "onties")
    if online and model is not None:
        raise ValueError(f"--model with optimizer {opt.optimizer!r}: τ_r = θ(merge_ref) - θ(merge_base) is minirl's "
                         "own models'; export without --model, or with optimizer adamw")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    (out / "data").mkdir(parents=True, exist_ok=True)

    # 1) the model (the run's init: the recipe starts where the run started)
    if model is None:
        policy = load(spec.init)
        export_hf(policy, out / "model", dtype="fp32")
    # 2) the data, and the reward
    rows_data = data_rows(spec, run_dir)
    atomic_write_text(out / "data" / "train.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                             for r in rows_data))
    if kind == "prompts":
        task = resolve_task(c.task)
        align, max_len_diff = partial_credit_rule(task)
        atomic_write_text(out / "reward.py", trl_files.reward_py(task.name, c.reward, align, max_len_diff))
    # 3) the optimizer
    optimizer = None
    if online:
        from safetensors.numpy import save_file

        from minirl.merging.online import reference_delta

        tau = reference_delta(list(policy.named_parameters()), opt.merge_base, opt.merge_ref)
        save_file({k: np.ascontiguousarray(v) for k, v in tau.items()}, str(out / "ref_delta.safetensors"))
        shutil.copyfile(Path(__file__).with_name("torch_optim.py"), out / "merging_optim.py")
        optimizer = {"kind": opt.optimizer, "lr": opt.lr, "betas": list(opt.betas), "eps": opt.eps,
                     "weight_decay": opt.weight_decay, "reserve_rate": opt.reserve_rate,
                     "merge_weight": opt.merge_weight, "merge_rescale": opt.merge_rescale,
                     "merge_every": opt.merge_every, "mask_seed": opt.mask_seed}
    lora = spec["lora"]
    peft = {"r": lora.lora_rank, "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout,
            "target_modules": list(lora.lora_targets)} if lora.enabled else None
    # 4) the recipe, the mapping, train.py, the launch configs, the README
    recipe = {"minirl": spec.to_dict(), "algorithm": spec.name, "module": module, "trainer": trainer,
              "config_class": config_class, "config": config, "model": model or "model",
              "data": "data/train.jsonl", "reward": kind == "prompts", "optimizer": optimizer, "peft": peft,
              "batch_fields": ["per_device_train_batch_size"]}
    write_json(out / "recipe.json", recipe)
    atomic_write_text(out / "MAPPING.md", mapping_markdown(spec, rows))
    atomic_write_text(out / "train.py", trl_files.TRAIN_PY)
    (out / "accelerate").mkdir(exist_ok=True)
    atomic_write_text(out / "accelerate" / "multi_gpu.yaml", trl_files.ACCELERATE_MULTI_GPU)
    atomic_write_text(out / "accelerate" / "deepspeed_zero2.yaml", trl_files.ACCELERATE_ZERO2)
    atomic_write_text(out / "README.md", trl_files.readme(spec, trainer, config_class, len(rows_data), model,
                                                          online, [r for r in rows if r.warning]))
    return out, rows, spec


__all__ = ["ALGORITHMS", "Row", "export_trl", "mapping_table", "trl_recipe"]
