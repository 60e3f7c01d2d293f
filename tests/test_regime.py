"""`minirl reproduce regime`: the quick grid end to end, and the answer's rule on made-up points."""

import json
import math
import numpy as np

import pytest
from click.testing import CliRunner

from minirl.cli import main
from minirl.experiments.regime import POINTS, QUICK_POINTS, answer, summarise, width_trend


@pytest.mark.slow
def test_reproduce_regime_quick_runs_the_grid(tmp_path):
    result = CliRunner().invoke(main, ["reproduce", "regime", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "regime.json").read_text())
    assert [p["point"] for p in doc["points"]] == list(QUICK_POINTS) and set(QUICK_POINTS) < set(POINTS)
    assert sum(knob == "width" for knob, _ in POINTS.values()) == 3 * 5  # 3 widths x (4 lrs + the paper preset)
    by = {p["point"]: p for p in doc["points"]}
    assert by["lr3e-4"]["relative_step"] == pytest.approx(30 * by["lr1e-5"]["relative_step"])
    assert by["pure_bf16"]["precision"] == "pure_bf16" and by["eps1e-3"]["eps"] == 1e-3
    assert by["lr1e-5x600"]["steps"] == 4 * by["lr1e-5"]["steps"]
    # a step below half a bf16 ULP is lost without a master copy: pure bf16 at the preset's lr is the sparser
    assert by["pure_bf16"]["sparsity"] > by["lr1e-4"]["sparsity"]
    assert isinstance(doc["answer"]["exists"], bool) and "--quick: a smoke" in result.output
    # the width axis: each width's own SFT model, its own weights' RMS in the relative step
    assert {p["width"] for p in doc["points"]} == {32, 64, 128} and by["w128_lr1e-4"]["lr"] == by["lr1e-4"]["lr"]
    assert by["w128_lr1e-4"]["relative_step"] != by["lr1e-4"]["relative_step"]
    assert [w["width"] for w in doc["widths"]["widths"]] == [32, 64, 128] and "the width axis" in result.output
    assert set(doc["widths"]["fits"]) >= {"rms_w", "sparsity_lr1e-4"} and (tmp_path / "widths.png").is_file()


def row(point, seed, sparsity, gain):
    return {"point": point, "knob": "lr", "seed": seed, "relative_step": 1e-3, "lr": 1e-4, "steps": 150,
            "precision": "bf16", "eps": 1e-8, "sparsity": sparsity, "gain": gain, "tax": 0.0, "grad_rms": 2e-3}


def test_answer_needs_both_bars_in_every_seed():
    pts = summarise([row("a", 0, 60, 12), row("a", 1, 55, 9), row("b", 0, 20, 15), row("b", 1, 25, 14),
                     row("c", 0, 90, 0), row("c", 1, 92, 1)])
    a = answer(pts)
    assert not a["exists"]  # a misses the gain bar in seed 1
    assert a["sparsest_learning"] == "b" and a["sparsest"] == "c"
    assert answer(summarise([row("a", 0, 60, 12), row("a", 1, 55, 11)]))["exists"]
    assert next(p for p in pts if p["point"] == "a")["gain_min"] == 9


def test_grad_rms_is_the_clipped_norm_per_weight(tmp_path):
    from minirl import runs
    from minirl.experiments.regime import grad_rms

    r = runs.rl("grpo", out=tmp_path / "run", progress=False, bench_n=2, steps=2, num_prompts=4)
    norms = [m["grad_norm"] for m in runs.RunDir(r["run_dir"]).read_metrics()]
    want = sum(min(g, 1.0) for g in norms) / len(norms) / r["sparsity"]["n_params"] ** 0.5
    assert grad_rms(r) == pytest.approx(want) and 0 < want < 1e-2


def curve_point(width, lr, gain, sparsity, precision="bf16", steps=150, rms=0.05):
    name = {3e-4: "lr3e-4", 1e-4: "lr1e-4", 3e-5: "lr3e-5", 1e-5: "lr1e-5"}[lr]
    if precision == "pure_bf16":
        name = "pure_bf16x300" if width == 64 else f"w{width}_pure_bf16x300"
    return {"point": name if width == 64 or precision == "pure_bf16" else f"w{width}_{name}", "width": width,
            "lr": lr, "relative_step": lr / rms, "gain": gain, "sparsity": sparsity, "precision": precision,
            "steps": steps, "gain_min": gain}


def test_width_trend_fits_and_extrapolates_made_up_power_laws():
    # rms(w) halves, the best lr halves and the sparsity grows 10 points with each doubling of the width
    pts = []
    for k, width in enumerate((32, 64, 128)):
        best = 1e-4 / 3 ** k if k < 2 else 1e-5
        pts += [curve_point(width, lr, 10 - abs(math.log10(lr / best)), 20 + 10 * k - (lr == 3e-4), rms=0.1 / 2 ** k)
                for lr in (3e-4, 1e-4, 3e-5, 1e-5)]
    pts.append(curve_point(128, 1e-4, 12.0, 61.0, precision="pure_bf16", steps=300, rms=0.025))
    trend = width_trend(pts)
    assert [r["width"] for r in trend["widths"]] == [32, 64, 128]
    assert [r["best"]["lr"] for r in trend["widths"]] == [1e-4, 3e-5, 1e-5]
    assert trend["fits"]["rms_w"]["slope"] == pytest.approx(-1) and trend["fits"]["rms_w"]["r2"] == pytest.approx(1)
    assert trend["fits"]["rms_w"]["predicted"] == pytest.approx(0.1 / 2 ** 7)
    f = trend["fits"]["sparsity_lr1e-5"]
    assert f["slope"] == pytest.approx(10) and f["predicted"] == pytest.approx(90)  # 20 at 32, + 10 x 7 doublings
    assert trend["fits"]["best_sparsity"]["predicted"] == pytest.approx(90)
    assert "paper_sparsity" not in trend["fits"]  # one width: no line
    assert trend["widths"][2]["paper"]["sparsity"] == 61.0 and "paper" not in trend["widths"][0]
    # clipped to a percentage
    steep = width_trend([dict(p, sparsity=p["sparsity"] * 3) for p in pts])
    assert steep["fits"]["sparsity_lr1e-5"]["predicted"] == 100.0


def test_half_ulp_predictor_counts_weights_a_pure_bf16_step_cannot_move():
    from minirl.experiments.regime import gaussian_half_ulp_fraction, half_ulp_fraction
    from minirl.model import Transformer, TransformerConfig
    from minirl.precision import ulp

    model = Transformer(TransformerConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, num_key_value_heads=2))
    for _, p in model.named_parameters():
        p.data[...] = 0.0
    first = next(p for _, p in model.named_parameters())
    first.data.flat[0] = 1.0  # half a ULP of 1.0 is 2^-8: above lr 1e-3, below lr 1e-2
    n = sum(p.data.size for _, p in model.named_parameters())
    assert ulp(np.float32(1.0)) / 2 == 2.0 ** -8
    assert half_ulp_fraction(model, 1e-3) == pytest.approx(1 / n)  # zeros: half a ULP is subnormal, below any lr
    assert half_ulp_fraction(model, 1e-2) == 0.0
    # normal weights: the fraction grows as the weights grow or the lr shrinks, and tends to 1 for lr << rms
    f = [gaussian_half_ulp_fraction(0.05, lr, n=20_001) for lr in (1e-3, 1e-4, 1e-5, 1e-7)]
    assert f == sorted(f) and f[0] < 0.01 and f[-1] > 0.99
    assert gaussian_half_ulp_fraction(0.1, 1e-4, n=20_001) > f[1]
