"""minirl's LoRA against PEFT's: the same adapters through both, both ways.

1) minirl -> PEFT: `export_hf(plain_model(model))` for the base and
   `export_peft(model)` for the adapters load with
   `PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base), adapter)`
   (and `AutoPeftModelForCausalLM` through base_model_name_or_path), whose
   logits equal minirl's to 1e-5 of the largest logit; PEFT's
   `merge_and_unload()` equals `merge_lora`. A reward model goes as a
   sequence classifier with its trained `score` head (modules_to_save).
2) PEFT -> minirl: an adapter saved by PEFT itself (`get_peft_model(...).save_pretrained`)
   loads with `load_peft` and gives PEFT's logits; minirl's export reloads bit for bit.
3) PEFT's initialisation is minirl's: A uniform(±1/√in), B = 0.
4) What minirl cannot follow (another PEFT method, DoRA, shapes of another model) is a clear error.
"""

import json

import numpy as np
import pytest

from minirl.export.hf import export_hf, load_hf
from minirl.lora import LoraConfig, inject_lora, lora_layers, merge_lora, merged_state_dict, plain_model
from minirl.model import Transformer, TransformerConfig
from minirl.tasks import CharTokenizer
from minirl.tensor import no_grad

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
from torch_helpers import max_abs, t  # noqa: E402 (after the skip)

from minirl.export.peft import export_peft, load_peft  # noqa: E402

# transformers' own deprecation, raised inside PEFT's get_peft_model / from_pretrained
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

TOK = CharTokenizer()
SMALL = dict(vocab_size=TOK.vocab_size, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, rope_theta=500.0)
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def random_model(seed: int = 0, scale: float = 0.1, **heads) -> Transformer:
    """A Transformer whose every weight (norm gains included) is random, so no term is trivially zero."""
    model = Transformer(TransformerConfig(**SMALL, **heads), seed=seed, tokenizer=TOK)
    rng = np.random.default_rng(seed + 1)
    for name, p in model.named_parameters():
        noise = rng.normal(0.0, scale, p.shape)
        p.data[...] = 1.0 + noise if "norm" in name else noise
    return model


def randomize_adapters(model, seed: int = 2, scale: float = 0.2) -> None:
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if ".lora_" in name:
            p.data[...] = rng.normal(0.0, scale, p.shape)


def lora_model(config: LoraConfig, **heads):
    """(base copy, the same model with LoRA and random nonzero adapters)."""
    model = random_model(**heads)
    base = plain_model(model)
    inject_lora(model, config)
    randomize_adapters(model)
    return base, model


def hf_causal(path):
    return transformers.LlamaForCausalLM.from_pretrained(path, attn_implementation="eager")


TOKENS = np.random.default_rng(0).integers(3, TOK.vocab_size, (3, 16))


# ------------------------------------------------------ minirl -> PEFT
def test_peft_runs_minirl_adapter(tmp_path):
    config = LoraConfig(lora_rank=4, lora_alpha=16.0, lora_targets=ALL)
    base, model = lora_model(config)
    base_dir = export_hf(base, tmp_path / "base")
    adapter_dir = export_peft(model, tmp_path / "adapter", base_name_or_path=base_dir)

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["task_type"], cfg["r"], cfg["lora_alpha"], cfg["bias"]) == (
        "LORA", "CAUSAL_LM", 4, 16.0, "none")
    assert cfg["target_modules"] == list(ALL) and cfg["base_model_name_or_path"] == str(base_dir)
    from safetensors import safe_open
    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight" in keys and len(keys) == 2 * 7 * 2

    ours, ours_base = model(TOKENS).data, base(TOKENS).data
    scale = float(np.abs(ours).max())
    pm = peft.PeftModel.from_pretrained(hf_causal(base_dir), adapter_dir)
    pm.eval()
    with torch.no_grad():
        theirs = pm(t(TOKENS)).logits
    auto = peft.AutoPeftModelForCausalLM.from_pretrained(adapter_dir, attn_implementation="eager")
    with torch.no_grad():
        theirs_auto = auto(t(TOKENS)).logits
    d, d_auto, effect = max_abs(ours, theirs), max_abs(ours, theirs_auto), max_abs(ours, ours_base)
    print(f"minirl LoRA vs PEFT logits {d:.2e}, via AutoPeftModel {d_auto:.2e} "
          f"(logit scale {scale:.2f}; the adapters move the logits by {effect:.2f})")
    assert d <= 1e-5 * scale and d_auto <= 1e-5 * scale
    assert effect > 1e3 * 1e-5 * scale  # the adapters matter: dropping them would fail the test

    # PEFT's merge_and_unload() is minirl's merge, weight for weight and in the logits
    merged_hf = pm.merge_and_unload()
    assert not any("lora" in n for n in merged_hf.state_dict())
    ours_merged = merged_state_dict(model)
    hf_sd = merged_hf.state_dict()
    d_w = max(max_abs(w, hf_sd[name]) for name, w in ours_merged.items())
    merge_lora(model)
    with torch.no_grad():
        d_merged = max_abs(model(TOKENS).data, merged_hf(t(TOKENS)).logits)
    print(f"merged weights minirl vs PEFT merge_and_unload: {d_w:.2e}; merged logits {d_merged:.2e}")
    assert d_w <= 1e-6 and d_merged <= 1e-5 * scale


def test_peft_runs_minirl_reward_model_adapter(tmp_path):
    # a reward model is a sequence classifier; its trained score head travels as PEFT's modules_to_save
    base, model = lora_model(LoraConfig(lora_rank=2, lora_targets=("q_proj", "v_proj")), reward_head=True)
    model.score.weight.data[...] = np.random.default_rng(3).normal(0.0, 1.0, model.score.weight.shape)
    base_dir = export_hf(base, tmp_path / "base")
    adapter_dir = export_peft(model, tmp_path / "adapter", base_name_or_path=base_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert cfg["task_type"] == "SEQ_CLS" and cfg["modules_to_save"] == ["score"]
    hf = transformers.LlamaForSequenceClassification.from_pretrained(base_dir, attn_implementation="eager")
    pm = peft.PeftModel.from_pretrained(hf, adapter_dir)
    pm.eval()
    ours = model.rewards(TOKENS).data
    with torch.no_grad():
        theirs = pm(t(TOKENS)).logits[:, 0]
    d, scale = max_abs(ours, theirs), float(np.abs(ours).max())
    print(f"rewards minirl LoRA vs PEFT {d:.2e} (scale {scale:.2f}, base's {np.abs(base.rewards(TOKENS).data).max():.2f})")
    assert d <= 1e-5 * scale and max_abs(ours, base.rewards(TOKENS).data) > 1e-2 * scale


def test_round_trip_bitwise(tmp_path):
    config = LoraConfig(lora_rank=3, lora_alpha=5.0, lora_dropout=0.1, lora_targets=("k_proj", "o_proj", "up_proj"))
    base, model = lora_model(config, value_head=True)
    model.value_head.weight.data[...] = 0.5  # trained heads travel too
    base_dir = export_hf(base, tmp_path / "base")
    adapter_dir = export_peft(model, tmp_path / "adapter", base_name_or_path=base_dir)
    fresh = load_hf(base_dir)
    names = load_peft(fresh, adapter_dir)
    assert names == list(lora_layers(model)) and fresh.lora_config == config
    with no_grad():  # evaluation: no dropout
        h, h_fresh = model.hidden_states(TOKENS), fresh.hidden_states(TOKENS)
        assert np.array_equal(model.logits(h).data, fresh.logits(h_fresh).data)
        assert np.array_equal(model.values(h).data, fresh.values(h_fresh).data)


# ------------------------------------------------------ PEFT -> minirl
def test_minirl_runs_peft_adapter(tmp_path):
    base = random_model()
    base_dir = export_hf(base, tmp_path / "base")
    torch.manual_seed(0)
    lcfg = peft.LoraConfig(r=4, lora_alpha=12, lora_dropout=0.1, target_modules=["q_proj", "v_proj", "gate_proj"],
                           task_type="CAUSAL_LM", init_lora_weights=False)  # False: B random too
    pm = peft.get_peft_model(hf_causal(base_dir), lcfg)
    pm.save_pretrained(tmp_path / "peft_adapter")
    pm.eval()
    with torch.no_grad():
        theirs = pm(t(TOKENS)).logits
    model = load_hf(base_dir)
    load_peft(model, tmp_path / "peft_adapter")
    assert model.lora_config == LoraConfig(lora_rank=4, lora_alpha=12.0, lora_dropout=0.1,
                                           lora_targets=("q_proj", "v_proj", "gate_proj"))
    with no_grad():  # evaluation: PEFT's eval() and minirl's no_grad both turn dropout off
        ours = model(TOKENS).data
    d, scale, effect = max_abs(ours, theirs), float(np.abs(ours).max()), max_abs(ours, base(TOKENS).data)
    print(f"PEFT-saved adapter: minirl vs PEFT logits {d:.2e} (scale {scale:.2f}; adapters move them by {effect:.2f})")
    assert d <= 1e-5 * scale and effect > 1e-2 * scale


def test_init_matches_peft():
    # PEFT init_lora_weights=True: kaiming_uniform_(A, a=sqrt(5)), i.e. uniform(-1/sqrt(in), 1/sqrt(in)); B = 0
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=TOK.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2))
    torch.manual_seed(0)
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=16, lora_alpha=8, target_modules=list(ALL), task_type="CAUSAL_LM"))
    theirs = {n.replace(".default", "").removeprefix("base_model.model."): p.detach().numpy()
              for n, p in pm.named_parameters() if "lora_" in n}
    model = Transformer(TransformerConfig(**{**SMALL, "hidden_size": 64, "intermediate_size": 128}), tokenizer=TOK)
    inject_lora(model, LoraConfig(lora_rank=16, lora_targets=ALL))
    ours = {n: p.data for n, p in model.named_parameters() if "lora_" in n}
    assert ours.keys() == theirs.keys()

    def normalised_A(tensors):  # A * sqrt(in) ~ uniform(-1, 1)
        return np.concatenate([(a * np.sqrt(a.shape[1])).ravel() for n, a in tensors.items() if "lora_A" in n])

    stats = {}
    for who, tensors in (("minirl", ours), ("peft", theirs)):
        assert not any(b.any() for n, b in tensors.items() if "lora_B" in n)
        u = normalised_A(tensors)
        stats[who] = (np.abs(u).max(), u.std() * np.sqrt(3))
        assert stats[who][0] <= 1 + 1e-6 and stats[who][0] > 0.99 and abs(stats[who][1] - 1) < 0.02
    print("max |A|·sqrt(in) and std·sqrt(3)·sqrt(in) (uniform(±1/sqrt(in)): 1 and 1):", stats)


# ------------------------------------------------------ errors
def test_load_errors_are_clear(tmp_path):
    base, model = lora_model(LoraConfig(lora_rank=4, lora_targets=("q_proj", "gate_proj")))
    adapter_dir = export_peft(model, tmp_path / "adapter")
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())

    def write(name, **changes):
        d = tmp_path / name
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps({**cfg, **changes}))
        (d / "adapter_model.safetensors").write_bytes((adapter_dir / "adapter_model.safetensors").read_bytes())
        return d

    fresh = plain_model(base)
    for d, match in [(write("ia3", peft_type="IA3"), "peft_type must be 'LORA'"),
                     (write("dora", use_dora=True), "use_dora"),
                     (write("regex", target_modules=".*proj"), "target_modules"),
                     (write("lm_head", target_modules=["q_proj", "lm_head"]), "lm_head"),
                     (write("rank", r=2), r"missing|shape"),
                     (tmp_path / "nothing", "no adapter_config.json")]:
        with pytest.raises(ValueError, match=match):
            load_peft(fresh, d)
        assert not lora_layers(fresh)  # nothing changed
    # the same adapter on a model of another shape: gate_proj's B is (72, 4), this model's (48, 4)
    other = Transformer(TransformerConfig(**{**SMALL, "intermediate_size": 48}), tokenizer=TOK)
    with pytest.raises(ValueError, match=r"gate_proj\.lora_B\.weight has shape \(72, 4\), this model needs \(48, 4\)"):
        load_peft(other, adapter_dir)
    assert not lora_layers(other) and all(p.requires_grad for p in other.parameters())
    with pytest.raises(ValueError, match="no LoRA adapters"):
        export_peft(base, tmp_path / "none")
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge"):
        export_peft(model, tmp_path / "merged")
