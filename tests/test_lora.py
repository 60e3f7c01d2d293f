"""LoRA (minirl/lora.py): the base model exactly at B = 0, merge and unmerge, gradients, a really frozen backbone.

1) Invariants (hypothesis over shapes and values): B = 0 is the base layer
   bit for bit; merge-then-forward equals the unmerged forward; unmerge
   restores W to within float32 eps · (|W| + |ΔW|) per entry; ΔW has rank <= r.
2) check_grad of x, W, A and B through the fused `lora_linear` in float64,
   with and without a dropout mask; the fused op equals its composition from
   F.linear in value and in every gradient.
3) The whole model: trainable count r·(in + out) per adapted matrix plus the
   heads, no .grad on any frozen weight, no dW computed for a frozen Linear,
   dropout only while the tape records, and a short SFT run that leaves every
   base weight bitwise unchanged.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minirl import functional as F
from minirl.config import from_values
from minirl.gradcheck import check_grad
from minirl.lora import (TARGETS, LoraConfig, LoRALinear, base_state_dict, count_trainable, inject_lora, lora_layers,
                         lora_linear, lora_linear_reference, lora_state_dict, load_lora_state_dict, merge_lora,
                         merged_state_dict, plain_model, trainable_parameters, unmerge_lora)
from minirl.model import Transformer, TransformerConfig
from minirl.nn import Linear
from minirl.optim import OptimizerConfig
from minirl.rl.sft import SFT, SFTConfig
from minirl.tasks import CharTokenizer
from minirl.tensor import Tensor, no_grad
from minirl.train import TrainConfig, train

TOK = CharTokenizer()
FAST = settings(max_examples=25, deadline=None)
EPS32 = float(np.finfo(np.float32).eps)
ALL = tuple(TARGETS)


def tiny(seed: int = 0, **heads) -> Transformer:
    """hidden 32, intermediate 64, 2 layers, GQA (k_proj and v_proj are 32 -> 16)."""
    config = TransformerConfig(vocab_size=TOK.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, **heads)
    return Transformer(config, seed=seed, tokenizer=TOK)


def randomize_adapters(model, seed: int = 1, scale: float = 0.1) -> None:
    """Nonzero B (and a fresh A), so that ΔW is not zero."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if ".lora_" in name:
            p.data[...] = rng.normal(0.0, scale, p.shape)


def tokens(seed: int = 0, shape=(3, 9)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, TOK.vocab_size, shape)


def base_weights(model) -> dict[str, np.ndarray]:
    return {n: p.data.copy() for n, p in model.named_parameters() if ".lora_" not in n}


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("kwargs, field", [
    (dict(lora_rank=-1), "LoraConfig.lora_rank"),
    (dict(lora_rank=2.5), "LoraConfig.lora_rank"),
    (dict(lora_rank=4, lora_alpha=0.0), "LoraConfig.lora_alpha"),
    (dict(lora_rank=4, lora_dropout=1.0), "LoraConfig.lora_dropout"),
    (dict(lora_rank=4, lora_dropout=-0.1), "LoraConfig.lora_dropout"),
    (dict(lora_rank=4, lora_targets=("q_proj", "qkv_proj")), "LoraConfig.lora_targets"),
    (dict(lora_rank=4, lora_targets=()), "LoraConfig.lora_targets"),
    (dict(lora_rank=4, lora_targets=("q_proj", "q_proj")), "LoraConfig.lora_targets"),
    (dict(lora_rank=4, lora_targets="q_proj"), "LoraConfig.lora_targets"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field) as e:
        LoraConfig(**kwargs)
    if field.endswith("lora_targets"):
        assert "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in str(e.value)


def test_config_defaults_and_toml_values():
    c = LoraConfig()
    assert (c.enabled, c.scaling, c.lora_alpha, c.lora_targets) == (False, 0.0, 8.0,
                                                                   ("q_proj", "k_proj", "v_proj", "o_proj"))
    c = from_values(LoraConfig, {"lora_rank": 4, "lora_alpha": 16, "lora_targets": ["q_proj", "v_proj"]}, "[lora]")
    assert (c.enabled, c.scaling, c.lora_targets) == (True, 4.0, ("q_proj", "v_proj"))


def test_inject_errors_name_field_and_matrix():
    model = tiny()
    before = base_weights(model)
    with pytest.raises(ValueError, match="LoraConfig.lora_rank must be >= 1"):
        inject_lora(model, LoraConfig(lora_rank=0))
    # k_proj is (16, 32): rank 17 does not fit, q_proj (32, 32) would
    with pytest.raises(ValueError, match=r"LoraConfig.lora_rank.*model\.layers\.0\.self_attn\.k_proj\.weight"):
        inject_lora(model, LoraConfig(lora_rank=17))
    assert not lora_layers(model)  # nothing changed on failure
    assert all(p.requires_grad for p in model.parameters())
    assert all(np.array_equal(before[n], p.data) for n, p in model.named_parameters())
    inject_lora(model, LoraConfig(lora_rank=2))
    with pytest.raises(ValueError, match="already has LoRA"):
        inject_lora(model, LoraConfig(lora_rank=2))


# ------------------------------------------------------- LoRALinear alone
def layer_with(rng, in_f, out_f, rank, alpha=8.0, dropout=0.0, b_scale=0.0) -> LoRALinear:
    layer = LoRALinear(Linear(in_f, out_f, rng, std=0.5), rank, alpha, rng, dropout,
                       dropout_rng=np.random.default_rng(7))
    layer.lora_B.weight.data[...] = rng.normal(0.0, b_scale, layer.lora_B.weight.shape) if b_scale else 0.0
    return layer


def test_init_is_peft_kaiming_uniform():
    # PEFT: kaiming_uniform_(A, a=sqrt(5)) on A (r, in) is uniform(-1/sqrt(in), 1/sqrt(in)); B = 0
    rng = np.random.default_rng(0)
    in_f = 256
    layer = layer_with(rng, in_f, 128, 64)
    A, bound = layer.lora_A.weight.data, 1 / math.sqrt(in_f)
    std_err = abs(A.std() / (bound / math.sqrt(3)) - 1)
    print(f"A: max |A| {np.abs(A).max():.5f} (bound {bound:.5f}), std / uniform std - 1 = {std_err:.2e}")
    assert A.shape == (64, in_f) and layer.lora_B.weight.shape == (128, 64)
    assert np.abs(A).max() <= bound and np.abs(A).max() > 0.99 * bound and std_err < 0.02
    assert abs(A.mean()) < 0.05 * bound and not layer.lora_B.weight.data.any()


@FAST
@given(st.integers(1, 12), st.integers(1, 12), st.data(), st.integers(0, 2**32 - 1))
def test_B_zero_is_the_base_layer_bitwise(in_f, out_f, data, seed):
    rank = data.draw(st.integers(1, min(in_f, out_f)))
    lead = data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    rng = np.random.default_rng(seed)
    layer = layer_with(rng, in_f, out_f, rank, alpha=data.draw(st.floats(0.5, 64)))
    x = Tensor(rng.normal(size=(*lead, in_f)).astype(np.float32))
    assert np.array_equal(layer(x).data, F.linear(x, layer.weight).data)


@FAST
@given(st.integers(1, 12), st.integers(1, 12), st.data(), st.integers(0, 2**32 - 1))
def test_merge_equals_unmerged_and_unmerge_restores(in_f, out_f, data, seed):
    rank = data.draw(st.integers(1, min(in_f, out_f)))
    rng = np.random.default_rng(seed)
    layer = layer_with(rng, in_f, out_f, rank, alpha=data.draw(st.floats(0.5, 64)), b_scale=0.3)
    W0, dW = layer.weight.data.copy(), layer.delta()
    x = Tensor(rng.normal(size=(5, in_f)).astype(np.float32))
    y = layer(x).data
    layer.merge()
    layer.merge()  # idempotent
    y_merged = layer(x).data
    scale = np.abs(x.data).sum(-1, keepdims=True) * np.abs(W0 + dW).max() + 1  # size of the sums in y
    assert np.abs(y_merged - y).max() <= 8 * EPS32 * scale.max()
    exact = layer.lora_B.weight.data.astype(np.float64) @ layer.lora_A.weight.data  # ΔW / scaling, unrounded
    assert np.linalg.matrix_rank(exact) <= rank and np.allclose(dW, layer.scaling * exact, rtol=1e-6, atol=1e-7)
    layer.unmerge()
    layer.unmerge()
    # (W + ΔW) - ΔW: two roundings, each at most half an ulp of |W| + |ΔW|
    assert (np.abs(layer.weight.data - W0) <= EPS32 * (np.abs(W0) + np.abs(dW))).all()
    assert np.array_equal(layer(x).data, y) or np.abs(layer(x).data - y).max() <= 8 * EPS32 * scale.max()


@pytest.mark.parametrize("dropout", [False, True])
def test_gradcheck_x_W_A_B(dropout):
    rng = np.random.default_rng(0)
    keep = (rng.random((2, 4, 6)) >= 0.3) / 0.7 if dropout else None
    x, W, A, B = rng.normal(size=(2, 4, 6)), rng.normal(size=(5, 6)), rng.normal(size=(3, 6)), rng.normal(size=(5, 3))
    err = check_grad(lambda x, W, A, B: lora_linear(x, W, A, B, 2.0, keep), x, W, A, B)
    print(f"lora_linear gradient error {err:.2e} (dropout {dropout})")
    # the formula written twice: y = W x + (α/r) B A (x·keep)
    xd = x if keep is None else x * keep
    y = lora_linear(Tensor(x), Tensor(W), Tensor(A), Tensor(B), 2.0, keep).data
    assert np.allclose(y, x @ W.T + 2.0 * xd @ A.T @ B.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dropout", [False, True])
def test_fused_equals_composed_reference(dropout):
    # llm.c's rule: the fused op against the plain composition of F.linear, in value and in every gradient
    rng = np.random.default_rng(1)
    keep = ((rng.random((3, 5, 8)) >= 0.25) / 0.75).astype(np.float32) if dropout else None
    arrays = [rng.normal(size=s).astype(np.float32) for s in [(3, 5, 8), (6, 8), (4, 8), (6, 4)]]
    outs, grads = [], []
    for op in (lora_linear, lora_linear_reference):
        ts = [Tensor(a.copy(), requires_grad=True) for a in arrays]
        y = op(*ts, 0.5, keep)
        (y * Tensor(np.linspace(-1, 1, y.size, dtype=np.float32).reshape(y.shape))).sum().backward()
        outs.append(y.data)
        grads.append([t.grad for t in ts])
    assert np.allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for name, g0, g1 in zip(("x", "W", "A", "B"), *grads):
        assert np.allclose(g0, g1, rtol=1e-5, atol=1e-6), name
    # a frozen W and an x that needs no gradient: none computed
    ts = [Tensor(arrays[0]), Tensor(arrays[1]), Tensor(arrays[2], requires_grad=True), Tensor(arrays[3])]
    dx, dW, dA, dB = lora_linear(*ts, 0.5, keep)._backward(np.ones((3, 5, 6), np.float32))
    assert dx is None and dW is None and dB is None and dA.shape == (4, 8)


def test_dropout_only_while_recording():
    rng = np.random.default_rng(0)
    layer = layer_with(rng, 16, 8, 4, dropout=0.5, b_scale=0.5)
    x = Tensor(rng.normal(size=(3, 16)).astype(np.float32))
    layer.dropout = 0.0
    clean = layer(x).data
    layer.dropout = 0.5
    with no_grad():
        a, b = layer(x).data, layer(x).data
    assert np.array_equal(a, clean) and np.array_equal(b, clean)
    xg = Tensor(x.data, requires_grad=True)  # the tape records: dropout is on
    d1, d2 = layer(xg).data, layer(xg).data
    assert np.abs(d1 - clean).max() > 1e-3 and np.abs(d1 - d2).max() > 1e-3
    # the base path is never dropped: with B = 0 dropout changes nothing
    layer.lora_B.weight.data[...] = 0
    assert np.array_equal(layer(xg).data, F.linear(x, layer.weight).data)


# ------------------------------------------------------------ whole model
def test_B_zero_gives_base_logits_bitwise():
    model = tiny(value_head=True)
    x = tokens()
    base = model(x).data
    names = inject_lora(model, LoraConfig(lora_rank=4, lora_targets=ALL))
    assert len(names) == 2 * 7 and names[0] == "model.layers.0.self_attn.q_proj"
    assert np.array_equal(model(x).data, base)
    # names: the base keeps Hugging Face's, the adapters are PEFT's saved names
    sd = model.state_dict()
    assert sd["model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 32)
    assert sd["model.layers.1.mlp.down_proj.lora_B.weight"].shape == (32, 4)
    assert set(base_state_dict(model)) == set(Transformer(model.config).state_dict())


def test_merge_unmerge_and_merged_state_dict():
    model = tiny()
    inject_lora(model, LoraConfig(lora_rank=3, lora_alpha=6.0, lora_targets=ALL))
    randomize_adapters(model)
    before = base_weights(model)
    x = tokens(1)
    y = model(x).data
    merged_sd = merged_state_dict(model)
    plain = plain_model(model)  # a copy without LoRA: the base weights bit for bit
    assert plain.state_dict().keys() == before.keys() and not lora_layers(plain)
    assert all(np.array_equal(w, before[n]) for n, w in plain.state_dict().items())
    merge_lora(model)
    assert all(np.allclose(w, before[n], rtol=0, atol=1e-6) for n, w in plain_model(model).state_dict().items())
    y_merged = model(x).data
    d_merge = float(np.abs(y_merged - y).max())
    merged_copy = Transformer(model.config, tokenizer=TOK)
    merged_copy.load_state_dict(merged_sd)
    unmerge_lora(model)
    # (W + ΔW) - ΔW rounds twice, each time by at most half an ulp of |W| + |ΔW|
    ratios = [np.abs(layer.weight.data - before[name + ".weight"])
              / (EPS32 * (np.abs(before[name + ".weight"]) + np.abs(layer.delta())))
              for name, layer in lora_layers(model).items()]
    worst = max(float(r.max()) for r in ratios)
    print(f"merged vs unmerged logits {d_merge:.2e} (logit scale {np.abs(y).max():.2f}); "
          f"unmerge error / (eps (|W| + |dW|)) <= {worst:.2f}")
    assert d_merge < 1e-5 * max(1.0, np.abs(y).max())
    assert np.array_equal(merged_copy(x).data, y_merged)  # merged_state_dict is what merge_lora makes
    assert worst <= 1.0
    assert all(np.array_equal(p.data, before[n]) for n, p in model.named_parameters()  # the rest never moved
               if ".lora_" not in n and n.removesuffix(".weight") not in lora_layers(model))

def test_trainable_count_and_names():
    model = tiny(value_head=True, reward_head=True)
    total = model.num_parameters()
    inject_lora(model, LoraConfig(lora_rank=4, lora_targets=ALL))
    C, I, KD, r = 32, 64, 16, 4
    per_layer = r * ((C + C) + (C + KD) + (C + KD) + (C + C) + (C + I) + (C + I) + (I + C))
    heads = C + C  # value_head (1, C) and score (1, C)
    assert count_trainable(model) == 2 * per_layer + heads
    names = [n for n, _ in trainable_parameters(model)]
    assert all(".lora_" in n or n in ("value_head.weight", "score.weight") for n in names)
    assert "value_head.weight" in names and "score.weight" in names
    print(f"trainable {count_trainable(model)} of {total} base parameters ({count_trainable(model) / total:.1%})")


def test_frozen_weights_get_no_grad():
    model = tiny(value_head=True, reward_head=True)
    inject_lora(model, LoraConfig(lora_rank=2, lora_targets=("q_proj", "v_proj", "down_proj")))
    randomize_adapters(model)
    x = tokens(2)
    h = model.hidden_states(x)
    loss = (model.logits(h) ** 2).mean() + model.values(h).sum() + model.rewards(x).sum()
    loss.backward()
    for name, p in model.named_parameters():
        trainable = ".lora_" in name or name in ("value_head.weight", "score.weight")
        assert p.requires_grad == trainable, name
        assert (p.grad is not None) == trainable, name
        if trainable:
            assert np.abs(p.grad).max() > 0, name


def test_frozen_ops_compute_no_weight_gradient():
    # memory and time honesty: the ops a frozen backbone uses return None for the frozen weight's gradient
    rng = np.random.default_rng(0)
    x = Tensor(rng.normal(size=(2, 3, 4)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.normal(size=(5, 4)).astype(np.float32))
    dx, dw = F.linear(x, w)._backward(np.ones((2, 3, 5), np.float32))
    assert dx.shape == x.shape and dw is None
    g = Tensor(np.ones(4, np.float32))
    dx, dg = F.rms_norm(x, g)._backward(np.ones((2, 3, 4), np.float32))
    assert dx.shape == x.shape and dg is None
    assert not F.embedding(w, np.array([[0, 4]])).requires_grad  # a frozen table is not even on the tape


def test_state_dict_round_trip():
    model = tiny()
    config = LoraConfig(lora_rank=2, lora_targets=("q_proj", "up_proj"))
    inject_lora(model, config)
    randomize_adapters(model)
    adapters = lora_state_dict(model)
    assert sorted(adapters) == sorted(f"model.layers.{i}.{m}.{t}.lora_{ab}.weight" for i in range(2)
                                      for m, t in (("self_attn", "q_proj"), ("mlp", "up_proj")) for ab in "AB")
    fresh = tiny()
    inject_lora(fresh, config, seed=5)
    load_lora_state_dict(fresh, adapters)
    x = tokens(3)
    assert np.array_equal(fresh(x).data, model(x).data)
    with pytest.raises(ValueError, match="missing"):
        load_lora_state_dict(fresh, {k: v for k, v in adapters.items() if "up_proj" not in k})
    with pytest.raises(ValueError, match=r"q_proj\.lora_A\.weight: expected shape \(2, 32\)"):
        load_lora_state_dict(fresh, {**adapters, "model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((3, 32))})
    merge_lora(fresh)
    with pytest.raises(ValueError, match="unmerge"):
        load_lora_state_dict(fresh, adapters)


def test_training_changes_only_adapters():
    model = tiny(value_head=True)
    inject_lora(model, LoraConfig(lora_rank=2))
    before = model.state_dict()
    result = train(model, SFT(SFTConfig(batch_size=4)), TrainConfig(steps=3), OptimizerConfig(lr=1e-2),
                   params=trainable_parameters(model), progress=False)
    assert len(result.history) == 3 and all(math.isfinite(h["loss"]) for h in result.history)
    changed = {n for n, p in model.named_parameters() if not np.array_equal(p.data, before[n])}
    adapters = {n for n in before if ".lora_" in n}
    print(f"{len(changed)} tensors changed of {len(before)}; losses {[round(h['loss'], 4) for h in result.history]}")
    assert changed == adapters  # every adapter moved; every base weight (and the unused value head) bitwise unchanged
    assert all(model.state_dict()[n].any() for n in adapters if ".lora_B." in n)
