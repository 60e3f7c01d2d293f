"""Tests of the character tokenizer: fixed ids, round trips, errors, serialisation."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minirl.tasks import ALPHABET, CharTokenizer

TOK = CharTokenizer()


def test_fixed_vocabulary():
    assert TOK.vocab_size == 52
    assert (TOK.pad_id, TOK.bos_id, TOK.eos_id) == (0, 1, 2)
    assert len(set(TOK.itos)) == TOK.vocab_size
    # ids are pinned: checkpoints depend on them
    assert TOK.encode("12+34=") == [15, 16, 5, 17, 18, 9]
    assert TOK.encode("Q:\nA") == [25, 10, 3, 24]
    assert TOK.encode("az") == [26, 51]
    assert CharTokenizer().itos == TOK.itos


@given(st.text(alphabet=ALPHABET, max_size=64))
def test_round_trip(text):
    ids = TOK.encode(text)
    assert len(ids) == len(text)
    assert all(3 <= i < TOK.vocab_size for i in ids)
    assert TOK.decode(ids) == text


@given(st.text(alphabet=ALPHABET, max_size=16), st.sampled_from(["#", "B", "é", "<", "\t"]))
def test_unknown_character_raises_naming_it(text, bad):
    with pytest.raises(ValueError) as err:
        TOK.encode(text + bad + text)
    assert repr(bad) in str(err.value)
    assert repr(ALPHABET) in str(err.value)


def test_decode_special_tokens():
    ids = [TOK.bos_id] + TOK.encode("432") + [TOK.eos_id, TOK.pad_id, TOK.pad_id]
    assert TOK.decode(ids) == "432"
    assert TOK.decode(ids, skip_special=False) == "432<eos>"
    assert TOK.decode(np.array(ids, dtype=np.int64)) == "432"
    with pytest.raises(ValueError, match="out of range"):
        TOK.decode([TOK.vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        TOK.decode([-1])


def test_dict_round_trip_through_json():
    d = json.loads(json.dumps(TOK.to_dict()))
    assert d["vocab"]["<pad>"] == 0 and d["vocab"]["<eos>"] == 2 and d["vocab"]["0"] == 14
    tok2 = CharTokenizer.from_dict(d)
    assert tok2 == TOK
    assert tok2.encode("sort 5831") == TOK.encode("sort 5831")
    # a checkpoint made with another alphabet restores that alphabet
    small = CharTokenizer(alphabet="0123+=")
    assert CharTokenizer.from_dict(small.to_dict()).encode("3+0=") == [6, 7, 3, 8]


def test_from_dict_rejects_bad_vocab():
    d = TOK.to_dict()
    with pytest.raises(ValueError, match="type"):
        CharTokenizer.from_dict({**d, "type": "bpe"})
    swapped = dict(d["vocab"], **{"<pad>": 1, "<bos>": 0})
    with pytest.raises(ValueError, match="ids 0, 1, 2"):
        CharTokenizer.from_dict({**d, "vocab": swapped})
    gap = dict(d["vocab"], z=99)
    with pytest.raises(ValueError, match="vocab ids"):
        CharTokenizer.from_dict({**d, "vocab": gap})
    with pytest.raises(ValueError, match="repeated"):
        CharTokenizer(alphabet="abca")
