"""Image models end to end on tiny configs: class-conditional samples keep to their prefix and look like
their class, a batch of samples equals each drawn alone, bits per dimension equals a direct sum over
classes, the independent baseline matches a hand computation, and the CLI's refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from arlm.api import load
from arlm.config import GPTConfig, ImagePrepareConfig
from arlm.data.images import prepare_images, split_records
from arlm.data.loader import TokenData
from arlm.eval.images import bits_per_dim, independent_bits_per_dim
from arlm.image.sampling import complete_images, sample_images
from arlm.model.gpt import GPT
from arlm.tokenizers.image import PixelTokenizer
from arlm.train.loop import train
from tests.conftest import tiny_train_config
from tests.reliability.conftest import refused, run


@pytest.fixture(scope="module")
def shades(tmp_path_factory):
    """4x4 images of two classes: 'dark' (levels 0-1) and 'light' (levels 2-3), and a model trained on them."""
    from PIL import Image

    root = tmp_path_factory.mktemp("shades")
    rng = np.random.default_rng(0)
    for cls, low in (("dark", 0), ("light", 170)):
        (root / "img" / cls).mkdir(parents=True)
        for i in range(40):
            Image.fromarray(rng.integers(low, low + 85, (4, 4)).astype(np.uint8), "L").save(root / "img" / cls / f"{i}.png")
    prepare_images(ImagePrepareConfig(source=str(root / "img"), out=str(root / "data"), levels=4))
    train(tiny_train_config(root / "data", root / "run", max_steps=60, batch_size=16, final_eval=True,
                            model=dict(block_size=18)))
    return root


def test_class_conditional_samples_keep_their_class(shades):
    lm = load(shades / "run")
    tok = lm.tokenizer
    drawn = sample_images(lm.model, tok, ["dark"] * 20 + ["light"] * 20 + [None] * 10, seed=0)
    assert [c for c, _ in drawn[:40]] == ["dark"] * 20 + ["light"] * 20
    assert all(c in ("dark", "light") for c, _ in drawn[40:])  # the model drew a class itself
    ids = np.stack([tok.encode_images(img[None])[0] for _, img in drawn])
    assert ids.shape == (50, 16) and ids.max() < tok.n_colors
    dark, light = ids[:20].mean(), ids[20:40].mean()
    assert dark < 1.5 < light, (dark, light)


def test_a_batch_of_samples_equals_each_drawn_alone(shades):
    lm = load(shades / "run")
    labels = ["light", "dark", None, "dark"]
    together = sample_images(lm.model, lm.tokenizer, labels, temperature=1.0, seed=5)
    for i, label in enumerate(labels):
        alone = sample_images(lm.model, lm.tokenizer, [label], temperature=1.0, seed=5 + i)[0]
        assert alone[0] == together[i][0] and (alone[1] == together[i][1]).all()


def test_completion_keeps_the_given_rows(shades):
    lm = load(shades / "run")
    tok = lm.tokenizer
    pixels, labels = split_records(TokenData.open(shades / "data").val, tok)
    done = complete_images(lm.model, tok, pixels[:4], labels[:4], rows_given=2, seed=0)
    for original, image in zip(pixels[:4], done):
        assert (tok.encode(image)[:8] == original[:8]).all()


def test_bits_per_dim_is_the_sum_over_classes():
    tok = PixelTokenizer(2, 2, levels=3, max_value=2, classes=["a", "b", "c"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=6, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).eval()
    pixels = np.array([[0, 1, 2, 1], [2, 2, 0, 0]])
    labels = ["b", "a"]
    got = bits_per_dim(model, tok, pixels, labels, torch.device("cpu"))

    def logp(seq):  # log p(seq[1:] | seq[0]) one token at a time
        total = 0.0
        with torch.no_grad():
            for t in range(1, len(seq)):
                logits, _ = model(torch.tensor([seq[:t]]))
                total += torch.log_softmax(logits[0, -1].double(), -1)[seq[t]].item()
        return total

    marginal = [math.log(sum(math.exp(logp([tok.eot_id, tok.label_id(c)] + p.tolist())) for c in tok.classes))
                for p in pixels]
    given = [logp([tok.eot_id, tok.label_id(lab)] + p.tolist()) - logp([tok.eot_id, tok.label_id(lab)])
             for p, lab in zip(pixels, labels)]
    assert got["bits_per_dim"] == pytest.approx(-sum(marginal) / 8 / math.log(2), rel=1e-5)
    assert got["bits_per_dim_given_label"] == pytest.approx(-sum(given) / 8 / math.log(2), rel=1e-5)


def test_fine_tuning_an_image_model_on_its_own_data(shades, tmp_path):
    cfg = tiny_train_config(shades / "data", tmp_path / "ft", max_steps=4, init_from=str(shades / "run"))
    cfg["model"] = {"dropout": 0.0}  # the shape comes from the model
    assert train(cfg)["step"] == 4


def test_the_independent_baseline_by_hand():
    # pixel 0: counts (2, 0) + 1 -> p(0) = 3/4; pixel 1: counts (1, 1) + 1 -> p(1) = 1/2
    got = independent_bits_per_dim(np.array([[0, 1], [0, 0]]), np.array([[0, 1]]), n_colors=2)
    assert got == pytest.approx((-math.log2(3 / 4) - math.log2(1 / 2)) / 2)


def test_the_cli_prepares_evaluates_and_samples(shades, tmp_path, capsys):
    code, out, err = run(capsys, ["image", "eval", "--model", shades / "run", "--data", shades / "data",
                                  "--samples", 20, "--json"])
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert r["test_images"] == 16 and 0 < r["bits_per_dim"] < r["independent_bits_per_dim"] * 1.2
    assert 0 <= r["classifier_agreement"] <= 1 and r["samples"] == 20
    code, out, err = run(capsys, ["image", "sample", "--model", shades / "run", "--out", tmp_path / "g.png",
                                  "--per-label", 3, "--unconditional", 2, "--scale", 2])
    assert code == 0 and "2 classes x 3 + 2 unconditional" in out, err
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size == ((4 + 1) * 3 * 2 + 2, ((4 + 1) * 3 + 1) * 2)
    code, out, err = run(capsys, ["image", "sample", "--model", shades / "run", "--out", tmp_path / "c.png",
                                  "--complete", shades / "data", "--count", 4])
    assert code == 0 and "completed 4 test images from their top 2 of 4 rows" in out, err


def test_refusals_write_nothing(shades, trained_model, tmp_path, capsys):
    (tmp_path / "keep.png").write_bytes(b"mine")
    refused(capsys, ["image", "sample", "--model", shades / "run", "--out", tmp_path / "g.jpg"], "must be a .png", tmp_path)
    refused(capsys, ["image", "sample", "--model", shades / "run", "--out", tmp_path / "g.png", "--label", "grey"],
            "unknown class 'grey'; this model's classes are: dark, light", tmp_path)
    refused(capsys, ["image", "sample", "--model", trained_model, "--out", tmp_path / "g.png"],
            "not trained on images", tmp_path)
    refused(capsys, ["image", "sample", "--model", shades / "run", "--out", tmp_path / "g.png", "--complete",
                     shades / "data", "--rows-given", 4], "--rows-given must be between 1 and 3", tmp_path)
    refused(capsys, ["image", "eval", "--model", shades / "run"], "--data DIR", tmp_path)
    refused(capsys, ["image", "prepare", "--source", tmp_path / "nothing", "--out", tmp_path / "d"], "not a folder", tmp_path)
    refused(capsys, ["generate", "--model", shades / "run"], "generates images, not text.*arlm image --help", tmp_path)
    refused(capsys, ["eval", "--model", shades / "run", "--data", tmp_path / "keep.png"], "generates images", tmp_path)
    refused(capsys, ["serve", "--model", shades / "run", "--port", 0], "generates images", tmp_path)
    assert (tmp_path / "keep.png").read_bytes() == b"mine"
