"""CleanRL-style smoke runs of every `minirl` command with tiny budgets (click's CliRunner, in process).

One session fixture builds the whole chain the README describes, at toy size:
pretrain a 1-layer base model (3 steps) -> sft from it (2 steps) -> grpo from
that (2 steps). The other tests read its run directories and checkpoints.
"""

import inspect
import json
import tomllib
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from minirl.cli import main
from minirl.options import field_docs
from minirl.optim import OptimizerConfig
from minirl.rl import algorithms
from minirl.rl.sft import PretrainConfig, SFTConfig
from minirl.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SMALL_MODEL = ["--hidden-size", "32", "--intermediate-size", "64", "--num-hidden-layers", "1"]


def invoke(*args) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def ok(*args) -> Result:
    """Invoke and require exit code 0 (showing the output and traceback otherwise)."""
    result = invoke(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def usage_error(*args) -> str:
    """Invoke and require click's usage-error exit code 2 without a traceback; the output, one line."""
    result = invoke(*args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # click's exit, not a crash
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def metrics_lines(run_dir: Path) -> int:
    return len((run_dir / "metrics.jsonl").read_text().splitlines())


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict:
    """Run directories and parsed --json reports of pretrain -> sft -> grpo."""
    root = tmp_path_factory.mktemp("cli")
    out = {"root": root}
    base = ok("pretrain", *SMALL_MODEL, "--steps", 3, "--batch-size", 4, "--seq-len", 16,
              "--out", root / "base", "--no-progress", "--json")
    out["base"] = json.loads(base.stdout)
    out["base_ckpt"] = root / "base" / "checkpoints" / "final"
    sft = ok("run", "sft", "--init", out["base_ckpt"], "--steps", 2, "--batch-size", 4,
             "--out", root / "sft", "--json", "--no-progress")
    out["sft"] = json.loads(sft.stdout)
    out["sft_ckpt"] = root / "sft" / "checkpoints" / "final"
    grpo = ok("run", "grpo", "--init", out["sft_ckpt"], "--steps", 2, "--num-prompts", 2, "--num-generations", 2,
              "--out", root / "grpo", "--json", "--no-progress")
    out["grpo"] = json.loads(grpo.stdout)
    return out


# ------------------------------------------------------------------------------ the smoke chain
def test_pretrain_writes_a_run_directory(runs):
    report, run_dir = runs["base"], runs["root"] / "base"
    assert {"command", "seed", "steps", "interrupted", "wall_seconds", "parameters", "final_loss", "accuracy_raw",
            "checkpoint"} <= set(report)
    assert report["command"] == "pretrain" and report["steps"] == 3 and report["interrupted"] is False
    assert set(report["accuracy_raw"]) == set(PretrainConfig().tasks)
    assert all(0 <= a <= 1 for a in report["accuracy_raw"].values())
    config = tomllib.loads((run_dir / "config.toml").read_text())
    assert config["command"] == "pretrain" and config["model"]["hidden_size"] == 32 and config["train"]["steps"] == 3
    assert report["config"] == config
    assert metrics_lines(run_dir) == 3
    assert (runs["base_ckpt"] / "model.safetensors").is_file()
    assert json.loads((run_dir / "report.json").read_text()) == report


def test_sft_writes_a_run_directory(runs):
    report, run_dir = runs["sft"], runs["root"] / "sft"
    assert report["command"] == "run sft" and report["steps"] == 2
    assert set(report["accuracy"]["before"]) == set(report["accuracy"]["after"]) == set(SFTConfig().tasks)
    assert tomllib.loads((run_dir / "config.toml").read_text())["init"] == str(runs["base_ckpt"])
    assert report["trained_tasks"] == list(SFTConfig().tasks) and report["algorithm"] == "sft"
    assert metrics_lines(run_dir) == 2
    assert (runs["sft_ckpt"] / "model.safetensors").is_file()


def test_grpo_report_has_the_documented_keys(runs):
    report, run_dir = runs["grpo"], runs["root"] / "grpo"
    assert {"command", "algorithm", "trained_tasks", "seed", "steps", "precision", "wall_seconds", "accuracy",
            "curves", "kl", "regime", "paper", "config", "sparsity", "rank"} <= set(report)
    assert (report["algorithm"], report["trained_tasks"], report["seed"], report["steps"], report["precision"]) == (
        "grpo", ["add"], 0, 2, "bf16")
    assert set(report["accuracy"]) == {"before", "after", "n", "metric"} and report["accuracy"]["metric"] == "greedy"
    assert report["accuracy"]["n"] == {"add": 1000, "sort": 200, "reverse": 200, "copy": 200, "max": 200, "count": 200}
    assert set(report["accuracy"]["before"]) == set(report["accuracy"]["after"]) == {
        "add", "sort", "reverse", "copy", "max", "count"}
    sparsity, rank = report["sparsity"], report["rank"]
    assert 0 <= sparsity["overall"] <= 1 and 0 <= sparsity["bitwise"] <= 1
    assert sparsity["bitwise"] <= sparsity["overall"]  # |Δ| <= tol counts every bitwise-equal weight too
    assert "model.layers.0.self_attn.q_proj.weight" in sparsity["per_tensor"]
    assert all(0 <= v <= 1 for v in sparsity["per_tensor"].values())
    assert 0 <= rank["mean_fraction"] <= 1 and "lm_head.weight" in rank["per_tensor"]
    assert len(report["curves"]["reward"]) == len(report["curves"]["loss"]) == 2
    assert metrics_lines(run_dir) == 2
    assert (run_dir / "config.toml").is_file() and (run_dir / "checkpoints" / "final" / "model.safetensors").is_file()
    assert json.loads((run_dir / "report.json").read_text()) == json.loads(json.dumps(report))


def test_report_renders_and_round_trips(runs):
    run_dir = runs["root"] / "grpo"
    rendered = ok("report", run_dir).output
    assert "sparsity" in rendered and "grpo" in rendered
    assert "sparsity" in ok("report", run_dir, "--brief").output
    assert json.loads(ok("report", run_dir, "--json").stdout) == json.loads((run_dir / "report.json").read_text())


def test_eval_reports_accuracy_per_task(runs):
    report = json.loads(ok("eval", runs["sft_ckpt"], "--n", 5, "--json").stdout)
    assert report["n"] == 5 and report["format"] == "chat"
    assert set(report["accuracy"]) == {"add", "sort", "reverse", "copy", "max", "count"}
    assert all(a in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) for a in report["accuracy"].values())  # 5 problems each
    raw = json.loads(ok("eval", runs["base_ckpt"], "--n", 5, "--tasks", "add,copy", "--format", "raw", "--json").stdout)
    assert set(raw["accuracy"]) == {"add", "copy"}
    assert "accuracy" in ok("eval", runs["sft_ckpt"], "--n", 2, "--tasks", "max").output  # the rich table


def test_sample_completes_prompts(runs):
    out = json.loads(ok("sample", runs["sft_ckpt"], "--prompt", r"Q:12+34\nA:", "--greedy", "--json").stdout)
    [row] = out["samples"]
    assert row["prompt"] == "Q:12+34\nA:" and isinstance(row["completion"], str)
    again = json.loads(ok("sample", runs["sft_ckpt"], "--prompt", r"Q:12+34\nA:", "--greedy", "--json").stdout)
    assert again == out  # greedy is deterministic
    sampled = json.loads(ok("sample", runs["sft_ckpt"], "--prompt", "copy ab=", "--prompt", "max 19=",
                            "--num-samples", 3, "--seed", 1, "--top-k", 5, "--json").stdout)
    assert [s["prompt"] for s in sampled["samples"]] == ["copy ab="] * 3 + ["max 19="] * 3


def test_export_hf_writes_a_llama_directory_without_torch(runs, tmp_path):
    had_torch = "torch" in sys.modules
    ok("export", runs["sft_ckpt"], "--format", "hf", "--out", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["hidden_size"] == 32
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    if not had_torch:
        assert "torch" not in sys.modules


def test_ppo_smoke(runs, tmp_path):
    ok("run", "ppo", "--init", runs["sft_ckpt"], "--steps", 1, "--num-prompts", 2, "--num-generations", 2,
       "--update-epochs", 1, "--num-minibatches", 1, "--out", tmp_path / "ppo", "--json", "--no-progress")


@pytest.mark.parametrize("algo", ["reinforce", "rloo"])
def test_other_rl_algorithms_smoke(runs, tmp_path, algo):
    if algo not in algorithms():
        pytest.skip(f"{algo} is not registered")
    report = json.loads(ok("run", algo, "--init", runs["sft_ckpt"], "--steps", 1, "--num-prompts", 2,
                           "--num-generations", 2, "--out", tmp_path / algo, "--json", "--no-progress").stdout)
    assert report["algorithm"] == algo and report["steps"] == 1
    assert metrics_lines(tmp_path / algo) == 1


# ------------------------------------------------------------------------------------------ help
def _commands(group=main, path=()):
    """(path, command) for the group itself and every command below it."""
    yield path, group
    for name, cmd in getattr(group, "commands", {}).items():
        yield from _commands(cmd, path + (name,))


def _expected_help(path) -> list[str]:
    """Docstrings the --help of a command must show: one per config dataclass it is built from."""
    configs = {("pretrain",): [PretrainConfig, TrainConfig, OptimizerConfig]}
    for name, (config_cls, _) in algorithms().items():
        configs[("run", name)] = [config_cls, TrainConfig, OptimizerConfig]
    docs = [next(iter(field_docs(cls).values())) for cls in configs.get(tuple(path), [])]
    return docs + (["Width C of the residual stream."] if path == ("pretrain",) else [])


@pytest.mark.parametrize("path, command", [pytest.param(p, c, id=" ".join(p) or "minirl") for p, c in _commands()])
def test_every_help_exits_0(path, command):
    text = " ".join(ok(*path, "--help").output.split())
    first_line = inspect.cleandoc(command.help or "").split("\n\n")[0]
    assert " ".join(first_line.split()) in text, (path, first_line)
    for doc in _expected_help(path):
        assert doc in text, (path, doc)


def test_field_docstrings_reach_the_help():
    text = " ".join(ok("run", "grpo", "--help").output.split())
    assert "G: completions sampled per prompt (the group)." in text
    assert "Seed of every random choice in the run." in text


def test_cli_shim_runs_from_the_repo_root():
    result = subprocess.run([sys.executable, "cli.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "pretrain" in result.stdout and "Usage:" in result.stdout


# -------------------------------------------------------------------------------- usage errors
def test_eval_of_a_missing_checkpoint_is_a_usage_error():
    assert "/does/not/exist" in usage_error("eval", "/does/not/exist")


@pytest.mark.parametrize("command", [["run", "sft"], ["run", "grpo"], ["run", "ppo"]])
def test_a_missing_init_is_a_usage_error_and_makes_no_run_directory(command, tmp_path):
    out = tmp_path / "run"
    assert "/does/not/exist" in usage_error(*command, "--init", "/does/not/exist", "--out", out)
    assert not out.exists()


@pytest.mark.parametrize("args, named", [
    (["--epsilon", 0], "GRPOConfig.epsilon"),
    (["--num-generations", 1], "GRPOConfig.num_generations"),
    (["--loss-type", "nope"], "GRPOConfig.loss_type"),
    (["--task", "nope"], "nope"),
    (["--precision", "fp8"], "fp8"),
    (["--steps", "many"], "--steps"),
])
def test_bad_grpo_options_are_usage_errors(tiny_checkpoint, tmp_path, args, named):
    assert named in usage_error("run", "grpo", "--init", tiny_checkpoint, *args, "--out", tmp_path / "r")
    assert not (tmp_path / "r").exists()  # rejected before a run directory was made


def test_bad_sft_steps_is_a_usage_error(tiny_checkpoint, tmp_path):
    assert "TrainConfig.steps" in usage_error("run", "sft", "--init", tiny_checkpoint, "--steps", -1,
                                              "--out", tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_bad_optimizer_option_is_a_usage_error(tiny_checkpoint, tmp_path):
    assert "weight_decay" in usage_error("run", "sft", "--init", tiny_checkpoint, "--weight-decay", -1,
                                         "--steps", 1, "--out", tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_bad_model_shape_is_a_usage_error(tmp_path):
    msg = usage_error("pretrain", "--hidden-size", 30, "--num-attention-heads", 4, "--out", tmp_path / "r")
    assert "TransformerConfig.hidden_size" in msg
    assert not (tmp_path / "r").exists()


def test_unknown_pretrain_task_is_a_usage_error(tmp_path):
    assert "nope" in usage_error("pretrain", "--tasks", "add,nope", "--out", tmp_path / "r")


def test_prompt_outside_the_alphabet_is_a_usage_error(tiny_checkpoint):
    msg = usage_error("sample", tiny_checkpoint, "--prompt", "Q:<>", "--greedy")
    assert "cannot encode" in msg and "'<'" in msg and "'>'" in msg


def test_unknown_eval_task_is_a_usage_error(tiny_checkpoint):
    assert "nope" in usage_error("eval", tiny_checkpoint, "--tasks", "add,nope")


def test_existing_non_empty_out_is_refused_and_left_alone(tiny_checkpoint, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    msg = usage_error("run", "grpo", "--init", tiny_checkpoint, "--steps", 1, "--num-prompts", 2,
                      "--num-generations", 2, "--out", out, "--no-progress")
    assert "not empty" in msg
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_report_of_pretraining_shows_its_raw_prompt_accuracy(runs):
    rendered = ok("report", runs["root"] / "base").output
    assert "raw-prompt" in rendered and "3 steps" in rendered and "add" in rendered


def test_report_of_a_directory_without_report_is_a_usage_error(tmp_path):
    assert "report.json" in usage_error("report", tmp_path)


# ------------------------------------------------------------------------------- --config, --resume
def test_a_run_directory_config_reruns_it_and_typed_options_win(runs, tmp_path):
    first = runs["root"] / "grpo"
    again = json.loads(ok("run", "grpo", "--config", first / "config.toml", "--out", tmp_path / "again",
                          "--json", "--no-progress").stdout)
    assert again["config"] == runs["grpo"]["config"]
    assert again["accuracy"] == runs["grpo"]["accuracy"] and again["sparsity"] == runs["grpo"]["sparsity"]
    changed = json.loads(ok("run", "grpo", "--config", first, "--steps", 1, "--lr", "3e-5",
                            "--out", tmp_path / "changed", "--json", "--no-progress").stdout)
    assert changed["config"]["train"]["steps"] == 1 and changed["config"]["optimizer"]["lr"] == 3e-5
    assert changed["config"]["grpo"] == runs["grpo"]["config"]["grpo"]  # the rest from the file


def test_bad_config_files_are_usage_errors_naming_the_problem(runs, tmp_path):
    wrong = tmp_path / "ppo.toml"
    wrong.write_text('[ppo]\nclip_coef = 0.1\n')
    assert "[ppo] is not a section of `minirl run grpo`" in usage_error("run", "grpo", "--config", wrong,
                                                                        "--out", tmp_path / "r")
    assert "is the config of `minirl run sft`" in usage_error("run", "grpo", "--config", runs["root"] / "sft",
                                                              "--out", tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_resume_takes_no_other_settings_and_only_its_own_command(runs):
    grpo = runs["root"] / "grpo"
    assert "drop --lr" in usage_error("run", "grpo", "--resume", grpo, "--lr", "1e-5")
    assert "`minirl run grpo --resume" in usage_error("run", "ppo", "--resume", grpo)
    assert "no config.toml" in usage_error("run", "grpo", "--resume", runs["root"])


@pytest.mark.parametrize("name", ["grpo", "ppo", "reinforce", "rloo", "sft"])
def test_the_cli_and_the_python_api_resolve_the_same_run(name, tiny_checkpoint, tmp_path):
    """`minirl run NAME` with some options trains what runs.rl(NAME, same settings) trains: one resolver."""
    from minirl import runs as jobs

    small = {"sft": ["--batch-size", 2]}.get(name, ["--num-prompts", 2, "--num-generations", 2])
    report = json.loads(ok("run", name, "--init", tiny_checkpoint, "--steps", 1, *small, "--out", tmp_path / name,
                           "--json", "--no-progress").stdout)
    settings = dict(zip([s.lstrip("-").replace("-", "_") for s in small[::2]], small[1::2]))
    assert report["config"] == jobs.resolve(name, init=str(tiny_checkpoint), steps=1, **settings).to_dict()
    untouched = jobs.resolve(name).to_dict()  # every option not typed is the preset's value
    for section, values in report["config"].items():
        if isinstance(values, dict):
            for key, value in values.items():
                if key not in settings and key != "steps":
                    assert value == untouched[section][key], (section, key)


def test_report_of_an_older_report_json_is_a_usage_error_and_json_still_prints_it(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps({"algorithm": "grpo", "task": "add", "tax": {}}))
    assert "older minirl" in usage_error("report", tmp_path)
    assert json.loads(ok("report", tmp_path, "--json").stdout)["task"] == "add"
    (tmp_path / "report.json").write_text("{not json")
    assert "not valid JSON" in usage_error("report", tmp_path)
