"""Models in and out of checkpoints: `minirl.load("sft")`, `save_model(path, model)`.

A minirl checkpoint is a directory with `model.safetensors` (Hugging Face
Llama parameter names, bf16 by default) and `config.json` holding
`{"model": TransformerConfig fields, "tokenizer": CharTokenizer.to_dict()}`.
The shipped models live in `minirl/models/<name>/`. A LoRA run's checkpoint
holds only its adapters (`...q_proj.lora_A.weight`, `...lora_B.weight`) and
trained heads, and its config.json adds `"lora"` (the LoraConfig) and
`"base"` (the model it adapts): `load` rebuilds the base, injects the
adapters and loads them (`merge_lora=True` folds them into the weights).
"""

from __future__ import annotations

import json
from pathlib import Path

from minirl.checkpoint import CheckpointError, check_shapes, load_checkpoint, save_checkpoint
from minirl.model import Transformer, TransformerConfig
from minirl.tasks import CharTokenizer

MODELS_DIR = Path(__file__).parent / "models"
SHIPPED = ("base", "sft", "sft-w32", "sft-w96", "sft-w128")
"""Names of the models that ship inside the package: the base model and its SFT model (width 64), and SFT models
of widths 32, 96 and 128 for the regime map's width axis (`minirl reproduce regime`; minirl/presets/widths/)."""


def resolve(name_or_path) -> Path:
    """The checkpoint directory of a shipped model name or a path (a run directory: its checkpoints/final)."""
    if str(name_or_path) in SHIPPED:
        path = MODELS_DIR / str(name_or_path)
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(f"shipped model {name_or_path!r} is missing from {path}; "
                                    f"rebuild it with `minirl pretrain` / `minirl run sft` (see README)")
        return path
    path = Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path} (and {str(name_or_path)!r} is not one of the "
                                f"shipped models {', '.join(SHIPPED)})")
    if (path / "checkpoints" / "final").is_dir() and not (path / "model.safetensors").exists():
        return path / "checkpoints" / "final"  # a run directory
    return path


def load(name_or_path, value_head: bool | None = None, reward_head: bool | None = None,
         merge_lora: bool = False) -> Transformer:
    """A model from a shipped name ("base", "sft") or a checkpoint path; optionally add or drop a value head
    (PPO's critic, zero-initialised) or a reward head (`score`, a reward model's, initialised as the model's
    other matrices: normal with std initializer_range)."""
    path = resolve(name_or_path)
    if _is_hf_dir(path) and not value_head and not reward_head:  # a Hugging Face Llama (minirl's export, TRL's output)
        from minirl.export.hf import load_hf

        return load_hf(path)
    tensors, config = load_checkpoint(path)
    if "model" not in config:
        raise CheckpointError(f"{path}: config.json has no 'model' section; not a minirl checkpoint")
    if "lora" in config:
        return _load_lora(path, tensors, config, value_head, reward_head, merge_lora)
    model_cfg = dict(config["model"])
    if value_head is not None:
        model_cfg["value_head"] = value_head
    if reward_head is not None:
        model_cfg["reward_head"] = reward_head
    tokenizer = CharTokenizer.from_dict(config["tokenizer"]) if config.get("tokenizer") else CharTokenizer()
    model = Transformer(TransformerConfig.from_dict(model_cfg), tokenizer=tokenizer)
    expected = {name: p.shape for name, p in model.named_parameters()}
    if value_head and "value_head.weight" not in tensors:
        tensors = {**tensors, "value_head.weight": model.value_head.weight.data}  # a fresh head, zero-initialised
    if value_head is False:
        tensors = {k: v for k, v in tensors.items() if k != "value_head.weight"}
    if reward_head and "score.weight" not in tensors:
        tensors = {**tensors, "score.weight": model.score.weight.data}  # a fresh head
    if reward_head is False:
        tensors = {k: v for k, v in tensors.items() if k != "score.weight"}
    check_shapes(tensors, expected, path)
    model.load_state_dict(tensors)
    return model


def _is_hf_dir(path: Path) -> bool:
    """A Hugging Face model directory: config.json names architectures and has no minirl 'model' section."""
    config_file = path / "config.json"
    if not (path.is_dir() and config_file.is_file()):
        return False
    config = json.loads(config_file.read_text())
    return "model" not in config and "architectures" in config


def _load_lora(path, tensors, config, value_head, reward_head, merge: bool) -> Transformer:
    """A LoRA run's checkpoint: its base model (named in config.json), adapters injected, their tensors loaded."""
    from minirl.lora import LoraConfig, inject_lora, merge_lora

    if not config.get("base"):
        raise CheckpointError(f"{path}: a LoRA checkpoint must name its base model in config.json ('base')")
    model_cfg = config["model"]
    heads = {"value_head": model_cfg.get("value_head", False) if value_head is None else value_head,
             "reward_head": model_cfg.get("reward_head", False) if reward_head is None else reward_head}
    try:
        model = load(config["base"], **heads)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: its base model {config['base']!r} is gone ({e})") from None
    lora = LoraConfig(**config["lora"])
    inject_lora(model, lora)
    own = dict(model.named_parameters())
    tensors = {k: v for k, v in tensors.items()
               if not (k == "value_head.weight" and not heads["value_head"]) and not (k == "score.weight"
                                                                                    and not heads["reward_head"])}
    check_shapes(tensors, {k: own[k].shape for k in tensors if k in own}, path)
    unexpected = sorted(set(tensors) - set(own))
    if unexpected:
        raise CheckpointError(f"{path}: tensors {unexpected} are not in the LoRA model of {config['base']!r}")
    model.load_state_dict(tensors, strict=False)
    model.lora_base = config["base"]
    if merge:
        merge_lora(model)
    return model


def save_model(path, model: Transformer, dtype: str = "bf16") -> Path:
    """Atomically write `model` as a minirl checkpoint directory."""
    return save_checkpoint(path, model.state_dict(), model.checkpoint_config(), dtype)
