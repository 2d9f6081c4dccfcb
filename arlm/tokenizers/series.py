"""Time-series tokenizer as Chronos does it (Ansari et al. 2024, "Chronos: Learning the Language of Time
Series", section 3.1): a window of values is divided by its context's mean absolute value (mean
scaling: forecasts do not depend on the series' units or level), then each scaled value is quantised
into one of ``bins`` uniform bins on [-limit, limit] (Chronos: 4094 bins on [-15, 15]; values beyond
fall in the end bins). Decoding maps an id to its bin's centre times the scale.

Ids: 0 .. bins-1 the bins, in order of value; ``bins`` end-of-text (separates series in training).

>>> tok = ScaledBinsTokenizer(bins=5, limit=2.0)
>>> ids, scale = tok.encode_context(np.array([1.0, -1.0, 2.0, 0.0]))
>>> scale, ids
(1.0, [3, 1, 4, 2])
>>> tok.decode_values(ids, scale).tolist()
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


def mean_scale(context: np.ndarray) -> float:
    """Mean absolute value of the context (1 when it is all zeros, so a flat zero series stays zero)."""
    s = float(np.mean(np.abs(context))) if len(context) else 0.0
    return s if s > 0 and np.isfinite(s) else 1.0


class ScaledBinsTokenizer:
    kind = "scaled-bins"
    modality = "series"

    def __init__(self, bins: int = 4094, limit: float = 15.0):
        self.spec = validated(SeriesBins, dict(bins=bins, limit=limit), "series tokenizer", name_source=False)
        self.bins, self.limit = bins, limit
        self.centres = np.linspace(-limit, limit, bins)
        self.edges = (self.centres[:-1] + self.centres[1:]) / 2  # bins - 1 inner edges
        self.eot_id = bins
        self.vocab_size = bins + 1

    def encode_scaled(self, values: np.ndarray, scale: float) -> np.ndarray:
        """Values divided by ``scale``, then binned: int64 ids."""
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 1 or not np.isfinite(v).all():
            raise UserError("a series is one row of finite numbers (fill or drop missing values first)")
        return np.searchsorted(self.edges, v / scale).astype(np.int64)

    def encode_context(self, context: np.ndarray) -> tuple[list[int], float]:
        """A context window's ids and its scale (which also encodes and decodes what follows it)."""
        scale = mean_scale(np.asarray(context, dtype=np.float64))
        return self.encode_scaled(context, scale).tolist(), scale

    def encode(self, values: np.ndarray) -> list[int]:
        """The protocol's encode: the values scaled by their own mean absolute value."""
        return self.encode_context(values)[0]

    def decode_values(self, ids: Sequence[int] | np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Ids -> the bins' centres times ``scale`` (end-of-text and other ids skipped)."""
        a = np.asarray(ids, dtype=np.int64)
        a = a[(a >= 0) & (a < self.bins)]
        return self.centres[a] * scale

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        return self.decode_values(ids)

    def to_dict(self) -> dict:
        return to_dict(self.spec)

    @classmethod
    def from_dict(cls, data: dict, source: str = TOKENIZER_FILE) -> "ScaledBinsTokenizer":
        spec = validated(SeriesBins, data, source)
        return cls(spec.bins, spec.limit)

    def save(self, directory: str | Path) -> None:
        Path(directory, TOKENIZER_FILE).write_text(json.dumps(self.to_dict()), encoding="utf-8")
