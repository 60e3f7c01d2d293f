"""`minirl reproduce perl`: the quick run CI does end to end, and the verdict rules on made-up results."""

import json

import pytest
from click.testing import CliRunner

from minirl.cli import main
from minirl.experiments.perl import PerlConfig, PerlResult, _range_verdict, summary, verdicts

VERDICTS = {"reproduced", "partly", "not reproduced"}


@pytest.mark.slow
def test_reproduce_perl_quick_runs_every_job_and_rank_and_gives_a_verdict_per_claim(tmp_path):
    result = CliRunner().invoke(main, ["reproduce", "perl", "--quick", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "perl.json").read_text())
    assert {(q["job"], q["rank"]) for q in doc["quality"]} == {(j, r) for j in ("rm", "reinforce", "ppo")
                                                               for r in (0, 1, 8)}
    for c in doc["cost"]:
        assert c["peak_mb"] > 0 and c["step_seconds"] > 0
        assert (c["trainable"] < 210_000) and (c["rank"] > 0) == (c["trainable"] < 30_000)
    assert len(doc["verdicts"]) == 9 and {v["verdict"] for v in doc["verdicts"]} <= VERDICTS


def made_up(rm_full=60.0, rm_lora=59.0, mem=(100.0, 60.0), secs=(1.0, 0.6)) -> PerlResult:
    quality = [{"job": "rm", "rank": r, "seed": s, "after": v, "gain": 0.0, "tax": 0.0}
               for r, v in ((0, rm_full), (8, rm_lora)) for s in (0, 1)]
    cost = [{"job": "rm", "rank": r, "peak_mb": m, "step_seconds": t, "trainable": 1} for r, m, t in
            zip((0, 8), mem, secs)]
    return PerlResult(config={"jobs": ["rm"], "ranks": [8]}, quality=quality, cost=cost)


def test_verdicts_follow_the_papers_ranges():
    by_claim = {v["claim"].split(",")[0].split(":")[-1].strip(): v["verdict"] for v in verdicts(made_up())}
    assert by_claim == {"reward model held-out pairwise accuracy": "reproduced", "peak memory": "reproduced",
                        "speed": "reproduced"}  # on par, 60 % of the memory (43-74), 1.67x (1.4-1.9)
    worse = verdicts(made_up(rm_lora=50.0, mem=(100.0, 101.0), secs=(1.0, 1.1)))
    assert [v["verdict"] for v in worse] == ["not reproduced"] * 3
    assert _range_verdict([90.0], 43, 74, better_above=False) == "partly"  # a saving, smaller than the paper's
    assert _range_verdict([2.5], 1.4, 1.9, better_above=True) == "reproduced"  # faster than the paper says
    row = summary(made_up())[1]
    assert row["memory_pct"] == pytest.approx(60.0) and row["speedup"] == pytest.approx(1 / 0.6)


def test_bad_settings_are_usage_errors():
    with pytest.raises(ValueError, match="PerlConfig.jobs"):
        PerlConfig(jobs=("dpo",))
    result = CliRunner().invoke(main, ["reproduce", "perl", "--ranks", "1,x"])
    assert result.exit_code == 2 and "comma-separated integers" in result.output
    result = CliRunner().invoke(main, ["reproduce", "perl", "--ranks", "0"])
    assert result.exit_code == 2 and "PerlConfig.ranks" in result.output
