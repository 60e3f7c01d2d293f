"""minirl.model in PyTorch: the same Llama, class for class, to read beside model.py.

Every class and attribute has the name it has in `minirl.model` (and so in
Hugging Face's `modeling_llama.py`): `TorchTransformer.model.layers[i].self_attn.q_proj`
is minirl's `Transformer.model.layers[i].self_attn.q_proj`, and `state_dict()`
keys are minirl's `named_parameters()` names. The forward follows minirl's
conventions exactly (float64 rotary tables, left padding with positions that
count real tokens only, masked scores set to -1e9), so this module is the
oracle the parity tests and the benchmark compare minirl against. The classes
come in model.py's order; what minirl takes from `minirl.nn` and
`minirl.functional` (RMSNorm, rotary tables) is written out first.

This module imports torch; `minirl.export.torch` (to_torch, export_torch,
load_torch) imports it only when called, so importing minirl never needs torch.

Legend: B=batch, T=new positions, S=key positions, C=hidden size,
H=query heads, K=key/value heads, G=H/K group size, D=head dim, V=vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from minirl.model import TransformerConfig


# ------------------------------------------- minirl.nn / minirl.functional
class RMSNorm(nn.Module):
    """Root-mean-square normalisation with a learned gain, initialised to 1."""

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


# ------------------------------------------------------------ minirl.model
class KVCache:
    """Per-layer key/value buffers for incremental decoding: (B, K, S_max, D) each."""

    def __init__(self, config: TransformerConfig, batch_size: int, max_len: int):
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape) for _ in range(config.num_hidden_layers)]
        self.length = 0

    def update(self, layer: int, k, v):
        """Append this step's keys/values (B, K, T, D); return all so far (B, K, S, D)."""
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

    def forward(self, x, cos, sin, mask, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        H, K, D = self.shape
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(B, T, K, D).transpose(1, 2)  # (B, K, T, D)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin  # F.rope
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, K, S, D)
        # F.attention, written out:
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
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))  # F.swiglu


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = LlamaAttention(cfg)
        self.mlp = LlamaMLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache: KVCache | None = None, layer: int = 0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


def positions_and_mask(attention_mask, T: int, offset: int):
    """Rotary positions (B, T) and the boolean attention mask (B, 1, T, S) for the last T of S positions.

    Left padding is allowed: a row's positions count only its real tokens, so
    a padded prompt sees the same positions as the unpadded one.
    """
    key_ok = attention_mask.bool()  # (B, S)
    S = key_ok.shape[1]
    positions = (key_ok.long().cumsum(1) - 1).clamp(min=0)[:, S - T:]  # (B, T)
    causal = torch.arange(S)[None, :] <= (offset + torch.arange(T))[:, None]  # (T, S)
    return positions, key_ok[:, None, None, :] & causal


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

    # ------------------------------------------------------------- forward
    def hidden_states(self, tokens, attention_mask=None, cache: KVCache | None = None):
        """The final normed residual stream (B, T, C)."""
        B, T = tokens.shape
        offset = cache.length if cache is not None else 0
        if offset + T > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {offset + T} tokens exceeds max_position_embeddings="
                             f"{self.config.max_position_embeddings}")
        if attention_mask is None:
            attention_mask = torch.ones(B, offset + T, dtype=torch.bool)
        positions, mask = positions_and_mask(attention_mask, T, offset)
        cos, sin = rope_tables(positions, self.config.head_dim, self.config.rope_theta)  # (B, 1, T, D)
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

    def forward(self, tokens, attention_mask=None, cache: KVCache | None = None):
        """Logits (B, T, V) for token ids (B, T)."""
        return self.logits(self.hidden_states(tokens, attention_mask, cache))


# ------------------------------------------------------------ generate
@torch.no_grad()
def greedy_generate(module: TorchTransformer, prompt_ids, prompt_mask, max_new_tokens: int, eos_id: int, pad_id: int):
    """minirl's greedy `generate` with a KV cache: tokens and mask (B, P + N), each row stopped at eos.

    prompt_ids and prompt_mask (B, P) are left-padded, as `minirl.model.left_pad` makes them.
    """
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
