"""Checkpoints as lazily read tensor sources, for `minirl analyze A B [C ...]`.

A source is a read-only mapping name -> float32 array that reads a tensor
from disk only when asked for it (``minirl.checkpoint.tensor_index`` reads
the headers, ``read_tensor`` one tensor), so walking two 7B checkpoints holds
one tensor of each at a time. What it opens:

- a shipped model name ("base", "sft") or a minirl checkpoint directory
  (``model.safetensors`` + ``config.json``);
- a run directory: its ``checkpoints/final``;
- a Hugging Face directory, single-file (``model.safetensors``) or sharded
  (``model.safetensors.index.json`` and its shards), as ``minirl export
  --format hf`` or TRL write it; minirl's parameter names are Hugging Face
  Llama's, so a minirl checkpoint and its export match name for name (an
  export's ``minirl_heads.safetensors`` is read too);
- a ``.safetensors`` file or a shard index ``*.index.json``;
- a LoRA run's checkpoint (adapters only on disk): the model is loaded and its
  adapters merged into the weights in memory (``W + (α/r)·BA`` in float32),
  fine for minirl's small models.

Every stored dtype (BF16, F16, F32, ...) is read as float32, exactly; the
analysis then rounds to the comparison dtype (bf16 by default, the papers'
lens).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from minirl.checkpoint import CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME, CheckpointError, read_tensor, tensor_index

HEADS_NAME = "minirl_heads.safetensors"
"""Where a Hugging Face export keeps minirl's extra heads (minirl/export/hf.py)."""


class TensorSource(Mapping):
    """A checkpoint's tensors by name, each read from disk as float32 only when indexed."""

    def __init__(self, label: str, kind: str, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str],
                 read, path: Path | None = None, order: list[str] | None = None):
        self.label, self.kind, self.path = label, kind, path
        self.shapes, self.dtypes = shapes, dtypes
        self._read = read  # name -> float32 array
        self._order = order or list(shapes)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.shapes:
            raise KeyError(name)
        return self._read(name)

    def __iter__(self):
        return iter(self._order)  # on-disk order: a walk over the names reads each file front to back

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def n_params(self) -> int:
        """Number of entries over all tensors."""
        return sum(int(np.prod(s)) for s in self.shapes.values())

    def describe(self) -> dict:
        """JSON-ready summary: label, kind, path, stored dtypes, tensors and parameters."""
        return {"name": self.label, "kind": self.kind, "path": None if self.path is None else str(self.path),
                "stored_dtypes": dict(Counter(self.dtypes.values())), "n_tensors": len(self),
                "n_params": self.n_params}


def _from_index(label: str, kind: str, path: Path, index: dict) -> TensorSource:
    """A source over a {name: TensorInfo} index, in on-disk order."""
    file_rank = {f: r for r, f in enumerate(dict.fromkeys(info.file for info in index.values()))}
    order = [i.name for i in sorted(index.values(), key=lambda i: (file_rank[i.file], i.offset))]
    return TensorSource(label, kind, {n: tuple(i.shape) for n, i in index.items()},
                        {n: i.dtype for n, i in index.items()}, lambda name: read_tensor(index[name]), path, order)


def _from_arrays(label: str, kind: str, path: Path | None, arrays: Mapping[str, np.ndarray],
                 dtype: str = "F32") -> TensorSource:
    """A source over arrays already in memory (a merged LoRA model)."""
    return TensorSource(label, kind, {n: tuple(np.shape(a)) for n, a in arrays.items()}, dict.fromkeys(arrays, dtype),
                        lambda name: np.asarray(arrays[name], dtype=np.float32), path)


def _read_config(directory: Path) -> dict:
    """config.json of a directory, {} if absent; CheckpointError if corrupt."""
    file = directory / CONFIG_NAME
    if not file.is_file():
        return {}
    try:
        config = json.loads(file.read_text())
    except ValueError as e:
        raise CheckpointError(f"{file}: corrupt JSON: {e}") from None
    return config if isinstance(config, dict) else {}


def open_source(name_or_path, label: str | None = None) -> TensorSource:
    """Open a shipped model, checkpoint, run, Hugging Face directory or .safetensors file as a lazy source.

    Raises FileNotFoundError or CheckpointError (a ValueError) with a message naming the path.
    """
    from minirl.loading import SHIPPED, resolve

    label = label or str(name_or_path)
    path = resolve(name_or_path)  # a shipped name or a run directory -> its checkpoint directory
    if str(name_or_path) in SHIPPED:
        kind = "shipped minirl model"
    elif path != Path(name_or_path):
        kind = "run directory (checkpoints/final)"
    else:
        kind = None
    if path.is_file():
        index = tensor_index(path)
        sharded = path.name.endswith(".index.json")
        return _from_index(label, kind or ("sharded safetensors (index)" if sharded else "safetensors file"),
                           path, index)
    config = _read_config(path)
    if "lora" in config:  # adapters only on disk: merge them into the weights of the model they adapt
        from minirl.loading import load
        from minirl.lora import merged_state_dict

        arrays = merged_state_dict(load(path, merge_lora=True))
        return _from_arrays(label, f"LoRA checkpoint of {config.get('base')!r}, adapters merged in memory",
                            path, arrays)
    index = tensor_index(path)
    if kind is None:
        if (path / WEIGHTS_NAME).is_file() and "model" in config:
            kind = "minirl checkpoint"
        elif (path / WEIGHTS_NAME).is_file():
            kind = "Hugging Face directory" if config else "safetensors directory"
        elif (path / INDEX_NAME).is_file():
            files = len({info.file for info in index.values()})
            kind = f"Hugging Face directory, sharded ({files} files)"
        else:
            kind = "directory of .safetensors files"
    heads = path / HEADS_NAME
    if (path / WEIGHTS_NAME).is_file() and heads.is_file():  # a Hugging Face export's minirl-only heads
        index = {**index, **tensor_index(heads)}
    return _from_index(label, kind, path, index)
