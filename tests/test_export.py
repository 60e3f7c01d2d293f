"""Parity of minirl with PyTorch and Hugging Face, the llm.c way (test_gpt2).

The same weights and tokens go through three implementations:
  1. minirl (NumPy, hand-written backward),
  2. the torch mirror `minirl.export.torch.to_torch` (torch autograd),
  3. `transformers.LlamaForCausalLM.from_pretrained(export_hf(...))`, eager attention.
Logits must agree within 1e-5 (float32) and every named parameter's gradient
within 1e-4 norm-relative error; each test prints its worst difference.

Left padding: minirl and the mirror count a row's positions over its real
tokens only (`positions_and_mask`). Hugging Face does so only when given
`position_ids = clip(cumsum(mask) - 1, 0)`; with them, its outputs on real
(non-pad) positions equal minirl's. On pad positions every query key is masked;
minirl and the mirror then attend uniformly, HF differently, so pad positions
are compared only between minirl and the mirror.

One deliberate difference: HF's `nn.Embedding(padding_idx=pad_token_id)` gives
the pad row no gradient, so the gradient tests feed pad ids only where they
are masked (where minirl's gradient for them is zero too).

The exported tokenizer: `AutoTokenizer.from_pretrained(export_hf(...))` adds
bos once, as minirl's sequences start, and its chat template is `encode_chat`;
with it, transformers' greedy `generate` on the shipped SFT model (left-padded
prompts, default attention) gives minirl's answers on every task.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

import minirl
from minirl import functional as F
from minirl.evaluate import complete
from minirl.model import Transformer, TransformerConfig, left_pad
from minirl.tasks import TASKS, encode_chat, format_prompt, heldout_set
from minirl.tasks.tokenizer import CharTokenizer

torch = pytest.importorskip("torch")
from torch_helpers import max_abs, t  # noqa: E402 (after the skip)

from minirl.export.hf import export_hf, load_hf  # noqa: E402
from minirl.export.torch import export_torch, import_torch, load_torch, to_torch  # noqa: E402
from minirl.export.torch_model import greedy_generate  # noqa: E402

TOK = CharTokenizer()
SMALL = dict(vocab_size=TOK.vocab_size, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=32, rope_theta=500.0)
CONFIGS = {
    "mha": TransformerConfig(**SMALL, num_key_value_heads=4),
    "gqa": TransformerConfig(**SMALL, num_key_value_heads=2),
    "mqa_tied": TransformerConfig(**SMALL, num_key_value_heads=1, tie_word_embeddings=True),
}


def random_model(config: TransformerConfig, seed: int = 0, scale: float = 0.1) -> Transformer:
    """A Transformer whose every weight (norm gains included) is random, so no term is trivially zero."""
    model = Transformer(config, seed=seed, tokenizer=TOK)
    rng = np.random.default_rng(seed + 1)
    for name, p in model.named_parameters():
        noise = rng.normal(0.0, scale, p.shape)
        p.data[...] = 1.0 + noise if "norm" in name else noise
    return model


def left_padded_batch(rng, V: int, lengths: list[int], T: int):
    """Random tokens (B, T) left-padded to T with pad id 0, and the mask (B, T)."""
    tokens = np.zeros((len(lengths), T), np.int64)
    mask = np.zeros((len(lengths), T), bool)
    for i, n in enumerate(lengths):
        tokens[i, T - n:] = rng.integers(3, V, n)
        mask[i, T - n:] = True
    return tokens, mask


def hf_positions(mask: np.ndarray) -> np.ndarray:
    """minirl's positions for a left-padded mask, as HF `position_ids`."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def load_hf_model(path):
    """LlamaForCausalLM from an exported directory; asserts nothing was missing or unexpected."""
    transformers = pytest.importorskip("transformers")
    hf, info = transformers.LlamaForCausalLM.from_pretrained(path, attn_implementation="eager",
                                                             output_loading_info=True)
    assert all(len(v) == 0 for v in info.values()), info
    return hf


# ------------------------------------------------------------------ logits
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_mirror_and_hf(name, tmp_path):
    model = random_model(CONFIGS[name])
    tokens = np.random.default_rng(0).integers(0, TOK.vocab_size, (3, 20))
    ours = model(tokens).data
    mirror = to_torch(model)(t(tokens))
    hf = load_hf_model(export_hf(model, tmp_path))(t(tokens)).logits
    d_mirror, d_hf = max_abs(ours, mirror), max_abs(ours, hf)
    print(f"{name}: max |logits| diff minirl-mirror {d_mirror:.2e}, minirl-HF {d_hf:.2e} (logit scale {np.abs(ours).max():.2f})")
    assert d_mirror < 1e-5 and d_hf < 1e-5


@pytest.mark.parametrize("name", ["gqa", "mqa_tied"])
def test_left_padding(name, tmp_path):
    model = random_model(CONFIGS[name])
    rng = np.random.default_rng(1)
    tokens, mask = left_padded_batch(rng, TOK.vocab_size, [12, 5, 9, 1], 12)
    ours = model(tokens, mask).data

    # every position, pad or not: minirl == mirror
    mirror = to_torch(model)(t(tokens), t(mask))
    d_mirror = max_abs(ours, mirror)

    # the padding is invisible: each row equals the same row run alone, unpadded
    d_alone = max(max_abs(ours[i, mask[i]], model(tokens[i:i + 1, mask[i]]).data[0]) for i in range(len(tokens)))

    # real positions: minirl == HF given minirl's position_ids
    hf = load_hf_model(export_hf(model, tmp_path))
    hf_logits = hf(t(tokens), attention_mask=t(mask.astype(np.int64)),
                   position_ids=t(hf_positions(mask))).logits.detach().numpy()
    d_hf = max_abs(ours[mask], hf_logits[mask])
    print(f"{name} left-padded: max diff minirl-mirror (all positions) {d_mirror:.2e}, "
          f"padded-vs-alone {d_alone:.2e}, minirl-HF (real positions) {d_hf:.2e}")
    assert d_mirror < 1e-5 and d_alone < 1e-5 and d_hf < 1e-5


def test_heads_match_mirror():
    model = random_model(TransformerConfig(**SMALL, num_key_value_heads=2, value_head=True, reward_head=True))
    tokens, mask = left_padded_batch(np.random.default_rng(2), TOK.vocab_size, [7, 3], 7)
    mirror = to_torch(model)
    d_values = max_abs(model.values(model.hidden_states(tokens, mask)).data,
                       mirror.values(mirror.hidden_states(t(tokens), t(mask))))
    d_rewards = max_abs(model.rewards(tokens, mask).data, mirror.rewards(t(tokens), t(mask)))
    print(f"value head diff {d_values:.2e}, reward head diff {d_rewards:.2e}")
    assert d_values < 1e-5 and d_rewards < 1e-5


def test_float32_model_computes_in_float32():
    # NumPy 2 (NEP 50): float32 * np.float64 scalar -> float64; one such scalar in an op turns every later
    # activation into float64 (mixed-dtype matmuls, 2.5x slower training) while parity tests still pass
    model = random_model(CONFIGS["gqa"])
    tokens = np.random.default_rng(0).integers(0, TOK.vocab_size, (2, 5))
    assert model.model.embed_tokens(tokens).data.dtype == np.float32
    logits = model(tokens)
    assert logits.data.dtype == np.float32
    F.mean(logits).backward()
    assert all(p.grad.dtype == np.float32 for p in model.parameters())


# --------------------------------------------------------------- gradients
def losses(rng, V: int):
    """Two losses, each as (tokens, mask, minirl loss fn, torch loss fn)."""
    # 1) mean next-token NLL on an unpadded batch. No pad id here: HF builds its embedding with
    # padding_idx=pad_token_id, whose row never receives a gradient; minirl (like the mirror) has no such row.
    tokens = rng.integers(1, V, (3, 16))
    targets = tokens[:, 1:]

    def nll_minirl(logits):
        return F.mean(F.neg(F.gather_logprobs(logits[:, :-1], targets)))

    def nll_torch(logits):
        return -torch.log_softmax(logits[:, :-1], -1).gather(-1, t(targets)[..., None]).mean()

    # 2) randomly weighted log-probs on a left-padded batch, zero weight where the input is a pad
    ptokens, pmask = left_padded_batch(rng, V, [16, 11, 4], 16)
    w = (rng.normal(size=(3, 15)) * pmask[:, :-1]).astype(np.float32)

    def weighted_minirl(logits):
        return F.sum(F.mul(F.gather_logprobs(logits[:, :-1], ptokens[:, 1:]), w))

    def weighted_torch(logits):
        return (torch.log_softmax(logits[:, :-1], -1).gather(-1, t(ptokens[:, 1:])[..., None])[..., 0] * t(w)).sum()

    return {"nll": (tokens, None, nll_minirl, nll_torch), "weighted_padded": (ptokens, pmask, weighted_minirl, weighted_torch)}


def grad_errors(ours: dict, theirs: dict) -> dict:
    """Per-tensor ||g_minirl - g_torch|| / ||g_torch|| (the absolute norm where g_torch is exactly zero)."""
    assert set(ours) == set(theirs), (sorted(set(ours) ^ set(theirs)))
    errors = {}
    for n in ours:
        diff, ref = np.linalg.norm(ours[n] - theirs[n]), np.linalg.norm(theirs[n])
        errors[n] = float(diff / ref if ref > 0 else diff)
    return errors


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_match_mirror_and_hf(name, tmp_path):
    model = random_model(CONFIGS[name])
    mirror = to_torch(model)
    hf = load_hf_model(export_hf(model, tmp_path))
    for loss_name, (tokens, mask, loss_minirl, loss_torch) in losses(np.random.default_rng(3), TOK.vocab_size).items():
        model.zero_grad()
        loss = loss_minirl(model(tokens, mask))
        loss.backward()
        ours = {n: p.grad for n, p in model.named_parameters()}

        mirror.zero_grad()
        mirror_loss = loss_torch(mirror(t(tokens), None if mask is None else t(mask)))
        mirror_loss.backward()
        by_mirror = {n: p.grad.numpy() for n, p in mirror.named_parameters()}

        hf.zero_grad()
        kwargs = {} if mask is None else dict(attention_mask=t(mask.astype(np.int64)), position_ids=t(hf_positions(mask)))
        hf_loss = loss_torch(hf(t(tokens), **kwargs).logits)
        hf_loss.backward()
        by_hf = {n: p.grad.numpy() for n, p in hf.named_parameters()}

        for who, theirs, their_loss in (("mirror", by_mirror, mirror_loss), ("HF", by_hf, hf_loss)):
            errors = grad_errors(ours, theirs)
            worst = max(errors, key=errors.get)
            print(f"{name}/{loss_name} vs {who}: loss diff {abs(loss.item() - their_loss.item()):.1e}, "
                  f"worst grad {worst} rel err {errors[worst]:.2e} over {len(errors)} tensors")
            assert abs(loss.item() - their_loss.item()) < 1e-5
            assert errors[worst] < 1e-4, (worst, errors[worst])


def test_gradient_through_fully_masked_rows():
    # a left pad's query has no allowed key: its output (uniform attention over v) does not depend on q or k,
    # so a loss on pad positions gives q and k no gradient through it (torch's masked_fill agrees)
    model = random_model(CONFIGS["gqa"])
    mirror = to_torch(model)
    tokens, mask = left_padded_batch(np.random.default_rng(6), TOK.vocab_size, [8, 3], 8)
    w = np.random.default_rng(7).normal(size=(2, 8, TOK.vocab_size)).astype(np.float32) * ~mask[..., None]
    F.sum(F.mul(model(tokens, mask), w)).backward()  # a loss on pad positions only
    (mirror(t(tokens), t(mask)) * t(w)).sum().backward()
    errors = grad_errors({n: p.grad for n, p in model.named_parameters()},
                         {n: p.grad.numpy() for n, p in mirror.named_parameters()})
    worst = max(errors, key=errors.get)
    print(f"loss on pad positions only: worst grad {worst} rel err {errors[worst]:.2e}")
    assert errors[worst] < 1e-4


# ------------------------------------------------------------------ export
def test_hf_directory_contents(tmp_path):
    model = random_model(CONFIGS["gqa"])
    out = export_hf(model, tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["num_key_value_heads"], cfg["torch_dtype"], cfg["bos_token_id"]) == (2, "float32", TOK.bos_id)
    vocab = json.loads((out / "vocab.json").read_text())
    assert [vocab[c] for c in "12+34="] == TOK.encode("12+34=")
    assert not list(out.glob(".*.tmp")), "temporary files left behind"
    # a round trip through the directory gives back the same model
    again = load_hf(out)
    assert again.config == model.config and again.tokenizer == TOK
    assert all(np.array_equal(a.data, b.data) for a, b in zip(model.parameters(), again.parameters()))


def test_bf16_export_is_minirl_rounded(tmp_path):
    import ml_dtypes
    from safetensors import safe_open
    from safetensors.numpy import load_file

    model = random_model(CONFIGS["mqa_tied"])
    out = export_hf(model, tmp_path, dtype="bf16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    stored = load_file(out / "model.safetensors")
    with safe_open(out / "model.safetensors", framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())
        torch_rounded = {k: f.get_tensor(k) for k in f.keys()}
    params = dict(model.named_parameters())
    assert set(stored) == set(params)  # tied: no lm_head.weight
    for name, p in params.items():
        assert stored[name].dtype == ml_dtypes.bfloat16
        assert np.array_equal(stored[name].view(np.uint16), p.data.astype(ml_dtypes.bfloat16).view(np.uint16))
        # ml_dtypes and torch round fp32 -> bf16 the same way (nearest, ties to even)
        assert torch.equal(torch_rounded[name], torch.tensor(p.data).to(torch.bfloat16))
    hf = load_hf_model(out)
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16


def test_heads_go_beside_the_lm(tmp_path):
    # the value head (PPO's critic); a reward head makes the export a sequence classifier (the test below)
    from safetensors.numpy import load_file

    model = random_model(TransformerConfig(**SMALL, value_head=True))
    out = export_hf(model, tmp_path)
    assert set(load_file(out / "minirl_heads.safetensors")) == {"value_head.weight"}
    assert "value_head.weight" not in set(load_file(out / "model.safetensors"))
    load_hf_model(out)  # no unexpected keys
    again = load_hf(out)
    assert all(np.array_equal(a.data, b.data) for a, b in zip(model.parameters(), again.parameters()))


@pytest.mark.parametrize("tied", [False, True])
def test_reward_model_exports_as_sequence_classifier(tmp_path, tied):
    from safetensors.numpy import load_file

    from minirl.rl.reward_model import chat_sequences

    model = random_model(TransformerConfig(**SMALL, num_key_value_heads=2, value_head=True, reward_head=True,
                                           tie_word_embeddings=tied))
    out = export_hf(model, tmp_path / "rm", dtype="bf16")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and cfg["num_labels"] == 1
    assert (cfg["pad_token_id"], cfg["torch_dtype"]) == (TOK.pad_id, "bfloat16")
    # LlamaForSequenceClassification holds the trunk and `score`; the LM and value heads wait beside it
    stored, beside = load_file(out / "model.safetensors"), load_file(out / "minirl_heads.safetensors")
    assert stored["score.weight"].shape == (1, SMALL["hidden_size"]) and "model.embed_tokens.weight" in stored
    assert set(beside) == {"value_head.weight"} | (set() if tied else {"lm_head.weight"})
    assert set(stored) | set(beside) == {n for n, _ in model.named_parameters()}
    transformers = pytest.importorskip("transformers")
    hf, info = transformers.LlamaForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert all(len(v) == 0 for v in info.values()), info
    assert hf.config.num_labels == 1 and hf.config.pad_token_id == TOK.pad_id
    # bf16 round trip: load_hf gives back the bf16-rounded model, every head included
    again = load_hf(out)
    assert again.config == model.config and again.tokenizer == TOK
    import ml_dtypes
    for (name, a), b in zip(model.named_parameters(), again.parameters()):
        assert np.array_equal(a.data.astype(ml_dtypes.bfloat16).astype(np.float32), b.data), name

    # the exported tokenizer pads on the right, so its batches are `chat_sequences` and HF's positions are minirl's
    hf_tok = exported_tokenizer(out)
    prompts, answers = ["1+2", "347+85", "sort 3142"], ["3", "432", "1234"]
    batch = hf_tok.apply_chat_template([[{"role": "user", "content": p}, {"role": "assistant", "content": a}]
                                        for p, a in zip(prompts, answers)], padding=True, return_dict=True)
    tokens, mask = chat_sequences(TOK, prompts, answers)
    assert batch["input_ids"] == tokens.tolist() and batch["attention_mask"] == mask.astype(int).tolist()

    # a causal LM exported over it afterwards leaves no reward-model file behind
    export_hf(random_model(CONFIGS["mha"]), out)
    assert not (out / "minirl_heads.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert json.loads((out / "tokenizer_config.json").read_text())["padding_side"] == "left"


def test_reward_model_export_needs_a_tokenizer(tmp_path):
    model = random_model(TransformerConfig(**SMALL, reward_head=True))
    model.tokenizer = None
    with pytest.raises(ValueError, match="needs pad_token_id"):
        export_hf(model, tmp_path)


def test_torch_export_round_trip(tmp_path):
    model = random_model(TransformerConfig(**SMALL, num_key_value_heads=2, value_head=True))
    export_torch(model, tmp_path)
    module = load_torch(tmp_path)
    assert list(module.state_dict()) == [n for n, _ in model.named_parameters()]
    assert module.config == model.config and module.tokenizer == TOK
    tokens = np.random.default_rng(4).integers(0, TOK.vocab_size, (2, 9))
    assert max_abs(model(tokens).data, module(t(tokens))) < 1e-5


def test_importing_minirl_export_does_not_import_torch():
    code = "import sys, minirl.export, minirl.export.torch; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    # the mirror's names are reachable from minirl.export.torch, importing torch_model on first access
    import minirl.export.torch as export_torch_module
    from minirl.export import torch_model
    assert export_torch_module.TorchTransformer is torch_model.TorchTransformer
    assert export_torch_module.greedy_generate is torch_model.greedy_generate
    assert type(to_torch(random_model(CONFIGS["gqa"]))) is torch_model.TorchTransformer


def test_missing_torch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install minirl\[torch\]"):
        import_torch()


# --------------------------------------------------------------- tokenizer
def exported_tokenizer(path):
    """The exported directory's AutoTokenizer (skips without transformers or tokenizers)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    return transformers.AutoTokenizer.from_pretrained(path)


def chat_ids(tok, messages, **kwargs) -> list[int]:
    return tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]


def test_hf_tokenizer_encodes_like_minirl(tmp_path):
    out = export_hf(random_model(CONFIGS["mha"]), tmp_path)
    hf_tok = exported_tokenizer(out)
    text = "Q:347+85\nA: 432"
    ids = hf_tok(text).input_ids
    assert ids == [TOK.bos_id] + TOK.encode(text)  # bos exactly once, as minirl's sequences start
    assert hf_tok.encode(text, add_special_tokens=False) == TOK.encode(text)
    assert hf_tok.decode(ids + [TOK.eos_id], skip_special_tokens=True) == text
    assert TOK.decode(ids + [TOK.eos_id]) == text
    # the tokenizers library alone reads the same post-processor
    from tokenizers import Tokenizer
    assert Tokenizer.from_file(str(out / "tokenizer.json")).encode(text).ids == ids
    # a batch is left-padded as minirl pads its prompts
    texts = ["Q:1+2\nA:", "Q:sort 3142\nA:"]
    batch = hf_tok(texts, padding=True)
    tokens, mask = left_pad([[TOK.bos_id] + TOK.encode(x) for x in texts], TOK.pad_id)
    assert batch.input_ids == tokens.tolist() and batch.attention_mask == mask.astype(int).tolist()


def test_chat_template_is_encode_chat(tmp_path):
    hf_tok = exported_tokenizer(export_hf(random_model(CONFIGS["mha"]), tmp_path))
    for task in TASKS:
        for ex in heldout_set(task, 8):
            prompt_ids, completion_ids = encode_chat(TOK, ex.prompt, ex.answer)
            user = [{"role": "user", "content": ex.prompt}]
            full = user + [{"role": "assistant", "content": ex.answer}]
            # "A:" is part of minirl's user turn, so add_generation_prompt adds nothing
            assert chat_ids(hf_tok, user, add_generation_prompt=True) == prompt_ids
            assert chat_ids(hf_tok, user, add_generation_prompt=False) == prompt_ids
            assert chat_ids(hf_tok, full) == prompt_ids + completion_ids  # bos once, eos at the end
            assert chat_ids(hf_tok, full, continue_final_message=True) == prompt_ids + completion_ids[:-1]
    two_turns = chat_ids(hf_tok, [{"role": "user", "content": "1+2"}, {"role": "assistant", "content": "3"},
                                  {"role": "user", "content": "max 19"}])
    assert TOK.decode(two_turns, skip_special=False) == "Q:1+2\nA:3<eos>Q:max 19\nA:"
    assert two_turns.count(TOK.bos_id) == 1 and two_turns[0] == TOK.bos_id
    import jinja2
    with pytest.raises(jinja2.TemplateError, match="alternates user and assistant"):
        hf_tok.apply_chat_template([{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+2"}])


# -------------------------------------------------------------- generation
def test_greedy_generation_matches_hf(tmp_path):
    # large weights make the greedy choice decisive (checked below), so float noise cannot flip it
    model = random_model(CONFIGS["gqa"], seed=5, scale=0.5)
    hf = load_hf_model(export_hf(model, tmp_path))
    mirror = to_torch(model)
    prompts = ["Q:12+7\nA:", "Q:sort 3142\nA:", "abc"]
    for text in prompts:
        prompt = [TOK.bos_id] + TOK.encode(text)
        gen = model.generate([prompt], max_new_tokens=12, greedy=True)
        ours = gen.completions[0][gen.completion_mask[0] > 0].tolist()

        # every greedy step had a clear winner
        logits = model(gen.tokens[:, :-1]).data[0, len(prompt) - 1:len(prompt) - 1 + len(ours)]
        top2 = np.sort(logits, axis=-1)[:, -2:]
        assert (top2[:, 1] - top2[:, 0]).min() > 1e-3

        out = hf.generate(t(np.array([prompt])), max_new_tokens=12, do_sample=False,
                          eos_token_id=TOK.eos_id, pad_token_id=TOK.pad_id)
        theirs = out[0, len(prompt):].tolist()
        if TOK.eos_id in theirs:
            theirs = theirs[:theirs.index(TOK.eos_id) + 1]
        tokens, mask = greedy_generate(mirror, t(np.array([prompt])), torch.ones(1, len(prompt), dtype=torch.bool),
                                       12, TOK.eos_id, TOK.pad_id)
        by_mirror = tokens[0, len(prompt):][mask[0, len(prompt):]].tolist()
        print(f"{text!r}: minirl {TOK.decode(ours, skip_special=False)!r}")
        assert ours == theirs == by_mirror


def test_hf_greedy_answers_equal_minirl_on_every_task(tmp_path):
    # the shipped SFT model through the exported tokenizer and transformers' generate, prompts left-padded
    transformers = pytest.importorskip("transformers")
    model = minirl.load("sft")
    out = export_hf(model, tmp_path)
    hf_tok = exported_tokenizer(out)
    hf = transformers.LlamaForCausalLM.from_pretrained(out)
    for name, task in TASKS.items():
        examples = heldout_set(name, 16)
        problems = [ex.prompt for ex in examples] + (["347+85"] if name == "add" else [])  # the prompt of the bug
        prompts = [format_prompt(p) for p in problems]
        ours = complete(model, prompts, task.max_answer_len + 1)

        batch = hf_tok(prompts, padding=True, return_tensors="pt")
        tokens, mask = left_pad([encode_chat(TOK, p)[0] for p in problems], TOK.pad_id)
        assert np.array_equal(batch.input_ids.numpy(), tokens) and np.array_equal(batch.attention_mask.numpy(), mask)
        with torch.no_grad():
            gen = hf.generate(**batch, do_sample=False, max_new_tokens=task.max_answer_len + 1)
        theirs = []
        for row in gen[:, tokens.shape[1]:].tolist():
            row = row[:row.index(TOK.eos_id)] if TOK.eos_id in row else row
            theirs.append(hf_tok.decode(row, skip_special_tokens=True))
        right = sum(a == ex.answer for a, ex in zip(ours, examples))
        print(f"{name}: {len(prompts)} prompts, {sum(a == b for a, b in zip(ours, theirs))} answers equal, "
              f"{right}/16 correct; e.g. {prompts[0]!r} -> {theirs[0]!r}")
        assert theirs == ours
