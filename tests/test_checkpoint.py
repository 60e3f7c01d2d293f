"""Tests for minirl.checkpoint: round trips, corruption errors, atomicity, streaming, run dirs."""

import json
import os
import re

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from minirl import checkpoint
from minirl.checkpoint import (
    CheckpointError,
    check_shapes,
    iter_tensors,
    load_checkpoint,
    read_header,
    save_checkpoint,
    tensor_index,
    tensor_names,
)
from minirl.precision import to_bf16, to_fp16


def make_tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "model.embed_tokens.weight": rng.standard_normal((7, 4)).astype(np.float32),
        "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((4, 4)).astype(np.float32) * 1e-3,
        "model.norm.weight": np.ones(4, np.float32) + 1e-4,
        "scalar": np.array(3.14159, np.float32),
        "empty": np.zeros((0, 3), np.float32),
    }


CONFIG = {"d_model": 4, "n_layers": 1, "vocab_size": 7, "name": "tiny"}


def assert_same(a, b):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == np.float32 and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_fp32_round_trip_exact(tmp_path):
    t = make_tensors()
    save_checkpoint(tmp_path / "ck", t, CONFIG, dtype="fp32")
    loaded, config = load_checkpoint(tmp_path / "ck")
    assert_same(loaded, t)
    assert config == CONFIG
    # the weights file alone loads too, with the config beside it
    assert_same(load_checkpoint(tmp_path / "ck" / "model.safetensors")[0], t)


@pytest.mark.parametrize("dtype,rounding,header", [("bf16", to_bf16, "BF16"), ("fp16", to_fp16, "F16"),
                                                   ("pure_bf16", to_bf16, "BF16")])
def test_low_precision_round_trip_equals_rounding(tmp_path, dtype, rounding, header):
    t = make_tensors()
    save_checkpoint(tmp_path / "ck", t, CONFIG, dtype=dtype)
    infos, metadata = read_header(tmp_path / "ck" / "model.safetensors")
    assert {i.dtype for i in infos.values()} == {header}  # real BF16/F16 in the header
    assert metadata == {"format": "pt"}
    loaded, _ = load_checkpoint(tmp_path / "ck")
    assert_same(loaded, {k: rounding(v) for k, v in t.items()})
    assert sum(i.nbytes for i in infos.values()) == 2 * sum(v.size for v in t.values())  # 2 bytes a value


def test_reads_files_written_by_safetensors_library(tmp_path):
    # every dtype iter_tensors claims, written by the reference implementation
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    arrays = {"f32": x, "f16": x.astype(np.float16), "bf16": x.astype(ml_dtypes.bfloat16),
              "f64": x.astype(np.float64), "i64": np.arange(5, dtype=np.int64)}
    safetensors.numpy.save_file(arrays, tmp_path / "w.safetensors")
    got = dict(iter_tensors(tmp_path / "w.safetensors"))
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v.astype(np.float32), err_msg=k)
    assert tensor_names(tmp_path / "w.safetensors") == list(read_header(tmp_path / "w.safetensors")[0])


def test_torch_reads_our_bf16(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    t = make_tensors()
    save_checkpoint(tmp_path / "ck", t, CONFIG, dtype="bf16")
    theirs = load_file(tmp_path / "ck" / "model.safetensors")
    for k, v in t.items():
        assert theirs[k].dtype == torch.bfloat16
        np.testing.assert_array_equal(theirs[k].float().numpy(), to_bf16(v))
        np.testing.assert_array_equal(theirs[k].float().numpy(), torch.tensor(v).to(torch.bfloat16).float().numpy())
    # and we read torch's bf16 file
    save_file({k: torch.tensor(v).to(torch.bfloat16) for k, v in t.items()}, tmp_path / "torch.safetensors")
    assert_same(dict(iter_tensors(tmp_path / "torch.safetensors")), {k: to_bf16(v) for k, v in t.items()})


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(CheckpointError, match="emptydir"):
        load_checkpoint(tmp_path / "emptydir")


@pytest.mark.parametrize("keep", [4, 20, -10])
def test_truncated_file(tmp_path, keep):
    save_checkpoint(tmp_path / "ck", make_tensors(), CONFIG, dtype="fp32")
    file = tmp_path / "ck" / "model.safetensors"
    infos, _ = read_header(file)
    data = file.read_bytes()
    file.write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated") as e:
        load_checkpoint(tmp_path / "ck")
    if keep < 0:  # the header survived: the message names a tensor that was cut short
        name = re.search(r"tensor '([^']+)' needs bytes up to (\d+)", str(e.value)).group(1)
        assert infos[name].offset + infos[name].nbytes > len(data) + keep


def test_corrupt_header(tmp_path):
    file = tmp_path / "bad.safetensors"
    header = b'{"w": {"dtype": "F32", "shape": [2], '  # cut-off JSON
    file.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(CheckpointError, match="bad.safetensors.*corrupt JSON header"):
        load_checkpoint(file)


def write_raw(file, header: dict, data: bytes):
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    file.write_bytes(len(h).to_bytes(8, "little") + h + data)


def test_byte_length_mismatch_names_tensor(tmp_path):
    file = tmp_path / "m.safetensors"
    write_raw(file, {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}, b"\0" * 20)
    with pytest.raises(CheckpointError, match=r"m.safetensors: tensor 'w': 20 bytes for F32 shape \[2, 3\], expected 24"):
        load_checkpoint(file)
    write_raw(file, {"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2)
    with pytest.raises(CheckpointError, match="'w': unsupported dtype Q4"):
        tensor_names(file)
    write_raw(file, {"w": {"dtype": "F32", "shape": "big"}}, b"")
    with pytest.raises(CheckpointError, match="'w': malformed"):
        tensor_names(file)


def test_hand_written_bf16_matches(tmp_path):
    # the format spelled out: header + raw little-endian bf16 bits
    x = np.array([[1.0, -2.5], [3.1, 1e-3]], np.float32)
    bits = x.astype(ml_dtypes.bfloat16).view(np.uint16).astype("<u2").tobytes()
    write_raw(tmp_path / "h.safetensors", {"x": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]},
                                           "__metadata__": {"format": "pt"}}, bits)
    np.testing.assert_array_equal(dict(iter_tensors(tmp_path / "h.safetensors"))["x"], to_bf16(x))


def test_check_shapes(tmp_path):
    t = make_tensors()
    expected = {k: v.shape for k, v in t.items()}
    check_shapes(t, expected, tmp_path)  # no error
    expected["model.norm.weight"] = (5,)
    expected["lm_head.weight"] = (7, 4)
    del expected["scalar"]
    with pytest.raises(CheckpointError) as e:
        check_shapes(t, expected, tmp_path / "ck")
    msg = str(e.value)
    assert "ck" in msg
    assert "tensor 'model.norm.weight': expected shape [5], found [4]" in msg
    assert "missing tensor 'lm_head.weight'" in msg and "unexpected tensor 'scalar'" in msg
    # header-only check: TensorInfos carry shapes
    save_checkpoint(tmp_path / "ck", t, CONFIG)
    check_shapes(tensor_index(tmp_path / "ck"), {k: v.shape for k, v in t.items()}, tmp_path / "ck")


@pytest.mark.parametrize("exchange", [True, False])
def test_failed_save_keeps_old_checkpoint(tmp_path, monkeypatch, exchange):
    if not exchange:  # the portable two-rename path
        monkeypatch.setattr(checkpoint, "_exchange", lambda a, b: False)
    old = make_tensors(0)
    save_checkpoint(tmp_path / "ck", old, CONFIG, dtype="fp32")

    def crash(file, arrays, metadata):
        file.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":")  # half a file, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "_write_safetensors", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ck", make_tensors(1), {"other": 1}, dtype="fp32")
    tensors, config = load_checkpoint(tmp_path / "ck")
    assert_same(tensors, old)
    assert config == CONFIG
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no temp directories left
    assert sorted(os.listdir(tmp_path / "ck")) == ["config.json", "model.safetensors"]
    # a successful save replaces it completely
    monkeypatch.undo()
    real_exchange, calls = checkpoint._exchange, []
    monkeypatch.setattr(checkpoint, "_exchange", lambda a, b: calls.append(exchange) or (exchange and real_exchange(a, b)))
    save_checkpoint(tmp_path / "ck", make_tensors(1), {"other": 1}, dtype="fp32")
    assert calls == [exchange]  # the swap path under test was the one taken
    tensors, config = load_checkpoint(tmp_path / "ck")
    assert_same(tensors, make_tensors(1))
    assert config == {"other": 1}
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def test_unserialisable_config_touches_nothing(tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "ck", make_tensors(), {"bad": object()})
    assert not (tmp_path / "ck").exists() and os.listdir(tmp_path) == []


def test_crash_between_renames_is_recoverable(tmp_path):
    # the state a hard kill between the fallback's two renames leaves: path gone, backup complete
    old = make_tensors(0)
    save_checkpoint(tmp_path / "ck", old, CONFIG, dtype="fp32")
    os.replace(tmp_path / "ck", tmp_path / ".ck.old")
    with pytest.warns(UserWarning, match="interrupted save"):
        tensors, config = load_checkpoint(tmp_path / "ck")
    assert_same(tensors, old) and config == CONFIG
    save_checkpoint(tmp_path / "ck", make_tensors(2), CONFIG, dtype="fp32")  # the next save cleans up
    assert sorted(os.listdir(tmp_path)) == ["ck"]


def build_sharded(tmp_path, tensors, n_shards=3, dtype=ml_dtypes.bfloat16):
    names = list(tensors)
    weight_map = {}
    for s in range(n_shards):
        shard = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {n: tensors[n].astype(dtype) for n in names[s::n_shards]}
        safetensors.numpy.save_file(part, tmp_path / shard, metadata={"format": "pt"})
        weight_map.update({n: shard for n in part})
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))


def test_iter_tensors_sharded(tmp_path):
    rng = np.random.default_rng(3)
    tensors = {f"model.layers.{i}.mlp.up_proj.weight": rng.standard_normal((3, i + 1)).astype(np.float32)
               for i in range(7)}
    build_sharded(tmp_path, tensors)
    seen = list(iter_tensors(tmp_path))
    assert sorted(n for n, _ in seen) == sorted(tensors)  # every tensor exactly once
    for name, arr in seen:
        assert arr.dtype == np.float32
        np.testing.assert_array_equal(arr, to_bf16(tensors[name]))
    # the index file itself works as the path, and load_checkpoint reads the config
    assert sorted(tensor_names(tmp_path / "model.safetensors.index.json")) == sorted(tensors)
    loaded, config = load_checkpoint(tmp_path)
    assert config == CONFIG and len(loaded) == 7
    # a subset, and a shard missing
    one = "model.layers.4.mlp.up_proj.weight"
    assert [n for n, _ in iter_tensors(tmp_path, names=[one])] == [one]
    os.remove(tmp_path / "model-00002-of-00003.safetensors")
    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors"):
        list(iter_tensors(tmp_path))


def test_iter_tensors_streams_one_tensor_at_a_time(tmp_path, monkeypatch):
    # reads are per tensor: each read_tensor call asks for exactly that tensor's bytes
    tensors = {f"t{i}": np.full((64, 64), i, np.float32) for i in range(5)}
    save_checkpoint(tmp_path / "ck", tensors, CONFIG, dtype="bf16")
    counts = []
    real_fromfile = np.fromfile

    def spy(f, dtype, count):
        counts.append(count)
        return real_fromfile(f, dtype=dtype, count=count)

    monkeypatch.setattr(checkpoint.np, "fromfile", spy)
    for name, arr in iter_tensors(tmp_path / "ck"):
        assert counts[-1] == 64 * 64 and np.all(arr == int(name[1:]))
    assert len(counts) == 5
