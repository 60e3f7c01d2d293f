"""Export a minirl Transformer as a plain PyTorch module that mirrors it.

`to_torch(model)` returns a `TorchTransformer`: the same Llama written in
PyTorch, with the same class structure and attribute names as `minirl.model`
(`model.embed_tokens`, `model.layers[i].self_attn.q_proj`, ..., `lm_head`,
optional `value_head` and `score`). Its `state_dict()` keys are minirl's
`named_parameters()` names, so the weights are a key-for-key copy; its forward
follows minirl's conventions exactly (float64 rotary tables, left padding with
positions counting real tokens only, masked scores set to -1e9), which makes it
the oracle the parity tests and the benchmark compare against.

    from minirl.export.torch import to_torch, export_torch, load_torch
    module = to_torch(model)                 # float32, same values
    logits = module(torch.tensor(tokens))    # (B, T, V)
    export_torch(model, "out/")              # out/model.pt, out/config.json (+ out/tokenizer.json)
    module = load_torch("out/")              # the same module again, minirl needed only for this code

torch is imported when one of these is first called, never when minirl is
imported; `TorchTransformer` and friends are defined at that moment too
(`torch_classes()`), and are reachable as attributes of this module.

Legend: B=batch, T=new positions, S=key positions, C=hidden size,
H=query heads, K=key/value heads, G=H/K group size, D=head dim, V=vocabulary.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from types import SimpleNamespace

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


@functools.cache
def torch_classes() -> SimpleNamespace:
    """The mirror's torch classes, defined on first use so that importing minirl never imports torch."""
    torch = import_torch()
    nn = torch.nn

    class RMSNorm(nn.Module):
        def __init__(self, dim: int, eps: float):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))
            self.eps = eps

        def forward(self, x):  # (..., C) -> (..., C)
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    def rope_tables(positions, head_dim: int, theta: float):
        """cos, sin (B, 1, T, D) for positions (B, T); angles in float64 as minirl computes them."""
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (D/2,)
        angles = positions[:, None, :, None].double() * inv_freq  # (B, 1, T, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (B, 1, T, D)
        return angles.cos().float(), angles.sin().float()

    def rotate_half(x):
        """Hugging Face's rotate_half: [x1, x2] -> [-x2, x1]."""
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)

    def positions_and_mask(attention_mask, T: int, offset: int):
        """minirl.model.positions_and_mask in torch: positions (B, T) and mask (B, 1, T, S)."""
        key_ok = attention_mask.bool()  # (B, S)
        S = key_ok.shape[1]
        positions = (key_ok.long().cumsum(1) - 1).clamp(min=0)[:, S - T:]  # (B, T)
        causal = torch.arange(S)[None, :] <= (offset + torch.arange(T))[:, None]  # (T, S)
        return positions, key_ok[:, None, None, :] & causal

    class KVCache:
        """Per-layer key/value buffers (B, K, S_max, D), as minirl.model.KVCache."""

        def __init__(self, config: TransformerConfig, batch_size: int, max_len: int):
            shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
            self.k = [torch.zeros(shape) for _ in range(config.num_hidden_layers)]
            self.v = [torch.zeros(shape) for _ in range(config.num_hidden_layers)]
            self.length = 0

        def update(self, layer: int, k, v):
            end = self.length + k.shape[2]
            self.k[layer][:, :, self.length:end] = k
            self.v[layer][:, :, self.length:end] = v
            return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    class LlamaAttention(nn.Module):
        def __init__(self, cfg: TransformerConfig):
            super().__init__()
            H, K, D, C = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
            self.q_proj = nn.Linear(C, H * D, bias=False)
            self.k_proj = nn.Linear(C, K * D, bias=False)
            self.v_proj = nn.Linear(C, K * D, bias=False)
            self.o_proj = nn.Linear(H * D, C, bias=False)
            self.shape = (H, K, D)

        def forward(self, x, cos, sin, mask, cache=None, layer: int = 0):
            B, T, C = x.shape
            H, K, D = self.shape
            q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
            k = self.k_proj(x).view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
            v = self.v_proj(x).view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            if cache is not None:
                k, v = cache.update(layer, k, v)  # (B, K, S, D)
            if H != K:  # grouped KV heads: query head h reads kv head h // G, as HF's repeat_kv
                k = k.repeat_interleave(H // K, dim=1)  # (B, H, S, D)
                v = v.repeat_interleave(H // K, dim=1)
            scores = q @ k.transpose(-1, -2) / D**0.5  # (B, H, T, S)
            scores = scores.masked_fill(~mask, -1e9)  # a row with no allowed key attends uniformly, as minirl
            y = scores.softmax(dim=-1) @ v  # (B, H, T, D)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))

    class LlamaMLP(nn.Module):
        def __init__(self, cfg: TransformerConfig):
            super().__init__()
            C, I = cfg.hidden_size, cfg.intermediate_size
            self.gate_proj = nn.Linear(C, I, bias=False)
            self.up_proj = nn.Linear(C, I, bias=False)
            self.down_proj = nn.Linear(I, C, bias=False)

        def forward(self, x):  # (B, T, C) -> (B, T, C)
            return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))

    class LlamaDecoderLayer(nn.Module):
        def __init__(self, cfg: TransformerConfig):
            super().__init__()
            self.self_attn = LlamaAttention(cfg)
            self.mlp = LlamaMLP(cfg)
            self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

        def forward(self, x, cos, sin, mask, cache=None, layer: int = 0):
            x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
            return x + self.mlp(self.post_attention_layernorm(x))

    class LlamaModel(nn.Module):
        def __init__(self, cfg: TransformerConfig):
            super().__init__()
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
            self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    class TorchTransformer(nn.Module):
        """minirl.model.Transformer in PyTorch: LlamaForCausalLM with optional value and reward heads."""

        def __init__(self, config: TransformerConfig, tokenizer=None):
            super().__init__()
            self.config = config
            self.tokenizer = tokenizer
            self.model = LlamaModel(config)
            C = config.hidden_size
            self.lm_head = None if config.tie_word_embeddings else nn.Linear(C, config.vocab_size, bias=False)
            if config.value_head:
                self.value_head = nn.Linear(C, 1, bias=False)
            if config.reward_head:
                self.score = nn.Linear(C, 1, bias=False)

        def hidden_states(self, tokens, attention_mask=None, cache=None):
            """The final normed residual stream (B, T, C)."""
            B, T = tokens.shape
            offset = cache.length if cache is not None else 0
            if offset + T > self.config.max_position_embeddings:
                raise ValueError(f"sequence of {offset + T} tokens exceeds max_position_embeddings="
                                 f"{self.config.max_position_embeddings}")
            if attention_mask is None:
                attention_mask = torch.ones(B, offset + T, dtype=torch.bool)
            positions, mask = positions_and_mask(attention_mask, T, offset)
            cos, sin = rope_tables(positions, self.config.head_dim, self.config.rope_theta)
            x = self.model.embed_tokens(tokens)  # (B, T, C)
            for i, layer in enumerate(self.model.layers):
                x = layer(x, cos, sin, mask, cache, i)
            if cache is not None:
                cache.length += T
            return self.model.norm(x)

        def logits(self, h):
            """(B, T, C) -> (B, T, V)."""
            weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
            return h @ weight.T

        def values(self, h):
            """Value head: (B, T, C) -> (B, T)."""
            return self.value_head(h)[..., 0]

        def rewards(self, tokens, attention_mask=None):
            """Reward head on each row's last real token: (B, T) -> (B,)."""
            mask = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            last = tokens.shape[1] - 1 - mask.flip(1).long().argmax(1)  # (B,)
            h = self.hidden_states(tokens, mask)
            return self.score(h[torch.arange(tokens.shape[0]), last])[:, 0]

        def forward(self, tokens, attention_mask=None, cache=None):
            """Logits (B, T, V) for token ids (B, T)."""
            return self.logits(self.hidden_states(tokens, attention_mask, cache))

    @torch.no_grad()
    def greedy_generate(module, prompt_ids, prompt_mask, max_new_tokens: int, eos_id: int, pad_id: int):
        """minirl's greedy `generate` with a KV cache: tokens (B, P + N), each row stopped at eos."""
        B, P = prompt_ids.shape
        N = min(max_new_tokens, module.config.max_position_embeddings - P)
        tokens = torch.cat([prompt_ids, torch.full((B, N), pad_id, dtype=prompt_ids.dtype)], dim=1)
        mask = torch.cat([prompt_mask.bool(), torch.zeros(B, N, dtype=torch.bool)], dim=1)
        done = torch.zeros(B, dtype=torch.bool)
        cache = KVCache(module.config, B, P + N)
        logits = module(prompt_ids, prompt_mask, cache)[:, -1]  # (B, V)
        for t in range(N):
            nxt = torch.where(done, pad_id, logits.argmax(-1))
            tokens[:, P + t] = nxt
            mask[:, P + t] = ~done
            done |= nxt == eos_id
            if bool(done.all()) or t == N - 1:
                break
            logits = module(tokens[:, P + t:P + t + 1], mask[:, :P + t + 1], cache)[:, -1]
        return tokens, mask

    return SimpleNamespace(RMSNorm=RMSNorm, LlamaAttention=LlamaAttention, LlamaMLP=LlamaMLP,
                           LlamaDecoderLayer=LlamaDecoderLayer, LlamaModel=LlamaModel,
                           TorchTransformer=TorchTransformer, KVCache=KVCache, rope_tables=rope_tables,
                           positions_and_mask=positions_and_mask, greedy_generate=greedy_generate)


def __getattr__(name: str):
    """`minirl.export.torch.TorchTransformer` etc., built (and torch imported) on first access."""
    if name in ("RMSNorm", "LlamaAttention", "LlamaMLP", "LlamaDecoderLayer", "LlamaModel", "TorchTransformer",
                "KVCache", "rope_tables", "positions_and_mask", "greedy_generate"):
        return getattr(torch_classes(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------- the API
def to_torch(model):
    """A float32 `TorchTransformer` holding a copy of `model`'s weights (state_dict keys = minirl's names)."""
    torch = import_torch()
    module = torch_classes().TorchTransformer(model.config, getattr(model, "tokenizer", None))
    state = {name: torch.tensor(p.data, dtype=torch.float32) for name, p in model.named_parameters()}
    module.load_state_dict(state, strict=True)
    return module


def export_torch(model, out_dir: str | os.PathLike) -> Path:
    """Write `out_dir/model.pt` (the state_dict), `config.json` (TransformerConfig) and the tokenizer if any.

    Load it back with `minirl.export.torch.load_torch(out_dir)`, or by hand:
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
    path = Path(path)
    config = TransformerConfig.from_dict(json.loads((path / "config.json").read_text()))
    tokenizer = None
    if (path / "tokenizer.json").exists():
        from minirl.tasks.tokenizer import CharTokenizer
        tokenizer = CharTokenizer.from_dict(json.loads((path / "tokenizer.json").read_text()))
    module = torch_classes().TorchTransformer(config, tokenizer)
    module.load_state_dict(torch.load(path / "model.pt", weights_only=True), strict=True)
    return module
