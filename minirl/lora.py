"""LoRA: low-rank adapters on a frozen model (Hu et al., arXiv 2106.09685), with PEFT's names.

A weight W (out, in) of a pretrained model is left as it is and a trainable
low-rank correction is added beside it:

    y = W x + (α / r) · B (A x),        A (r, in), B (out, r), r << min(in, out)

so fine-tuning changes the layer by ΔW = (α / r) · B A: a dense (out, in)
matrix of rank at most r, described by r · (in + out) numbers instead of
in · out. Initialisation is PEFT's (`LoraLayer.reset_lora_parameters` with
`init_lora_weights=True`, itself microsoft/LoRA's `loralib`):

    A ~ kaiming_uniform(a=√5) = uniform(−1/√in, +1/√in)   (nn.Linear's default init)
    B = 0

so ΔW = 0 and the adapted model starts as exactly the base model, while the
gradient of B (which is (α / r) · dy (A x)^T, A being random) is not zero:
training moves B first, then A. The factor α / r keeps the update's size
roughly independent of r, so the learning rate need not be retuned when r
changes (Hu et al., §4.1).

The backbone is frozen for real: every base parameter gets
`requires_grad = False`, and the tape then neither computes nor stores its
gradient (`F.linear` skips dW for a frozen weight, `F.rms_norm` its dweight,
`F.embedding` is not taped at all, `Tensor.backward` never walks into a
parent that does not require grad, and `lora_linear`, an adapted layer's one
fused op, skips dW too and keeps only the (N, R) rank-side activation).
Gradients, optimizer moments and master weights exist only for the adapters
(and the heads added for training), so the memory and time a run saves are
real and can be measured. PERL
(Sidahmed et al., arXiv 2403.10704) puts LoRA on every attention projection
of the policy, the value model and the reward model, training their scalar
heads too; those are this module's defaults (`LoraConfig.lora_targets`,
`value_head`, `score`).

After training, `merge_lora` adds ΔW into W (inference then costs nothing
extra) and `unmerge_lora` takes it out again, restoring W to float32
rounding. Parameter names are PEFT's saved names without the adapter name:
`model.layers.0.self_attn.q_proj.weight` stays the frozen base weight (the
base state dict keeps Hugging Face's names) and the adapters are
`...q_proj.lora_A.weight` (r, in) and `...q_proj.lora_B.weight` (out, r);
`minirl.export.peft` writes and reads them as a PEFT adapter directory.

Legend: N=rows (every leading axis of x), I=in features, O=out features, R=rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from minirl import functional as F
from minirl.config import check_fields
from minirl.functional import _op
from minirl.nn import Linear, Module, Parameter
from minirl.tensor import Tensor, is_grad_enabled

TARGETS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
           "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
"""Every Linear of a decoder layer LoRA can adapt -> the sub-module of the layer that holds it."""

HEADS = ("value_head", "score")
"""Heads added for training (PPO's value head, a reward model's score): trainable beside the adapters."""


@dataclass
class LoraConfig:
    """Low-rank adapters on the decoder's linear layers (the `[lora]` section of a training command)."""

    lora_rank: int = 0
    """r, the rank of every adapter; 0: no LoRA, full fine-tuning."""
    lora_alpha: float = 8.0
    """α: ΔW = (α / r) B A (PEFT's default lora_alpha 8, with r 8 a scale of 1)."""
    lora_dropout: float = 0.0
    """Dropout on the adapters' input while training (never when sampling or evaluating)."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Linear layers of every decoder layer to adapt (PERL: the attention projections)."""

    def __post_init__(self):
        if isinstance(self.lora_targets, list):
            self.lora_targets = tuple(self.lora_targets)
        targets = self.lora_targets if isinstance(self.lora_targets, tuple) else ()
        rank_ok = isinstance(self.lora_rank, (int, np.integer)) and not isinstance(self.lora_rank, bool)
        check_fields(self, [
            ("lora_rank", rank_ok and self.lora_rank >= 0, "an integer >= 0 (0: no LoRA)"),
            ("lora_alpha", self.lora_alpha > 0, "> 0"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "in [0, 1)"),
            ("lora_targets", len(targets) >= 1 and all(t in TARGETS for t in targets)
             and len(set(targets)) == len(targets),
             "one or more distinct names among " + ", ".join(TARGETS)),
        ])

    @property
    def enabled(self) -> bool:
        """True when adapters are used (lora_rank > 0)."""
        return self.lora_rank > 0

    @property
    def scaling(self) -> float:
        """α / r, the factor of B A (0 without LoRA)."""
        return self.lora_alpha / self.lora_rank if self.enabled else 0.0


def _linear(weight: np.ndarray) -> Linear:
    """A Linear holding `weight` (out, in), so its parameter is named `<attribute>.weight`."""
    layer = Linear.__new__(Linear)
    layer.weight = Parameter(weight)
    return layer


def lora_linear(x: Tensor, weight: Tensor, A: Tensor, B: Tensor, scaling: float,
                keep: np.ndarray | None = None) -> Tensor:
    """x W^T + s · (x·keep) A^T B^T as one taped op: (..., I) -> (..., O).

    Fused so that the tape keeps only h = s·(x·keep) A^T (N, R) beyond what a
    plain Linear keeps: composed from `F.linear` (`lora_linear_reference`, the
    tests' oracle) the adapter branch would hold two more (N, O) arrays per
    layer, more than full fine-tuning's weight gradients at minirl's sizes.
    `keep` is inverted dropout's mask (..., I) of 0 and 1/(1-p), or None.
    """
    O, I = weight.shape
    lead = x.shape[:-1]
    x2 = x.data.reshape(-1, I)  # (N, I)
    xd = x2 if keep is None else x2 * keep.reshape(-1, I).astype(x2.dtype, copy=False)  # (N, I)
    h = (xd @ A.data.T) * scaling  # (N, R)
    out = x2 @ weight.data.T + h @ B.data.T  # (N, O); B = 0 adds exact zeros: the base layer bit for bit

    def backward(dout):
        dout2 = dout.reshape(-1, O)  # (N, O)
        # forward was: out = x W^T + h B^T
        dW = dout2.T @ x2 if weight.requires_grad else None  # (O, I), never for a frozen base
        dB = dout2.T @ h if B.requires_grad else None  # (O, R)
        dh = (dout2 @ B.data) * scaling  # (N, R)
        # forward was: h = s · xd A^T, xd = x * keep
        dA = dh.T @ xd if A.requires_grad else None  # (R, I)
        dx = None
        if x.requires_grad:
            dxd = dh @ A.data  # (N, I)
            dx = (dout2 @ weight.data + (dxd if keep is None else dxd * keep.reshape(-1, I))).reshape(x.shape)
        return dx, dW, dA, dB

    return _op(out.reshape(*lead, O), (x, weight, A, B), backward)


def lora_linear_reference(x: Tensor, weight: Tensor, A: Tensor, B: Tensor, scaling: float,
                          keep: np.ndarray | None = None) -> Tensor:
    """`lora_linear` composed from F.linear: W x + s · B (A (x·keep)), scaled on the rank side."""
    xd = x if keep is None else x * keep
    return F.linear(x, weight) + F.linear(F.linear(xd, A) * scaling, B)


class LoRALinear(Module):
    """A frozen Linear plus a trainable low-rank update: y = W x + (α / r) · B (A x)."""

    def __init__(self, base: Linear, rank: int, alpha: float, rng: np.random.Generator, dropout: float = 0.0,
                 dropout_rng: np.random.Generator | None = None):
        """Wrap `base` (its weight is frozen in place); A drawn from `rng`, dropout masks from `dropout_rng`."""
        if dropout > 0 and dropout_rng is None:
            raise ValueError("LoRALinear with dropout > 0 needs an explicit dropout_rng=np.random.Generator")
        out_features, in_features = base.weight.shape
        self.weight = base.weight  # the same Parameter: the base state dict keeps its name
        self.weight.requires_grad = False
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=√5) on (R, I): gain √(1/3), bound gain·√(3/I)
        self.lora_A = _linear(rng.uniform(-bound, bound, (rank, in_features)))  # (R, I)
        self.lora_B = _linear(np.zeros((out_features, rank)))  # (O, R)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.dropout = dropout
        self.dropout_rng = dropout_rng
        self.merged = False

    def _dropout_mask(self, shape: tuple) -> np.ndarray | None:
        """Inverted dropout's keep / (1 - p) for the adapter's input, only while the tape records (training)."""
        if self.dropout == 0 or not is_grad_enabled():
            return None
        keep = self.dropout_rng.random(shape) >= self.dropout  # (..., I)
        return (keep / (1.0 - self.dropout)).astype(np.float32)

    def __call__(self, x: Tensor) -> Tensor:  # (..., I) -> (..., O)
        if self.merged:
            return F.linear(x, self.weight)  # ΔW is inside W
        return lora_linear(x, self.weight, self.lora_A.weight, self.lora_B.weight, self.scaling,
                           self._dropout_mask(x.shape))

    def delta(self) -> np.ndarray:
        """ΔW = (α / r) · B A, (O, I) in float32; rank <= r."""
        return (self.scaling * (self.lora_B.weight.data @ self.lora_A.weight.data)).astype(np.float32, copy=False)

    def merge(self) -> None:
        """W += ΔW, so the forward is one matmul (idempotent). A and B must not change until `unmerge`."""
        if not self.merged:
            self.weight.data += self.delta()
            self.merged = True

    def unmerge(self) -> None:
        """W -= ΔW: the base weight again, each entry within float32 eps · (|W| + |ΔW|) (idempotent)."""
        if self.merged:
            self.weight.data -= self.delta()
            self.merged = False


# ------------------------------------------------------------- the model
def lora_layers(model) -> dict[str, LoRALinear]:
    """Dotted module name (`model.layers.0.self_attn.q_proj`) -> its LoRALinear, in layer order."""
    return {f"model.layers.{i}.{TARGETS[t]}.{t}": getattr(getattr(layer, TARGETS[t]), t)
            for i, layer in enumerate(model.model.layers) for t in TARGETS
            if isinstance(getattr(getattr(layer, TARGETS[t]), t), LoRALinear)}


def _is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def adapter_shapes(model, config: LoraConfig) -> dict[str, tuple[int, ...]]:
    """The adapter tensors `inject_lora(model, config)` makes: name -> shape; ValueError if the rank does not fit."""
    if not config.enabled:
        raise ValueError(f"LoraConfig.lora_rank must be >= 1 to inject LoRA, got {config.lora_rank}")
    shapes = {}
    for i, layer in enumerate(model.model.layers):
        for t in config.lora_targets:
            name = f"model.layers.{i}.{TARGETS[t]}.{t}"
            out_features, in_features = getattr(getattr(layer, TARGETS[t]), t).weight.shape
            if config.lora_rank > min(in_features, out_features):
                raise ValueError(f"LoraConfig.lora_rank must be <= min(in, out) = {min(in_features, out_features)} "
                                 f"of {name}.weight ({out_features}, {in_features}), got {config.lora_rank}")
            shapes[f"{name}.lora_A.weight"] = (config.lora_rank, in_features)
            shapes[f"{name}.lora_B.weight"] = (out_features, config.lora_rank)
    return shapes


def inject_lora(model, config: LoraConfig, seed: int = 0) -> list[str]:
    """Replace the targeted Linears of every layer by LoRALinear and freeze all but adapters and heads.

    Returns the adapted module names. A is drawn as PEFT draws it from
    `np.random.default_rng(seed)`; each layer's dropout has its own generator
    from (seed, layer, target). `model.lora_config` records `config`.
    """
    if lora_layers(model):
        raise ValueError("this model already has LoRA adapters")
    adapter_shapes(model, config)  # every check before anything changes
    rng = np.random.default_rng(seed)
    names = []
    for i, layer in enumerate(model.model.layers):
        for k, t in enumerate(config.lora_targets):
            parent = getattr(layer, TARGETS[t])
            setattr(parent, t, LoRALinear(getattr(parent, t), config.lora_rank, config.lora_alpha, rng,
                                          config.lora_dropout, dropout_rng=np.random.default_rng([seed, i, k])))
            names.append(f"model.layers.{i}.{TARGETS[t]}.{t}")
    for name, p in model.named_parameters():
        p.requires_grad = _is_adapter(name) or name.split(".")[0] in HEADS
    model.lora_config = config
    return names


def dropout_state(model) -> dict:
    """The dropout generators' states of every adapted layer (empty without dropout): part of a run's resume state."""
    return {name: layer.dropout_rng.bit_generator.state for name, layer in lora_layers(model).items()
            if layer.dropout_rng is not None}


def set_dropout_state(model, state: dict) -> None:
    """Restore `dropout_state`, so a resumed run draws the same dropout masks as one that never stopped."""
    layers = lora_layers(model)
    for name, st in state.items():
        layers[name].dropout_rng.bit_generator.state = st


def merge_lora(model) -> None:
    """W += ΔW in every adapted layer (idempotent)."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model) -> None:
    """W -= ΔW in every adapted layer: the base weights to float32 rounding (idempotent)."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def lora_state_dict(model) -> dict[str, np.ndarray]:
    """Copies of the adapter tensors only: `...q_proj.lora_A.weight` (r, in), `...q_proj.lora_B.weight` (out, r)."""
    return {name: p.data.copy() for name, p in model.named_parameters() if _is_adapter(name)}


def load_lora_state_dict(model, tensors: dict[str, np.ndarray]) -> None:
    """Copy adapter tensors into an unmerged LoRA model; names and shapes must be exactly its adapters'."""
    if any(layer.merged for layer in lora_layers(model).values()):
        raise ValueError("cannot load adapters into a merged model: unmerge_lora(model) first")
    own = {name: p for name, p in model.named_parameters() if _is_adapter(name)}
    if not own:
        raise ValueError("this model has no LoRA adapters: inject_lora(model, config) first")
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(f"adapter tensors do not match the model: missing {missing}, unexpected {unexpected}")
    for name, value in tensors.items():
        if tuple(np.shape(value)) != own[name].shape:
            raise ValueError(f"adapter tensor {name}: expected shape {own[name].shape}, got {tuple(np.shape(value))}")
    for name, value in tensors.items():
        own[name].data[...] = np.asarray(value, dtype=np.float32)


def trainable_parameters(model) -> list[tuple[str, Parameter]]:
    """(name, Parameter) of every parameter that requires grad: what the optimizer should get."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def count_trainable(model) -> int:
    """Number of trainable numbers: r·(in + out) per adapted matrix, plus the heads (everything without LoRA)."""
    return sum(p.size for _, p in trainable_parameters(model))


def merged_state_dict(model) -> dict[str, np.ndarray]:
    """The plain model's state dict: base weights with every ΔW added, adapter keys dropped (float32 copies)."""
    return _plain_state_dict(model, with_delta=True)


def base_state_dict(model) -> dict[str, np.ndarray]:
    """The plain model's state dict without the adapters' change (a merged layer's ΔW is taken out again)."""
    return _plain_state_dict(model, with_delta=False)


def _plain_state_dict(model, with_delta: bool) -> dict[str, np.ndarray]:
    """Copies of the non-adapter weights, each adapted one as W + ΔW (with_delta) or W, merged or not."""
    layers = lora_layers(model)
    out = {}
    for name, p in model.named_parameters():
        if _is_adapter(name):
            continue
        w = p.data.copy()
        layer = layers.get(name.removesuffix(".weight"))
        if layer is not None and layer.merged != with_delta:  # ΔW to add (unmerged) or to take out (merged)
            w += layer.delta() if with_delta else -layer.delta()
        out[name] = w
    return out


def plain_model(model, merged: bool = False):
    """A new Transformer without LoRA holding the base weights (merged=True: base + ΔW), e.g. for `export_hf`."""
    from minirl.model import Transformer

    plain = Transformer(model.config, seed=0, tokenizer=model.tokenizer)
    plain.load_state_dict(merged_state_dict(model) if merged else base_state_dict(model))
    return plain
