"""Every op in minirl.functional against PyTorch: same float64 inputs, same outputs, same input gradients.

tinygrad's `helper_test_op`: run minirl and torch on identical inputs,
backpropagate the same random linear functional of the output through both,
compare outputs and every input gradient, print the maximum difference.
RoPE is compared with Hugging Face Llama's formula written in torch, attention
with `scaled_dot_product_attention` (with `enable_gqa` and with HF's repeat_kv).
"""

import numpy as np
import pytest

from minirl import functional as F
from minirl.tensor import Tensor

torch = pytest.importorskip("torch")
tF = torch.nn.functional


def helper_test_op(name, minirl_fn, torch_fn, *arrays, seed=0, rtol=1e-7, atol=1e-10):
    """Compare outputs and input gradients of minirl_fn and torch_fn on the same float64 arrays."""
    mt = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = minirl_fn(*mt)
    probe = np.random.default_rng(seed).standard_normal(out.shape)
    F.sum(F.reshape(out, (-1,)) * probe.reshape(-1)).backward()

    tt = [torch.tensor(a, requires_grad=True) for a in arrays]
    tout = torch_fn(*tt)
    (tout * torch.from_numpy(probe)).sum().backward()

    out_diff = np.max(np.abs(out.data - tout.detach().numpy()), initial=0.0)
    grad_diffs = [np.max(np.abs(m.grad - t.grad.numpy()), initial=0.0) for m, t in zip(mt, tt)]
    print(f"{name}: out max abs diff {out_diff:.2e}, grad max abs diff {[f'{d:.2e}' for d in grad_diffs]}")
    assert out.data.shape == tuple(tout.shape)
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=rtol, atol=atol, err_msg=f"{name} output")
    for i, (m, t) in enumerate(zip(mt, tt)):
        np.testing.assert_allclose(m.grad, t.grad.numpy(), rtol=rtol, atol=atol, err_msg=f"{name} grad of input {i}")


def rng_for(name: str):
    return np.random.default_rng(sum(map(ord, name)))


def normal(name, *shape):
    return rng_for(name).standard_normal(shape)


# ------------------------------------------------------------- elementwise
def _pos(*shape):
    return np.random.default_rng(1).uniform(0.3, 2.0, shape)


def _nonzero(*shape):
    rng = np.random.default_rng(2)
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.1, 2.0, shape)


UNARY = {
    "neg": (F.neg, torch.neg, normal("neg", 3, 4)),
    "exp": (F.exp, torch.exp, normal("exp", 3, 4)),
    "log": (F.log, torch.log, _pos(3, 4)),
    "tanh": (F.tanh, torch.tanh, normal("tanh", 3, 4)),
    "sigmoid": (F.sigmoid, torch.sigmoid, 4 * normal("sigmoid", 3, 4)),
    "silu": (F.silu, tF.silu, 4 * normal("silu", 3, 4)),
    "logsigmoid": (F.logsigmoid, tF.logsigmoid, 10 * normal("logsigmoid", 3, 4)),
    "relu": (F.relu, torch.relu, _nonzero(3, 4)),
    "abs": (F.abs, torch.abs, _nonzero(3, 4)),
    "pow": (lambda x: F.pow(x, 2.5), lambda x: x**2.5, _pos(3, 4)),
    "pow_int": (lambda x: x**3, lambda x: x**3, normal("pow_int", 3, 4)),
    "clip": (lambda x: F.clip(x, -0.5, 0.7), lambda x: torch.clamp(x, -0.5, 0.7), normal("clip", 4, 5)),
}


@pytest.mark.parametrize("name", list(UNARY))
def test_unary(name):
    mfn, tfn, x = UNARY[name]
    helper_test_op(name, mfn, tfn, x)


BINARY = {
    "add": (F.add, torch.add),
    "sub": (F.sub, torch.sub),
    "mul": (F.mul, torch.mul),
    "div": (F.div, torch.div),
    "maximum": (F.maximum, torch.maximum),
    "minimum": (F.minimum, torch.minimum),
}


@pytest.mark.parametrize("shapes", [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (3, 1)), ((1, 4), (3, 1)), ((4,), ())])
@pytest.mark.parametrize("name", list(BINARY))
def test_binary_with_broadcasting(name, shapes):
    mfn, tfn = BINARY[name]
    a = normal(name, *shapes[0])
    b = _nonzero(*shapes[1]) if name == "div" else normal(name + "b", *shapes[1])
    helper_test_op(name, mfn, tfn, a, b)


def test_maximum_minimum_ties_split_like_torch():
    a = np.array([1.0, 2.0, 3.0, -1.0])
    b = np.array([1.0, 0.0, 3.0, 5.0])
    helper_test_op("maximum ties", F.maximum, torch.maximum, a, b)
    helper_test_op("minimum ties", F.minimum, torch.minimum, a, b)


def test_where():
    cond = rng_for("where").random((3, 1, 4)) < 0.5
    helper_test_op("where", lambda a, b: F.where(cond, a, b), lambda a, b: torch.where(torch.from_numpy(cond), a, b),
                   normal("wa", 2, 4), normal("wb", 3, 2, 1))


# --------------------------------------------------------------- reductions
AXES = [None, 0, -1, (0, 2), (-1, 1)]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES)
def test_sum_mean_max(axis, keepdims):
    x = normal("reduce", 2, 3, 4)
    dim = tuple(range(x.ndim)) if axis is None else axis
    helper_test_op(f"sum {axis}", lambda t: F.sum(t, axis, keepdims), lambda t: torch.sum(t, dim, keepdims), x)
    helper_test_op(f"mean {axis}", lambda t: F.mean(t, axis, keepdims), lambda t: torch.mean(t, dim, keepdims), x)
    helper_test_op(f"max {axis}", lambda t: F.max(t, axis, keepdims), lambda t: torch.amax(t, dim, keepdims), x)


def test_max_ties_split_like_torch_amax():
    x = np.array([[1.0, 4.0, 4.0], [2.0, 2.0, 2.0]])
    helper_test_op("max ties axis", lambda t: F.max(t, -1), lambda t: torch.amax(t, -1), x)
    helper_test_op("max ties all", lambda t: F.max(t), lambda t: torch.amax(t), x)


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_logsumexp(axis, keepdims):
    x = 5 * normal("lse", 2, 3, 4)
    helper_test_op("logsumexp", lambda t: F.logsumexp(t, axis, keepdims),
                   lambda t: torch.logsumexp(t, axis, keepdims), x)


# -------------------------------------------------------------------- shape
def test_reshape_transpose():
    x = normal("shape", 2, 3, 4)
    helper_test_op("reshape", lambda t: F.reshape(t, (4, -1)), lambda t: t.reshape(4, -1), x)
    helper_test_op("transpose", lambda t: F.transpose(t, (2, 0, 1)), lambda t: t.permute(2, 0, 1), x)
    helper_test_op("transpose all", lambda t: F.transpose(t), lambda t: t.permute(2, 1, 0), x)


INDICES = {
    "int": 1,
    "slice": (slice(None), slice(1, None, 2)),
    "negative step": (slice(None, None, -1), 2),  # torch has no negative steps: compared with flip below
    "ellipsis newaxis": (Ellipsis, None, slice(0, 2)),
    "fancy repeats": np.array([0, 1, 1, 0, 1]),
    "fancy 2d": (np.array([[0, 1], [1, 1]]), slice(None), np.array([3, 3])),
    "slice then fancy": (slice(None), np.array([2, 2, 0])),
    "boolean": normal("getitem", 2, 3, 4) > 0,
}


@pytest.mark.parametrize("name", list(INDICES))
def test_getitem(name):
    x = normal("getitem", 2, 3, 4)
    index = INDICES[name]

    def to_torch(i):
        return torch.from_numpy(i) if isinstance(i, np.ndarray) else i

    tindex = tuple(map(to_torch, index)) if isinstance(index, tuple) else to_torch(index)
    torch_fn = (lambda t: t.flip(0)[:, 2]) if name == "negative step" else (lambda t: t[tindex])
    helper_test_op(f"getitem {name}", lambda t: F.getitem(t, index), torch_fn, x)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_stack(axis):
    a, b = normal("cat a", 2, 3, 4), normal("cat b", 2, 3, 4)
    helper_test_op("concat", lambda s, t: F.concat([s, t], axis), lambda s, t: torch.cat([s, t], axis), a, b)
    helper_test_op("stack", lambda s, t: F.stack([s, t], axis), lambda s, t: torch.stack([s, t], axis), a, b)


# ------------------------------------------------------------------- linear
@pytest.mark.parametrize("shapes", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 2)),
                                    ((1, 3, 4), (2, 4, 5))])
def test_matmul(shapes):
    helper_test_op("matmul", F.matmul, torch.matmul, normal("mm a", *shapes[0]), normal("mm b", *shapes[1]))


def test_linear_embedding():
    helper_test_op("linear", F.linear, tF.linear, normal("lin x", 2, 3, 4), normal("lin w", 5, 4))
    ids = np.array([[1, 3, 1], [0, 1, 1]])
    helper_test_op("embedding", lambda w: F.embedding(w, ids), lambda w: tF.embedding(torch.from_numpy(ids), w),
                   normal("emb", 5, 4))


# ------------------------------------------------------------ probabilities
@pytest.mark.parametrize("axis", [0, -1])
def test_softmax_log_softmax(axis):
    x = 4 * normal("softmax", 2, 3, 5)
    helper_test_op("softmax", lambda t: F.softmax(t, axis), lambda t: torch.softmax(t, axis), x)
    helper_test_op("log_softmax", lambda t: F.log_softmax(t, axis), lambda t: torch.log_softmax(t, axis), x)


def test_gather_logprobs_entropy():
    logits = 4 * normal("logits", 2, 3, 7)
    ids = rng_for("ids").integers(0, 7, (2, 3))
    helper_test_op("gather_logprobs", lambda t: F.gather_logprobs(t, ids),
                   lambda t: torch.log_softmax(t, -1).gather(-1, torch.from_numpy(ids)[..., None]).squeeze(-1), logits)
    helper_test_op("entropy", F.entropy, lambda t: torch.distributions.Categorical(logits=t).entropy(), logits)


# ----------------------------------------------------------- fused model ops
def hf_rms_norm(hidden_states, weight, eps):
    """Hugging Face LlamaRMSNorm.forward (in float64 throughout)."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return weight * (hidden_states * torch.rsqrt(variance + eps))


@pytest.mark.parametrize("eps", [1e-6, 1e-5])
def test_rms_norm(eps):
    x, w = normal("rms x", 2, 3, 8), normal("rms w", 8)
    helper_test_op("rms_norm", lambda a, b: F.rms_norm(a, b, eps), lambda a, b: hf_rms_norm(a, b, eps), x, w)
    helper_test_op("rms_norm torch", lambda a, b: F.rms_norm(a, b, eps),
                   lambda a, b: tF.rms_norm(a, (8,), b, eps), x, w)


def hf_rotate_half(x):
    """Rotates half the hidden dims of the input (transformers' modeling_llama.rotate_half)."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def hf_cos_sin(position_ids, dim, base):
    """LlamaRotaryEmbedding.forward: position_ids (B, T) -> cos, sin (B, T, D)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float64) / dim))
    inv_freq_expanded = inv_freq[None, :, None].expand(position_ids.shape[0], -1, 1)
    position_ids_expanded = position_ids[:, None, :].to(torch.float64)
    freqs = (inv_freq_expanded @ position_ids_expanded).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
@pytest.mark.parametrize("d", [2, 8])
def test_rope_matches_hugging_face(d, theta):
    b, h, t = 2, 3, 5
    positions = np.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])  # (B, T): second row is offset, as with a cache
    cos, sin = F.rope_tables(positions[:, None, :], d, theta, dtype=np.float64)  # (B, 1, T, D)
    tcos, tsin = hf_cos_sin(torch.from_numpy(positions), d, theta)
    np.testing.assert_allclose(cos[:, 0], tcos.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sin[:, 0], tsin.numpy(), rtol=1e-12, atol=1e-12)
    tcos, tsin = tcos.unsqueeze(1), tsin.unsqueeze(1)  # apply_rotary_pos_emb's unsqueeze_dim=1
    helper_test_op("rope", lambda x: F.rope(x, cos, sin), lambda x: x * tcos + hf_rotate_half(x) * tsin,
                   normal("rope", b, h, t, d))


def hf_repeat_kv(hidden_states, n_rep):
    """transformers' repeat_kv: (B, K, S, D) -> (B, K * n_rep, S, D)."""
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def make_mask(kind, b, t, s):
    causal = np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t)  # (T, S)
    padding = (np.arange(s)[None, :] < np.array([s, max(s - 2, 1)])[:b, None])[:, None, None, :]  # (B, 1, 1, S)
    return {"none": None, "causal": causal, "padding": padding, "causal+padding": causal & padding}[kind]


@pytest.mark.parametrize("kind", ["none", "causal", "padding", "causal+padding"])
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("t,s", [(4, 4), (2, 5)])
def test_attention_matches_sdpa(groups, kind, t, s):
    b, kv, d = 2, 2, 8
    q, k, v = normal("q", b, kv * groups, t, d), normal("k", b, kv, s, d), normal("v", b, kv, s, d)
    mask = make_mask(kind, b, t, s)
    tmask = None if mask is None else torch.from_numpy(mask)

    def sdpa_gqa(q_, k_, v_):
        return tF.scaled_dot_product_attention(q_, k_, v_, attn_mask=tmask, enable_gqa=True)

    def sdpa_repeat_kv(q_, k_, v_):
        return tF.scaled_dot_product_attention(q_, hf_repeat_kv(k_, groups), hf_repeat_kv(v_, groups), attn_mask=tmask)

    def minirl_attention(q_, k_, v_):
        return F.attention(q_, k_, v_, mask)

    helper_test_op(f"attention G={groups} {kind} enable_gqa", minirl_attention, sdpa_gqa, q, k, v)
    helper_test_op(f"attention G={groups} {kind} repeat_kv", minirl_attention, sdpa_repeat_kv, q, k, v)


def test_attention_additive_mask_bias_matches_sdpa_float_mask():
    q, k, v = normal("q", 2, 4, 4, 8), normal("k", 2, 2, 5, 8), normal("v", 2, 2, 5, 8)
    bias = F.mask_bias(make_mask("causal+padding", 2, 4, 5), np.float64)  # (B, 1, T, S): 0 or -1e9
    helper_test_op("attention additive bias", lambda a, b, c: F.attention(a, b, c, bias),
                   lambda a, b, c: tF.scaled_dot_product_attention(a, b, c, attn_mask=torch.from_numpy(bias),
                                                                   enable_gqa=True), q, k, v)


def test_swiglu():
    g, u = 3 * normal("gate", 2, 3, 6), normal("up", 2, 3, 6)
    helper_test_op("swiglu", F.swiglu, lambda a, b: tF.silu(a) * b, g, u)
