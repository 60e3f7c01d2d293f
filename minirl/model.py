"""A tiny Llama: RMSNorm, rotary embeddings, SwiGLU, no biases, grouped KV heads.

The architecture and every parameter name follow Hugging Face's
`transformers/models/llama/modeling_llama.py` (LlamaForCausalLM), so
`model.layers.0.self_attn.q_proj.weight` here is the same tensor there and
export is a key-for-key copy. Optional heads: a scalar value head
(`value_head`, for PPO) and a scalar reward head (`score`, the name of
LlamaForSequenceClassification's head).

Legend: B=batch, T=new positions, S=key positions, C=hidden size,
H=query heads, K=key/value heads, D=head dim, V=vocabulary.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import asdict, dataclass, fields

import numpy as np

from minirl import functional as F
from minirl.nn import Embedding, Linear, Module, RMSNorm
from minirl.tensor import Tensor, no_grad


@dataclass
class TransformerConfig:
    """Shape of the model; field names are Hugging Face LlamaConfig's."""

    vocab_size: int = 52
    """Number of token ids (the tokenizer's vocabulary)."""
    hidden_size: int = 64
    """Width C of the residual stream."""
    intermediate_size: int = 176
    """Width of the SwiGLU MLP."""
    num_hidden_layers: int = 4
    """Number of decoder blocks."""
    num_attention_heads: int = 4
    """Query heads H; head dim D = hidden_size / H."""
    num_key_value_heads: int = 4
    """Key/value heads K (grouped-query attention when K < H)."""
    max_position_embeddings: int = 64
    """Longest sequence the model is used on."""
    rms_norm_eps: float = 1e-6
    """Epsilon inside RMSNorm."""
    rope_theta: float = 10000.0
    """Base of the rotary frequencies."""
    tie_word_embeddings: bool = False
    """Use the embedding matrix as the output projection."""
    initializer_range: float = 0.02
    """Std of the normal initialisation of every matrix."""
    value_head: bool = False
    """Add a scalar value head `value_head` (PPO's critic on the policy trunk)."""
    reward_head: bool = False
    """Add a scalar reward head `score` (a reward model)."""

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TransformerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"TransformerConfig.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"TransformerConfig.num_attention_heads ({self.num_attention_heads}) must be a "
                             f"multiple of num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ValueError(f"TransformerConfig.hidden_size / num_attention_heads (head dim {self.head_dim}) "
                             "must be even for rotary embeddings")
        if self.rms_norm_eps <= 0:
            raise ValueError(f"TransformerConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps}")
        if not self.rope_theta > 0:
            raise ValueError(f"TransformerConfig.rope_theta must be > 0, got {self.rope_theta}")
        if not self.initializer_range >= 0:
            raise ValueError(f"TransformerConfig.initializer_range must be >= 0, got {self.initializer_range}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class KVCache:
    """Per-layer key/value buffers for incremental decoding: (B, K, S_max, D) each."""

    def __init__(self, config: TransformerConfig, batch_size: int, max_len: int, dtype=np.float32):
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [np.zeros(shape, dtype) for _ in range(config.num_hidden_layers)]
        self.v = [np.zeros(shape, dtype) for _ in range(config.num_hidden_layers)]
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this step's keys/values (B, K, T, D); return all so far (B, K, S, D)."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k.data
        self.v[layer][:, :, self.length:end] = v.data
        return Tensor(self.k[layer][:, :, :end]), Tensor(self.v[layer][:, :, :end])

    def take(self, rows: np.ndarray) -> "KVCache":
        """A cache holding rows `rows` of this one (a row may repeat), at the same length."""
        out = copy.copy(self)
        out.k = [k[rows] for k in self.k]  # (len(rows), K, S_max, D): zeros past `length`, as in a new cache
        out.v = [v[rows] for v in self.v]
        return out


class LlamaAttention(Module):
    def __init__(self, cfg: TransformerConfig, rng: np.random.Generator):
        H, K, D, C, std = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size, cfg.initializer_range
        self.q_proj = Linear(C, H * D, rng, std)
        self.k_proj = Linear(C, K * D, rng, std)
        self.v_proj = Linear(C, K * D, rng, std)
        self.o_proj = Linear(H * D, C, rng, std)
        self.shape = (H, K, D)

    def __call__(self, x: Tensor, rope: dict, mask, cache: KVCache | None, layer: int) -> Tensor:
        """`rope`: heads -> cos, sin for q (H heads) and k (K heads), from `rope_for_heads`."""
        B, T, C = x.shape
        H, K, D = self.shape
        q = self.q_proj(x).reshape(B, T, H, D).transpose(0, 2, 1, 3)  # (B, H, T, D)
        k = self.k_proj(x).reshape(B, T, K, D).transpose(0, 2, 1, 3)  # (B, K, T, D)
        v = self.v_proj(x).reshape(B, T, K, D).transpose(0, 2, 1, 3)  # (B, K, T, D)
        q, k = F.rope(q, *rope[H]), F.rope(k, *rope[K])
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, K, S, D)
        y = F.attention(q, k, v, mask)  # (B, H, T, D)
        return self.o_proj(y.transpose(0, 2, 1, 3).reshape(B, T, H * D))


class LlamaMLP(Module):
    def __init__(self, cfg: TransformerConfig, rng: np.random.Generator):
        C, I, std = cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range
        self.gate_proj = Linear(C, I, rng, std)
        self.up_proj = Linear(C, I, rng, std)
        self.down_proj = Linear(I, C, rng, std)

    def __call__(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, C)
        return self.down_proj(F.swiglu(self.gate_proj(x), self.up_proj(x)))


class LlamaDecoderLayer(Module):
    def __init__(self, cfg: TransformerConfig, rng: np.random.Generator):
        self.self_attn = LlamaAttention(cfg, rng)
        self.mlp = LlamaMLP(cfg, rng)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def __call__(self, x, rope, mask, cache, layer):
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(Module):
    def __init__(self, cfg: TransformerConfig, rng: np.random.Generator):
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, rng, cfg.initializer_range)
        self.layers = [LlamaDecoderLayer(cfg, rng) for _ in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


def positions_and_mask(attention_mask: np.ndarray, T: int, offset: int):
    """Rotary positions (B, T) and the boolean attention mask (B, 1, T, S) for the last T of S positions.

    Left padding is allowed: a row's positions count only its real tokens, so
    a padded prompt sees the same positions as the unpadded one.
    """
    key_ok = attention_mask.astype(bool)  # (B, S)
    S = key_ok.shape[1]
    positions = np.maximum(np.cumsum(key_ok, axis=1) - 1, 0)[:, S - T:]  # (B, T)
    causal = np.arange(S)[None, :] <= (offset + np.arange(T))[:, None]  # (T, S)
    return positions, key_ok[:, None, None, :] & causal[None, None]


@functools.lru_cache(maxsize=16)
def _rope_table(max_len: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (max_len, D) of every position, computed once."""
    cos, sin = F.rope_tables(np.arange(max_len), head_dim, theta)
    cos.flags.writeable = sin.flags.writeable = False  # shared by every call
    return cos, sin


def rope_lookup(positions: np.ndarray, config: TransformerConfig) -> tuple[np.ndarray, np.ndarray]:
    """`F.rope_tables(positions, ...)` read from a table of every position (each entry is computed alone, so the
    bits are the same; `functional.reference_ops()` computes them afresh)."""
    if F._reference:
        return F.rope_tables(positions, config.head_dim, config.rope_theta)
    cos, sin = _rope_table(config.max_position_embeddings, config.head_dim, config.rope_theta)
    return cos[positions], sin[positions]


def rope_for_heads(cos: np.ndarray, sin: np.ndarray, heads: tuple[int, ...]) -> dict:
    """heads n -> cos, sin (B, 1, T, D) expanded to (B, n, T, D) and laid out in memory as (B, T, n, D).

    That is the layout of q and k (the (B, T, n*D) projections seen as (B, n, T, D)), so `F.rope`'s
    products run over contiguous memory instead of inner loops of D elements (the same values;
    `functional.reference_ops()` passes the tables as they are).
    """
    if F._reference:
        return {n: (cos, sin) for n in heads}
    B, _, T, D = cos.shape

    def expand(table: np.ndarray, n: int) -> np.ndarray:
        full = np.empty((B, T, n, D), dtype=table.dtype)
        full[...] = table.transpose(0, 2, 1, 3)  # (B, T, 1, D) over the n heads
        return full.transpose(0, 2, 1, 3)  # (B, n, T, D)

    return {n: (expand(cos, n), expand(sin, n)) for n in set(heads)}


class Transformer(Module):
    """LlamaForCausalLM with optional value and reward heads."""

    def __init__(self, config: TransformerConfig, seed: int = 0, tokenizer=None):
        rng = np.random.default_rng(seed)
        self.config = config
        self.tokenizer = tokenizer
        self.model = LlamaModel(config, rng)
        self.lm_head = None if config.tie_word_embeddings else Linear(config.hidden_size, config.vocab_size, rng, config.initializer_range)
        if config.value_head:
            self.value_head = Linear(config.hidden_size, 1, rng, 0.0)
        if config.reward_head:
            self.score = Linear(config.hidden_size, 1, rng, config.initializer_range)

    def checkpoint_config(self) -> dict:
        """What config.json of a checkpoint holds: the model's shape and its tokenizer."""
        tok = self.tokenizer.to_dict() if self.tokenizer is not None else None
        return {"model": self.config.to_dict(), "tokenizer": tok}

    # ------------------------------------------------------------- forward
    def hidden_states(self, tokens, attention_mask=None, cache: KVCache | None = None) -> Tensor:
        """The final normed residual stream (B, T, C)."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be a (batch, time) array of ids, got shape {tokens.shape}")
        B, T = tokens.shape
        offset = cache.length if cache is not None else 0
        if offset + T > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {offset + T} tokens exceeds max_position_embeddings="
                             f"{self.config.max_position_embeddings}")
        if attention_mask is None:
            attention_mask = np.ones((B, offset + T), dtype=bool)
        positions, mask = positions_and_mask(np.asarray(attention_mask), T, offset)
        mask = F.mask_bias(mask)  # computed once, added in every layer
        cos, sin = rope_lookup(positions[:, None, :], self.config)  # (B, 1, T, D)
        rope = rope_for_heads(cos, sin, (self.config.num_attention_heads, self.config.num_key_value_heads))
        x = self.model.embed_tokens(tokens)  # (B, T, C)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, rope, mask, cache, i)
        if cache is not None:
            cache.length += T
        return self.model.norm(x)

    def logits(self, h: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, V)."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight)

    def values(self, h: Tensor) -> Tensor:
        """Value head: (B, T, C) -> (B, T)."""
        if not self.config.value_head:
            raise ValueError("this model has no value head (TransformerConfig.value_head=False)")
        v = self.value_head(h)
        return v.reshape(v.shape[:-1])

    def rewards(self, tokens, attention_mask=None) -> Tensor:
        """Reward head on each row's last real token: (B, T) -> (B,)."""
        if not self.config.reward_head:
            raise ValueError("this model has no reward head (TransformerConfig.reward_head=False)")
        tokens = np.asarray(tokens)
        mask = np.ones(tokens.shape, bool) if attention_mask is None else np.asarray(attention_mask, bool)
        last = tokens.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)  # (B,)
        h = self.hidden_states(tokens, mask)
        r = self.score(h[np.arange(tokens.shape[0]), last])  # (B, 1)
        return r.reshape(-1)

    def __call__(self, tokens, attention_mask=None, cache: KVCache | None = None) -> Tensor:
        """Logits (B, T, V) for token ids (B, T)."""
        return self.logits(self.hidden_states(tokens, attention_mask, cache))

    # ------------------------------------------------------------ generate
    def generate(self, prompts: list[list[int]], max_new_tokens: int, rng: np.random.Generator | None = None,
                 temperature: float = 1.0, top_k: int | None = None, greedy: bool = False) -> "Generation":
        """Sample completions for a batch of prompts with a KV cache (see `Generation`)."""
        return generate(self, prompts, max_new_tokens, rng, temperature, top_k, greedy)


@dataclass
class Generation:
    """A batch of prompts (left-padded) followed by their sampled completions."""

    tokens: np.ndarray
    """(B, P + N) prompt ids left-padded to P, then completion ids, pad after eos."""
    attention_mask: np.ndarray
    """(B, P + N) 1 on real prompt tokens and on completion tokens up to and including eos."""
    prompt_len: int
    """P: where completions start."""
    completion_mask: np.ndarray
    """(B, N) float32, 1 on generated tokens up to and including eos."""
    logprobs: np.ndarray
    """(B, N) log-probability of each sampled token under the sampling distribution (0 off the mask)."""

    @property
    def completions(self) -> np.ndarray:
        return self.tokens[:, self.prompt_len:]

    def take(self, idx: np.ndarray) -> "Generation":
        """The rows `idx` of the batch (P stays: the prompts keep their left padding)."""
        return Generation(tokens=self.tokens[idx], attention_mask=self.attention_mask[idx], prompt_len=self.prompt_len,
                          completion_mask=self.completion_mask[idx], logprobs=self.logprobs[idx])

    def texts(self, tokenizer) -> list[str]:
        """Each completion decoded, cut at its first eos."""
        out = []
        for row in self.completions:
            ends = np.flatnonzero(row == tokenizer.eos_id)
            out.append(tokenizer.decode(row[:ends[0]] if ends.size else row))
        return out


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad id lists to one length: tokens (B, P) and mask (B, P)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token id lists")
    P = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), P), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), P), dtype=bool)
    for i, p in enumerate(prompts):
        tokens[i, P - len(p):] = p
        mask[i, P - len(p):] = True
    return tokens, mask


def generate(model: Transformer, prompts, max_new_tokens, rng=None, temperature=1.0, top_k=None, greedy=False) -> Generation:
    """Batched sampling with a KV cache; stops each row at eos and the batch when all rows stop."""
    tok = model.tokenizer
    if tok is None:
        raise ValueError("model has no tokenizer; load it with minirl.load() or set model.tokenizer")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature must be > 0 (or use greedy=True), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if not greedy and rng is None:
        raise ValueError("sampling needs an explicit rng=np.random.Generator (or greedy=True)")
    prompt_ids, prompt_mask = left_pad(prompts, tok.pad_id)
    B, P = prompt_ids.shape
    N = min(max_new_tokens, model.config.max_position_embeddings - P)
    if N < 1:
        raise ValueError(f"prompts of {P} tokens leave no room under max_position_embeddings="
                         f"{model.config.max_position_embeddings}")
    tokens = np.concatenate([prompt_ids, np.full((B, N), tok.pad_id, np.int64)], axis=1)
    mask = np.concatenate([prompt_mask, np.zeros((B, N), bool)], axis=1)
    logprobs = np.zeros((B, N), np.float32)
    done = np.zeros(B, bool)
    with no_grad():
        logits, cache = prefill(model, prompt_ids, prompt_mask, P + N)  # (B, V), the prompts' keys and values
        for t in range(N):
            logits = logits.astype(np.float64)
            if greedy:
                logp = logits - _logsumexp(logits)
                nxt = logits.argmax(axis=-1)
            else:
                z = logits / temperature
                if top_k is not None and top_k < z.shape[-1]:
                    kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
                    z = np.where(z < kth, -np.inf, z)
                logp = z - _logsumexp(z)
                cdf = np.cumsum(np.exp(logp), axis=-1)
                nxt = (cdf < rng.random((B, 1)) * cdf[:, -1:]).sum(axis=-1)
                nxt = np.minimum(nxt, z.shape[-1] - 1)
            nxt = np.where(done, tok.pad_id, nxt)
            tokens[:, P + t] = nxt
            mask[:, P + t] = ~done
            logprobs[:, t] = np.where(done, 0.0, logp[np.arange(B), nxt])
            done |= nxt == tok.eos_id
            if done.all() or t == N - 1:
                break
            logits = model(tokens[:, P + t:P + t + 1], mask[:, :P + t + 1], cache).data[:, -1]
    return Generation(tokens=tokens, attention_mask=mask, prompt_len=P,
                      completion_mask=mask[:, P:].astype(np.float32), logprobs=logprobs)


SAME_ROWS_MIN = 16384
"""Rows x narrowest matrix width from which `prefill` runs repeated prompts once (see there)."""


def prefill(model: Transformer, prompt_ids: np.ndarray, prompt_mask: np.ndarray,
            max_len: int) -> tuple[np.ndarray, KVCache]:
    """The prompts' forward: last-position logits (B, V) and a KV cache of `max_len` holding their P positions.

    A rollout repeats each prompt G times. Every op of the forward computes a
    row from that row alone, so the forward runs once per distinct prompt (in a
    cache of the same length, hence the same strides) and its cache rows and
    logits are copied to the repeats: the bits are those of the whole batch's
    forward as long as BLAS gives each row of `x @ W.T` the same bits whatever
    the number of rows. OpenBLAS does once M·N > 1200 (below that its
    small-matrix kernel may take over on Skylake-X), so repeats are only folded
    when rows x the narrowest matrix is at least SAME_ROWS_MIN. Another BLAS
    may round a row differently in a smaller batch: the folded prefill is then
    as valid, with other rounding (still deterministic), and
    `tests/test_speed_bitwise.py` probes for it and skips its bitwise checks.
    `functional.reference_ops()` switches it off (the plain whole-batch forward).
    """
    B, P = prompt_ids.shape
    if not F._reference and B > 1:
        key = np.concatenate([prompt_ids, prompt_mask], axis=1)  # (B, 2P): a prompt and its padding
        _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
        used = model.model.parameters() + ([model.lm_head.weight] if model.lm_head is not None else [])
        narrowest = min(min(p.shape) for p in used if p.ndim == 2)  # the matrices of the forward (not the heads)
        if len(first) < B and len(first) * P * narrowest >= SAME_ROWS_MIN:
            once = KVCache(model.config, len(first), max_len)
            logits = model(prompt_ids[first], prompt_mask[first], once).data[:, -1]  # (U, V)
            inverse = inverse.reshape(-1)  # (B,): each row's distinct prompt
            return logits[inverse], once.take(inverse)
    cache = KVCache(model.config, B, max_len)
    return model(prompt_ids, prompt_mask, cache).data[:, -1], cache


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
