"""LoRA adapters as a PEFT adapter directory, both ways (numpy + safetensors only).

PEFT (github.com/huggingface/peft) saves a LoRA adapter as two files, which
`export_peft` writes from a minirl model with LoRA (`minirl.lora`):

    adapter_config.json          PEFT's LoraConfig: peft_type "LORA", r, lora_alpha, lora_dropout,
                                 target_modules, bias "none", base_model_name_or_path, ...
    adapter_model.safetensors    the adapter tensors, float32 (metadata format "pt")

The tensor names are PEFT's `get_peft_model_state_dict` names: the base
model's module path under `base_model.model.`, the adapter name ("default")
removed:

    base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight   (r, in)
    base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight   (out, r)

so minirl's own name is the key minus its prefix. A reward model
(`reward_head=True`) is a sequence classifier (task_type "SEQ_CLS") whose
trained head PEFT keeps as a module to save, `base_model.model.score.weight`
(`modules_to_save: ["score"]`). PEFT has no place for minirl's value head: it
goes beside, into `minirl_heads.safetensors`, which PEFT ignores. With the
base model exported by `minirl.export.hf.export_hf(plain_model(model), base_dir)`,

    from peft import PeftModel
    from transformers import LlamaForCausalLM
    hf = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir), adapter_dir)

computes minirl's logits, and `hf.merge_and_unload()` is `minirl.lora.merge_lora`.
`load_peft` reads such a directory (PEFT's own or ours) onto a minirl base
model: plain LoRA on the decoder's linear layers; DoRA, rsLoRA, per-module
ranks, biases and the like are refused with an error naming the field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from minirl.checkpoint import atomic_write, read_header, read_tensor
from minirl.export.hf import write_json
from minirl.lora import HEADS, TARGETS, LoraConfig, adapter_shapes, inject_lora, lora_layers, lora_state_dict

PREFIX = "base_model.model."
"""What PEFT puts before the base model's parameter names in a saved adapter."""

CONFIG_FILE, WEIGHTS_FILE, HEADS_FILE = "adapter_config.json", "adapter_model.safetensors", "minirl_heads.safetensors"

PLAIN = {"bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
         "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None, "layers_pattern": None}
"""What adapter_config.json says of plain LoRA (written by `export_peft`; the value `load_peft` needs)."""

REFUSED = ("bias", "fan_in_fan_out", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "layers_to_transform",
           "lora_bias", "exclude_modules", "layer_replication", "target_parameters",
           "trainable_token_indices", "alora_invocation_tokens", "use_qalora", "use_bdlora", "arrow_config")
"""PEFT options that change which weights are adapted or how: `load_peft` refuses any that is set (true, non-empty)."""


def peft_config(model, base_name_or_path: str | None = None) -> dict:
    """adapter_config.json for a minirl model with LoRA (what PEFT's `LoraConfig.from_pretrained` reads)."""
    config = getattr(model, "lora_config", None)
    if config is None or not lora_layers(model):
        raise ValueError("this model has no LoRA adapters: inject_lora(model, config) first")
    seq_cls = model.config.reward_head
    return {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS" if seq_cls else "CAUSAL_LM",
        "base_model_name_or_path": base_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": config.lora_rank,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": list(config.lora_targets),
        "modules_to_save": ["score"] if seq_cls else None,
        "init_lora_weights": True,
        **PLAIN,
    }


def export_peft(model, out_dir: str | os.PathLike, base_name_or_path: str | os.PathLike | None = None) -> Path:
    """Write the adapters of `model` (and its trained heads) as a PEFT LoRA adapter directory."""
    base = None if base_name_or_path is None else str(base_name_or_path)
    config = peft_config(model, base)
    if any(layer.merged for layer in lora_layers(model).values()):
        raise ValueError("the model's adapters are merged into its weights: unmerge_lora(model) before export_peft")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {PREFIX + name: np.ascontiguousarray(w, dtype=np.float32) for name, w in lora_state_dict(model).items()}
    heads = {}
    if model.config.reward_head:  # PEFT's modules_to_save keep the base module's name
        tensors[PREFIX + "score.weight"] = np.ascontiguousarray(model.score.weight.data, dtype=np.float32)
    if model.config.value_head:
        heads["value_head.weight"] = np.ascontiguousarray(model.value_head.weight.data, dtype=np.float32)
    atomic_write(out_dir / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    if heads:
        atomic_write(out_dir / HEADS_FILE, lambda tmp: save_file(heads, tmp, metadata={
            "format": "pt", "note": "minirl's value head, which a PEFT adapter has no place for"}))
    elif (out_dir / HEADS_FILE).exists():
        (out_dir / HEADS_FILE).unlink()  # a stale file from an earlier export of another model
    write_json(out_dir / CONFIG_FILE, config)
    return out_dir


def lora_config_from_peft(adapter: dict, where: str = CONFIG_FILE) -> LoraConfig:
    """minirl's LoraConfig for a PEFT adapter_config.json dict; ValueError naming the field it cannot follow."""
    if adapter.get("peft_type") != "LORA":
        raise ValueError(f"{where}: peft_type must be 'LORA' (minirl loads only LoRA adapters), "
                         f"got {adapter.get('peft_type')!r}")
    for key in REFUSED:
        value = adapter.get(key)
        if value and value != PLAIN.get(key):  # absent, null, false, {} and [] all mean "not used"
            raise ValueError(f"{where}: {key} must be {PLAIN.get(key)!r} (unset) for minirl's plain LoRA, "
                             f"got {value!r}")
    targets = adapter.get("target_modules")
    if targets == "all-linear":  # PEFT's shorthand: every linear layer but the output head
        targets = list(TARGETS)
    if isinstance(targets, str) or not targets:
        raise ValueError(f"{where}: target_modules must be a list of module names among {', '.join(TARGETS)} "
                         f"(a regular expression is not supported), got {targets!r}")
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise ValueError(f"{where}: target_modules {unknown} are not decoder linear layers; "
                         f"minirl adapts {', '.join(TARGETS)}")
    # PEFT keeps target_modules as a set; adapt in the model's own order
    return LoraConfig(lora_rank=int(adapter.get("r", 8)), lora_alpha=float(adapter.get("lora_alpha", 8)),  # PEFT's defaults
                      lora_dropout=float(adapter.get("lora_dropout", 0.0)),
                      lora_targets=tuple(t for t in TARGETS if t in targets))


def load_peft(model, adapter_dir: str | os.PathLike, seed: int = 0) -> list[str]:
    """Inject LoRA as a PEFT adapter directory describes it into a minirl base model and load its tensors.

    Everything is checked (config, names, shapes) before the model changes.
    Returns the adapted module names.
    """
    adapter_dir = Path(adapter_dir)
    config_path, weights_path = adapter_dir / CONFIG_FILE, adapter_dir / WEIGHTS_FILE
    if not config_path.exists():
        raise ValueError(f"{adapter_dir}: no {CONFIG_FILE}; not a PEFT adapter directory")
    if not weights_path.exists():
        raise ValueError(f"{adapter_dir}: no {WEIGHTS_FILE} (minirl reads safetensors adapters only)")
    config = lora_config_from_peft(json.loads(config_path.read_text()), str(config_path))
    if lora_layers(model):
        raise ValueError("this model already has LoRA adapters; load_peft needs a base model")

    # 1) names and shapes against what inject_lora will make
    tensors = {key.removeprefix(PREFIX).replace(".default.", "."): value  # also a state dict saved with its adapter name
               for key, value in _read_safetensors(weights_path).items()}
    expected = adapter_shapes(model, config)
    heads = {name: tensors.pop(name) for name in list(tensors) if name.split(".")[0] in HEADS}
    if (adapter_dir / HEADS_FILE).exists():
        heads.update(_read_safetensors(adapter_dir / HEADS_FILE))
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{weights_path}: adapter tensors do not match r={config.lora_rank}, target_modules="
                         f"{list(config.lora_targets)} on this model: missing {missing}, unexpected {unexpected}")
    own = dict(model.named_parameters())
    for name, value in [*tensors.items(), *heads.items()]:
        shape = expected[name] if name in expected else own[name].shape if name in own else None
        if shape is None:
            raise ValueError(f"{weights_path}: head {name} has no place in this model "
                             f"(TransformerConfig.value_head / reward_head)")
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"{weights_path}: tensor {name} has shape {tuple(value.shape)}, "
                             f"this model needs {tuple(shape)}")

    # 2) inject, then copy
    names = inject_lora(model, config, seed=seed)
    own = dict(model.named_parameters())
    for name, value in [*tensors.items(), *heads.items()]:
        own[name].data[...] = value
    return names


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    """Every tensor of one .safetensors file as float32 (bf16 and fp16 adapters too)."""
    infos, _ = read_header(file)
    return {name: read_tensor(info) for name, info in infos.items()}
