"""Character-level tokenizer: one id per Unicode code point seen in the corpus.

>>> tok = CharTokenizer.train(["hello 世界"])
>>> tok.encode("hello")
[4, 3, 5, 5, 6]
>>> tok.decode(tok.encode("世界 hello"))
'世界 hello'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from arlm.config import validated
from arlm.errors import UserError
from arlm.io.schema import CharVocabulary
from arlm.tokenizers.base import EOT, TOKENIZER_FILE


def _describe(chars: Iterable[str], limit: int = 5) -> str:
    chars = sorted(set(chars))
    shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


class CharTokenizer:
    kind = "char"
    modality = "text"

    def __init__(self, chars: Sequence[str]):
        self.chars = list(chars)
        assert len(set(self.chars)) == len(self.chars), "duplicate characters in vocabulary"
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.eot_id = len(self.chars)  # the one special id, after the characters
        self.vocab_size = len(self.chars) + 1
        # Lookup table from code point to id (-1 = unknown) for fast vectorised encoding.
        top = max((ord(c) for c in self.chars), default=0)
        self._table = np.full(top + 1, -1, dtype=np.int64)
        for i, c in enumerate(self.chars):
            self._table[ord(c)] = i

    @classmethod
    def train(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls(sorted(seen))

    def encode_array(self, text: str) -> np.ndarray:
        """Encode to an int64 array; raises UserError naming any character outside the vocabulary."""
        cps = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32).astype(np.int64)
        ids = np.where(cps < len(self._table), self._table[np.minimum(cps, len(self._table) - 1)], -1)
        if (ids < 0).any():
            unknown = {chr(c) for c in cps[ids < 0]}
            raise UserError(
                f"text contains {len(unknown)} character(s) outside this character-level vocabulary: "
                f"{_describe(unknown)}; remove them, or prepare the corpus with --tokenizer bpe "
                f"(byte-level, covers any text)"
            )
        return ids

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Sequence[int]) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] for i in ids if 0 <= i < n)  # special ids decode to ""

    def to_dict(self) -> dict:
        return {"arlm": "char", "version": 1, "chars": self.chars, "eot": EOT}

    @classmethod
    def from_dict(cls, data: dict, source: str = "tokenizer.json") -> "CharTokenizer":
        """From the saved form (:meth:`to_dict`), checked: one character per id, each once."""
        return cls(validated(CharVocabulary, data, source).chars)

    def save(self, directory: str | Path) -> None:
        Path(directory, TOKENIZER_FILE).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")
