"""Shared fixtures: a tiny saved checkpoint that tests can load without training anything."""

import pytest

from minirl.loading import save_model
from minirl.model import Transformer, TransformerConfig
from minirl.tasks import CharTokenizer


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A 1-layer, hidden-32 random model saved as a minirl checkpoint directory (bf16)."""
    tok = CharTokenizer()
    config = TransformerConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2)
    model = Transformer(config, seed=0, tokenizer=tok)
    return save_model(tmp_path_factory.mktemp("tiny") / "ckpt", model)
