"""Tests of the held-out sets and `heldout_accuracy`, with fake generate functions."""

import pytest

from minirl.tasks import TASKS, AddTask, SortTask, heldout_accuracy, heldout_set


def solve_any(raw_prompt: str) -> str:
    """The answer to a raw prompt of any registered task."""
    for task in TASKS.values():
        try:
            return task.solve(raw_prompt)
        except ValueError:
            continue
    raise AssertionError(f"no task parses {raw_prompt!r}")


def chat_to_raw(prompt: str) -> str:
    """'Q:347+85\\nA:' -> '347+85'."""
    assert prompt.startswith("Q:") and prompt.endswith("\nA:"), prompt
    return prompt[2:-3]


def oracle(prompts, max_new_tokens):
    return [solve_any(chat_to_raw(p)) for p in prompts]


def test_heldout_set_is_fixed():
    for name in TASKS:
        a, b = heldout_set(name), heldout_set(name)
        assert len(a) == 200 and a == b
        assert all(e.task == name for e in a)
        assert heldout_set(name, seed=99) != a
        assert heldout_set(name, n=20) == a[:20]
    # the generator is seeded by the task name: the same task under another name gets other problems
    renamed = heldout_set(SortTask(name="sort2"), n=20)
    assert [e.prompt for e in renamed] != [e.prompt for e in heldout_set("sort", n=20)]
    assert all(e.answer == "".join(sorted(e.prompt[5:])) for e in renamed)


def test_oracle_scores_one_and_constant_scores_zero():
    assert heldout_accuracy(oracle) == {name: 1.0 for name in TASKS}
    assert heldout_accuracy(lambda prompts, k: ["x"] * len(prompts)) == {name: 0.0 for name in TASKS}
    # exact match: a trailing newline or space is wrong in the chat format
    assert heldout_accuracy(lambda ps, k: [a + " " for a in oracle(ps, k)], tasks=["add"]) == {"add": 0.0}


def test_half_right_scores_half():
    def half(prompts, max_new_tokens):
        return [a if i % 2 == 0 else a + "0" for i, a in enumerate(oracle(prompts, max_new_tokens))]
    assert heldout_accuracy(half) == {name: 0.5 for name in TASKS}
    assert heldout_accuracy(half, n=10, tasks=["sort"]) == {"sort": 0.5}


def test_one_batched_call_per_task():
    calls = []

    def recording(prompts, max_new_tokens):
        calls.append((len(prompts), max_new_tokens))
        return oracle(prompts, max_new_tokens)

    scores = heldout_accuracy(recording, tasks=["add", "sort", AddTask(1, 1, name="add1")], n=50)
    assert scores == {"add": 1.0, "sort": 1.0, "add1": 1.0}
    assert calls == [(50, 5), (50, 7), (50, 3)]  # answer length + 1 for eos


def test_raw_format_for_base_models():
    def raw_oracle(prompts, max_new_tokens):
        assert all(p.endswith("=") for p in prompts)
        return [solve_any(p[:-1]) + "\n347+" for p in prompts]  # runs on to the next line
    assert heldout_accuracy(raw_oracle, prompt_format="raw", n=20) == {name: 1.0 for name in TASKS}
    with pytest.raises(ValueError, match="prompt_format"):
        heldout_accuracy(raw_oracle, prompt_format="json")


def test_wrong_number_of_completions_raises():
    with pytest.raises(ValueError, match="returned 1 completions for 200 prompts"):
        heldout_accuracy(lambda prompts, k: ["1"], tasks=["add"])
    with pytest.raises(ValueError, match="unknown task"):
        heldout_accuracy(oracle, tasks=["mul"])
