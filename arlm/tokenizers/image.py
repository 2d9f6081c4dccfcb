"""Pixel tokenizer: an image as one token per pixel in raster order (row by row, left to right), as
Image GPT does (Chen et al. 2020, "Generative Pretraining from Pixels").

Colours are either grey levels (``levels`` evenly spaced values from 0 to ``max_value``; scikit-learn's
8x8 digits are 17 levels, 0..16) or an RGB palette of k-means centres (Image GPT's 9-bit palette, learned
here with scikit-learn's ``KMeans`` on the training pixels). Ids::

    0 .. C-1          the colours
    C .. C+K-1        the class labels (optional: conditional generation starts from one)
    C+K               end-of-text: opens every image record and separates records

An image record is ``[eot, label?, pixel_0 ... pixel_{H*W-1}]`` (:meth:`PixelTokenizer.record`), so a
model trained on records learns p(label) p(pixels | label); unconditional sampling starts from
``[eot]`` alone and draws the label too.

>>> tok = PixelTokenizer(2, 2, levels=17, max_value=16, classes=["0", "1"])
>>> tok.encode(np.array([[0, 16], [8, 4]]))
[0, 16, 8, 4]
>>> tok.record(np.array([[0, 16], [8, 4]]), "1")
[19, 18, 0, 16, 8, 4]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from arlm.config import to_dict, validated
from arlm.errors import UserError
from arlm.io.schema import PixelVocabulary
from arlm.tokenizers.base import TOKENIZER_FILE

PALETTE_FIT_PIXELS = 200_000  # k-means sees at most this many training pixels (a random sample)


class PixelTokenizer:
    kind = "pixels"
    modality = "image"

    def __init__(self, height: int, width: int, levels: int = 0, max_value: int = 255,
                 palette: np.ndarray | Sequence[Sequence[int]] | None = None, classes: Sequence[str] = ()):
        flat = [] if palette is None else [int(v) for v in np.asarray(palette).reshape(-1)]
        self.spec = validated(PixelVocabulary, dict(height=height, width=width, levels=levels, max_value=max_value,
                                                    palette=flat, classes=[str(c) for c in classes]),
                              "pixel tokenizer", name_source=False)
        self.height, self.width, self.levels, self.max_value = height, width, levels, max_value
        self.palette = np.asarray(flat, dtype=np.int64).reshape(-1, 3) if flat else None
        self.classes = list(self.spec.classes)
        self.channels = 1 if levels else 3
        self.n_colors = levels or len(self.palette)
        self.eot_id = self.n_colors + len(self.classes)
        self.vocab_size = self.eot_id + 1
        self.pixels = height * width

    # -- building one -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, images: np.ndarray, *, levels: int = 0, max_value: int = 255, palette_size: int = 0,
            classes: Sequence[str] = (), seed: int = 0) -> "PixelTokenizer":
        """For ``images`` (N, H, W) grey or (N, H, W, 3) RGB: ``levels`` grey levels, or a palette of
        ``palette_size`` colours clustered from the images' pixels."""
        if images.ndim not in (3, 4) or len(images) == 0:
            raise UserError(f"expected images as (N, H, W) or (N, H, W, 3), got shape {images.shape}")
        H, W = images.shape[1:3]
        if not palette_size:
            return cls(H, W, levels=levels, max_value=max_value, classes=classes)
        from sklearn.cluster import KMeans

        pixels = images.reshape(-1, images.shape[-1] if images.ndim == 4 else 1).astype(np.float64)
        if pixels.shape[1] == 1:
            pixels = np.repeat(pixels, 3, axis=1)
        rng = np.random.default_rng(seed)
        sample = pixels[rng.choice(len(pixels), min(len(pixels), PALETTE_FIT_PIXELS), replace=False)]
        distinct = len(np.unique(sample, axis=0))
        if distinct < palette_size:
            raise UserError(f"the images have {distinct} distinct colours, fewer than --palette {palette_size}; "
                            f"choose a smaller palette")
        centres = KMeans(n_clusters=palette_size, n_init=3, random_state=seed).fit(sample).cluster_centers_
        return cls(H, W, palette=np.clip(np.rint(centres), 0, 255).astype(np.int64), classes=classes)

    # -- the protocol ---------------------------------------------------------------------------------
    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W[, 3]) -> (N, H*W) int64 colour ids."""
        expected = (self.height, self.width) + (() if self.levels else (3,))
        if images.shape[1:] != expected or images.dtype.kind not in "biuf":
            got = "x".join(map(str, images.shape[1:])) if images.ndim >= 3 and images.dtype.kind in "biuf" else \
                f"a value of shape {images.shape[1:]} ({'str' if images.dtype.kind in 'US' else images.dtype.name})"
            raise UserError(f"images must be {'x'.join(map(str, expected))} for this tokenizer, got {got}")
        if self.levels:
            v = images.astype(np.float64)
            if np.isnan(v).any() or v.min() < 0 or v.max() > self.max_value:
                raise UserError(f"pixel values must lie in 0..{self.max_value}")
            ids = np.rint(v * (self.levels - 1) / self.max_value).astype(np.int64)
            return ids.reshape(len(images), -1)
        flat = images.reshape(-1, 3).astype(np.float64)
        ids = np.empty(len(flat), dtype=np.int64)
        for s in range(0, len(flat), 1 << 16):  # nearest palette colour, in chunks (N x K distances)
            d = ((flat[s:s + (1 << 16), None, :] - self.palette[None, :, :]) ** 2).sum(-1)
            ids[s:s + (1 << 16)] = d.argmin(1)
        return ids.reshape(len(images), -1)

    def encode(self, image: np.ndarray) -> list[int]:
        """One image (H, W) or (H, W, 3) -> its H*W colour ids."""
        return self.encode_images(np.asarray(image)[None])[0].tolist()

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        """Colour ids -> an image (H, W) or (H, W, 3) uint8/uint16. Labels and end-of-text are skipped; a
        short sequence leaves the rest of the image black (a partial sample)."""
        colours = np.array([i for i in ids if 0 <= i < self.n_colors], dtype=np.int64)[:self.pixels]
        full = np.zeros(self.pixels, dtype=np.int64)
        full[:len(colours)] = colours
        if self.levels:
            dtype = np.uint8 if self.max_value <= 255 else np.uint16
            return np.rint(full * self.max_value / (self.levels - 1)).astype(dtype).reshape(self.height, self.width)
        return self.palette[full].astype(np.uint8).reshape(self.height, self.width, 3)

    def label_id(self, label: str | int) -> int:
        """The id of a class label (its name, or its index among the classes)."""
        if not self.classes:
            raise UserError("this model was trained without class labels; sample it unconditionally")
        name = str(label)
        if name in self.classes:
            return self.n_colors + self.classes.index(name)
        raise UserError(f"unknown class {name!r}; this model's classes are: {', '.join(self.classes)}")

    def label_of(self, token: int) -> str | None:
        return self.classes[token - self.n_colors] if self.n_colors <= token < self.eot_id else None

    def prefix(self, label: str | int | None = None) -> list[int]:
        """What a record opens with: end-of-text, then the label's id when given."""
        return [self.eot_id] + ([] if label is None else [self.label_id(label)])

    @property
    def record_tokens(self) -> int:
        """Tokens of one record (:meth:`record`)."""
        return 1 + bool(self.classes) + self.pixels

    def record(self, image: np.ndarray, label: str | int | None = None) -> list[int]:
        if self.classes and label is None:
            raise UserError("this tokenizer has class labels: every record needs one")
        return self.prefix(label) + self.encode(image)

    # -- files ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return to_dict(self.spec)

    @classmethod
    def from_dict(cls, data: dict, source: str = TOKENIZER_FILE) -> "PixelTokenizer":
        spec = validated(PixelVocabulary, data, source)
        return cls(spec.height, spec.width, spec.levels, spec.max_value,
                   np.asarray(spec.palette).reshape(-1, 3) if spec.palette else None, spec.classes)

    def save(self, directory: str | Path) -> None:
        Path(directory, TOKENIZER_FILE).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")
