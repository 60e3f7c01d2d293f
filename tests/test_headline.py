"""The project's headline claims, run for real on the shipped models.

`minirl run grpo --report` with no options must raise the shipped SFT
model's greedy accuracy on the trained task by at least 15 points and write a
complete report. Marked slow (tens of seconds); CI runs it as is.
"""

import json

import pytest
from click.testing import CliRunner

from minirl.cli import main


@pytest.mark.slow
def test_default_grpo_run_raises_accuracy_by_15_points(tmp_path):
    out = tmp_path / "grpo"
    result = CliRunner().invoke(main, ["run", "grpo", "--out", str(out), "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    before, after = report["accuracy"]["before"], report["accuracy"]["after"]
    print(f"add: {100 * before:.1f} % -> {100 * after:.1f} %, sparsity {100 * report['sparsity']['overall']:.1f} %, "
          f"train {report['wall_seconds']:.1f} s")
    assert report["init"] == "sft" and report["task"] == "add" and report["seed"] == 0
    assert after - before >= 0.15
    assert 0.0 <= report["sparsity"]["overall"] <= 1.0 and 0.0 < report["rank"]["mean_fraction"] <= 1.0
