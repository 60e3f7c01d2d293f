"""Preference data: offline and on-policy pairs, RFT and unpaired examples, TRL's JSONL formats, batches."""

import json

import numpy as np
import pytest

from minirl import functional as F
from minirl.model import Transformer, TransformerConfig
from minirl.rl.preference import (Pair, PreferenceConfig, PreferenceData, Unpaired, best_vs_worst, frozen_sequence_logps,
                                  load_jsonl, offline_pairs, on_policy_pairs, pair_batch, pair_stats, rft_examples,
                                  save_jsonl, sequence_batch, sequence_logps, unpair, verifier_pairs)
from minirl.tasks import TASKS, CharTokenizer, encode_chat

TOK = CharTokenizer()


def tiny(seed: int = 0) -> Transformer:
    config = TransformerConfig(vocab_size=TOK.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=2)
    return Transformer(config, seed=seed, tokenizer=TOK)


@pytest.mark.parametrize("task", list(TASKS))
def test_offline_pairs_are_correct_against_a_wrong_answer_and_seeded(task):
    pairs = offline_pairs(task, np.random.default_rng(0), 50)
    assert pairs == offline_pairs(task, np.random.default_rng(0), 50)
    assert pair_stats(pairs, task) == {"pairs": 50, "chosen_correct": 1.0, "rejected_correct": 0.0}


def test_best_vs_worst_takes_the_extremes_and_drops_ties():
    prompts = ["1+1"] * 3 + ["2+2"] * 3
    completions = ["2", "3", "4", "5", "5", "5"]
    pairs = best_vs_worst(prompts, completions, np.array([0.5, 1.0, 0.0, 0.3, 0.3, 0.3]), group=3)
    assert pairs == [Pair("1+1", "3", "4")]


def test_on_policy_pairs_come_from_the_policy_and_are_ranked_by_the_verifier():
    policy, task = tiny(), TASKS["add"]
    pairs = on_policy_pairs(policy, "add", np.random.default_rng(0), 16, 4, reward="partial")
    assert pairs == on_policy_pairs(policy, "add", np.random.default_rng(0), 16, 4, reward="partial")
    assert len(pairs) <= 16
    for p in pairs:
        assert task.reward(p.prompt, p.chosen) > task.reward(p.prompt, p.rejected)
    held = verifier_pairs(policy, "add", ["12+34", "56+78"], np.random.default_rng(1), 4)
    assert {p.prompt for p in held} <= {"12+34", "56+78"}


def test_rft_keeps_only_verified_samples_one_per_prompt():
    from dataclasses import dataclass

    from minirl.tasks import Task

    @dataclass(frozen=True)
    class AnyDigit(Task):  # every one-digit answer is right: a random model gets many
        name: str = "anydigit"

        def _sample_prompt(self, rng):
            return "1+1"

        def solve(self, prompt):
            return "2"

        def verify(self, prompt, completion):
            return len(completion) == 1 and completion.isdigit()

        @property
        def max_prompt_len(self):
            return 3

        @property
        def max_answer_len(self):
            return 1

    task = AnyDigit()
    examples = rft_examples(tiny(), task, np.random.default_rng(0), 64, 8)
    assert 0 < len(examples) <= 64
    assert all(ex.label and task.verify(ex.prompt, ex.completion) for ex in examples)


def test_unpair_marks_chosen_desirable_and_rejected_undesirable():
    assert unpair([Pair("1+1", "2", "3")]) == [Unpaired("1+1", "2", True), Unpaired("1+1", "3", False)]


def test_jsonl_round_trips_both_formats_in_trls_field_names(tmp_path):
    pairs = offline_pairs("sort", np.random.default_rng(0), 5)
    path = save_jsonl(tmp_path / "p.jsonl", pairs)
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"prompt", "chosen", "rejected"} and first["prompt"].startswith("Q:sort ")
    assert load_jsonl(path) == pairs
    rows = unpair(pairs)
    assert load_jsonl(save_jsonl(tmp_path / "u.jsonl", rows)) == rows
    assert set(json.loads((tmp_path / "u.jsonl").read_text().splitlines()[0])) == {"prompt", "completion", "label"}


def test_jsonl_reads_bare_prompts_and_trls_conversational_format(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "12+34"}],
                                "chosen": [{"role": "assistant", "content": "46"}],
                                "rejected": [{"role": "assistant", "content": "36"}]}) + "\n\n"
                    + json.dumps({"prompt": "1+2", "chosen": "3", "rejected": "4"}) + "\n")
    assert load_jsonl(path) == [Pair("12+34", "46", "36"), Pair("1+2", "3", "4")]


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "1+1", "chosen": "2", "rejected": "3"}', "{not json"], "line 2: not valid JSON"),
    (['{"prompt": "1+1", "chosen": "2"}'], "line 1: missing field 'rejected'"),
    (['{"prompt": "1+1", "completion": "2", "label": "yes"}'], "line 1, field 'label': expected true or false"),
    (['{"prompt": "1+1", "chosen": 2, "rejected": "3"}'], "line 1, field 'chosen'"),
    (['{"text": "hello"}'], "line 1: expected the fields prompt, chosen, rejected"),
    (['{"prompt": "1+1", "chosen": "2", "rejected": "3"}', '{"prompt": "1+1", "completion": "2", "label": true}'],
     "line 2: a unpaired line in a file of pair lines"),
    (['[1, 2]'], "line 1: expected a JSON object"),
    ([], "holds no examples"),
])
def test_malformed_jsonl_names_the_line_and_the_field(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_jsonl(path)


def test_a_character_the_tokenizer_lacks_names_the_example():
    with pytest.raises(ValueError, match="example 1"):
        sequence_batch(TOK, ["1+1", "1+1"], ["2", "2€"])


def test_sequence_logps_sum_the_completion_tokens_and_eos_only():
    model = tiny()
    batch = sequence_batch(TOK, ["12+34", "sort 321"], ["46", "123"])
    assert batch.lengths.tolist() == [3.0, 4.0]  # answer + eos
    logps = sequence_logps(model, batch).data
    for i, (p, c) in enumerate([("12+34", "46"), ("sort 321", "123")]):
        prompt_ids, completion_ids = encode_chat(TOK, p, c)
        full = np.array([prompt_ids + completion_ids])
        lp = F.log_softmax(model(full[:, :-1])).data[0]
        expected = sum(lp[len(prompt_ids) - 1 + k, t] for k, t in enumerate(completion_ids))
        assert logps[i] == pytest.approx(expected, rel=1e-5)
    assert np.allclose(frozen_sequence_logps(model, batch, chunk=1), logps, atol=1e-6)
    assert batch.attention_mask.sum(axis=1).tolist() == [len(encode_chat(TOK, "12+34", "46")[0]) + 3,
                                                        len(encode_chat(TOK, "sort 321", "123")[0]) + 4]


def test_pair_batch_stacks_chosen_then_rejected():
    batch = pair_batch(TOK, [Pair("1+1", "2", "33"), Pair("2+2", "4", "5")])
    assert batch.inputs.shape[0] == 4
    assert batch.lengths.tolist() == [2, 2, 3, 2]


def test_preference_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="PreferenceConfig.pairs"):
        PreferenceConfig(pairs="nowhere.jsonl")
    with pytest.raises(ValueError, match="PreferenceConfig.regenerate_every"):
        PreferenceConfig(pairs="offline", regenerate_every=5)
    with pytest.raises(ValueError, match="PreferenceConfig.reward"):
        PreferenceConfig(reward="rm:/no/such/model")
    with pytest.raises(ValueError, match="unknown task"):
        PreferenceConfig(task="nope")


def test_preference_data_state_round_trips_and_regenerates_on_schedule():
    policy = tiny()
    cfg = PreferenceConfig(pairs="on_policy", num_prompts=16, num_generations=4, batch_size=4, regenerate_every=2)
    data = PreferenceData(cfg, "pairs", ref_model=policy)
    rng = np.random.default_rng(0)
    data.ensure(policy, rng, 0)
    first = data.rows
    data.ensure(policy, rng, 1)
    assert data.rows is first  # not yet
    data.ensure(policy, rng, 2)
    assert data.built_at == 2
    copy = PreferenceData(cfg, "pairs", ref_model=policy)
    copy.load_state_dict(json.loads(json.dumps(data.state_dict())), TOK)
    assert copy.rows == data.rows and copy.built_at == 2
    assert np.array_equal(copy.ref_logps, data.ref_logps)
    chosen, rejected = data.ref_of(np.array([0]))
    assert chosen.shape == rejected.shape == (1,)


def test_unpaired_files_feed_kto_but_not_a_pairs_algorithm(tmp_path):
    path = save_jsonl(tmp_path / "u.jsonl", [Unpaired("1+1", "2", True), Unpaired("1+1", "3", False)])
    cfg = PreferenceConfig(pairs=str(path))
    rng = np.random.default_rng(0)
    kto = PreferenceData(cfg, "unpaired")
    kto.ensure(tiny(), rng, 0)
    assert kto.stats["examples"] == 2 and kto.stats["desirable"] == 1
    with pytest.raises(ValueError, match="needs preference pairs"):
        PreferenceData(cfg, "pairs").ensure(tiny(), rng, 0)
