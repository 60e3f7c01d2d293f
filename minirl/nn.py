"""Module, Parameter and the three layers a Llama needs: Linear, Embedding, RMSNorm.

Parameter names come from attribute names, exactly as in PyTorch, so a model
built with Hugging Face's attribute names (`model.layers.0.self_attn.q_proj`)
gets Hugging Face's parameter names (`model.layers.0.self_attn.q_proj.weight`).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from minirl import functional as F
from minirl.tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates."""

    def __init__(self, data: np.ndarray):
        super().__init__(np.ascontiguousarray(data, dtype=np.float32), requires_grad=True)


class Module:
    """A tree of Parameters and sub-Modules, named by attribute."""

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) for every parameter, in definition order."""
        for key, value in vars(self).items():
            name = f"{prefix}{key}"
            if isinstance(value, Parameter):
                yield name, value
            elif isinstance(value, Module):
                yield from value.named_parameters(name + ".")
            elif isinstance(value, (list, tuple)) and value and isinstance(value[0], Module):
                for i, child in enumerate(value):
                    yield from child.named_parameters(f"{name}.{i}.")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Name -> a copy of the parameter's array."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into the parameters; names and shapes must match."""
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if strict and (missing or unexpected):
            raise ValueError(f"state dict does not match the model: missing {missing}, unexpected {unexpected}")
        for name, p in own.items():
            if name not in state:
                continue
            value = np.asarray(state[name], dtype=np.float32)
            if value.shape != p.shape:
                raise ValueError(f"tensor {name}: expected shape {p.shape}, got {value.shape}")
            p.data[...] = value


class Linear(Module):
    """y = x @ W.T, bias-free as in Llama; W is (out_features, in_features)."""

    def __init__(self, in_features: int, out_features: int, rng: np.random.Generator, std: float = 0.02):
        self.weight = Parameter(rng.normal(0.0, std, (out_features, in_features)))

    def __call__(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        return F.linear(x, self.weight)


class Embedding(Module):
    """A lookup table of token vectors, (V, C)."""

    def __init__(self, num_embeddings: int, dim: int, rng: np.random.Generator, std: float = 0.02):
        self.weight = Parameter(rng.normal(0.0, std, (num_embeddings, dim)))

    def __call__(self, ids: np.ndarray) -> Tensor:  # (B, T) -> (B, T, C)
        return F.embedding(self.weight, ids)


class RMSNorm(Module):
    """Root-mean-square normalisation with a learned gain, initialised to 1."""

    def __init__(self, dim: int, eps: float = 1e-6):
        self.weight = Parameter(np.ones(dim))
        self.eps = eps

    def __call__(self, x: Tensor) -> Tensor:  # (..., C) -> (..., C)
        return F.rms_norm(x, self.weight, self.eps)
