"""Subnetwork fine-tuning: train only the weights a previous run updated.

Mukherjee et al., *Reinforcement Learning Finetunes Small Subnetworks in Large
Language Models*, arXiv 2505.11711 (2025); docs/PAPERS.md §1, "Subnetwork
fine-tuning": the mask is ``m_i = 1`` iff ``(θ_init - θ_full)_i != 0``, and the
retraining multiplies the gradient by m right before every optimizer update.

- θ_init and θ_full come from a run directory RUN (`--mask-from RUN`): its
  config.toml names θ_init (`init`), its `checkpoints/final` is θ_full; a
  checkpoint of a run (`RUN/checkpoints/step_000050`) takes the place of
  `final`. A LoRA checkpoint counts as its merged weights W + ΔW.
- "Updated" is `minirl.analysis.updated_mask`, the rule update sparsity counts
  by, on the bf16 view of both models: `mask_tol` None is PAPERS.md's `!= 0`
  (mode "bitwise"), a number is `|Δ| > tol` (the sparsity rule at that tol).
- The mask covers the model's own weights. Heads an algorithm adds (PPO's
  value head, a reward model's score) are not part of RUN's update and stay
  fully trainable. LoRA adapters are refused: they are not weights of RUN, and
  their ΔW = (α/r) B A is dense whatever the gradient of A and B.
- Where: in `minirl.train.train`, after backward and before the gradient
  clip. PAPERS.md names no order; masking first makes the clip scale (and
  `grad_norm` log) only the gradient the update applies, as if the masked
  weights were not parameters at all. Masked entries are 0 at the update
  either way.
- Only the gradient is masked, as the paper defines it: decoupled weight decay
  and the online-merging optimizers' α F(τ_r) term still move masked weights.
  With adamw or sgd and weight_decay 0 (the default) masked weights stay
  bitwise fixed (tests/test_subnetwork.py: fp32 and bf16 storage).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minirl.checkpoint import CheckpointError
from minirl.config import load_toml
from minirl.lora import HEADS


class MaskError(CheckpointError):
    """RUN's mask does not fit the parameters being trained (a ValueError, and a usage error on the CLI)."""


def mask_checkpoints(source) -> tuple[str, Path]:
    """(θ_init as the run's config.toml names it, θ_full's checkpoint directory) of run directory `source`."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"[train] mask_from: no run directory at {path}")
    if (path / "config.toml").is_file():  # a run directory: its final weights
        run, ckpt = path, path / "checkpoints" / "final"
    elif path.parent.name == "checkpoints" and (path.parent.parent / "config.toml").is_file():  # one of its checkpoints
        run, ckpt = path.parent.parent, path
    else:
        raise MaskError(f"[train] mask_from: {path} is neither a run directory (no config.toml) nor a checkpoint "
                        "under a run's checkpoints/")
    if not (ckpt / "model.safetensors").is_file():
        raise MaskError(f"[train] mask_from: {ckpt} holds no weights (did {run} finish?)")
    init = load_toml(run / "config.toml").get("init")
    if not init:
        raise MaskError(f"[train] mask_from: {run}/config.toml names no init model (a pretraining run starts from "
                        "random weights), so there is no θ_init to compare with")
    return str(init), ckpt


def updated_weights(source, tol: float | None = None) -> dict[str, np.ndarray]:
    """Name -> boolean mask of the entries run `source` updated (bf16 view; tol None: any change)."""
    from minirl.analysis import aligned_tensors, updated_mask
    from minirl.loading import load
    from minirl.lora import merged_state_dict

    init, ckpt = mask_checkpoints(source)
    theta = [merged_state_dict(load(p, value_head=False, reward_head=False)) for p in (init, ckpt)]  # heads dropped
    mode, tol = ("bitwise", 0.0) if tol is None else ("tol", tol)
    return {name: updated_mask(t0, t1, tol, mode) for name, t0, t1 in aligned_tensors(*theta)}


def gradient_masks(source, named, tol: float | None = None) -> list[np.ndarray | None]:
    """One mask per (name, parameter) of `named`, aligned with it; None for a head (fully trainable)."""
    masks = updated_weights(source, tol)
    out = []
    for name, p in named:
        if name in masks:
            if masks[name].shape != p.data.shape:
                raise MaskError(f"[train] mask_from: tensor {name!r} is {masks[name].shape} in {source} but "
                                f"{p.data.shape} in the model being trained")
            out.append(masks[name])
        elif name.split(".")[0] in HEADS:
            out.append(None)
        elif ".lora_" in name:
            raise MaskError(f"[train] mask_from masks the model's own weights, but this model trains LoRA adapters "
                            f"({name!r}), which {source} did not update; train without LoRA (lora_rank 0)")
        else:
            raise MaskError(f"[train] mask_from: tensor {name!r} of the model being trained is not in {source}")
    missing = sorted(set(masks) - {name for name, _ in named})
    if missing:
        raise MaskError(f"[train] mask_from: {source} updated tensor(s) {missing} that the model being trained "
                        "does not train")
    return out


def mask_gradients(named, masks: list[np.ndarray | None]) -> None:
    """grad *= mask, in place, for every parameter with a gradient and a mask."""
    for (_, p), m in zip(named, masks):
        if m is not None and p.grad is not None:
            p.grad *= m


def summary(source, named, tol: float | None = None) -> dict:
    """What a report says of a masked run: RUN, its θ_init, the rule, and how much of the masked weights it trains."""
    masks = [m for m in gradient_masks(source, named, tol) if m is not None]
    trainable, total = int(sum(m.sum() for m in masks)), int(sum(m.size for m in masks))
    return {"mask_from": str(source), "mask_init": mask_checkpoints(source)[0],
            "mask_tol": "none" if tol is None else tol, "trainable": trainable, "masked_total": total,
            "trainable_fraction": trainable / total if total else float("nan")}
