"""Offline merging (minirl.merging.offline) and `minirl merge`: hand-checked cases, DARE's unbiasedness, seeding,
errors, the CLI end to end, and bit-for-bit parity with mergekit where it is installed."""

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from minirl.checkpoint import read_tensor, save_checkpoint, tensor_index
from minirl.cli import main
from minirl.loading import load, save_model
from minirl.merging import magnitude_trim, merge, merge_tensors, task_vector, tensor_rng
from minirl.model import Transformer, TransformerConfig
from minirl.tasks import CharTokenizer

RNG = np.random.default_rng(0)
BASE = RNG.normal(size=(6, 5)).astype(np.float32)
M1 = (BASE + 0.1 * RNG.normal(size=(6, 5))).astype(np.float32)
M2 = (BASE + 0.1 * RNG.normal(size=(6, 5))).astype(np.float32)


# ------------------------------------------------------------------ single tensors
def test_task_vector_of_arrays_and_dicts():
    assert np.array_equal(task_vector(M1, BASE), M1 - BASE)
    tv = task_vector({"a": M1, "b": M2}, {"a": BASE, "b": BASE, "c": BASE})
    assert set(tv) == {"a", "b"} and np.array_equal(tv["b"], M2 - BASE)


@pytest.mark.parametrize("weight", [1.0, 2.0])
def test_linear_of_one_model_is_that_model(weight):
    assert np.array_equal(merge_tensors(BASE, [M1], [weight], "linear"), M1)
    # (θ · 2.5) / 2.5 rounds twice in float32: within one ulp
    np.testing.assert_allclose(merge_tensors(BASE, [M1], [2.5], "linear"), M1, rtol=2 ** -23, atol=0)


def test_linear_is_the_weighted_mean():
    out = merge_tensors(BASE, [M1, M2], [0.25, 0.75], "linear")
    np.testing.assert_allclose(out, 0.25 * M1 + 0.75 * M2, rtol=0, atol=1e-6)
    unnormalized = merge_tensors(BASE, [M1, M2], [1.0, 2.0], "linear", normalize=False)
    np.testing.assert_allclose(unnormalized, M1 + 2 * M2, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["ties", "dare_ties", "dare_linear"])
def test_density_one_with_one_model_is_that_model(method):
    out = merge_tensors(BASE, [M1], [1.0], method, density=1.0, rng=np.random.default_rng(0))
    assert np.array_equal(out, BASE + (M1 - BASE))  # the same formula written twice
    np.testing.assert_allclose(out, M1, rtol=0, atol=1e-6)


def test_ties_sign_election_ties_go_positive():
    base = np.zeros(4, np.float32)
    d1 = np.array([1, -2, 3, -1], np.float32)
    d2 = np.array([-1, 1, -4, 1], np.float32)
    # Σ δ = [0, -1, -1, 0]: elected [+, -, -, +] (0 -> +); each entry keeps the one model that agrees
    out = merge_tensors(base, [d1, d2], [1.0, 1.0], "ties")
    assert out.tolist() == [1, -2, -4, 1]


def test_ties_divides_by_the_weights_that_contributed():
    base = np.full(3, 10.0, np.float32)
    d1 = np.array([2, 2, 0], np.float32)
    d2 = np.array([1, -1, 4], np.float32)
    d3 = np.array([0, 0, 0], np.float32)  # a zero entry (sign 0) never contributes its weight
    # weighted: [2, 2, 0], [3, -3, 12], [0, 0, 0]; elected [+, -, +]
    out = merge_tensors(base, [base + d1, base + d2, base + d3], [1.0, 3.0, 5.0], "ties")
    assert out.tolist() == [10 + (2 + 3) / (1 + 3), 10 + -3 / 3, 10 + 12 / 3]
    # without normalize the agreeing weighted entries are just summed; dare_ties' default (mergekit's)
    raw = merge_tensors(base, [base + d1, base + d2, base + d3], [1.0, 3.0, 5.0], "ties", normalize=False)
    assert raw.tolist() == [10 + 5, 10 - 3, 10 + 12]
    assert np.array_equal(merge_tensors(base, [base + d1, base + d2, base + d3], [1.0, 3.0, 5.0], "dare_ties"), raw)


def test_ties_trim_keeps_k_largest_magnitudes():
    delta = np.array([0.5, -3.0, 1.0, 2.0, -0.1], np.float32)
    assert magnitude_trim(delta, 0.5).tolist() == [0, -3, 0, 2, 0]  # k = int(0.5 * 5) = 2
    assert magnitude_trim(delta, 0.01).tolist() == [0, -3, 0, 0, 0]  # k = max(1, int(0.05)) = 1
    assert magnitude_trim(delta, 1.0) is delta
    out = merge_tensors(np.zeros(5, np.float32), [delta], [1.0], "ties", density=0.5)
    assert out.tolist() == [0, -3, 0, 2, 0]


def test_dare_linear_is_unbiased():
    d, S = 0.3, 4000
    delta = np.linspace(-1, 1, 16, dtype=np.float32)
    base = np.zeros(16, np.float32)
    draws = np.stack([merge_tensors(base, [delta], [1.0], "dare_linear", d, np.random.default_rng(s))
                      for s in range(S)])  # (S, 16), each δ·Bernoulli(d)/d
    kept = np.isin(draws, [0], invert=True) | (delta == 0)
    assert np.all(np.isclose(draws, 0) | np.isclose(draws, delta / d, rtol=1e-6))  # dropped, or rescaled by 1/d
    # Var(δ B / d) = δ² (1 - d) / d exactly; the mean of S draws is within 6 standard errors (p < 1e-8 an entry)
    sigma = np.abs(delta) * math.sqrt((1 - d) / d / S)
    assert np.all(np.abs(draws.mean(0) - delta) <= 6 * sigma + 1e-7)
    assert abs(kept[:, delta != 0].mean() - d) < 6 * math.sqrt(d * (1 - d) / kept[:, delta != 0].size)


def test_dare_l1_rescale_keeps_the_l1_norm():
    delta = np.linspace(-1, 1, 64, dtype=np.float32)
    out = merge_tensors(np.zeros(64, np.float32), [delta], [1.0], "dare_linear", 0.5, np.random.default_rng(1),
                        rescale="l1")
    assert 0 < (out == 0).sum() < 64
    np.testing.assert_allclose(np.abs(out).sum(), np.abs(delta).sum(), rtol=1e-5)


# ------------------------------------------------------------------ whole models, by name
def _state(seed):
    rng = np.random.default_rng(seed)
    return {"model.embed_tokens.weight": rng.normal(size=(7, 4)).astype(np.float32),
            "model.norm.weight": rng.normal(size=4).astype(np.float32),
            "lm_head.weight": rng.normal(size=(7, 4)).astype(np.float32)}


def test_same_seed_same_bits_and_independent_of_tensor_order():
    base, a, b = _state(0), _state(1), _state(2)
    run = merge(base, [a, b], [0.6, 0.4], "dare_ties", density=0.5, seed=7)
    again = merge(base, [a, b], [0.6, 0.4], "dare_ties", density=0.5, seed=7)
    other = merge(base, [a, b], [0.6, 0.4], "dare_ties", density=0.5, seed=8)
    rev = lambda d: dict(reversed(list(d.items())))  # noqa: E731
    reordered = merge(rev(base), [rev(a), b], [0.6, 0.4], "dare_ties", density=0.5, seed=7)
    assert list(run) == list(base)  # the base's order
    for name in base:
        assert run[name].tobytes() == again[name].tobytes() == reordered[name].tobytes()
        alone = merge_tensors(base[name], [a[name], b[name]], [0.6, 0.4], "dare_ties", 0.5, tensor_rng(7, name))
        assert alone.tobytes() == run[name].tobytes()
    assert any(not np.array_equal(run[n], other[n]) for n in base)
    assert run["model.norm.weight"].shape == (4,) and not np.array_equal(run["model.norm.weight"], base["model.norm.weight"])


@pytest.mark.parametrize("kwargs, field", [
    ({"weights": [1.0]}, "weights"),
    ({"density": 0.0}, "density"),
    ({"density": 1.5}, "density"),
    ({"method": "slerp"}, "method"),
    ({"seed": -1}, "seed"),
])
def test_errors_name_the_field(kwargs, field):
    args = {"weights": [1.0, 1.0], "method": "ties", "density": 0.5, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=field):
        merge(_state(0), [_state(1), _state(2)], **args)


def test_mismatched_names_and_shapes_are_listed():
    bad = _state(1)
    bad.pop("lm_head.weight")
    bad["extra.weight"] = np.zeros(3, np.float32)
    bad["model.norm.weight"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError) as e:
        merge(_state(0), [_state(2), bad], [1.0, 1.0], "linear")
    msg = str(e.value)
    assert "models[1]" in msg and "models[0]" not in msg
    assert "missing tensors: lm_head.weight" in msg and "extra.weight" in msg
    assert "'model.norm.weight' [5] (base [4])" in msg
    with pytest.raises(ValueError, match="weights sum to 0"):
        merge_tensors(BASE, [M1, M2], [1.0, -1.0], "linear")


# ------------------------------------------------------------------ the CLI
TOK = CharTokenizer()
CFG = TransformerConfig(vocab_size=TOK.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def three_models(tmp_path_factory):
    """A base and two 'fine-tunes' (base + noise), saved as minirl checkpoints in fp32.

    fp32, not bf16: bf16 task vectors have many equal magnitudes, and which of equal entries TIES keeps at the
    k-th place is up to the sort (torch's argsort is not stable), so mergekit parity would be luck.
    """
    root = tmp_path_factory.mktemp("merge")
    base = Transformer(CFG, seed=0, tokenizer=TOK)
    paths = [save_model(root / "base", base, "fp32")]
    for seed in (1, 2):
        model = Transformer(CFG, seed=0, tokenizer=TOK)
        rng = np.random.default_rng(seed)
        model.load_state_dict({k: v + 0.05 * rng.normal(size=v.shape).astype(np.float32)
                               for k, v in base.state_dict().items()})
        paths.append(save_model(root / f"ft{seed}", model, "fp32"))
    return paths


def test_cli_merge_then_eval_and_export(three_models, tmp_path):
    base, ft1, ft2 = map(str, three_models)
    out = tmp_path / "merged"
    r = CliRunner().invoke(main, ["merge", "--base", base, "--models", f"{ft1},{ft2}", "--weights", "0.7",
                                  "--weights", "0.3", "--method", "ties", "--density", "0.5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    expected = merge(base, [ft1, ft2], [0.7, 0.3], "ties", 0.5)
    got = {n: read_tensor(i) for n, i in tensor_index(out).items()}
    assert list(got) and all(np.array_equal(got[n], expected[n]) for n in expected)  # fp32: exact
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == json.loads((three_models[0] / "config.json").read_text())["model"]
    assert config["merge"]["method"] == "ties" and config["merge"]["weights"] == [0.7, 0.3]
    assert load(out).config.hidden_size == 32

    r = CliRunner().invoke(main, ["eval", str(out), "--tasks", "add", "--n", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert 0 <= json.loads(r.output)["accuracy"]["add"] <= 1
    r = CliRunner().invoke(main, ["export", str(out), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def test_cli_dare_is_seeded(three_models, tmp_path):
    base, ft1, ft2 = map(str, three_models)
    outs = []
    for i, seed in enumerate(("3", "3", "4")):
        out = tmp_path / f"m{i}"
        r = CliRunner().invoke(main, ["merge", "--base", base, "--models", ft1, "--models", ft2, "--method",
                                      "dare_linear", "--density", "0.5", "--seed", seed, "--out", str(out)])
        assert r.exit_code == 0, r.output
        outs.append((out / "model.safetensors").read_bytes())
    assert outs[0] == outs[1] != outs[2]


def test_cli_reads_hf_and_lora_models(three_models, tmp_path):
    from minirl.config import to_values
    from minirl.export.hf import export_hf
    from minirl.lora import LoraConfig, inject_lora, merged_state_dict, trainable_parameters

    base, ft1, ft2 = map(str, three_models)
    hf = export_hf(load(ft1), tmp_path / "ft1_hf")  # an fp32 copy: the same values
    lora_model = load(base)
    lora = LoraConfig(lora_rank=2)
    inject_lora(lora_model, lora)
    rng = np.random.default_rng(5)
    for name, p in lora_model.named_parameters():
        if name.endswith("lora_B.weight"):
            p.data[...] = rng.normal(size=p.data.shape) * 0.1
    lora_dir = save_checkpoint(tmp_path / "lora", {k: p.data.copy() for k, p in trainable_parameters(lora_model)},
                               {**lora_model.checkpoint_config(), "lora": to_values(lora), "base": base}, "fp32")

    out = tmp_path / "merged"
    r = CliRunner().invoke(main, ["merge", "--base", base, "--models", f"{hf},{lora_dir}", "--method", "linear",
                                  "--weights", "1,3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    expected = merge(base, [ft1, merged_state_dict(load(lora_dir, merge_lora=True))], [1, 3], "linear")
    got = {n: read_tensor(i) for n, i in tensor_index(out).items()}
    assert sorted(got) == sorted(expected) and all(np.array_equal(got[n], expected[n]) for n in expected)
    assert not any("lora" in n for n in got)


@pytest.mark.parametrize("args, option", [
    (["--weights", "1,2,3"], "--weights"),
    (["--weights", "a,b"], "--weights"),
    (["--density", "0"], "--density"),
    (["--method", "slerp"], "--method"),
    (["--models", "no/such/dir"], "--models"),
    (["--base", "no/such/dir"], "--base"),
])
def test_cli_usage_errors_name_the_option(three_models, tmp_path, args, option):
    base, ft1, ft2 = map(str, three_models)
    argv = {"--base": base, "--models": f"{ft1},{ft2}", "--out": str(tmp_path / "o")}
    argv.update(dict(zip(args[::2], args[1::2])))
    r = CliRunner().invoke(main, ["merge", *[x for kv in argv.items() for x in kv]])
    assert r.exit_code == 2 and option in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_cli_mismatched_models_name_models(three_models, tmp_path):
    other = save_model(tmp_path / "wide", Transformer(TransformerConfig(**{**CFG.to_dict(), "intermediate_size": 96}),
                                                      seed=0, tokenizer=TOK))
    r = CliRunner().invoke(main, ["merge", "--base", str(three_models[0]), "--models", str(other), "--out",
                                  str(tmp_path / "o")])
    assert r.exit_code == 2 and "--models" in r.output and "shapes differ" in r.output, r.output


# ------------------------------------------------------------------ parity with mergekit
@pytest.mark.parametrize("method, density", [("linear", 1.0), ("ties", 0.4), ("ties", 1.0), ("dare_linear", 1.0),
                                             ("dare_ties", 1.0)])
def test_mergekit_parity(three_models, tmp_path, method, density):
    """mergekit's own merge of the same models, exported as Hugging Face dirs, is bit-for-bit minirl's.

    DARE draws its masks from torch's generator, so only its density-1 case (no drop) can match bits.
    """
    pytest.importorskip("mergekit")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from minirl.export.hf import export_hf

    dirs = [str(export_hf(load(p), tmp_path / p.name)) for p in three_models]
    weights = [0.7, 0.3]
    config = {"merge_method": method, "dtype": "float32",
              "models": [{"model": d, "parameters": {"weight": w, "density": density}}
                         for d, w in zip(dirs[1:], weights)]}
    if method != "linear":
        config["base_model"] = dirs[0]
    run_merge(MergeConfiguration.model_validate(config), str(tmp_path / "mk"),
              MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True, random_seed=0))
    ref = {n: read_tensor(i) for n, i in tensor_index(tmp_path / "mk").items()}
    ours = merge(dirs[0], dirs[1:], weights, method, density)
    assert sorted(ref) == sorted(ours)
    diff = max(float(np.abs(ref[n] - ours[n]).max()) for n in ref)
    print(f"{method} density {density}: max |mergekit - minirl| = {diff}")
    assert all(ref[n].tobytes() == ours[n].tobytes() for n in ref)
