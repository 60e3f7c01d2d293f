"""minirl: a pure-NumPy laboratory for RL fine-tuning of language models."""

__version__ = "0.1.0"
