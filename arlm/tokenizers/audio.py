"""mu-law tokenizer: a waveform as one token per sample, 8-bit mu-law companded (mu = 255), as WaveNet
does (van den Oord et al. 2016, section 2.2; ITU-T G.711's curve):

    f(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu),   x in [-1, 1]

then f(x) in [-1, 1] is cut into 256 equal bins. Quiet samples get fine steps and loud ones coarse
steps, as the ear hears them. Ids 0..255 are the bins (128 is silence); 256 is end-of-text, which
separates utterances.

>>> tok = MuLawTokenizer(8000)
>>> tok.encode(np.array([0.0, 1.0, -1.0]))
[128, 255, 0]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from arlm.config import to_dict, validated
from arlm.errors import UserError
from arlm.io.schema import MuLawSpec
from arlm.tokenizers.base import TOKENIZER_FILE


def mu_law(x: np.ndarray, mu: int = 255) -> np.ndarray:
    """Compand [-1, 1] -> [-1, 1]."""
    return np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)


def mu_law_inverse(y: np.ndarray, mu: int = 255) -> np.ndarray:
    """Expand [-1, 1] -> [-1, 1] (the inverse of :func:`mu_law`)."""
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu


class MuLawTokenizer:
    kind = "mulaw"
    modality = "audio"

    def __init__(self, sample_rate: int, mu: int = 255):
        self.spec = validated(MuLawSpec, dict(sample_rate=sample_rate, mu=mu), "mu-law tokenizer", name_source=False)
        self.sample_rate, self.mu = sample_rate, mu
        self.levels = mu + 1  # 256 bins for mu = 255
        self.eot_id = self.levels
        self.vocab_size = self.levels + 1

    def encode_array(self, wave: np.ndarray) -> np.ndarray:
        """Samples in [-1, 1] (clipped) -> int64 ids 0..mu."""
        x = np.asarray(wave, dtype=np.float64)
        if x.ndim != 1:
            raise UserError(f"a waveform is one channel of samples, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise UserError("the waveform holds NaN or infinite samples")
        y = mu_law(np.clip(x, -1.0, 1.0), self.mu)
        return np.rint((y + 1) / 2 * self.mu).astype(np.int64)

    def encode(self, wave: np.ndarray) -> list[int]:
        return self.encode_array(wave).tolist()

    def bin_edges(self) -> np.ndarray:
        """(levels + 1,) edges of each id's bin in the linear (waveform) domain, from -1 to 1."""
        centres = np.arange(self.levels) * 2 / self.mu - 1  # companded values of the ids
        edges = np.concatenate([[-1.0], (centres[:-1] + centres[1:]) / 2, [1.0]])
        return mu_law_inverse(edges, self.mu)

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        """Ids -> float32 samples in [-1, 1] (end-of-text and other ids skipped)."""
        a = np.asarray([i for i in ids if 0 <= i < self.levels], dtype=np.float64)
        return mu_law_inverse(a * 2 / self.mu - 1, self.mu).astype(np.float32)

    def to_dict(self) -> dict:
        return to_dict(self.spec)

    @classmethod
    def from_dict(cls, data: dict, source: str = TOKENIZER_FILE) -> "MuLawTokenizer":
        spec = validated(MuLawSpec, data, source)
        return cls(spec.sample_rate, spec.mu)

    def save(self, directory: str | Path) -> None:
        Path(directory, TOKENIZER_FILE).write_text(json.dumps(self.to_dict()), encoding="utf-8")
