"""The headline claims, run for real on the shipped models: `minirl run grpo`, `ppo` and `dpo`, no options.

The default recipes (minirl/presets/grpo.toml, ppo.toml; dpo.toml from seeds 0-2) were chosen from seeds 0-4 with
`python benchmarks/seeds.py ALGO`; the README shows those tables. The same seed on another BLAS build
diverges after a few hundred steps, so these tests assert bounds that every one of seeds 0-9 met with a
margin, never the bits of one machine:

    GRPO, seeds 0-4: gain on add +20.8 to +22.3 points (mean +21.7); tax (mean drop over the other tasks)
          +0.3 to +1.9 points (mean +0.7). Seeds 5-9, held out: +15.5 to +20.1, tax +0.5 to +1.2.
          After the fused ops (functional.py, which round differently: another machine, in effect):
          seeds 0-4 +17.3 to +20.3, tax +0.3 to +1.4; seeds 5-9 +17.0 to +19.3, tax +0.5 to +1.5.
    PPO,  seeds 0-4: gain +26.9 to +29.0 (mean +28.0); tax +0.8 to +2.2 (mean +1.5).
          Seeds 5-9, held out: +18.4 to +27.9, tax +1.7 to +2.6. After the fused ops, seeds 0-4:
          +21.6 to +27.9, tax +0.8 to +2.7.
    DPO,  seeds 0-2: gain +13.8 to +15.2 (mean +14.4); tax +0.5 to +1.0. Seeds 3-7, held out: +11.8 to +14.3,
          tax +0.2 to +1.7 (eight seeds, not ten). After the fused ops, seeds 0-2: +14.0 to +15.0, tax
          +0.5 to +1.0.

Marked slow (GRPO ~30 s, PPO ~50 s, DPO ~30 s); CI runs them.
"""

import json
import statistics

import pytest
from click.testing import CliRunner

from minirl.cli import main

BOUNDS = {  # algorithm: (least gain, most tax), in points; the seeds' worst, minus a margin
    "grpo": (10.0, 4.0),  # the issue's bar for every seed; the ten seeds' worst: +15.5 and +1.9
    "ppo": (12.0, 4.5),  # the ten seeds' worst: +18.4 and +2.6 (after the fused ops, seeds 0-4: +21.6 and +2.7)
    "dpo": (8.0, 3.5),  # the eight seeds' worst: +11.8 and +1.7
}


@pytest.mark.slow
@pytest.mark.parametrize("algo", BOUNDS)
def test_the_default_run_gains_on_add_and_keeps_the_other_tasks(tmp_path, algo):
    out = tmp_path / algo
    result = CliRunner().invoke(main, ["run", algo, "--out", str(out), "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    before, after = report["accuracy"]["before"], report["accuracy"]["after"]
    gain = 100 * (after["add"] - before["add"])
    tax = statistics.fmean(100 * (before[t] - after[t]) for t in before if t != "add")
    print(f"{algo}: add {100 * before['add']:.1f} -> {100 * after['add']:.1f} % ({gain:+.1f} pts), tax {tax:+.1f} pts, "
          f"sparsity {100 * report['sparsity']['overall']:.1f} %, train {report['wall_seconds']:.1f} s")
    assert report["init"] == "sft" and report["trained_tasks"] == ["add"] and report["seed"] == 0
    assert report["accuracy"]["n"]["add"] == 1000
    least_gain, most_tax = BOUNDS[algo]
    assert gain >= least_gain
    assert tax <= most_tax
    assert 0.0 <= report["sparsity"]["overall"] <= 1.0 and 0.0 < report["rank"]["mean_fraction"] <= 1.0
