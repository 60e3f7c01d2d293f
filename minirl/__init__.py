"""minirl: a pure-NumPy laboratory for RL fine-tuning of language models."""

__version__ = "0.1.0"


def load(name_or_path, value_head=None):
    """A model from a shipped name ("base", "sft") or a checkpoint path."""
    from minirl.loading import load as _load

    return _load(name_or_path, value_head=value_head)
