"""Tokenizers behind one small protocol: ``encode``, ``decode``, ``vocab_size``, ``eot_id``, ``save``.

Implementations: :class:`CharTokenizer` (one id per Unicode character), :class:`BPETokenizer`
(byte-level BPE trained by ``arlm prepare`` with Hugging Face ``tokenizers``),
:class:`PretrainedTokenizer` (a Hugging Face checkpoint's own tokenizer files), and for images
:class:`PixelTokenizer` (one id per pixel, written by ``arlm image prepare``) and for audio
:class:`MuLawTokenizer` (one id per 8-bit mu-law sample, ``arlm audio prepare``). This module is
the factory: build one from a corpus (:func:`train_tokenizer`) or load one from a folder
(:func:`load_tokenizer`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from arlm.errors import UserError
from arlm.io.files import read_json
from arlm.tokenizers.audio import MuLawTokenizer
from arlm.tokenizers.base import EOT, TOKENIZER_CONFIG, TOKENIZER_FILE, Tokenizer
from arlm.tokenizers.bpe import BPETokenizer
from arlm.tokenizers.char import CharTokenizer
from arlm.tokenizers.image import PixelTokenizer
from arlm.tokenizers.series import ScaledBinsTokenizer
from arlm.tokenizers.pretrained import PretrainedTokenizer

__all__ = ["EOT", "Tokenizer", "CharTokenizer", "BPETokenizer", "MuLawTokenizer", "PixelTokenizer", "PretrainedTokenizer",
           "ScaledBinsTokenizer", "load_tokenizer", "train_tokenizer"]

KINDS = ("char", "bpe")


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int = 0) -> Tokenizer:
    """Build a tokenizer of ``kind`` ("char" or "bpe") from the corpus ``texts``."""
    if kind == "char":
        return CharTokenizer.train(texts)
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size)
    raise UserError(f"unknown tokenizer '{kind}'; choose one of: {', '.join(KINDS)}")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load the tokenizer saved in ``directory`` (``tokenizer.json``, ours or Hugging Face's).

    A folder with ``tokenizer_config.json`` holds a Hugging Face tokenizer (from a converted
    checkpoint), which keeps its own special tokens.
    """
    d = Path(directory)
    if (d / TOKENIZER_CONFIG).is_file():
        return PretrainedTokenizer.from_dir(d)
    path = d / TOKENIZER_FILE
    data = read_json(path, "is this a folder made by `arlm prepare` or `arlm train`? Prepare the data or save the model again")
    if data.get("arlm") == "char":
        return CharTokenizer.from_dict(data, str(path))
    if data.get("arlm") == "pixels":
        return PixelTokenizer.from_dict(data, str(path))
    if data.get("arlm") == "mulaw":
        return MuLawTokenizer.from_dict(data, str(path))
    if data.get("arlm") == "scaled-bins":
        return ScaledBinsTokenizer.from_dict(data, str(path))
    if "model" in data and "arlm" not in data:
        return BPETokenizer.from_file(path)
    raise UserError(f"{path} is not a tokenizer file arlm knows (neither its character vocabulary nor a tokenizers "
                    f"library file); prepare the data again")
