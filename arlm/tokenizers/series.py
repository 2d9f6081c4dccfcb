"""Time-series tokenizer as Chronos does it (Ansari et al. 2024, "Chronos: Learning the Language of Time
Series", section 3.1): a window of values is divided by its context's mean absolute value (mean
scaling: forecasts do not depend on the series' units or level), then each scaled value is quantised
into one of ``bins`` uniform bins on [-limit, limit] (Chronos: 4094 bins on [-15, 15]; values beyond
fall in the end bins). Decoding maps an id to its bin's centre times the scale.

``scaling="standard"`` subtracts the context's mean and divides by its standard deviation instead
(the instance normalisation of RevIN, Kim et al. 2022, and of Chronos-2): a series far from zero
whose movements are small beside its level (a price index, CO2 in ppm) keeps them, where mean scaling
leaves them inside one bin.

Ids: 0 .. bins-1 the bins, in order of value; ``bins`` end-of-text (separates series in training).

>>> tok = ScaledBinsTokenizer(bins=5, limit=2.0)
>>> ids, affine = tok.encode_context(np.array([1.0, -1.0, 2.0, 0.0]))
>>> affine, ids
((0.0, 1.0), [3, 1, 4, 2])
>>> tok.decode_values(ids, affine).tolist()
[1.0, -1.0, 2.0, 0.0]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from arlm.config import to_dict, validated
from arlm.errors import UserError
from arlm.io.schema import SeriesBins
from arlm.tokenizers.base import TOKENIZER_FILE

Affine = tuple[float, float]  # (loc, scale): a value v is tokenised as (v - loc) / scale


def mean_scale(context: np.ndarray) -> float:
    """Mean absolute value of the context (1 when it is all zeros, so a flat zero series stays zero)."""
    s = float(np.mean(np.abs(context))) if len(context) else 0.0
    return s if s > 0 and np.isfinite(s) else 1.0


def standardise(context: np.ndarray) -> Affine:
    """(mean, standard deviation) of the context; a flat context keeps its level and takes its mean
    absolute value as the scale."""
    if not len(context):
        return 0.0, 1.0
    loc, sd = float(np.mean(context)), float(np.std(context))
    return loc, sd if sd > 1e-12 * max(1.0, abs(loc)) and np.isfinite(sd) else mean_scale(context)


class ScaledBinsTokenizer:
    kind = "scaled-bins"
    modality = "series"

    def __init__(self, bins: int = 4094, limit: float = 15.0, scaling: str = "mean"):
        self.spec = validated(SeriesBins, dict(bins=bins, limit=limit, scaling=scaling), "series tokenizer",
                              name_source=False)
        self.bins, self.limit, self.scaling = bins, limit, scaling
        self.centres = np.linspace(-limit, limit, bins)
        self.edges = (self.centres[:-1] + self.centres[1:]) / 2  # bins - 1 inner edges
        self.eot_id = bins
        self.vocab_size = bins + 1

    def affine(self, context: np.ndarray) -> Affine:
        """How a context and what follows it are normalised: (0, mean |x|) or (mean, std)."""
        context = np.asarray(context, dtype=np.float64)
        return standardise(context) if self.scaling == "standard" else (0.0, mean_scale(context))

    def encode_scaled(self, values: np.ndarray, affine: Affine) -> np.ndarray:
        """Values normalised by ``affine``, then binned: int64 ids."""
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 1 or not np.isfinite(v).all():
            raise UserError("a series is one row of finite numbers (fill or drop missing values first)")
        loc, scale = affine
        return np.searchsorted(self.edges, (v - loc) / scale).astype(np.int64)

    def encode_context(self, context: np.ndarray) -> tuple[list[int], Affine]:
        """A context window's ids and its normalisation (which also encodes and decodes what follows it)."""
        affine = self.affine(context)
        return self.encode_scaled(context, affine).tolist(), affine

    def encode(self, values: np.ndarray) -> list[int]:
        """The protocol's encode: the values normalised by their own statistics."""
        return self.encode_context(values)[0]

    def decode_values(self, ids: Sequence[int] | np.ndarray, affine: Affine = (0.0, 1.0)) -> np.ndarray:
        """Ids -> the bins' centres, scaled back by ``affine`` (end-of-text and other ids skipped)."""
        a = np.asarray(ids, dtype=np.int64)
        a = a[(a >= 0) & (a < self.bins)]
        loc, scale = affine
        return self.centres[a] * scale + loc

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        return self.decode_values(ids)

    def to_dict(self) -> dict:
        return to_dict(self.spec)

    @classmethod
    def from_dict(cls, data: dict, source: str = TOKENIZER_FILE) -> "ScaledBinsTokenizer":
        spec = validated(SeriesBins, data, source)
        return cls(spec.bins, spec.limit, spec.scaling)

    def save(self, directory: str | Path) -> None:
        Path(directory, TOKENIZER_FILE).write_text(json.dumps(self.to_dict()), encoding="utf-8")
