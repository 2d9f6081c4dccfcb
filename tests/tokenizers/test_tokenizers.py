"""Every tokenizer: exact round trips (Chinese, emoji, code, whitespace), saving and loading."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arlm.errors import UserError
from arlm.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer, train_tokenizer

MIXED = [
    "To be, or not to be, that is the question:\n",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "emoji 🎭🗡️👑 and skin tones 👍🏽, flags 🇬🇧",
    "def f(x):\n\treturn x ** 2  # comment\n",
    "  leading and trailing spaces   \n\n\n",
    "Ünïcödé — ‘quotes’ … ½",
]


@pytest.fixture(scope="module", params=["char", "bpe"])
def tok(request):
    return train_tokenizer(request.param, MIXED * 3, vocab_size=300)


def test_round_trip_mixed(tok):
    for text in MIXED:
        assert tok.decode(tok.encode(text)) == text


def test_save_load_same_ids(tok, tmp_path):
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert type(loaded) is type(tok)
    assert loaded.vocab_size == tok.vocab_size and loaded.eot_id == tok.eot_id
    for text in MIXED:
        assert loaded.encode(text) == tok.encode(text)


def test_eot_is_a_separate_id_that_decodes_to_nothing(tok):
    assert 0 <= tok.eot_id < tok.vocab_size
    ids = tok.encode("abc")
    assert tok.decode(ids + [tok.eot_id] + ids) == "abcabc"


def test_literal_special_token_text_is_plain_text(tok, tmp_path):
    """Found by hypothesis: text containing "<|endoftext|>" must round-trip and must not become the
    end-of-text id (which would cut documents, and vanish on decode)."""
    text = "before <|endoftext|> after"
    trained = train_tokenizer(tok.kind, MIXED + [text], vocab_size=300)
    for t in (trained, _reloaded(trained, tmp_path)):
        ids = t.encode(text)
        assert t.eot_id not in ids and t.decode(ids) == text


def _reloaded(tok, directory):
    tok.save(directory)
    return load_tokenizer(directory)


def test_char_ids_are_dense_and_sorted():
    t = CharTokenizer.train(["hello 世界"])
    assert t.chars == sorted(set("hello 世界"))
    assert t.vocab_size == len(t.chars) + 1
    assert t.encode("hello") == [t.stoi[c] for c in "hello"]


def test_char_unknown_character_is_a_user_error():
    t = CharTokenizer.train(["abc"])
    with pytest.raises(UserError, match=r"'z' \(U\+007A\)"):
        t.encode("abz")


def test_bpe_vocab_size_is_respected_and_learns_merges():
    text = ["the cat sat on the mat with the hat " * 50]
    t = BPETokenizer.train(text, vocab_size=300)
    assert t.vocab_size <= 300
    assert len(t.encode("the cat sat on the mat")) < len("the cat sat on the mat")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_bpe_round_trips_any_unicode(s):
    assert _BPE.decode(_BPE.encode(s)) == s


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=sorted(set("".join(MIXED))), max_size=60))
def test_char_round_trips_any_text_over_its_alphabet(s):
    assert _CHAR.decode(_CHAR.encode(s)) == s


_BPE = BPETokenizer.train(MIXED, vocab_size=320)
_CHAR = CharTokenizer.train(MIXED)
