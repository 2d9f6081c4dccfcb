"""Chronos' scaled-bins tokenizer: round trips within half a bin of the scale, scale invariance, the end
bins, and its file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from arlm.errors import UserError
from arlm.tokenizers import ScaledBinsTokenizer, load_tokenizer
from arlm.tokenizers.series import mean_scale, standardise

TOK = ScaledBinsTokenizer()
values = arrays(np.float64, st.integers(1, 200), elements=st.floats(-1e6, 1e6, allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(values)
def test_round_trip_within_half_a_bin_of_the_scale(v):
    ids, (loc, scale) = TOK.encode_context(v)
    assert (loc, scale) == (0.0, pytest.approx(mean_scale(v))) and all(0 <= i < TOK.bins for i in ids)
    back = TOK.decode_values(ids, (loc, scale))
    half_bin = TOK.limit / (TOK.bins - 1) * scale
    inside = np.abs(v / scale) <= TOK.limit
    assert (np.abs(back - v)[inside] <= half_bin * (1 + 1e-9) + 1e-12).all()
    assert (np.abs(back[~inside]) == pytest.approx(TOK.limit * scale))  # beyond the range: the end bins


@settings(max_examples=100, deadline=None)
@given(values, st.floats(1e-3, 1e3))
def test_the_ids_do_not_depend_on_the_units(v, factor):
    a, (_, scale) = TOK.encode_context(v)
    b, _ = TOK.encode_context(v * factor)
    x = v / scale
    on_edge = np.min(np.abs(x[:, None] - TOK.edges[None, :]), axis=1) < 1e-9 * np.maximum(1, np.abs(x))
    assert (np.array(a) == np.array(b))[~on_edge].all()  # the same bins, except values on an edge within rounding


def test_small_cases_and_the_file(tmp_path):
    assert mean_scale(np.zeros(5)) == 1.0
    tok = ScaledBinsTokenizer(bins=3, limit=1.0)
    assert tok.encode_scaled(np.array([-5.0, -0.4, 0.4, 5.0]), (0.0, 1.0)).tolist() == [0, 1, 1, 2]
    assert (tok.vocab_size, tok.eot_id, tok.modality) == (4, 3, "series")
    with pytest.raises(UserError, match="finite"):
        tok.encode(np.array([1.0, np.nan]))
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).to_dict() == tok.to_dict()
    (tmp_path / "tokenizer.json").write_text(json.dumps({**tok.to_dict(), "bins": 1}))
    with pytest.raises(UserError, match="tokenizer.json.*bins must be between 2"):
        load_tokenizer(tmp_path)


@settings(max_examples=200, deadline=None)
@given(values, st.floats(-1e6, 1e6), st.floats(1e-3, 1e3))
def test_standardised_round_trip_and_invariance_to_level_and_units(v, level, factor):
    tok = ScaledBinsTokenizer(scaling="standard")
    ids, (loc, scale) = tok.encode_context(v)
    back = tok.decode_values(ids, (loc, scale))
    inside = np.abs((v - loc) / scale) <= tok.limit
    assert (np.abs(back - v)[inside] <= tok.limit / (tok.bins - 1) * scale * (1 + 1e-6) + 1e-9 * (1 + abs(loc))).all()
    if np.std(v) > 1e-6 * (1 + np.abs(v).max()) and abs(level) < 1e3 * (1 + np.abs(v).max()):
        moved, _ = tok.encode_context(v * factor + level)
        x = (v - loc) / scale
        on_edge = np.min(np.abs(x[:, None] - tok.edges[None, :]), axis=1) < 1e-6 * np.maximum(1, np.abs(x))
        assert (np.array(ids) == np.array(moved))[~on_edge].all()  # the same bins wherever the series sits


def test_standardisation_keeps_small_movements_of_a_series_far_from_zero():
    y = 350 + np.sin(np.arange(48) * 2 * np.pi / 12)  # CO2-like: a level of 350 moving by +-1
    mean_ids, standard_ids = ScaledBinsTokenizer().encode(y), ScaledBinsTokenizer(scaling="standard").encode(y)
    assert len(set(mean_ids)) == 1 and len(set(standard_ids)) == len(set(np.round(y, 9))) == 7  # every value apart
    assert standardise(np.full(4, 7.0)) == (7.0, 7.0)  # a flat context: its level, scaled by it
