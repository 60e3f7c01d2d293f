"""Text in, text out: greedy or sampled completions, and the held-out benchmark."""

from __future__ import annotations

import numpy as np

from minirl.tasks import heldout_accuracy


def complete(model, prompts: list[str], max_new_tokens: int, greedy: bool = True,
             rng: np.random.Generator | None = None, temperature: float = 1.0, top_k: int | None = None) -> list[str]:
    """Completions of text prompts (bos prepended), cut at the first eos."""
    tok = model.tokenizer
    ids = [[tok.bos_id] + tok.encode(p) for p in prompts]
    gen = model.generate(ids, max_new_tokens, rng=rng, temperature=temperature, top_k=top_k, greedy=greedy)
    return gen.texts(tok)


def benchmark(model, tasks=None, n: int = 200, seed: int = 1234, prompt_format: str = "chat") -> dict[str, float]:
    """Greedy exact-match accuracy per task on the fixed held-out sets."""
    return heldout_accuracy(lambda prompts, k: complete(model, prompts, k), tasks, n=n, seed=seed, prompt_format=prompt_format)
