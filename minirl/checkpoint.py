"""Checkpoints as safetensors + config.json: atomic saves, streaming reads.

Format: the safetensors layout (https://github.com/huggingface/safetensors):
8-byte little-endian header length N, N bytes of JSON header
(``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``), then the
raw little-endian tensor bytes. Files are written with ``safetensors.numpy``
(which writes real ``BF16`` from ``ml_dtypes.bfloat16`` arrays, so torch and
Hugging Face read them); they are read with the small parser below, because
``safetensors.numpy.load`` cannot decode BF16 and because ``minirl analyze``
must stream two 7B checkpoints one tensor at a time (memory O(one tensor)) and
report errors naming the file and the tensor.

A checkpoint is a directory ``path/`` holding ``model.safetensors`` and
``config.json``. Atomicity of ``save_checkpoint``: both files are written and
fsynced in a fresh temporary directory beside ``path``, which then replaces
``path``: on Linux in one atomic ``renameat2(RENAME_EXCHANGE)`` (or one rename
when ``path`` is new), so ``path`` is always the complete old or the complete
new checkpoint. Where the exchange is unsupported the old directory is first
renamed to ``.<name>.old`` and the new one renamed into place; a crash between
those two renames leaves ``path`` missing but the complete old checkpoint in
``.<name>.old``, which ``load_checkpoint`` falls back to and the next save
removes. Files are never mixed between versions. On an exception (including
Ctrl-C) the temporary directory is removed; only a hard kill can leave a
``.<name>.tmp-*`` directory behind, never a partial ``path``.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import safetensors.numpy

from minirl.precision import storage_dtype

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
_MAX_HEADER = 100_000_000  # the safetensors library's own limit

# safetensors dtype -> numpy dtype of the stored bytes (little-endian)
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # decoded by hand: the bits are the top half of a float32
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, or has the wrong tensors."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype, shape and absolute byte range."""

    name: str
    """Tensor name (Hugging Face Llama names for minirl models)."""
    file: Path
    """The .safetensors file holding it."""
    dtype: str
    """safetensors dtype string: "F32", "BF16", "F16", ..."""
    shape: tuple[int, ...]
    """Tensor shape."""
    offset: int
    """Absolute byte offset of the data in the file."""
    nbytes: int
    """Byte length of the data."""


# -- reading ----------------------------------------------------------------------------


def read_header(file) -> tuple[dict[str, TensorInfo], dict]:
    """Parse and validate one .safetensors header: ({name: TensorInfo}, __metadata__)."""
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"{file}: no such checkpoint file")
    size = file.stat().st_size
    with open(file, "rb") as f:
        if size < 8:
            raise CheckpointError(f"{file}: truncated: {size} bytes, expected at least 8 (header length)")
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8 or n > _MAX_HEADER:
            raise CheckpointError(f"{file}: header length {n} does not fit in the file's {size} bytes "
                                  "(truncated or not a safetensors file)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError(f"expected a JSON object, got {type(header).__name__}")
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{file}: corrupt JSON header: {e}") from None
    metadata = header.pop("__metadata__", None) or {}
    start, infos = 8 + n, {}
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = all(isinstance(d, int) and d >= 0 for d in shape) and isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(f"{file}: tensor {name!r}: malformed header entry {entry!r}")
        if dtype not in _DTYPES:
            raise CheckpointError(f"{file}: tensor {name!r}: unsupported dtype {dtype} "
                                  f"(supported: {', '.join(_DTYPES)})")
        expected = math.prod(shape) * _DTYPES[dtype].itemsize
        if end - begin != expected:
            raise CheckpointError(f"{file}: tensor {name!r}: {end - begin} bytes for {dtype} shape "
                                  f"{list(shape)}, expected {expected}")
        if start + end > size:
            raise CheckpointError(f"{file}: truncated: tensor {name!r} needs bytes up to {start + end}, "
                                  f"file has {size}")
        infos[name] = TensorInfo(name, file, dtype, shape, start + begin, end - begin)
    return infos, metadata


def read_tensor(info: TensorInfo) -> np.ndarray:
    """Read one tensor from disk as a float32 array (only its own bytes are read)."""
    raw_dtype = _DTYPES[info.dtype]
    count = info.nbytes // raw_dtype.itemsize
    with open(info.file, "rb") as f:
        f.seek(info.offset)
        raw = np.fromfile(f, dtype=raw_dtype, count=count)
    if raw.size != count:
        raise CheckpointError(f"{info.file}: truncated: tensor {info.name!r} has {raw.size} of {count} values")
    if info.dtype == "BF16":
        out = raw.astype(np.uint32)
        out <<= 16  # in place (peak memory 6 bytes a value): bf16 is the top half of a float32
        out = out.view(np.float32)
    else:
        out = raw.astype(np.float32, copy=False)  # F32 on a little-endian host: no copy
    return out.reshape(info.shape)


def _weight_files(path) -> tuple[list[Path], dict[str, str] | None]:
    """The .safetensors files of a checkpoint and, if sharded, the index's weight_map."""
    p = Path(path)
    if not p.exists():
        backup = p.parent / f".{p.name}.old"
        if backup.is_dir():  # a save crashed mid-swap: the old checkpoint is complete here
            warnings.warn(f"{p} is missing; loading the backup {backup} left by an interrupted save")
            p = backup
        else:
            raise CheckpointError(f"{p}: no such checkpoint file or directory")
    if p.is_dir():
        if (p / WEIGHTS_NAME).is_file():
            return [p / WEIGHTS_NAME], None
        if (p / INDEX_NAME).is_file():
            p = p / INDEX_NAME
        else:
            files = sorted(p.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"{p}: no {WEIGHTS_NAME}, {INDEX_NAME} or *.safetensors file")
            return files, None
    if p.name.endswith(".index.json"):
        try:
            weight_map = json.loads(p.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{p}: corrupt shard index: {e!r}") from None
        shards = list(dict.fromkeys(weight_map.values()))  # unique, in index order
        return [p.parent / s for s in shards], weight_map
    return [p], None


def tensor_index(path) -> dict[str, TensorInfo]:
    """Headers only: {name: TensorInfo} for a file, a checkpoint directory or a sharded HF directory."""
    files, weight_map = _weight_files(path)
    index: dict[str, TensorInfo] = {}
    for file in files:
        infos, _ = read_header(file)
        for name, info in infos.items():
            if weight_map is not None and Path(weight_map.get(name, "")).name != file.name:
                continue  # the index decides which shard a tensor comes from
            if name in index:
                raise CheckpointError(f"{file}: tensor {name!r} also appears in {index[name].file}")
            index[name] = info
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(index))
        if missing:
            raise CheckpointError(f"{path}: tensors listed in the index but absent from their shard: {missing[:5]}")
    return index


def tensor_names(path) -> list[str]:
    """Names of every tensor in a checkpoint (reads headers only)."""
    return list(tensor_index(path))


def iter_tensors(path, names=None):
    """Yield (name, float32 array) one tensor at a time, in on-disk order; memory O(one tensor)."""
    index = tensor_index(path)
    unknown = [n for n in (names or []) if n not in index]
    if unknown:
        raise CheckpointError(f"{path}: no tensors named {unknown[:5]}")
    wanted = index.values() if names is None else [index[n] for n in names]
    file_rank = {f: r for r, f in enumerate(dict.fromkeys(i.file for i in index.values()))}
    for info in sorted(wanted, key=lambda i: (file_rank[i.file], i.offset)):  # sequential reads
        yield info.name, read_tensor(info)


def load_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """Load (tensors as float32, config); ``path`` is a checkpoint directory or a .safetensors file."""
    p = Path(path)
    tensors = dict(iter_tensors(p))
    directory = p if p.is_dir() else p.parent
    if not p.exists():
        directory = p.parent / f".{p.name}.old"  # the backup iter_tensors fell back to
    config_file = directory / CONFIG_NAME
    if not config_file.is_file():
        if p.is_file():
            return tensors, {}  # a bare weights file: no config beside it
        raise CheckpointError(f"{config_file}: missing config file")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as e:
        raise CheckpointError(f"{config_file}: corrupt JSON: {e}") from None
    return tensors, config


def check_shapes(tensors, expected: dict, path="<checkpoint>") -> None:
    """Raise CheckpointError listing missing, unexpected and wrongly-shaped tensors.

    ``tensors`` maps names to arrays, TensorInfos or shapes.
    """
    found = {k: tuple(getattr(v, "shape", v)) for k, v in tensors.items()}
    problems = [f"missing tensor {n!r} (expected shape {list(expected[n])})" for n in expected if n not in found]
    problems += [f"unexpected tensor {n!r} (shape {list(found[n])})" for n in found if n not in expected]
    problems += [f"tensor {n!r}: expected shape {list(expected[n])}, found {list(found[n])}"
                 for n in expected if n in found and found[n] != tuple(expected[n])]
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise CheckpointError(f"{path}: " + "; ".join(problems[:10]) + more)


# -- writing ---------------------------------------------------------------------------


def _dumps(obj, **kw) -> str:
    """json.dumps that also takes numpy scalars/arrays and paths (configs and metrics hold them)."""

    def default(o):
        if isinstance(o, (np.generic, np.ndarray)):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"{type(o).__name__} is not JSON serializable")

    return json.dumps(obj, default=default, **kw)


def _fsync_dir(directory: Path) -> None:
    """Make renames/creations in ``directory`` durable (no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_safetensors(file: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write arrays to ``file`` with the safetensors library and fsync it."""
    safetensors.numpy.save_file(arrays, file, metadata=metadata)
    with open(file, "rb+") as f:
        os.fsync(f.fileno())


def _default_mode(directory: bool = False) -> int:
    """The permissions a plain open()/mkdir() would give (tempfile's are private: 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write(file, write) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``file``, fsync, then os.replace: old or new, never partial."""
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.tmp-", dir=file.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(file.parent)


def atomic_write_text(file, text: str) -> None:
    """Write ``text`` to ``file`` atomically (see `atomic_write`)."""
    atomic_write(file, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(file, obj) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(file, _dumps(obj, indent=2, sort_keys=True) + "\n")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux renameat2(RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    return fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0


def _swap_in(tmp: Path, path: Path) -> None:
    """Make the complete directory ``tmp`` become ``path`` (see the module docstring)."""
    backup = path.parent / f".{path.name}.old"
    if not path.exists():
        os.replace(tmp, path)
    elif _exchange(tmp, path):
        shutil.rmtree(tmp)  # tmp now holds the old checkpoint
    else:
        if backup.exists():
            shutil.rmtree(backup)  # stale, from a crash after an earlier swap completed
        os.replace(path, backup)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(backup, path)  # put the old checkpoint back
            raise
    if backup.exists():
        shutil.rmtree(backup)
    _fsync_dir(path.parent)


def save_checkpoint(path, tensors: dict[str, np.ndarray], config: dict, dtype="bf16", extra: dict | None = None) -> Path:
    """Atomically write ``path/model.safetensors`` (in ``dtype``), ``path/config.json`` and ``extra`` files.

    ``dtype`` is "fp32", "bf16", "fp16" or a precision-policy name; bf16/fp16
    round to nearest even (as ``precision.to_bf16``). ``extra`` maps a file
    name to its content: ``*.safetensors`` a dict of arrays (saved as they
    are), ``*.json`` a JSON-able object. All files swap in together.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: exists and is not a checkpoint directory")
    target = storage_dtype(dtype)
    arrays = {}
    with np.errstate(over="ignore"):
        for name, t in tensors.items():
            a = np.asarray(t, dtype=np.float32)
            # np.ascontiguousarray would turn 0-d scalars into shape (1,)
            arrays[name] = np.require(a if target == np.float32 else a.astype(target), requirements="C")
    config_text = _dumps(config, indent=2, sort_keys=True) + "\n"  # fail before touching disk
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, _default_mode(directory=True))
    try:
        _write_safetensors(tmp / WEIGHTS_NAME, arrays, {"format": "pt"})  # "pt": HF's loader requires it
        atomic_write_text(tmp / CONFIG_NAME, config_text)
        for name, content in (extra or {}).items():
            if name.endswith(".safetensors"):
                _write_safetensors(tmp / name, {k: np.require(v, requirements="C") for k, v in content.items()},
                                   {"format": "pt"})
            else:
                atomic_write_text(tmp / name, _dumps(content, indent=2) + "\n")
        _fsync_dir(tmp)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
