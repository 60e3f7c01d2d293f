"""Tests of minirl/papers.toml: it loads, and every number in it is quoted verbatim from docs/PAPERS.md."""

import re
from pathlib import Path

import pytest

from minirl import papers as papers_module
from minirl.papers import paper, papers

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "PAPERS.md").read_text(encoding="utf-8")
TOML_TEXT = (ROOT / "minirl" / "papers.toml").read_text(encoding="utf-8")
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e[-+]?\d+)?(?!\w)")  # 68.5, 1e-5, 2505.11711; not o1, bf16, 7B
STRING = re.compile(r'"[^"]*"')


def numbers_in(value, path=()):
    """(path, number) of every int or float in nested dicts and lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers_in(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from numbers_in(item, (*path, i))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, value


def toml_number_literals():
    """Every number as spelled in papers.toml's values (comments, strings and keys removed)."""
    literals = []
    for line in TOML_TEXT.splitlines():
        line = line.split("#", 1)[0]  # no string in papers.toml holds a '#'
        if "=" in line and not line.lstrip().startswith("["):
            literals += NUMBER.findall(STRING.sub("", line.split("=", 1)[1]))
    return literals


def test_papers_toml_loads_with_the_three_papers():
    data = papers()
    assert list(data) == ["sparsity", "merging", "perl", "scale_matching"]
    assert [data[name]["arxiv"] for name in ("sparsity", "merging", "perl")] == ["2505.11711", "2405.17931",
                                                                                  "2403.10704"]
    assert paper("perl")["rl"] == {"source": "text: RL algorithm", "algorithm": "REINFORCE with a KL-regularised reward",
                                   "beta": 0.05, "temperature": 0.7}
    with pytest.raises(KeyError, match="no paper 'ppo'.*sparsity, merging, perl"):
        paper("ppo")


def test_loader_reads_once_and_hands_out_copies():
    papers_module._load.cache_clear()
    first = papers()
    first["sparsity"]["tol"]["value"] = 0.5
    paper("merging")["run_script"]["alpha"] = 1.0
    assert papers()["sparsity"]["tol"]["value"] == 1e-5 and paper("merging")["run_script"]["alpha"] == 1e-7
    assert papers_module._load.cache_info().misses == 1


def test_every_number_is_quoted_verbatim_from_papers_md():
    doc_literals = set(NUMBER.findall(DOC))
    doc_values = {float(x) for x in doc_literals}
    literals = toml_number_literals()
    values = list(numbers_in(papers()))
    assert len(literals) == len(values) > 100  # the text scan sees every parsed number
    assert [x for x in literals if x not in doc_literals] == []
    assert [(path, v) for path, v in values if float(v) not in doc_values] == []


def test_a_number_not_in_the_doc_is_caught():
    doc_literals = set(NUMBER.findall(DOC))
    assert "81.4" in doc_literals and "24.10" in doc_literals and "1e-5" in doc_literals
    assert "81.5" not in doc_literals and "24.1" not in doc_literals and "1e-05" not in doc_literals
    assert not {"1", "16", "32", "7"} & set(NUMBER.findall("o1/o2 bf16 eps_fp32 7B"))


def test_every_number_says_where_it_comes_from():
    data = papers()
    for path, _ in numbers_in(data):
        if path[1:] == ("year",):  # a paper's own metadata
            continue
        node, sourced = data, False
        for key in path[:-1]:  # the tables and lists above the number
            node = node[key]
            sourced = sourced or (isinstance(node, dict) and "source" in node)
        assert sourced, path


def test_numbers_a_run_report_quotes_are_present_with_the_same_values():
    # what runs.paper_beside puts beside a run's own numbers, value by value
    sparsity = paper("sparsity")
    table1 = sparsity["table1"]
    assert table1["range"] == [68.5, 96.0] and table1["n_algorithms"] == 7 and table1["n_models"] == 10
    assert table1["source"] == "Table 1" and table1["unit"] == "%"
    assert table1["grpo"] == {"model": "DeepSeek-Math-7B", "sparsity": 68.5}
    assert table1["ppo"] == {"model": "Mistral-7B", "sparsity": 80.8}
    assert (sparsity["kl"]["grpo_with_kl"], sparsity["kl"]["grpo_without_kl"]) == (69.8, 68.8)
    assert sparsity["sft"]["range"] == [6, 15]
    assert sparsity["rank"]["range"] == [99.2, 99.8]
    assert sparsity["tol"]["value"] == 1e-5 and sparsity["tol"]["dtype"] == "bf16"
