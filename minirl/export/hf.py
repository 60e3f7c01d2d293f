"""Export a minirl Transformer as a Hugging Face Llama directory (numpy + safetensors only).

minirl's parameter names are Hugging Face Llama's, so the weights are a
key-for-key copy. The directory loads with

    from transformers import LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(out_dir)          # no missing/unexpected keys

and holds:

    config.json              a LlamaConfig (architectures ["LlamaForCausalLM"])
    model.safetensors        the LM weights, fp32 or bf16 (metadata format "pt")
    generation_config.json   bos/eos/pad ids for `hf.generate`
    vocab.json               the character vocabulary, token -> id (if the model has a tokenizer)
    tokenizer_config.json    special tokens and how to encode
    tokenizer.json           the same vocabulary for the `tokenizers` library (one token per character)
    minirl_heads.safetensors minirl's extra weights, if any (the value head: Llama has no place for it)
    minirl_config.json       the full TransformerConfig, so `load_hf` rebuilds the exact model

A reward model (`reward_head=True`, minirl/rl/reward_model.py) is exported as
what TRL's RewardTrainer trains and saves, a sequence classifier:

    from transformers import LlamaForSequenceClassification
    rm = LlamaForSequenceClassification.from_pretrained(out_dir)   # no missing/unexpected keys
    rm(input_ids, attention_mask=mask).logits[:, 0] == minirl's model.rewards(input_ids, mask)

config.json says architectures ["LlamaForSequenceClassification"] and
num_labels 1; model.safetensors holds the trunk `model.*` and the head
`score.weight` (1, C), and the LM head `lm_head.weight` (untied models) moves
to minirl_heads.safetensors, since the classifier has none. The classifier
reads each row's logits at "the rightmost token that is not pad_token_id"
(transformers' GenericForSequenceClassification), so pad_token_id is the
tokenizer's pad: on a right-padded chat sequence `bos Q:...\\nA: answer eos
pad ...` (`reward_model.chat_sequences`) that token is the eos, where minirl
reads it too, and Hugging Face's default positions 0, 1, ... equal minirl's
on right padding. The tokenizer pads on the right (`padding_side`) for the
same reason; a reward model needs a tokenizer to be exported.

Encoding for the exported model, the same as minirl's: one id per character,
`vocab.json[c]`, after a bos. `AutoTokenizer.from_pretrained(out_dir)` (loads
`tokenizer.json`; needs the `tokenizers` library) adds bos as Llama's tokenizer
does (`add_bos_token: true`, a TemplateProcessing "<bos> $A" post-processor), so

    tok("Q:347+85\\nA:").input_ids == [bos_id] + CharTokenizer().encode("Q:347+85\\nA:")
    tok.decode(ids, skip_special_tokens=True)              # the text back
    tok.encode(text, add_special_tokens=False)             # CharTokenizer.encode(text), no bos

The chat template (tokenizer_config.json `chat_template`) writes minirl's
chat format (`minirl.tasks.formats`): bos once at the start, a user message as
"Q:<content>\\nA:", an assistant message as "<content><eos>"; roles alternate
user, assistant, user, ... and anything else is an error. So

    tok.apply_chat_template([{"role": "user", "content": "347+85"}], tokenize=True)
        == encode_chat(CharTokenizer(), "347+85")[0]       # [bos] + "Q:347+85\\nA:"

`add_generation_prompt` adds nothing: in minirl's format the "A:" that opens
the answer belongs to the user turn (the SFT data put it there), so a
conversation that ends with a user message is always ready for generation,
with or without the flag. To continue a partial answer, end with an assistant
message and pass `continue_final_message=True` (its eos is then left off).
`apply_chat_template` tokenizes the rendered text without special tokens, so
bos appears once. Left padding (`padding_side`), as minirl pads its prompts.

Writing needs no torch and no transformers; every file is written to a
temporary name in `out_dir` and moved into place with `os.replace`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import load_file, save_file

from minirl.checkpoint import atomic_write, atomic_write_text

DTYPES = {"fp32": (np.float32, "float32"), "bf16": (ml_dtypes.bfloat16, "bfloat16")}
"""Export dtype name -> (numpy storage dtype, Hugging Face torch_dtype string)."""

HEAD_NAMES = ("value_head.weight", "score.weight")
"""minirl-only heads, written to `minirl_heads.safetensors` instead of model.safetensors."""

SEQ_CLS_EXTRA = ("value_head.weight", "lm_head.weight")
"""A reward model's weights that LlamaForSequenceClassification has no place for (to `minirl_heads.safetensors`)."""

CHAT_TEMPLATE = r"""{{- bos_token -}}
{%- for message in messages -%}
    {%- if message['role'] != ['user', 'assistant'][loop.index0 % 2] -%}
        {{- raise_exception("minirl's chat format alternates user and assistant messages, starting with user") -}}
    {%- endif -%}
    {%- if message['role'] == 'user' -%}
        {{- 'Q:' + message['content'] + '\nA:' -}}
    {%- else -%}
        {{- message['content'] + eos_token -}}
    {%- endif -%}
{%- endfor -%}"""
"""minirl's chat format (`minirl.tasks.formats`) in Jinja: <bos> Q:<problem>\\nA: <answer> <eos>."""


def write_json(path: str | os.PathLike, obj) -> None:
    """JSON, indented, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------ export
def hf_config(model, dtype: str = "fp32", tokenizer=None) -> dict:
    """The LlamaConfig dict (config.json) for a minirl Transformer (a sequence classifier if it has a reward head)."""
    cfg = model.config
    special = {} if tokenizer is None else {
        "pad_token_id": tokenizer.pad_id, "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id}
    if cfg.reward_head:  # one scalar label; the classifier finds each row's last token by pad_token_id
        special.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    return {
        "architectures": ["LlamaForSequenceClassification" if cfg.reward_head else "LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "initializer_range": cfg.initializer_range,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "pretraining_tp": 1,
        "use_cache": True,
        **special,
        "torch_dtype": DTYPES[dtype][1],
    }


def tokenizer_files(tokenizer, max_length: int, padding_side: str = "left") -> dict[str, dict]:
    """vocab.json, tokenizer_config.json and tokenizer.json for a character vocabulary."""
    d = tokenizer.to_dict()
    vocab = {s: int(i) for s, i in d["vocab"].items()}
    pad, bos, eos = d["pad_token"], d["bos_token"], d["eos_token"]
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "pad_token": pad, "bos_token": bos, "eos_token": eos,
        "padding_side": padding_side,
        # as Llama's; tokenizer.json's post-processor is what adds bos (transformers 5 ignores these when it is present)
        "add_bos_token": True, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
        "minirl_tokenizer": {"type": "char", "encoding": (
            "bos, then one id per character (vocab.json); chat prompts are 'Q:<problem>\\nA:', answers end with eos")},
    }
    # A WordLevel model over single characters: split into characters, look each up, fuse on decode.
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": vocab[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for s in (pad, bos, eos)],
        "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "[\\s\\S]"}, "behavior": "Isolated", "invert": False},
        # "<bos> $A", as Llama's tokenizer.json
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [vocab[bos]], "tokens": [bos]}},
        },
        "decoder": {"type": "Fuse"},
        # "<unk>" is deliberately not in the vocabulary: an unknown character is an error, not a silent id
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    return {"vocab.json": vocab, "tokenizer_config.json": tokenizer_config, "tokenizer.json": tokenizer_json}


def export_hf(model, out_dir: str | os.PathLike, dtype: str = "fp32", tokenizer=None) -> Path:
    """Write `model` as a Hugging Face LlamaForCausalLM directory (LlamaForSequenceClassification with a reward head).

    `dtype` is the storage dtype of the weights ("fp32" or "bf16", rounded to
    nearest even as `ml_dtypes` does). `tokenizer` defaults to `model.tokenizer`;
    without one the vocabulary files and special token ids are left out (a
    reward model needs one: its pad id marks where each sequence ends).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}")
    seq_cls = model.config.reward_head
    if seq_cls and tokenizer is None:
        raise ValueError("a reward model is exported as LlamaForSequenceClassification, which needs pad_token_id "
                         "to find each sequence's last token: pass tokenizer= or set model.tokenizer")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np_dtype = DTYPES[dtype][0]

    # 1) weights: what the Hugging Face class holds into model.safetensors, the rest beside it
    extra_names, architecture = (SEQ_CLS_EXTRA, "LlamaForSequenceClassification") if seq_cls else (
        HEAD_NAMES, "LlamaForCausalLM")
    lm, heads = {}, {}
    for name, p in model.named_parameters():
        (heads if name in extra_names else lm)[name] = np.ascontiguousarray(p.data.astype(np_dtype))
    atomic_write(out_dir / "model.safetensors", lambda tmp: save_file(lm, tmp, metadata={"format": "pt"}))
    heads_path = out_dir / "minirl_heads.safetensors"
    if heads:
        atomic_write(heads_path, lambda tmp: save_file(heads, tmp, metadata={
            "format": "pt", "note": f"minirl weights that are not part of {architecture}: {', '.join(heads)}"}))
    elif heads_path.exists():
        heads_path.unlink()  # a stale file from an earlier export of another model

    # 2) configs
    write_json(out_dir / "config.json", hf_config(model, dtype, tokenizer))
    write_json(out_dir / "minirl_config.json", model.config.to_dict())
    generation = {"do_sample": False, "max_length": model.config.max_position_embeddings}
    if tokenizer is not None:
        generation.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    write_json(out_dir / "generation_config.json", generation)

    # 3) vocabulary
    if tokenizer is not None:
        padding_side = "right" if seq_cls else "left"  # right: HF's default positions are then minirl's
        for name, content in tokenizer_files(tokenizer, model.config.max_position_embeddings, padding_side).items():
            write_json(out_dir / name, content)
    return out_dir


# ------------------------------------------------------------------ import
def load_hf(path: str | os.PathLike):
    """A minirl Transformer (float32) from a directory written by `export_hf`, or any small HF Llama."""
    from minirl.model import Transformer, TransformerConfig

    path = Path(path)
    if (path / "minirl_config.json").exists():
        config = TransformerConfig.from_dict(json.loads((path / "minirl_config.json").read_text()))
    else:
        hf = json.loads((path / "config.json").read_text())
        theta = hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0))
        config = TransformerConfig.from_dict({**hf, "rope_theta": theta})
    tensors = {k: v.astype(np.float32) for k, v in load_file(path / "model.safetensors").items()}
    if (path / "minirl_heads.safetensors").exists():
        tensors.update({k: v.astype(np.float32) for k, v in load_file(path / "minirl_heads.safetensors").items()})
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    tokenizer = None
    if (path / "vocab.json").exists():
        from minirl.tasks.tokenizer import CharTokenizer
        tokenizer = CharTokenizer.from_dict({"type": "char", "vocab": json.loads((path / "vocab.json").read_text())})
    model = Transformer(config, seed=0, tokenizer=tokenizer)
    model.load_state_dict(tensors)
    return model
