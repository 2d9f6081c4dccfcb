"""The Tokenizer protocol, and loading/training by name."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Protocol, Sequence, runtime_checkable

from arlm.errors import UserError
from arlm.fsutil import read_json

EOT = "<|endoftext|>"  # document separator, as in GPT-2
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"  # Hugging Face's: special tokens, chat template


@runtime_checkable
class Tokenizer(Protocol):
    kind: str  # "char", "bpe" or "hf" (a Hugging Face checkpoint's own tokenizer)
    vocab_size: int
    eot_id: int | None  # id that separates documents and ends generation

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, directory: str | Path) -> None: ...


def same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
    """Whether two tokenizers give the same ids the same text (checked on up to ~2,000 ids across the vocabulary)."""
    if a.vocab_size != b.vocab_size:
        return False
    sample = range(0, a.vocab_size, max(1, a.vocab_size // 2000))
    return [a.decode([i]) for i in sample] == [b.decode([i]) for i in sample]


def token_texts(tok: Tokenizer) -> list[str | None]:
    """Each id's text as it reads inside a text, for constraints on what a token spells (token
    healing). Each id is decoded after an anchor token and the anchor's text removed, because some
    decoders treat a text's first token specially (SentencePiece's "▁the" decodes alone to "the").
    None for ids with no text (special tokens) or not whole characters (a byte-level BPE token that
    ends inside a UTF-8 sequence)."""
    try:
        anchor = tok.encode("a")[-1:]
    except (UserError, KeyError, ValueError):  # a character vocabulary without "a": decode alone is exact
        anchor = []
    base = tok.decode(anchor)
    out: list[str | None] = []
    for i in range(tok.vocab_size):
        text = tok.decode(anchor + [i])
        text = text[len(base):] if text.startswith(base) else ""
        out.append(text if text and "\ufffd" not in text else None)
    return out


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int = 0) -> Tokenizer:
    """Build a tokenizer of ``kind`` ("char" or "bpe") from the corpus ``texts``."""
    if kind == "char":
        from arlm.tokenizers.char import CharTokenizer

        return CharTokenizer.train(texts)
    if kind == "bpe":
        from arlm.tokenizers.bpe import BPETokenizer

        return BPETokenizer.train(texts, vocab_size)
    raise UserError(f"unknown tokenizer '{kind}'; choose char or bpe")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load the tokenizer saved in ``directory`` (``tokenizer.json``, ours or Hugging Face's).

    A folder with ``tokenizer_config.json`` holds a Hugging Face tokenizer (from a converted
    checkpoint), which keeps its own special tokens.
    """
    path = Path(directory) / TOKENIZER_FILE
    if (Path(directory) / TOKENIZER_CONFIG).is_file():
        from arlm.tokenizers.pretrained import PretrainedTokenizer

        return PretrainedTokenizer.from_dir(directory)
    data = read_json(path, "is this a folder made by `arlm prepare` or `arlm train`? Prepare the data or save the model again")
    if data.get("arlm") == "char":
        from arlm.tokenizers.char import CharTokenizer

        return CharTokenizer.from_dict(data)
    if "model" in data:
        from arlm.tokenizers.bpe import BPETokenizer

        return BPETokenizer.from_file(path)
    raise UserError(f"{path} is not a tokenizer file arlm knows")
