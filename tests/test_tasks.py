"""Tests of the toy tasks, their formats and the training corpora."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minirl.tasks import (MAX_SEQ_LEN, TASKS, AddTask, CharTokenizer, CopyTask, CountTask, Example, MaxTask,
                          ReverseTask, SortTask, encode_chat, format_pretrain, format_prompt, format_raw_prompt,
                          get_task, max_seq_len, pretrain_batch, prompt_batch, sft_batch)

TOK = CharTokenizer()
SEEDS = st.integers(0, 2**32 - 1)


def oracle(prompt: str) -> str:
    """The answers written a second time, independently of the task classes."""
    if prompt.startswith("sort "):
        return "".join(sorted(prompt[5:]))
    if prompt.startswith("rev "):
        return prompt[4:][::-1]
    if prompt.startswith("copy "):
        return prompt[5:]
    if prompt.startswith("max "):
        return str(max(int(c) for c in prompt[4:]))
    if prompt.startswith("count "):
        _, letter, s = prompt.split(" ")
        return str(sum(c == letter for c in s))
    a, b = prompt.split("+")
    return str(int(a) + int(b))


# --- registry and configuration ----------------------------------------------

def test_registry():
    assert {"add", "sort", "reverse", "copy"} <= set(TASKS)
    for name, task in TASKS.items():
        assert get_task(name) is task and task.name == name
    with pytest.raises(ValueError, match=r"unknown task 'mul'.*'add'.*'copy'.*'reverse'.*'sort'"):
        get_task("mul")
    assert (TASKS["add"].min_digits, TASKS["add"].max_digits) == (2, 3)
    assert (TASKS["sort"].min_len, TASKS["sort"].max_len) == (3, 6)


@pytest.mark.parametrize("make, message", [
    (lambda: AddTask(min_digits=0), r"AddTask.min_digits must be an integer in \[1, 7\], got 0"),
    (lambda: AddTask(max_digits=8), r"AddTask.max_digits must be an integer in \[1, 7\], got 8"),
    (lambda: AddTask(min_digits=3, max_digits=2), r"min_digits \(3\) must be <= AddTask.max_digits \(2\)"),
    (lambda: SortTask(max_len=11), r"SortTask.max_len must be an integer in \[1, 10\]"),
    (lambda: ReverseTask(min_len=0), r"ReverseTask.min_len"),
    (lambda: CopyTask(min_len=2.5), r"CopyTask.min_len"),
    (lambda: CountTask(max_len=10), r"CountTask.max_len must be an integer in \[1, 9\]"),
    (lambda: CountTask(n_letters=0), r"CountTask.n_letters must be an integer in \[1, 26\]"),
])
def test_bad_config_raises_naming_the_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_add_digit_range():
    rng = np.random.default_rng(0)
    for task, lengths in [(AddTask(1, 1), {1}), (AddTask(3, 3), {3}), (TASKS["add"], {2, 3})]:
        seen = set()
        for _ in range(200):
            a, b = task.sample(rng).prompt.split("+")
            seen |= {len(a), len(b)}
            assert a == str(int(a)) and b == str(int(b))  # no leading zeros
        assert seen == lengths


def test_operand_lengths_and_bounds_are_tight():
    rng = np.random.default_rng(1)
    for task in list(TASKS.values()) + [AddTask(1, 2), SortTask(1, 2), CopyTask(10, 10)]:
        examples = [task.sample(rng) for _ in range(400)]
        assert max(len(e.prompt) for e in examples) == task.max_prompt_len
        assert max(len(e.answer) for e in examples) == task.max_answer_len
    for task in (SortTask(), ReverseTask(), CopyTask(), MaxTask()):
        sizes = {len(task.sample(rng).prompt) - len(task.prefix) for _ in range(300)}
        assert sizes == {3, 4, 5, 6}


# --- sampling, verifying, rewarding ------------------------------------------

@settings(max_examples=50, deadline=None)
@given(SEEDS)
def test_samples_are_correct_and_verify(seed):
    rng = np.random.default_rng(seed)
    for name, task in TASKS.items():
        ex = task.sample(rng)
        assert ex.task == name
        assert ex.answer == oracle(ex.prompt)
        assert task.verify(ex.prompt, ex.answer)
        assert task.reward(ex.prompt, ex.answer) == 1.0
        assert not task.verify(ex.prompt, " " + ex.answer)
        assert not task.verify(ex.prompt, ex.answer + "\n")
        TOK.encode(format_prompt(ex) + ex.answer + format_pretrain(ex))  # every character is in the vocabulary


def test_same_seed_same_examples_different_seed_different():
    for task in TASKS.values():
        draws = {}
        for name, seed in (("a", 7), ("b", 7), ("c", 8)):
            rng = np.random.default_rng(seed)
            draws[name] = [task.sample(rng) for _ in range(20)]
        assert draws["a"] == draws["b"]
        assert draws["a"] != draws["c"]
        assert len({e.prompt for e in draws["a"]}) > 10  # the generator advances between samples


@settings(max_examples=50, deadline=None)
@given(SEEDS)
def test_preference_pairs(seed):
    rng = np.random.default_rng(seed)
    for task in list(TASKS.values()) + [AddTask(1, 1), SortTask(1, 1), ReverseTask(1, 2), CountTask(n_letters=1)]:
        prompt, chosen, rejected = task.preference_pair(rng)
        assert chosen == oracle(prompt)
        assert rejected != chosen
        assert task.verify(prompt, chosen) and not task.verify(prompt, rejected)
        assert task.reward(prompt, chosen) == 1.0 > task.reward(prompt, rejected) >= 0.0
        assert len(rejected) <= task.max_answer_len + 1
        TOK.encode(rejected)


def test_preference_pairs_are_deterministic():
    for task in TASKS.values():
        pairs = [[task.preference_pair(r) for _ in range(10)] for r in
                 (np.random.default_rng(3), np.random.default_rng(3))]
        assert pairs[0] == pairs[1]


@settings(max_examples=100, deadline=None)
@given(SEEDS, st.text(alphabet="0123456789abcdef ", max_size=8))
def test_reward_in_unit_interval_and_one_iff_verify(seed, completion):
    rng = np.random.default_rng(seed)
    for task in TASKS.values():
        ex = task.sample(rng)
        for c in (completion, ex.answer[:-1], ex.answer + completion, completion + ex.answer[1:]):
            r = task.reward(ex.prompt, c)
            assert 0.0 <= r <= 1.0
            assert (r == 1.0) == task.verify(ex.prompt, c) == (c == ex.answer)


@pytest.mark.parametrize("task, prompt, completion, reward", [
    ("add", "347+85", "432", 1.0),
    ("add", "347+85", "433", 2 / 3),
    ("add", "347+85", "42", 1 / 3),       # right-aligned: units digit 2 is right
    ("add", "347+85", "1432", 0.75),
    ("add", "347+85", "43", 0.0),
    ("add", "347+85", "12432", 0.0),      # lengths differ by two
    ("add", "347+85", "", 0.0),
    ("sort", "sort 5831", "1385", 0.5),
    ("sort", "sort 5831", "13589", 0.8),
    ("reverse", "rev abc", "cab", 1 / 3),
    ("copy", "copy abcd", "abc", 0.75),
    ("max", "max 5831", "5", 0.0),
    ("count", "count a abcab", "2", 1.0),
    ("count", "count a abcab", "3", 0.0),
])
def test_partial_credit_values(task, prompt, completion, reward):
    assert get_task(task).reward(prompt, completion) == pytest.approx(reward)


@pytest.mark.parametrize("task, prompt", [
    ("add", "347-85"), ("add", "34a+5"), ("add", "+5"), ("sort", "sort 58a"), ("sort", "rev abc"),
    ("reverse", "rev 123"), ("copy", "copy "), ("max", "max"), ("count", "count ab abc"), ("count", "count a"),
])
def test_malformed_prompt_raises(task, prompt):
    with pytest.raises(ValueError, match="not a"):
        get_task(task).verify(prompt, "1")


# --- formats -----------------------------------------------------------------

def test_formats():
    ex = Example(prompt="347+85", answer="432", task="add")
    assert format_prompt(ex) == format_prompt("347+85", "add") == "Q:347+85\nA:"
    assert format_pretrain(ex) == "347+85=432"
    assert format_raw_prompt(ex) == "347+85="
    assert format_pretrain(Example("sort 5831", "1358", "sort")) == "sort 5831=1358"
    with pytest.raises(ValueError, match="formatted as 'sort'"):
        format_prompt(ex, "sort")
    with pytest.raises(ValueError, match="not an 'add' prompt"):
        format_prompt("sort 12", "add")
    prompt_ids, answer_ids = encode_chat(TOK, "347+85", "432")
    assert TOK.decode(prompt_ids + answer_ids, skip_special=False) == "Q:347+85\nA:432<eos>"
    assert prompt_ids[0] == TOK.bos_id and answer_ids[-1] == TOK.eos_id


def test_sequences_fit_in_context():
    assert {name: max_seq_len(t) for name, t in TASKS.items()} == {
        "add": 18, "sort": 24, "reverse": 23, "copy": 24, "max": 18, "count": 22}
    widest = [AddTask(7, 7), SortTask(10, 10), ReverseTask(10, 10), CopyTask(10, 10), MaxTask(10, 10),
              CountTask(9, 9)]
    rng = np.random.default_rng(0)
    for task in list(TASKS.values()) + widest:
        assert max_seq_len(task) <= MAX_SEQ_LEN
        for _ in range(50):
            ex = task.sample(rng)
            p, a = encode_chat(TOK, ex.prompt, ex.answer)
            assert len(p) + len(a) <= max_seq_len(task)
    assert max_seq_len(SortTask(10, 10)) == MAX_SEQ_LEN


# --- corpora -----------------------------------------------------------------

def test_pretrain_batch_is_valid_raw_text():
    rng = np.random.default_rng(0)
    x = pretrain_batch(rng, TOK, batch_size=8, seq_len=64)
    assert x.shape == (8, 65) and x.dtype == np.int64
    assert np.all(x[:, 0] == TOK.bos_id) and not np.any(x[:, 1:] <= TOK.eos_id)
    seen = set()
    for row in x:
        lines = TOK.decode(row).split("\n")[:-1]  # the last line is cut by the window
        assert len(lines) >= 3
        for line in lines:
            prompt, answer = line.split("=")
            assert answer == oracle(prompt)
            seen.add(next(n for n, t in TASKS.items() if _parses(t, prompt) and t.solve(prompt) == answer))
    assert seen == set(TASKS)  # uniform mix: every task shows up
    again = pretrain_batch(np.random.default_rng(0), TOK, batch_size=8, seq_len=64)
    assert np.array_equal(x, again)
    assert not np.array_equal(x, pretrain_batch(np.random.default_rng(1), TOK, 8, 64))


def _parses(task, prompt):
    try:
        task.solve(prompt)
        return True
    except ValueError:
        return False


def test_pretrain_batch_task_selection_and_weights():
    rng = np.random.default_rng(0)
    rows = pretrain_batch(rng, TOK, 4, 48, tasks=["sort", "copy"], weights=[1.0, 0.0])
    lines = [ln for r in rows for ln in TOK.decode(r).split("\n")[:-1]]
    assert lines and all(ln.startswith("sort ") for ln in lines)
    with pytest.raises(ValueError, match="weights"):
        pretrain_batch(rng, TOK, 4, 48, tasks=["sort", "copy"], weights=[1.0])
    with pytest.raises(ValueError, match="unknown task"):
        pretrain_batch(rng, TOK, 4, 48, tasks=["sort", "mul"])


@pytest.mark.parametrize("task", sorted(TASKS))
def test_sft_batch_mask_covers_exactly_answer_and_eos(task):
    rng = np.random.default_rng(0)
    inputs, targets, mask = sft_batch(rng, TOK, 16, tasks=task)
    assert inputs.shape == targets.shape == mask.shape and inputs.shape[0] == 16
    assert inputs.dtype == targets.dtype == np.int64 and mask.dtype == np.float32
    assert inputs.shape[1] <= max_seq_len(task) - 1
    assert np.array_equal(inputs[:, 1:], targets[:, :-1])
    assert np.all(inputs[:, 0] == TOK.bos_id)
    for b in range(16):
        assert set(np.unique(mask[b])) == {0.0, 1.0}
        on = np.flatnonzero(mask[b])
        first, last = on[0], on[-1]
        assert np.array_equal(on, np.arange(first, last + 1))  # one contiguous block
        prompt_text = TOK.decode(inputs[b][: first + 1])  # inputs up to the one that predicts the answer
        assert prompt_text.startswith("Q:") and prompt_text.endswith("\nA:")
        assert np.all(targets[b][on] > TOK.bos_id)  # no pad or bos is ever a masked target
        answer = TOK.decode(targets[b][first : last + 1], skip_special=False)
        assert len(on) == len(answer) - len("<eos>") + 1
        assert answer == oracle(prompt_text[2:-3]) + "<eos>"
        assert np.all(targets[b][last + 1 :] == TOK.pad_id)  # after eos: only padding
        assert not np.any(targets[b][:first] == TOK.eos_id)


def test_sft_batch_determinism_and_fixed_length():
    a = sft_batch(np.random.default_rng(5), TOK, 8, ["add", "sort"], weights=[3, 1], seq_len=31)
    b = sft_batch(np.random.default_rng(5), TOK, 8, ["add", "sort"], weights=[3, 1], seq_len=31)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (8, 31)
    c = sft_batch(np.random.default_rng(6), TOK, 8, ["add", "sort"], weights=[3, 1], seq_len=31)
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(ValueError, match="does not fit"):
        sft_batch(np.random.default_rng(5), TOK, 8, "copy", seq_len=5)


def test_prompt_batch():
    examples, ids = prompt_batch(np.random.default_rng(0), TOK, "reverse", 5)
    assert len(examples) == len(ids) == 5
    for ex, p in zip(examples, ids):
        assert ex.task == "reverse"
        assert p == [TOK.bos_id] + TOK.encode("Q:" + ex.prompt + "\nA:")
    again, _ = prompt_batch(np.random.default_rng(0), TOK, get_task("reverse"), 5)
    assert again == examples


# --- a task the shipped models never saw --------------------------------------

@settings(max_examples=50, deadline=None)
@given(seed=SEEDS)
def test_sub_is_unseen_and_verifies(seed):
    from minirl.tasks import UNSEEN_TASKS, SubTask

    task = get_task("sub")
    assert isinstance(task, SubTask) and "sub" in UNSEEN_TASKS and "sub" not in TASKS  # not in the tax
    rng = np.random.default_rng(seed)
    ex = task.sample(rng)
    a, b = ex.prompt.split("-")
    assert int(a) >= int(b) >= 10 and ex.answer == str(int(a) - int(b))  # 2-3 digit operands, never negative
    assert task.reward(ex.prompt, ex.answer) == 1.0
    wrong = task.wrong_answer(ex.prompt, rng)
    assert wrong != ex.answer and task.reward(ex.prompt, wrong) < 1.0
    assert max_seq_len(task) <= MAX_SEQ_LEN


def test_sub_rejects_a_negative_difference_and_names_the_tasks():
    task = get_task("sub")
    with pytest.raises(ValueError, match="first not smaller"):
        task.solve("12-345")
    with pytest.raises(ValueError, match=r"unseen by the shipped models: \['sub'\]"):
        get_task("mul")
