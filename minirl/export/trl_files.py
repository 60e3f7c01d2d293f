"""The text of the files `minirl export --format trl` writes: train.py, reward.py, the launch configs, README.md.

Kept as Python strings (not package data) so they ship with the package as
they are; `minirl.export.trl` fills in the recipe-specific parts.
"""

from __future__ import annotations

TRAIN_PY = '''\
"""Run the minirl recipe in recipe.json with TRL.

    python train.py                                                  # one device (a GPU, or the CPU)
    accelerate launch --config_file accelerate/multi_gpu.yaml train.py   # several GPUs (DDP)
    python train.py --model Qwen/Qwen2.5-0.5B-Instruct               # the same recipe on another causal LM
    python train.py --max-steps 2 --set per_device_train_batch_size=4  # a smoke test

The global batch is the recipe's: the per-device batch is divided by the
number of processes. The trained model is saved to --output-dir (default
./output) with its tokenizer; when the model is minirl's, its minirl files are
copied beside it so `minirl eval output` and `minirl analyze model output` read it.
"""

import argparse
import importlib
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", default=str(HERE / "output"), help="Where the trained model goes.")
    ap.add_argument("--model", default=None, help="A Hugging Face model name or path instead of the recipe's.")
    ap.add_argument("--max-steps", type=int, default=None, help="Override max_steps (smoke tests).")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=JSON",
                    help="Override one field of the TRL config (value parsed as JSON, else a string).")
    return ap.parse_args(argv)


def trl_config(recipe, args, world_size):
    """The recipe's TRL config object, overrides applied, the per-device batch split over the processes."""
    cfg = dict(recipe["config"])
    for item in args.overrides:
        key, _, value = item.partition("=")
        try:
            cfg[key] = json.loads(value)
        except ValueError:
            cfg[key] = value
    if args.max_steps is not None:
        cfg["max_steps"] = args.max_steps
    for key in recipe["batch_fields"]:
        if cfg[key] % world_size:
            raise SystemExit(f"{key}={cfg[key]} does not split over {world_size} processes")
        cfg[key] //= world_size
    module = importlib.import_module(recipe["module"])
    return getattr(module, recipe["config_class"])(output_dir=args.output_dir, **cfg)


def online_merging_optimizer(recipe, model):
    """OnDARE / OnTIES (merging_optim.py) over the model's weights, with tau_r from ref_delta.safetensors."""
    from safetensors.torch import load_file

    import merging_optim

    o = dict(recipe["optimizer"])
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    tau = load_file(str(HERE / "ref_delta.safetensors"))
    if "lm_head.weight" in tau and "lm_head.weight" not in dict(named):
        tau.pop("lm_head.weight")  # tied embeddings: one weight, one name
    return merging_optim.make_optimizer(o.pop("kind"), named, tau, **o)


def main(argv=None):
    args = parse_args(argv)
    recipe = json.loads((HERE / "recipe.json").read_text())
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    config = trl_config(recipe, args, world_size)
    model_path = args.model or recipe["model"]
    if (HERE / model_path).is_dir():
        model_path = str(HERE / model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    data = load_dataset("json", data_files=str(HERE / recipe["data"]), split="train")
    kwargs = dict(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    if recipe["reward"]:
        from reward import task_reward

        kwargs["reward_funcs"] = task_reward
    if recipe["peft"]:
        from peft import LoraConfig

        kwargs["peft_config"] = LoraConfig(task_type="CAUSAL_LM", **recipe["peft"])
    if recipe["optimizer"]:
        kwargs["optimizers"] = (online_merging_optimizer(recipe, model), None)
    module = importlib.import_module(recipe["module"])
    trainer = getattr(module, recipe["trainer"])(**kwargs)
    trainer.train()
    trainer.save_model(args.output_dir)
    if trainer.accelerator.is_main_process:
        out = Path(args.output_dir)
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        if not args.model and recipe["model"] == "model":
            for name in ("minirl_config.json", "vocab.json"):  # what minirl's load_hf reads
                if (Path(model_path) / name).exists():
                    shutil.copyfile(Path(model_path) / name, out / name)


if __name__ == "__main__":
    main()
'''

REWARD_PY = '''\
"""minirl's {task!r} verifier as a TRL reward function: {what}.

The same rule as minirl's (`minirl.tasks`, reward = "{reward}"): the completion
is the text the model wrote before eos, compared with the problem's answer
(the dataset's "answer" column, which TRL passes as a keyword).
"""

REWARD = "{reward}"
ALIGN = "{align}"
MAX_LEN_DIFF = {max_len_diff}
"""Partial credit is 0 when the lengths differ by more than this (None: no limit)."""


def positional_match(completion, answer, align="left"):
    """Fraction of aligned positions where completion agrees with answer, over the longer length."""
    n = max(len(completion), len(answer))
    if n == 0:
        return 1.0
    if align == "right":
        completion, answer = completion[::-1], answer[::-1]
    return sum(c == a for c, a in zip(completion, answer)) / n


def completion_text(completion):
    """The text of a completion: a string, or (conversational) the assistant message's content."""
    if isinstance(completion, list):
        return completion[-1]["content"]
    return completion


def task_reward(prompts, completions, answer, **kwargs):
    """One reward per completion: {what}."""
    texts = [completion_text(c) for c in completions]
    if REWARD == "exact":
        return [float(t == a) for t, a in zip(texts, answer)]
    return [0.0 if MAX_LEN_DIFF is not None and abs(len(t) - len(a)) > MAX_LEN_DIFF else positional_match(t, a, ALIGN)
            for t, a in zip(texts, answer)]
'''


def reward_py(task: str, reward: str, align: str, max_len_diff: int | None = None) -> str:
    """reward.py for a task, "exact" or "partial" credit, positions aligned "left" or "right"."""
    what = ("1.0 if the completion is exactly the answer, else 0.0" if reward == "exact" else
            f"1.0 if exact, else the fraction of {align}-aligned positions right (partial credit)"
            + ("" if max_len_diff is None else f", 0 if the lengths differ by more than {max_len_diff}"))
    return REWARD_PY.format(task=task, what=what, reward=reward, align=align, max_len_diff=max_len_diff)


_ACCELERATE = """\
# {what}
# accelerate launch --config_file accelerate/{name} train.py
# mixed_precision 'no': the recipe trains in fp32 (see MAPPING.md); set 'bf16' and `--set bf16=true` for autocast.
compute_environment: LOCAL_MACHINE
debug: false
{dist}downcast_bf16: 'no'
machine_rank: 0
main_training_function: main
mixed_precision: 'no'
num_machines: 1
num_processes: 8
rdzv_backend: static
same_network: true
tpu_env: []
tpu_use_cluster: false
tpu_use_sudo: false
use_cpu: false
"""

ACCELERATE_MULTI_GPU = _ACCELERATE.format(
    what="Data parallel (DDP) over 8 GPUs of one machine; set num_processes to yours.", name="multi_gpu.yaml",
    dist="distributed_type: MULTI_GPU\ngpu_ids: all\n")

ACCELERATE_ZERO2 = _ACCELERATE.format(
    what="DeepSpeed ZeRO-2 (optimizer state and gradients sharded) over 8 GPUs, for models whose AdamW state does "
         "not fit one GPU.\n# Not for OnDARE/OnTIES: ZeRO hands the optimizer flat shards, and they need each "
         "weight whole, by name.",
    name="deepspeed_zero2.yaml",
    dist="deepspeed_config:\n  deepspeed_multinode_launcher: standard\n  offload_optimizer_device: none\n"
         "  offload_param_device: none\n  zero3_init_flag: false\n  zero_stage: 2\ndistributed_type: DEEPSPEED\n")


def readme(spec, trainer: str, config_class: str, n_rows: int, model: str | None, online: bool,
           warnings: list) -> str:
    """README.md of the recipe."""
    c = spec[spec.name]
    lines = [
        f"# minirl `{spec.command}` as a TRL recipe",
        "",
        f"Written by `minirl export ... --format trl`: TRL's `{trainer}` with a `{config_class}` translated field "
        f"by field from minirl's config (MAPPING.md), task `{c.task}`, {n_rows} rows in `data/train.jsonl`.",
        "",
        "## Run it",
        "",
        "```",
        "pip install 'trl>=1.16' accelerate datasets" + (" peft" if spec["lora"].enabled else ""),
        "python train.py                      # one device: a GPU, or the CPU (slow but fine for the tiny model)",
        "accelerate launch --config_file accelerate/multi_gpu.yaml train.py     # several GPUs (DDP)",
        "accelerate launch --config_file accelerate/deepspeed_zero2.yaml train.py  # ZeRO-2 (pip install deepspeed)",
        "python train.py --max-steps 2 --set per_device_train_batch_size=4     # a smoke test",
        "```",
        "",
        "The global batch stays the recipe's: train.py divides `per_device_train_batch_size` by the number of "
        "processes (set `num_processes` in the accelerate config to your GPUs).",
        "",
    ]
    if online:
        lines += ["The run used online merging: train.py builds `merging_optim.py`'s optimizer with τ_r from "
                  "`ref_delta.safetensors` and hands it to TRL as `optimizers=(opt, None)`. Use DDP, not "
                  "DeepSpeed, for it.", ""]
    model_line = (f"The model is `{model}`: its own chat template formats the prompts." if model else
                  "The model is minirl's (`model/`, a LlamaForCausalLM with minirl's chat template; its tokenizer "
                  "adds `<bos>`). `python train.py --model NAME_OR_PATH` runs the same recipe on any causal LM "
                  "with a chat template.")
    lines += [
        "## The model",
        "",
        model_line,
        "",
        "## Back to minirl",
        "",
        "```",
        "minirl eval output            # greedy accuracy on the held-out problems",
        "minirl analyze model output   # update sparsity, rank, per matrix",
        "minirl report output --beside RUN   # all of it, beside minirl's own run RUN of this recipe",
        "```",
        "",
        "(For a `--model` run, `minirl analyze` reads the two Hugging Face directories; `minirl eval` needs "
        "minirl's tokenizer.)",
        "",
    ]
    if warnings:
        lines += ["## What TRL does differently (from MAPPING.md)", ""]
        lines += [f"- {r.minirl}: {r.reason}" for r in warnings]
        lines.append("")
    return "\n".join(lines)
