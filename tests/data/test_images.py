"""`arlm image prepare`: the digits and folders of image files into record shards, the split the image
targets are stated on, windows that start at record boundaries, and refusals that write nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from arlm.config import ImagePrepareConfig
from arlm.data.images import prepare_images, shifted, split_records
from arlm.data.loader import TokenData, WindowSampler, random_batch
from arlm.errors import UserError


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "data"
    prepare_images(ImagePrepareConfig(source="digits", out=str(out)))
    return out


def test_digits_become_records_on_scikit_learns_split(digits_dir):
    from sklearn.model_selection import train_test_split

    data = TokenData.open(digits_dir)
    tok = data.tokenizer
    assert (data.meta.modality, data.meta.record_tokens, tok.n_colors, tok.classes) == ("image", 66, 17, [str(i) for i in range(10)])
    from sklearn.datasets import load_digits

    d = load_digits()  # scikit-learn's own, not arlm's reader
    X_train, X_test, y_train, y_test = train_test_split(d.images, [str(t) for t in d.target], test_size=0.2, random_state=0)
    pixels, labels = split_records(data.val, tok)
    assert (pixels.reshape(-1, 8, 8) == X_test).all() and labels == y_test
    pixels, labels = split_records(data.train, tok)
    assert (pixels.reshape(-1, 8, 8) == X_train).all() and labels == y_train
    assert len(data.train) == len(X_train) * 66 + 1 and data.train[-1] == tok.eot_id


@pytest.mark.parametrize("order", ["random", "epoch"])
def test_training_windows_start_at_records(digits_dir, order):
    data = TokenData.open(digits_dir)
    sampler = WindowSampler(*data.sampling(66), order, 0, torch.Generator().manual_seed(0))
    starts = sampler.next(3000)
    assert all(s % 66 == 0 for s in starts) and max(starts) + 67 <= len(data.train)
    if order == "epoch":  # every image once per epoch
        assert sorted(starts[:1437]) == list(range(0, 1437 * 66, 66))
    x, _ = random_batch(data.val, 64, 132, torch.Generator().manual_seed(1), data.stride)
    assert (x[:, 0] == data.tokenizer.eot_id).all() and (x[:, 66] == data.tokenizer.eot_id).all()
    with pytest.raises(UserError, match="record of 66 tokens"):
        data.check_block_size(64)


def _png(path, value, size=(6, 4), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1] + ((3,) if mode == "RGB" else ()), value, dtype=np.uint8), mode).save(path)


def test_a_folder_with_class_subfolders(tmp_path):
    for i in range(5):
        _png(tmp_path / "img" / "dark" / f"{i}.png", 10 + i)
        _png(tmp_path / "img" / "light" / f"{i}.jpg", 240 - i, size=(12, 8))  # resized to the first image's size
    meta = prepare_images(ImagePrepareConfig(source=str(tmp_path / "img"), out=str(tmp_path / "out"), levels=4))
    assert (meta["classes"], meta["width"], meta["height"], meta["colors"]) == (["dark", "light"], 6, 4, 4)
    data = TokenData.open(tmp_path / "out")
    pixels, labels = split_records(data.train, data.tokenizer)
    assert all((p == (0 if lab == "dark" else 3)).all() for p, lab in zip(pixels, labels))
    rgb = prepare_images(ImagePrepareConfig(source=str(tmp_path / "img"), out=str(tmp_path / "rgb"), color="rgb",
                                            palette=2, labels=False, size="3x2"))
    assert (rgb["classes"], rgb["width"], rgb["height"], rgb["colors"], rgb["record_tokens"]) == ([], 3, 2, 2, 7)


@pytest.mark.parametrize("setup, options, message", [
    (lambda d: _png(d / "a.png", 1) or _png(d / "sub" / "b.png", 2), {}, "both at its top and in subfolders"),
    (lambda d: (d / "notes.txt").write_text("x"), {}, "no .png, .jpg or .jpeg files"),
    (lambda d: (d / "bad.png").write_bytes(b"not a png"), {}, "bad.png is not an image Pillow can read"),
    (lambda d: _png(d / "a.png", 1), {"size": "8"}, "WIDTHxHEIGHT"),
    (lambda d: _png(d / "a.png", 1), {"levels": 1}, "--levels must be between 2 and 256"),
    (lambda d: _png(d / "a.png", 1), {}, "at least 2"),
])
def test_bad_image_input_is_refused_and_nothing_is_written(tmp_path, setup, options, message):
    src = tmp_path / "src"
    src.mkdir()
    setup(src)
    with pytest.raises(UserError, match=message):
        prepare_images(ImagePrepareConfig(source=str(src), out=str(tmp_path / "out"), **options))
    assert not (tmp_path / "out").exists()


def test_digits_refuse_options_that_do_not_apply(tmp_path):
    for options, message in (({"size": "16x16"}, "digits are 8x8"), ({"color": "rgb"}, "digits are grey"),
                             ({"levels": 20}, "levels must be between 2 and max_value")):
        with pytest.raises(UserError, match=message):
            prepare_images(ImagePrepareConfig(source="digits", out=str(tmp_path / "out"), **options))
    assert not (tmp_path / "out").exists()


def test_shifted_copies_move_the_image_and_fill_with_its_background():
    img = np.zeros((1, 4, 5), dtype=np.int64)
    img[0, 1, 2] = 9
    img[0, 3, 4] = 5  # a bright border pixel: the background is still the most common border value (0)
    out = shifted(img, 1)
    assert out.shape == (9, 4, 5) and np.array_equal(out[0], img[0])
    moves = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    for k, (dy, dx) in enumerate(moves, start=1):
        assert out[k, 1 + dy, 2 + dx] == 9 and (out[k] == 9).sum() == 1
    assert out[moves.index((1, 1)) + 1].sum() == 9  # the corner pixel moved out of the image


def test_prepare_with_shifts_keeps_the_real_images_findable(tmp_path):
    meta = prepare_images(ImagePrepareConfig(source="digits", out=str(tmp_path / "d"), shift=1))
    assert meta["shifted_copies"] == 8 and meta["train_tokens"] == 9 * 1437 * 66 + 1
    data = TokenData.open(tmp_path / "d")
    tok = data.tokenizer
    real, labels = split_records(data.train, tok, 9)
    plain = prepare_images(ImagePrepareConfig(source="digits", out=str(tmp_path / "p")))
    assert plain["shifted_copies"] == 0
    base, base_labels = split_records(TokenData.open(tmp_path / "p").train, tok)
    assert np.array_equal(real, base) and labels == base_labels
    assert np.array_equal(data.val, TokenData.open(tmp_path / "p").val)  # the test images are never shifted


def test_the_real_images_of_an_unlabelled_shifted_split(tmp_path):
    meta = prepare_images(ImagePrepareConfig(source="digits", out=str(tmp_path / "d"), shift=1, labels=False))
    data = TokenData.open(tmp_path / "d")
    pixels, labels = split_records(data.train, data.tokenizer, 1 + meta["shifted_copies"])
    assert len(pixels) == len(labels) == 1437 and labels == [None] * 1437
