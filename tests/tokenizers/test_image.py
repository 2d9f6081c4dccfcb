"""The pixel tokenizer: exact round trips for grey levels and palette colours, records, and its file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from arlm.errors import UserError
from arlm.tokenizers import PixelTokenizer, load_tokenizer


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.data())
def test_grey_levels_round_trip_exactly(h, w, data):
    levels = data.draw(st.integers(2, 17))
    # values on the level grid of 0..16 come back exactly (digits: 17 levels = every value)
    grid = np.rint(np.arange(levels) * 16 / (levels - 1)).astype(np.int64)
    image = data.draw(arrays(np.int64, (h, w), elements=st.sampled_from(grid.tolist())))
    tok = PixelTokenizer(h, w, levels=levels, max_value=16)
    ids = tok.encode(image)
    assert len(ids) == h * w and all(0 <= i < levels for i in ids)
    assert (tok.decode(ids) == image).all()


@settings(max_examples=60, deadline=None)
@given(arrays(np.int64, (5, 4), elements=st.integers(0, 255)))
def test_any_grey_value_maps_to_the_nearest_level(image):
    tok = PixelTokenizer(5, 4, levels=16, max_value=255)
    back = tok.decode(tok.encode(image)).astype(np.int64)
    assert np.abs(back - image).max() <= 255 / 15 / 2 + 0.5  # within half a level


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_palette_colours_round_trip_and_others_go_to_the_nearest(data):
    palette = np.array([[0, 0, 0], [255, 255, 255], [200, 30, 30], [20, 40, 220]])
    idx = data.draw(arrays(np.int64, (3, 3), elements=st.integers(0, 3)))
    tok = PixelTokenizer(3, 3, palette=palette)
    image = palette[idx]
    assert tok.encode(image) == idx.reshape(-1).tolist()
    assert (tok.decode(tok.encode(image)) == image).all()
    noisy = np.clip(image + data.draw(arrays(np.int64, (3, 3, 3), elements=st.integers(-20, 20))), 0, 255)
    assert tok.encode(noisy) == idx.reshape(-1).tolist()


def test_records_labels_and_the_file(tmp_path):
    tok = PixelTokenizer(2, 3, levels=17, max_value=16, classes=["cat", "dog"])
    assert (tok.n_colors, tok.eot_id, tok.vocab_size, tok.record_tokens) == (17, 19, 20, 8)
    image = np.array([[0, 1, 2], [16, 15, 14]])
    rec = tok.record(image, "dog")
    assert rec[:2] == [19, 18] and tok.label_of(rec[1]) == "dog"
    assert (tok.decode(rec) == image).all()  # labels and end-of-text are skipped
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert isinstance(back, PixelTokenizer) and back.to_dict() == tok.to_dict() and back.modality == "image"
    with pytest.raises(UserError, match="unknown class 'cow'"):
        tok.label_id("cow")
    with pytest.raises(UserError, match="every record needs one"):
        tok.record(image)
    with pytest.raises(UserError, match="images must be 2x3"):
        tok.encode(np.zeros((3, 2)))
    with pytest.raises(UserError, match="pixel values must lie in 0..16"):
        tok.encode(image + 1)


@pytest.mark.parametrize("change, message", [
    ({"levels": 0}, "either 'levels'"),
    ({"palette": [0, 0, 0, 255, 255, 255]}, "either 'levels'"),
    ({"classes": ["a", "a"]}, "distinct"),
    ({"height": 0}, "between 1 and 4096"),
    ({"levels": 300}, "max_value \\+ 1"),
    ({"levels": "17"}, "levels"),
])
def test_a_damaged_tokenizer_file_is_named(tmp_path, change, message):
    PixelTokenizer(2, 2, levels=17, max_value=16, classes=["a", "b"]).save(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    data.update(change)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=message) as e:
        load_tokenizer(tmp_path)
    assert "tokenizer.json" in str(e.value)


def test_a_palette_is_learned_with_kmeans():
    rng = np.random.default_rng(0)
    centres = np.array([[10, 10, 10], [240, 240, 240], [240, 10, 10]])
    images = centres[rng.integers(0, 3, (20, 4, 4))] + rng.integers(-3, 4, (20, 4, 4, 3))
    tok = PixelTokenizer.fit(images, palette_size=3)
    assert sorted(map(tuple, tok.palette.tolist())) == sorted(map(tuple, centres.tolist())) or \
        np.abs(np.sort(tok.palette, axis=0) - np.sort(centres, axis=0)).max() <= 3
    with pytest.raises(UserError, match="distinct colours"):
        PixelTokenizer.fit(np.zeros((2, 2, 2, 3)), palette_size=4)
