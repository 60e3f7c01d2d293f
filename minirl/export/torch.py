"""Export a minirl Transformer as a plain PyTorch module that mirrors it.

`to_torch(model)` returns a `TorchTransformer` (defined in
`minirl.export.torch_model`, which reads class for class beside
`minirl.model`): the same Llama written in PyTorch, with the same attribute
names (`model.embed_tokens`, `model.layers[i].self_attn.q_proj`, ..., `lm_head`,
optional `value_head` and `score`). Its `state_dict()` keys are minirl's
`named_parameters()` names, so the weights are a key-for-key copy; its forward
follows minirl's conventions exactly, which makes it the oracle the parity
tests and the benchmark compare against.

    from minirl.export.torch import to_torch, export_torch, load_torch
    module = to_torch(model)                 # float32, same values
    logits = module(torch.tensor(tokens))    # (B, T, V)
    export_torch(model, "out/")              # out/model.pt, out/config.json (+ out/tokenizer.json)
    module = load_torch("out/")              # the same module again, minirl needed only for this code

torch is imported when one of these is first called, never when minirl (or
this module) is imported: they import `torch_model` inside. The mirror's
names (`TorchTransformer`, `greedy_generate`, ...) are reachable as attributes
of this module too, importing torch on first access.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from minirl.checkpoint import atomic_write
from minirl.export.hf import write_json
from minirl.model import TransformerConfig


def import_torch():
    """torch, or an ImportError that says how to install it."""
    try:
        import torch
    except ImportError as e:
        raise ImportError("minirl.export.torch needs PyTorch: pip install minirl[torch]") from e
    return torch


MIRROR_NAMES = ("RMSNorm", "rope_tables", "rotate_half", "KVCache", "LlamaAttention", "LlamaMLP",
                "LlamaDecoderLayer", "LlamaModel", "positions_and_mask", "TorchTransformer", "greedy_generate")
"""What `minirl.export.torch_model` defines, reachable here too."""


def __getattr__(name: str):
    """`minirl.export.torch.TorchTransformer` etc.: `torch_model`'s names, torch imported on first access."""
    if name in MIRROR_NAMES:
        import_torch()
        from minirl.export import torch_model
        return getattr(torch_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------- the API
def to_torch(model):
    """A float32 `TorchTransformer` holding a copy of `model`'s weights (state_dict keys = minirl's names)."""
    torch = import_torch()
    from minirl.export.torch_model import TorchTransformer

    module = TorchTransformer(model.config, getattr(model, "tokenizer", None))
    state = {name: torch.tensor(p.data, dtype=torch.float32) for name, p in model.named_parameters()}
    module.load_state_dict(state, strict=True)
    return module


def export_torch(model, out_dir: str | os.PathLike) -> Path:
    """Write `out_dir/model.pt` (the state_dict), `config.json` (TransformerConfig) and the tokenizer if any.

    Load it back with `minirl.export.torch.load_torch(out_dir)`, or by hand with
    `minirl.export.torch_model.TorchTransformer`:
    `m = TorchTransformer(TransformerConfig.from_dict(json.load(open("config.json"))));
    m.load_state_dict(torch.load("model.pt"))`.
    """
    torch = import_torch()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = to_torch(model).state_dict()
    atomic_write(out_dir / "model.pt", lambda tmp: torch.save(state, tmp))
    write_json(out_dir / "config.json", model.config.to_dict())
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        write_json(out_dir / "tokenizer.json", tokenizer.to_dict())
    return out_dir


def load_torch(path: str | os.PathLike):
    """The `TorchTransformer` written by `export_torch(model, path)`."""
    torch = import_torch()
    from minirl.export.torch_model import TorchTransformer

    path = Path(path)
    config = TransformerConfig.from_dict(json.loads((path / "config.json").read_text()))
    tokenizer = None
    if (path / "tokenizer.json").exists():
        from minirl.tasks.tokenizer import CharTokenizer
        tokenizer = CharTokenizer.from_dict(json.loads((path / "tokenizer.json").read_text()))
    module = TorchTransformer(config, tokenizer)
    module.load_state_dict(torch.load(path / "model.pt", weights_only=True), strict=True)
    return module
