"""The preference algorithms in the training loop: each runs, each learns a one-answer preference, the jobs report."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from minirl import runs
from minirl.cli import main
from minirl.model import Transformer, TransformerConfig
from minirl.optim import OptimizerConfig
from minirl.rl import algorithms, make_algorithm
from minirl.rl.preference import Pair, PreferenceAlgorithm, save_jsonl, sequence_batch, sequence_logps
from minirl.rl.reward_model import pairwise_accuracy
from minirl.tasks import CharTokenizer
from minirl.tensor import no_grad
from minirl.train import TrainConfig, train

TOK = CharTokenizer()
PREFERENCE = ("dpo", "ipo", "kto", "simpo", "orpo", "rft", "rm")


def tiny(seed: int = 0, reward_head: bool = False) -> Transformer:
    config = TransformerConfig(vocab_size=TOK.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=2, reward_head=reward_head)
    return Transformer(config, seed=seed, tokenizer=TOK)


def config_of(name: str, **kw):
    return algorithms()[name][0](**kw)


def test_every_preference_algorithm_is_registered_with_its_config():
    for name in PREFERENCE:
        config_cls, algo_cls = algorithms()[name]
        assert issubclass(algo_cls, PreferenceAlgorithm) and algo_cls.name == name
        assert config_cls().task == "add"
    assert config_of("ipo").loss_type == "ipo" and config_of("dpo").loss_type == "sigmoid"
    assert config_of("rft").pairs == "on_policy"


@pytest.mark.parametrize("name", PREFERENCE)
def test_two_steps_of_each_algorithm_log_finite_losses_and_trls_stats(name):
    policy, ref = tiny(reward_head=name == "rm"), tiny()
    algo = make_algorithm(name, config_of(name, pairs="offline", num_prompts=16, batch_size=4), ref)
    result = train(policy, algo, TrainConfig(steps=2), OptimizerConfig(lr=1e-3), progress=False)
    assert len(result.history) == 2 and all(np.isfinite(h["loss"]) for h in result.history)
    expected = {"dpo": "rewards/margins", "ipo": "rewards/margins", "kto": "kl", "simpo": "rewards/margins",
                "orpo": "log_odds_ratio", "rm": "accuracy", "rft": "loss"}[name]
    assert expected in result.history[-1]


def preference_file(tmp_path, n: int = 8):
    """One preference, repeated: "1+1" -> "2" is better than "3"."""
    return str(save_jsonl(tmp_path / "pairs.jsonl", [Pair("1+1", "2", "3")] * n))


def logp_of(model, completion: str) -> float:
    with no_grad():
        return float(sequence_logps(model, sequence_batch(TOK, ["1+1"], [completion])).data[0])


@pytest.mark.parametrize("name", ["dpo", "ipo", "kto", "simpo", "orpo"])
def test_each_loss_learns_to_prefer_the_chosen_answer(name, tmp_path):
    policy, ref = tiny(), tiny()
    algo = make_algorithm(name, config_of(name, pairs=preference_file(tmp_path), batch_size=4), ref)
    gap0 = logp_of(policy, "2") - logp_of(policy, "3")
    train(policy, algo, TrainConfig(steps=15), OptimizerConfig(lr=3e-3), progress=False)
    assert logp_of(policy, "2") - logp_of(policy, "3") > gap0 + 1.0


def test_the_reward_model_learns_to_rank_and_rft_learns_its_answer(tmp_path):
    rm = tiny(reward_head=True)
    algo = make_algorithm("rm", config_of("rm", pairs=preference_file(tmp_path), batch_size=4), tiny())
    train(rm, algo, TrainConfig(steps=10), OptimizerConfig(lr=3e-3), progress=False)
    assert pairwise_accuracy(rm, ["1+1"], ["2"], ["3"]) == 1.0
    policy = tiny()
    before = logp_of(policy, "2")
    algo = make_algorithm("rft", config_of("rft", pairs=preference_file(tmp_path), batch_size=4), tiny())
    train(policy, algo, TrainConfig(steps=10), OptimizerConfig(lr=3e-3), progress=False)
    assert logp_of(policy, "2") > before + 1.0


def test_configs_reject_bad_values_naming_the_field():
    for name, field, value in [("dpo", "beta", 0.0), ("dpo", "loss_type", "nope"), ("dpo", "label_smoothing", 0.1),
                               ("kto", "batch_size", 1), ("simpo", "simpo_gamma", -1.0), ("orpo", "beta", -1.0),
                               ("rm", "center_rewards_coefficient", -1.0)]:
        with pytest.raises(ValueError, match=f"{field}"):
            config_of(name, **{field: value})
    config_of("dpo", loss_type="robust", label_smoothing=0.1)  # allowed where TRL reads it


def test_a_dpo_job_reports_its_data_and_implicit_rewards(tmp_path, tiny_checkpoint):
    report = runs.rl("dpo", out=tmp_path / "run", init=str(tiny_checkpoint), steps=3, pairs="offline", num_prompts=32,
                     batch_size=4, progress=False, bench_n=2)
    pref = report["preference"]
    assert pref["data"]["pairs"] == 32 and pref["data"]["chosen_correct"] == 1.0
    assert {"rewards/accuracies", "rewards/margins"} <= set(pref["final"])
    assert len((tmp_path / "run" / "pairs.jsonl").read_text().splitlines()) == 32
    assert report["paper"]["data_distribution"]["in_distribution"]["dpo"] == 81.4
    assert "rewards/margins" in report["curves"] and "sparsity" in report


def test_cli_trains_on_a_users_jsonl_and_names_a_bad_file(tmp_path, tiny_checkpoint):
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(main, ["run", "dpo", "--init", str(tiny_checkpoint), "--pairs", preference_file(tmp_path),
                                  "--steps", "2", "--batch-size", "2", "--out", str(out), "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["preference"]["data"]["source"].endswith("pairs.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1", "chosen": "2"}\n')
    result = runner.invoke(main, ["run", "dpo", "--init", str(tiny_checkpoint), "--pairs", str(bad), "--steps", "1",
                                  "--out", str(tmp_path / "bad"), "--no-progress"])
    assert result.exit_code == 2 and "line 1: missing field 'rejected'" in result.output
    result = runner.invoke(main, ["run", "dpo", "--pairs", "nowhere.jsonl", "--steps", "1"])
    assert result.exit_code == 2 and "DPOConfig.pairs" in result.output


def test_reward_model_then_rl_on_its_score_end_to_end(tmp_path, tiny_checkpoint):
    """SFT -> reward model -> RL on the reward model's score (PERL's pipeline), with the verifier beside it."""
    rm_report = runs.rl("rm", out=tmp_path / "rm", init=str(tiny_checkpoint), steps=3, pairs="offline", num_prompts=32,
                        batch_size=4, progress=False)
    assert rm_report["accuracy"]["metric"] == "pairwise" and rm_report["accuracy"]["n"] == {"add": 500}
    assert "kl" not in rm_report
    rm_path = rm_report["checkpoint"]
    rl_report = runs.rl("grpo", out=tmp_path / "grpo", init=str(tiny_checkpoint), steps=2, num_prompts=4,
                        num_generations=2, reward=f"rm:{rm_path}", progress=False, bench_n=2)
    assert "rm_score" in rl_report["curves"] and "accuracy" in rl_report["curves"]
    from rich.console import Console

    from minirl.report import render

    console = Console(record=True, width=150)
    render(rl_report, console=console)
    assert "reward model score" in console.export_text()
    render(rm_report, console=console)
    assert "pairwise accuracy on held-out pairs" in console.export_text()


def test_data_that_gives_no_pairs_is_a_usage_error_not_a_traceback(tmp_path, tiny_checkpoint):
    # a random model answers nothing right: best vs worst by the exact verifier finds no pair
    result = CliRunner().invoke(main, ["run", "dpo", "--init", str(tiny_checkpoint), "--pairs", "on_policy",
                                       "--reward", "exact", "--num-prompts", "4", "--steps", "1",
                                       "--out", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 2 and "gave no examples" in result.output
