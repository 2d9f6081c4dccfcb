"""The mu-law tokenizer: encode/decode error within the quantisation step, bin edges, and its file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from arlm.errors import UserError
from arlm.tokenizers import MuLawTokenizer, load_tokenizer
from arlm.tokenizers.audio import mu_law, mu_law_inverse

TOK = MuLawTokenizer(8000)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.integers(1, 300), elements=st.floats(-1, 1, allow_nan=False)))
def test_round_trip_error_is_within_half_a_step_in_the_companded_domain(wave):
    ids = TOK.encode(wave)
    assert all(0 <= i <= 255 for i in ids)
    back = TOK.decode(ids).astype(np.float64)
    assert np.abs(mu_law(back) - mu_law(wave)).max() <= 1 / 255 + 1e-6  # half of a 2/255 step
    assert TOK.encode(back) == ids  # decoding lands on the bin's own value
    edges = TOK.bin_edges()
    ids = np.array(ids)
    assert ((edges[ids] <= wave + 1e-12) & (wave <= edges[ids + 1] + 1e-12)).all()  # each sample inside its bin


def test_the_curve_and_its_ends():
    assert TOK.encode(np.array([0.0, 1.0, -1.0, 2.0, -5.0])) == [128, 255, 0, 255, 0]  # clipped beyond +-1
    x = np.linspace(-1, 1, 101)
    assert np.allclose(mu_law_inverse(mu_law(x)), x)
    steps = np.diff(TOK.bin_edges())
    assert steps[128] < steps[255] / 100  # fine near silence, coarse when loud
    assert (TOK.vocab_size, TOK.eot_id) == (257, 256)
    assert len(TOK.decode([1, 256, 2])) == 2  # end-of-text is skipped


def test_bad_waveforms_and_files(tmp_path):
    with pytest.raises(UserError, match="NaN"):
        TOK.encode(np.array([0.0, np.nan]))
    with pytest.raises(UserError, match="one channel"):
        TOK.encode(np.zeros((2, 3)))
    TOK.save(tmp_path)
    assert load_tokenizer(tmp_path).to_dict() == TOK.to_dict()
    for change, message in (({"sample_rate": 10}, "between 1000 and 192000"), ({"mu": 127}, "mu must be 255"),
                            ({"sample_rate": "fast"}, "sample_rate")):
        (tmp_path / "tokenizer.json").write_text(json.dumps({**TOK.to_dict(), **change}))
        with pytest.raises(UserError, match=message):
            load_tokenizer(tmp_path)
