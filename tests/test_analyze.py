"""Tests of `minirl analyze`: checkpoints of every kind opened as lazy sources, one streamed pass, the official
checker's numbers, overlap of three checkpoints, clear errors, and memory that stays near two tensors."""

import json
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
from click.testing import CliRunner

from minirl.analysis import TABLE6_TOLS, analyze_update
from minirl.analysis.compare import analyze_checkpoints, check_match
from minirl.analysis.sources import open_source
from minirl.checkpoint import INDEX_NAME, save_checkpoint
from minirl.cli import main
from minirl.config import to_values
from minirl.export.hf import export_hf
from minirl.loading import load, save_model
from minirl.lora import LoraConfig, inject_lora, lora_layers, merged_state_dict, trainable_parameters
from minirl.model import Transformer, TransformerConfig
from minirl.tasks import CharTokenizer

NP_DTYPES = {"bf16": ml_dtypes.bfloat16, "fp16": np.float16, "fp32": np.float32}


def tiny_model() -> Transformer:
    tok = CharTokenizer()
    config = TransformerConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2)
    return Transformer(config, seed=0, tokenizer=tok)


def fine_tuned(theta0: dict, seed: int, frac: float = 0.4) -> dict:
    """θ0 with a random `frac` of entries moved: most by a lot, some by 1e-9 .. 1e-4 (so the tolerances differ)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, w in theta0.items():
        moved = rng.random(w.shape) < frac
        step = np.where(rng.random(w.shape) < 0.5, rng.normal(0, 0.02, w.shape), 10 ** rng.uniform(-9, -4, w.shape))
        out[name] = (w + moved * step).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def thetas():
    """θ0 (some weights made tiny, so small steps show in bf16) and two updates of it, float32 state dicts."""
    model = tiny_model()
    rng = np.random.default_rng(7)
    theta0 = {k: np.where(rng.random(v.shape) < 0.3, v * 1e-3, v).astype(np.float32)
              for k, v in model.state_dict().items()}
    return theta0, fine_tuned(theta0, 1), fine_tuned(theta0, 2)


@pytest.fixture(scope="module")
def ckpts(thetas, tmp_path_factory):
    """θ0, θ1, θ2 saved as minirl checkpoints in bf16, fp16 and fp32: {(i, dtype): path}."""
    root = tmp_path_factory.mktemp("ckpts")
    config = tiny_model().checkpoint_config()
    return {(i, dtype): save_checkpoint(root / f"theta{i}-{dtype}", theta, config, dtype)
            for i, theta in enumerate(thetas) for dtype in NP_DTYPES}


def stored(theta: dict, dtype: str) -> dict:
    """The float32 values a checkpoint saved in `dtype` holds (round to nearest even, as save_checkpoint)."""
    return {k: v.astype(NP_DTYPES[dtype]).astype(np.float32) for k, v in theta.items()}


def official(theta0: dict, theta1: dict, tols=TABLE6_TOLS, dtype: str = "bf16") -> dict:
    """SagnikMukherjee/sparsity_in_rl check_sparsity.py, written again in NumPy as an independent oracle.

    Both models loaded in `dtype`; delta = rl - sft in that dtype; "Percentage of 0 values" = mean(delta == 0);
    "Fraction close to zero" = mean(torch.isclose(delta, 0, atol=tol)) = mean(|delta| <= atol + rtol * 0) with the
    bound computed in the tensor's dtype; the layer print is the mean over a layer's tensors of mean(delta != 0).
    """
    t = NP_DTYPES[dtype]
    deltas = {k: (theta1[k].astype(t).astype(np.float32) - theta0[k].astype(t).astype(np.float32)).astype(t)
              for k in theta0}  # (N,) each: a bf16 subtraction is the fp32 one correctly rounded to bf16
    flat = np.concatenate([d.astype(np.float32).ravel() for d in deltas.values()])
    layers = {}
    for k, d in deltas.items():
        if k.startswith("model.layers"):
            layers.setdefault(k.split(".")[2], []).append(np.count_nonzero(d) / d.size)
    return {
        "zeros": np.count_nonzero(flat == 0) / flat.size,
        "close": {tol: np.count_nonzero(np.abs(flat) <= np.float32(t(tol))) / flat.size for tol in tols},
        "layers": {layer: sum(v) / len(v) for layer, v in layers.items()},
    }


def analyze(*paths, **kwargs) -> dict:
    return analyze_checkpoints(*(open_source(p) for p in paths), **kwargs)


def numbers(result: dict) -> list:
    """The measured numbers of a result (sparsities, ranks, overlaps), without labels, kinds and time."""
    return [(u["sparsity"]["by_tol"], u["sparsity"]["bitwise"], u["sparsity"]["per_tensor"],
             u["sparsity"]["per_tensor_bitwise"], u.get("rank")) for u in result["updates"]] + [
        (o["tol"], o["bitwise"]) for o in result["overlap"]]


# ------------------------------------------------------------------ the official checker's definition
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_sparsity_is_the_official_checkers(thetas, ckpts, dtype):
    theta0, theta1, _ = thetas
    result = analyze(ckpts[0, dtype], ckpts[1, dtype], dtype=dtype)
    oracle = official(stored(theta0, dtype), stored(theta1, dtype), dtype=dtype)
    sp = result["updates"][0]["sparsity"]
    print("minirl", sp["by_tol"], sp["bitwise"], "official", oracle["close"], oracle["zeros"])
    assert len(set(oracle["close"].values())) == 4  # the four tolerances really differ on these weights
    for tol, value in oracle["close"].items():
        assert sp["by_tol"][f"{tol:g}"] == pytest.approx(value, abs=1e-12)
    assert sp["bitwise"] == pytest.approx(oracle["zeros"], abs=1e-12)
    assert sp["official_layer_density"] == pytest.approx(oracle["layers"], abs=1e-12)
    assert sp["overall"] == sp["by_tol"]["1e-05"]
    n = sum(v.size for v in theta0.values())
    assert sp["n_params"] == result["n_params"] == n
    assert sp["n_changed"] == round((1 - oracle["close"][1e-5]) * n)


def test_agrees_with_analyze_update_on_the_same_pair(thetas, ckpts):
    theta0, theta1, _ = thetas
    result = analyze(ckpts[0, "bf16"], ckpts[1, "bf16"], rank=True)
    expected = analyze_update(theta0, theta1, rank=True, fp32_exact=False).to_dict()  # float32 arrays in memory
    got = result["updates"][0]
    for key in ("overall", "bitwise", "per_tensor", "per_tensor_bitwise", "by_tol", "n_params"):
        assert got["sparsity"][key] == expected["sparsity"][key], key
    assert got["rank"]["per_tensor"] == expected["rank"]["per_tensor"]
    assert got["rank"]["mean_fraction"] == expected["rank"]["mean_fraction"]
    assert got["rank"]["skipped"] == [k for k, v in theta0.items() if v.ndim != 2]


def test_a_model_against_itself_is_unchanged(ckpts):
    result = analyze(ckpts[1, "bf16"], ckpts[1, "bf16"], rank=True)
    sp = result["updates"][0]["sparsity"]
    assert sp["bitwise"] == 1.0 and all(v == 1.0 for v in sp["by_tol"].values())
    assert result["updates"][0]["rank"]["mean_fraction"] == 0.0


# ------------------------------------------------------------------ every kind of checkpoint, every dtype
@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_stored_dtypes_are_read_exactly(thetas, ckpts, dtype):
    theta0, theta1, _ = thetas
    result = analyze(ckpts[0, dtype], ckpts[1, dtype])
    assert result["checkpoints"][0]["stored_dtypes"] == {{"bf16": "BF16", "fp16": "F16", "fp32": "F32"}[dtype]:
                                                         len(theta0)}
    expected = analyze_update(stored(theta0, dtype), stored(theta1, dtype), rank=False, fp32_exact=False).to_dict()
    assert result["updates"][0]["sparsity"]["per_tensor"] == expected["sparsity"]["per_tensor"]
    # through the bf16 lens an fp32 checkpoint is its bf16 rounding: same numbers as the bf16 files
    if dtype == "fp32":
        assert numbers(result) == numbers(analyze(ckpts[0, "bf16"], ckpts[1, "bf16"]))


def test_hf_export_round_trip(thetas, ckpts, tmp_path):
    models = []
    for theta in thetas[:2]:
        model = tiny_model()
        model.load_state_dict(stored(theta, "bf16"))
        models.append(export_hf(model, tmp_path / f"hf{len(models)}", dtype="bf16"))
    reference = analyze(ckpts[0, "bf16"], ckpts[1, "bf16"], rank=True)
    from_hf = analyze(*models, rank=True)
    assert from_hf["checkpoints"][0]["kind"] == "Hugging Face directory"
    assert numbers(from_hf) == numbers(reference)
    assert numbers(analyze(ckpts[0, "bf16"], models[1], rank=True)) == numbers(reference)  # names are HF's


def write_sharded(theta: dict, directory, dtype="bf16"):
    """A Hugging Face sharded directory written by hand: two shards and model.safetensors.index.json."""
    directory.mkdir()
    names = list(theta)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        safetensors.numpy.save_file({n: theta[n].astype(NP_DTYPES[dtype]) for n in part}, directory / file,
                                    metadata={"format": "pt"})
    weight_map = {n: file for file, part in shards.items() for n in part}
    (directory / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    return directory


def test_sharded_hf_directory(thetas, ckpts, tmp_path):
    theta0, theta1, _ = thetas
    sharded0 = write_sharded(theta0, tmp_path / "sharded0")
    sharded1 = write_sharded(theta1, tmp_path / "sharded1", dtype="fp16")
    source = open_source(sharded0)
    assert source.kind == "Hugging Face directory, sharded (2 files)"
    assert set(source) == set(theta0) and len({info for info in source.dtypes.values()}) == 1
    assert numbers(analyze(sharded0, ckpts[1, "bf16"])) == numbers(analyze(ckpts[0, "bf16"], ckpts[1, "bf16"]))
    assert numbers(analyze(sharded0, sharded1)) == numbers(analyze(ckpts[0, "bf16"], ckpts[1, "fp16"]))
    # the index file itself and a single .safetensors file open too
    assert numbers(analyze(sharded0 / INDEX_NAME, ckpts[1, "bf16"] / "model.safetensors")) == numbers(
        analyze(sharded0, ckpts[1, "bf16"]))


def test_shipped_names_and_run_directories(tmp_path):
    run = tmp_path / "run"
    save_model(run / "checkpoints" / "final", load("sft"))
    (run / "config.toml").write_text("")
    assert open_source("base").kind == "shipped minirl model"
    assert open_source(run).kind == "run directory (checkpoints/final)"
    result = analyze("sft", run)
    assert result["updates"][0]["sparsity"]["bitwise"] == 1.0
    assert analyze("base", "sft")["updates"][0]["sparsity"]["n_params"] == 207_936


def test_lora_checkpoint_is_merged(ckpts, tmp_path):
    model = load(ckpts[0, "bf16"])
    lora = LoraConfig(lora_rank=2)
    inject_lora(model, lora, seed=0)
    rng = np.random.default_rng(0)
    for layer in lora_layers(model).values():
        layer.lora_B.weight.data[...] = rng.normal(0, 0.5, layer.lora_B.weight.data.shape)
    adapters = {k: v.data.copy() for k, v in trainable_parameters(model)}
    config = {**model.checkpoint_config(), "lora": to_values(lora), "base": str(ckpts[0, "bf16"])}
    path = save_checkpoint(tmp_path / "lora", adapters, config, "fp32")
    source = open_source(path)
    assert "LoRA" in source.kind and "merged" in source.kind
    expected = merged_state_dict(model)
    assert set(source) == set(expected)
    for name in expected:
        np.testing.assert_array_equal(source[name], expected[name])
    sp = analyze(ckpts[0, "bf16"], path)["updates"][0]["sparsity"]["per_tensor"]
    assert sp["model.layers.0.mlp.up_proj.weight"] == 1.0 and sp["model.norm.weight"] == 1.0
    assert sp["model.layers.0.self_attn.q_proj.weight"] < 0.5


# ------------------------------------------------------------------ overlap of three checkpoints
def test_overlap_of_three_checkpoints_by_hand(tmp_path):
    rng = np.random.default_rng(3)
    theta0 = {"a": rng.normal(0, 1, (40, 30)).astype(np.float32), "b": rng.normal(0, 1, 500).astype(np.float32)}
    masks1 = {k: rng.random(v.shape) < 0.5 for k, v in theta0.items()}
    masks2 = {k: (rng.random(m.shape) < 0.3) | (m & (rng.random(m.shape) < 0.6)) for k, m in masks1.items()}
    theta1 = {k: v + masks1[k] * np.float32(0.5) for k, v in theta0.items()}  # 0.5: always a change in bf16
    theta2 = {k: v - masks2[k] * np.float32(0.25) for k, v in theta0.items()}
    result = analyze_checkpoints(theta0, theta1, theta2)
    (o,) = result["overlap"]
    m1 = np.concatenate([m.ravel() for m in masks1.values()])
    m2 = np.concatenate([m.ravel() for m in masks2.values()])
    both, p, q = np.count_nonzero(m1 & m2), m1.mean(), m2.mean()
    hand = {"o1": both / m1.sum(), "o2": both / m2.sum(), "jaccard": both / np.count_nonzero(m1 | m2),
            "o1_random": q, "o2_random": p, "jaccard_random": p * q / (p + q - p * q)}
    print("overlap", {k: round(v, 4) for k, v in hand.items()})
    for mode in ("tol", "bitwise"):
        for key, value in hand.items():
            assert o[mode][key] == pytest.approx(value, abs=1e-12), (mode, key)
    assert o["tol"]["o1"] > o["tol"]["o1_random"] + 0.1  # the masks were built to overlap more than chance
    assert o["tol"]["o1"] * (1 - o["tol"]["s_a"]) == pytest.approx(o["tol"]["o2"] * (1 - o["tol"]["s_b"]))
    assert o["updates"] == [1, 2]


def test_three_checkpoints_pairs_and_sparsities(thetas, ckpts):
    theta0, theta1, theta2 = thetas
    result = analyze(ckpts[0, "bf16"], ckpts[1, "bf16"], ckpts[2, "bf16"], ckpts[0, "bf16"])
    assert [o["updates"] for o in result["overlap"]] == [[1, 2], [1, 3], [2, 3]]
    for u, theta in zip(result["updates"], (theta1, theta2)):
        assert u["sparsity"]["by_tol"]["1e-05"] == pytest.approx(official(theta0, theta)["close"][1e-5], abs=1e-12)
    assert result["overlap"][1]["tol"]["n_both"] == 0  # θ3 = θ0: nothing updated, so no overlap


# ------------------------------------------------------------------ names and shapes that do not match
def test_name_mismatch_lists_the_names(thetas):
    theta0, theta1, _ = thetas
    theta1 = {k: v for k, v in theta1.items() if k != "model.norm.weight"} | {"extra.weight": np.zeros(3)}
    with pytest.raises(ValueError) as info:
        analyze_checkpoints(theta0, theta1)
    message = str(info.value)
    assert "'model.norm.weight'" in message and "'extra.weight'" in message and "θ1" in message
    analyze_checkpoints(theta0, theta1, ignore={"model.norm.weight", "extra.weight"})  # left out: fine


def test_shape_mismatch_names_every_tensor(thetas):
    theta0, theta1, _ = thetas
    theta2 = dict(theta1)
    theta2["model.embed_tokens.weight"] = np.zeros((3, 32), np.float32)
    theta2["lm_head.weight"] = np.zeros((3, 32), np.float32)
    with pytest.raises(ValueError) as info:
        check_match(theta0, theta1, theta2)
    message = str(info.value)
    print(message)
    assert "shape mismatch in 2 tensor(s)" in message
    assert "'model.embed_tokens.weight'" in message and "'lm_head.weight'" in message and "[3, 32]" in message
    assert "θ2 [3, 32]" in message


def test_errors_name_the_checkpoints_on_disk(ckpts, tmp_path):
    theta = {"model.norm.weight": np.ones(32, np.float32)}
    other = save_checkpoint(tmp_path / "other", theta, {}, "bf16")
    with pytest.raises(ValueError, match=r"θ1 = .*other"):
        analyze(ckpts[0, "bf16"], other)


# ------------------------------------------------------------------ the command
def invoke(*args):
    return CliRunner().invoke(main, ["analyze", *map(str, args)], catch_exceptions=True)


def usage_error(*args) -> str:
    result = invoke(*args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    return " ".join(result.output.split())


def test_cli_json_equals_the_library(ckpts):
    result = invoke(ckpts[0, "bf16"], ckpts[1, "bf16"], "--json", "--rank")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert numbers(got) == numbers(json.loads(json.dumps(analyze(ckpts[0, "bf16"], ckpts[1, "bf16"], rank=True))))


def test_cli_renders_three_checkpoints(ckpts):
    result = invoke(ckpts[0, "bf16"], ckpts[1, "bf16"], ckpts[2, "fp16"], "--rank", "--tol", "1e-6")
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("tol 1e-05", "bitwise", "mean rank", "Jaccard", "chance", "per tensor", "model.norm.weight"):
        assert text in out, text
    brief = invoke(ckpts[0, "bf16"], ckpts[1, "bf16"], "--brief").output
    assert "per tensor" not in brief and "update sparsity per matrix" in " ".join(brief.split())


def test_cli_ignores_heads_and_listed_names(ckpts, thetas, tmp_path):
    theta1 = dict(thetas[1]) | {"value_head.weight": np.zeros((1, 32), np.float32)}
    with_head = save_checkpoint(tmp_path / "ppo", theta1, tiny_model().checkpoint_config(), "bf16")
    result = invoke(ckpts[0, "bf16"], with_head, "--json", "--ignore", "model.norm.weight,lm_head.weight")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["ignored"] == ["lm_head.weight", "model.norm.weight", "value_head.weight"]
    assert "model.norm.weight" not in got["updates"][0]["sparsity"]["per_tensor"]


def test_cli_usage_errors(ckpts, thetas, tmp_path):
    assert "at least two checkpoints" in usage_error(ckpts[0, "bf16"])
    assert "Missing argument" in usage_error()
    assert "no checkpoint at" in usage_error(ckpts[0, "bf16"], tmp_path / "nowhere")
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a safetensors file")
    assert "junk.safetensors" in usage_error(ckpts[0, "bf16"], junk)
    assert "--tol" in usage_error(ckpts[0, "bf16"], ckpts[1, "bf16"], "--tol", "-1")
    assert "--dtype" in usage_error(ckpts[0, "bf16"], ckpts[1, "bf16"], "--dtype", "fp8")
    theta1 = {k: v for k, v in thetas[1].items() if k != "model.norm.weight"}
    missing = save_checkpoint(tmp_path / "missing", theta1, {}, "bf16")
    message = usage_error(ckpts[0, "bf16"], missing)
    assert "model.norm.weight" in message and "missing" in message
    theta1 = dict(thetas[1]) | {"lm_head.weight": np.zeros((5, 32), np.float32)}
    reshaped = save_checkpoint(tmp_path / "reshaped", theta1, {}, "bf16")
    assert "shape mismatch" in usage_error(ckpts[0, "bf16"], reshaped) and "'lm_head.weight'" in usage_error(
        ckpts[0, "bf16"], reshaped)


# ------------------------------------------------------------------ memory: two tensors, never a model
def write_big_checkpoint(directory, shapes: dict, moved: float, pool: np.ndarray, mask_pool: np.ndarray):
    """A bf16 .safetensors checkpoint of `shapes`, its tensors cut from a shared random pool."""
    directory.mkdir()
    arrays = {}
    for j, (name, shape) in enumerate(shapes.items()):
        n = int(np.prod(shape))
        start = (j * 1_000_003) % (pool.size - n)
        values = pool[start:start + n] + np.float32(moved) * mask_pool[start:start + n]
        arrays[name] = values.astype(ml_dtypes.bfloat16).reshape(shape)
    safetensors.numpy.save_file(arrays, directory / "model.safetensors", metadata={"format": "pt"})


def test_memory_stays_near_two_tensors(tmp_path):
    # 82 tensors of 1M entries and one of 8M: 90M weights, 180 MB in bf16, 360 MB as float32
    shapes = {f"model.layers.{i}.mlp.up_proj.weight": (1024, 1024) for i in range(82)}
    shapes["model.embed_tokens.weight"] = (8192, 1024)
    rng = np.random.default_rng(0)
    pool = rng.standard_normal(10_000_000, dtype=np.float32) * np.float32(0.02)
    mask_pool = rng.random(10_000_000, dtype=np.float32) < 0.3
    write_big_checkpoint(tmp_path / "a", shapes, 0.0, pool, mask_pool)
    write_big_checkpoint(tmp_path / "b", shapes, 0.01, pool, mask_pool)
    del pool, mask_pool
    largest = 8192 * 1024 * 4  # bytes of the largest tensor as float32
    model = sum(int(np.prod(s)) for s in shapes.values()) * 4
    tracemalloc.start()
    try:
        result = analyze(tmp_path / "a", tmp_path / "b")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"peak {peak / 1e6:.0f} MB; largest tensor {largest / 1e6:.0f} MB; model {model / 1e6:.0f} MB (float32)")
    assert result["n_params"] == model // 4
    assert 0.65 < result["updates"][0]["sparsity"]["bitwise"] < 0.75  # 30 % of the entries moved by 0.01
    assert peak < 6 * largest
    assert peak < model / 2


def test_progress_counts_every_tensor_and_every_svd(thetas):
    theta0, theta1, theta2 = thetas
    calls = []
    analyze_checkpoints(theta0, theta1, theta2, rank=True, progress=lambda *args: calls.append(args))
    n_matrices = 2 * sum(v.ndim == 2 for v in theta0.values())
    rank = [c for c in calls if c[0] == "rank"]
    tensors = [c for c in calls if c[0] == "tensors"]
    assert [c[1] for c in rank] == list(range(1, n_matrices + 1)) and {c[2] for c in rank} == {n_matrices}
    assert [c[3] for c in tensors] == list(theta0) and tensors[-1][1:3] == (len(theta0), len(theta0))
