"""The Bradley–Terry reward model: its loss (and TRL's), scoring at the eos, `reward="rm:PATH"`, the HF export.

The loss is checked against its closed form (log 2 at a tie, the gradient
−σ(r_r − r_c) / B), finite differences and TRL's own `RewardTrainer.compute_loss`;
scoring against single unpadded sequences; rollouts against the reward model's
`score` and the verifier; the export against `LlamaForSequenceClassification`.
"""

import json
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minirl
from minirl.checkpoint import CheckpointError
from minirl.gradcheck import check_grad
from minirl.loading import save_model
from minirl.model import Transformer, TransformerConfig
from minirl.rl.reward_model import (bradley_terry_loss, chat_sequences, load_reward_model, pairwise_accuracy,
                                    score)
from minirl.rl.rollout import RolloutConfig, sample_rollout
from minirl.tasks import ALPHABET, CharTokenizer, encode_chat, resolve_task
from minirl.tensor import Tensor

TOK = CharTokenizer()
SMALL = dict(vocab_size=TOK.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
PROMPTS = ["1+2", "347+85", "sort 3142", "max 19", "12+7"]
CHOSEN = ["3", "432", "1234", "9", "19"]
REJECTED = ["4", "431", "", "1", "19 "]


def random_rm(seed: int = 0, tokenizer=TOK, **overrides) -> Transformer:
    """A reward model whose every weight is random (norm gains near 1), so scores differ by O(1) between texts."""
    model = Transformer(TransformerConfig(**{**SMALL, "reward_head": True, **overrides}), seed=seed,
                        tokenizer=tokenizer)
    rng = np.random.default_rng(seed + 1)
    for name, p in model.named_parameters():
        noise = rng.normal(0.0, 0.3 if name == "score.weight" else 0.1, p.shape)
        p.data[...] = 1.0 + noise if "norm" in name else noise
    return model


# ------------------------------------------------------------------ loss
@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=1, max_size=8))
def test_loss_is_log2_when_rewards_are_equal(r):
    r = np.array(r)
    loss, stats = bradley_terry_loss(r, r.copy())
    assert abs(loss.item() - np.log(2)) < 1e-12
    assert stats["accuracy"] == 0.0 and stats["margin"] == 0.0  # a tie is not a win, as in TRL


def test_gradient_raises_chosen_and_lowers_rejected():
    c = Tensor(np.array([0.5, -1.0, 2.0, 0.0]), requires_grad=True)
    r = Tensor(np.array([0.1, 0.3, 2.5, -3.0]), requires_grad=True)
    loss, stats = bradley_terry_loss(c, r)
    loss.backward()
    # d/d r_c of −mean(log σ(r_c − r_r)) = −σ(r_r − r_c) / B: descent raises r_c, lowers r_r by as much
    expected = -1.0 / (1.0 + np.exp(c.data - r.data)) / 4
    print(f"dloss/dr_c {c.grad}, closed form {expected}")
    assert np.allclose(c.grad, expected, rtol=1e-12) and np.allclose(r.grad, -expected, rtol=1e-12)
    assert (c.grad < 0).all() and (r.grad > 0).all()
    assert abs(loss.item() - np.mean(np.log1p(np.exp(r.data - c.data)))) < 1e-12
    assert stats == pytest.approx({"min_reward": -3.0, "mean_reward": 1.4 / 8, "max_reward": 2.5,
                                   "accuracy": 0.5, "margin": 1.6 / 4})


def test_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    c, r, margin = rng.normal(size=6), rng.normal(size=6), rng.uniform(0, 1, 6)
    for coef, m in ((None, None), (0.01, None), (0.5, margin)):
        err = check_grad(lambda a, b: bradley_terry_loss(a, b, coef, m)[0], c, r)
        print(f"center_rewards_coefficient={coef}, margin={'yes' if m is not None else 'no'}: abs error {err:.1e}")


def test_loss_checks_its_arguments():
    with pytest.raises(ValueError, match=r"chosen_rewards must be a non-empty \(B,\) vector"):
        bradley_terry_loss(np.zeros((2, 1)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"rejected_rewards must have the shape of chosen_rewards \(3,\)"):
        bradley_terry_loss(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="margin must be"):
        bradley_terry_loss(np.zeros(3), np.zeros(3), margin=np.zeros(2))


@pytest.mark.parametrize("coef,with_margin", [(None, False), (0.01, False), (0.1, True)])
def test_loss_and_stats_match_trl(coef, with_margin):
    # TRL's loss is inline in RewardTrainer.compute_loss; its only use of the model is `model(**inputs).logits`
    # (chosen rows, then rejected rows), so the trainer's own method runs on a stub trainer and a stub model
    torch = pytest.importorskip("torch")
    reward_trainer = pytest.importorskip("trl.trainer.reward_trainer")
    rng = np.random.default_rng(1)
    c, r, margin = rng.normal(size=5), rng.normal(size=5), rng.uniform(0, 1, 5)
    c[0] = r[0]  # a tie
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), args=SimpleNamespace(center_rewards_coefficient=coef),
        accelerator=SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"attention_mask": torch.ones(10, 4)}
    if with_margin:
        inputs["margin"] = torch.tensor(margin)
    logits = torch.tensor(np.concatenate([c, r]))[:, None]
    trl_loss = reward_trainer.RewardTrainer.compute_loss(trainer, lambda **kw: SimpleNamespace(logits=logits), inputs)
    trl_stats = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}  # a token counter

    loss, stats = bradley_terry_loss(c, r, coef, margin if with_margin else None)
    print(f"coef={coef} margin={with_margin}: loss {loss.item():.6f}, TRL {trl_loss.item():.6f}; "
          f"TRL logs {sorted(trl_stats)}")
    assert abs(loss.item() - trl_loss.item()) < 1e-12
    assert set(stats) == set(trl_stats) == {"min_reward", "mean_reward", "max_reward", "accuracy", "margin"}
    assert stats == pytest.approx(trl_stats, rel=1e-7)  # TRL takes the accuracy's mean in float32


# ------------------------------------------------------------------ scoring
def test_chat_sequences_are_right_padded_encode_chat():
    tokens, mask = chat_sequences(TOK, PROMPTS[:3], CHOSEN[:3])
    rows = [sum(encode_chat(TOK, p, c), []) for p, c in zip(PROMPTS[:3], CHOSEN[:3])]
    assert tokens.dtype == np.int64 and mask.dtype == bool and tokens.shape == (3, max(map(len, rows)))
    for row, ids, m in zip(rows, tokens, mask):
        assert ids[:len(row)].tolist() == row and m.sum() == len(row) and m[:len(row)].all()
        assert (ids[len(row):] == TOK.pad_id).all() and ids[len(row) - 1] == TOK.eos_id  # the reward's token
    with pytest.raises(ValueError, match="same length"):
        chat_sequences(TOK, PROMPTS, CHOSEN[:2])


def test_score_is_each_sequence_alone_at_its_eos():
    model = random_rm()
    scores = score(model, PROMPTS, CHOSEN)
    alone = [model.rewards(np.array([sum(encode_chat(TOK, p, c), [])])).data[0] for p, c in zip(PROMPTS, CHOSEN)]
    print(f"scores {np.round(scores, 4)}; max diff to each sequence alone {np.abs(scores - alone).max():.1e}")
    assert scores.dtype == np.float64 and scores.shape == (5,)
    assert np.abs(scores - alone).max() < 1e-5
    assert np.ptp(scores) > 0.05  # the texts are told apart: the comparison above can fail
    assert np.abs(score(model, PROMPTS, CHOSEN, batch_size=2) - scores).max() < 1e-5  # padded to other lengths


def test_pairwise_accuracy():
    model = random_rm()
    sc, sr = score(model, PROMPTS, CHOSEN), score(model, PROMPTS, REJECTED)
    acc = pairwise_accuracy(model, PROMPTS, CHOSEN, REJECTED)
    print(f"chosen {np.round(sc, 3)}, rejected {np.round(sr, 3)}: accuracy {acc}")
    assert acc == np.mean(sc > sr)
    assert 0 < acc < 1  # this random model orders some pairs right and some wrong
    assert pairwise_accuracy(model, PROMPTS, REJECTED, CHOSEN) == 1 - acc  # no ties among these pairs
    assert pairwise_accuracy(model, PROMPTS, CHOSEN, CHOSEN) == 0.0  # a tie is not a win
    _, stats = bradley_terry_loss(sc, sr)
    assert stats["accuracy"] == acc


# ------------------------------------------------------------------ reward="rm:PATH"
def test_rm_reward_in_rollouts(tmp_path):
    path = save_model(tmp_path / "rm", random_rm())
    policy = minirl.load("sft")  # right on part of the additions, so the verifier's accuracy is not trivially 0
    rollout = sample_rollout(policy, "add", np.random.default_rng(3), 4, 2, reward=f"rm:{path}")
    exact = sample_rollout(policy, "add", np.random.default_rng(3), 4, 2)
    task = resolve_task("add")

    rm = load_reward_model(path)
    assert load_reward_model(path) is rm  # cached: a rollout does not reload it every step
    prompts = [ex.prompt for ex in rollout.examples]
    correct = np.array([task.verify(p, c) for p, c in zip(prompts, rollout.completions)])
    print(f"completions {rollout.completions}; rm scores {np.round(rollout.rewards, 3)}; stats {rollout.stats}")
    assert np.array_equal(rollout.rewards, score(rm, prompts, rollout.completions))
    assert 0 < correct.mean() < 1
    assert rollout.stats["accuracy"] == correct.mean()  # the verifier's, not the reward model's
    assert rollout.stats["rm_score"] == rollout.stats["reward"] == rollout.rewards.mean()
    # the same rng draws as a verifier-rewarded rollout: same samples, whose exact reward is the accuracy above
    assert exact.completions == rollout.completions and np.array_equal(exact.rewards, correct.astype(float))
    assert exact.stats["accuracy"] == rollout.stats["accuracy"] and "rm_score" not in exact.stats

    # saved again at the same path: the cache sees the new checkpoint
    save_model(path, random_rm(seed=7))
    assert load_reward_model(path) is not rm
    assert RolloutConfig(reward=f"rm:{path}").reward == f"rm:{path}"


def test_rm_reward_errors(tmp_path, tiny_checkpoint):
    forms = r"RolloutConfig.reward must be 'exact', 'partial' or 'rm:<path to a reward-model checkpoint>'"
    with pytest.raises(ValueError, match=forms + r" \(no checkpoint at .*missing.*got 'rm:"):
        RolloutConfig(reward=f"rm:{tmp_path / 'missing'}")
    no_head = r"has no reward head \(score.weight\): train one with `minirl run rm`"
    with pytest.raises(ValueError, match=forms + r" \(.*" + no_head):
        RolloutConfig(reward=f"rm:{tiny_checkpoint}")
    with pytest.raises(ValueError, match=forms + ", got 'verifier'"):
        RolloutConfig(reward="verifier")
    with pytest.raises(CheckpointError, match=no_head):
        load_reward_model(tiny_checkpoint)
    with pytest.raises(FileNotFoundError, match="missing"):
        sample_rollout(minirl.load("sft"), "add", np.random.default_rng(0), 1, 1, reward=f"rm:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="must be 'exact', 'partial' or 'rm:"):
        sample_rollout(minirl.load("sft"), "add", np.random.default_rng(0), 1, 1, reward="verifier")
    other = save_model(tmp_path / "other_tok", random_rm(tokenizer=CharTokenizer(ALPHABET[::-1])))
    with pytest.raises(ValueError, match="same tokenizer"):
        sample_rollout(minirl.load("sft"), "add", np.random.default_rng(0), 1, 1, reward=f"rm:{other}")


# ------------------------------------------------------------------ Hugging Face export
@pytest.mark.parametrize("tied", [False, True])
def test_hf_sequence_classifier_scores_like_minirl(tmp_path, tied):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from minirl.export.hf import export_hf, load_hf

    model = random_rm(tie_word_embeddings=tied, value_head=True)
    out = export_hf(model, tmp_path)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and cfg["pad_token_id"] == TOK.pad_id
    hf, info = transformers.LlamaForSequenceClassification.from_pretrained(out, attn_implementation="eager",
                                                                           output_loading_info=True)
    assert all(len(v) == 0 for v in info.values()), info
    assert hf.config.num_labels == 1 and tuple(hf.score.weight.shape) == (1, SMALL["hidden_size"])

    # HF reads the rightmost token that is not pad_token_id: on right-padded chat sequences, the eos
    tokens, mask = chat_sequences(TOK, PROMPTS + PROMPTS, CHOSEN + REJECTED)
    ours = model.rewards(tokens, mask).data
    with torch.no_grad():
        theirs = hf(torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask.astype(np.int64))).logits
    diff = float(np.abs(theirs.numpy()[:, 0] - ours).max())
    print(f"tied={tied}: max |score| diff minirl-HF {diff:.1e} (score scale {np.abs(ours).max():.2f})")
    assert theirs.shape == (10, 1) and diff < 1e-5 * np.abs(ours).max()

    again = load_hf(out)  # the LM (and value) head come back from minirl_heads.safetensors
    assert again.config == model.config
    assert all(np.array_equal(a.data, b.data) for a, b in zip(model.parameters(), again.parameters()))
