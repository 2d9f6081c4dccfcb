"""``arlm image eval``: a pixel model on a prepared folder's test images, in bits per pixel beside the
per-pixel independent baseline, and (for a labelled model) whether its class-conditional samples look
like their class to a classifier trained on the real training images (scikit-learn's SVC)."""

from __future__ import annotations

import logging
import time

import numpy as np

from arlm.data.images import split_records
from arlm.data.loader import TokenData
from arlm.errors import UserError
from arlm.eval.images import bits_per_dim, independent_bits_per_dim
from arlm.image.sampling import pixel_tokenizer, sample_images
from arlm.tokenizers.image import PixelTokenizer

log = logging.getLogger(__name__)


def features(tok: PixelTokenizer, images: list[np.ndarray]) -> np.ndarray:
    """Images as rows of values in 0..1 (the classifier's input)."""
    scale = tok.max_value if tok.levels else 255
    return np.stack([np.asarray(img, dtype=np.float64).reshape(-1) / scale for img in images])


def classifier_agreement(model, tok: PixelTokenizer, train_pixels: np.ndarray, train_labels: list, test_pixels: np.ndarray,
                         test_labels: list, samples: int, temperature: float, seed: int) -> dict[str, float]:
    """Train an SVC on the real training images; the share of ``samples`` class-conditional samples (the
    classes in turn) it assigns to their conditioning class, and its accuracy on the real test images."""
    from sklearn.svm import SVC

    svc = SVC().fit(features(tok, [tok.decode(p.tolist()) for p in train_pixels]), train_labels)
    real = float(np.mean(svc.predict(features(tok, [tok.decode(p.tolist()) for p in test_pixels])) == np.array(test_labels)))
    wanted = [tok.classes[i % len(tok.classes)] for i in range(samples)]
    drawn = sample_images(model, tok, wanted, temperature=temperature, seed=seed)
    agree = float(np.mean(svc.predict(features(tok, [img for _, img in drawn])) == np.array(wanted)))
    return {"classifier_agreement": agree, "classifier_test_accuracy": real, "samples": samples}


def evaluate_images(lm, data_dir: str, samples: int = 0, temperature: float = 1.0, seed: int = 0) -> dict:
    """Bits per dimension on the test split of ``data_dir`` (and the classifier check with ``samples``)."""
    tok = pixel_tokenizer(lm.tokenizer)
    data = TokenData.open_matching(data_dir, tok, "evaluate on the folder the model was trained on (its image size, "
                                                 "colours and classes)")
    t0 = time.perf_counter()
    train_pixels, train_labels = split_records(data.train, tok, 1 + data.meta.shifted_copies)  # the real digits only
    test_pixels, test_labels = split_records(data.val, tok)
    out = {"test_images": len(test_pixels), "height": tok.height, "width": tok.width, "colors": tok.n_colors}
    out.update(bits_per_dim(lm.model, tok, test_pixels, test_labels, lm.device))
    out["independent_bits_per_dim"] = independent_bits_per_dim(train_pixels, test_pixels, tok.n_colors)
    out["ratio_to_independent"] = out["bits_per_dim"] / out["independent_bits_per_dim"]
    if samples:
        if not tok.classes:
            raise UserError("--samples checks class-conditional samples: this model was trained without labels")
        out.update(classifier_agreement(lm.model, tok, train_pixels, train_labels, test_pixels, test_labels, samples,
                                        temperature, seed))
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out
