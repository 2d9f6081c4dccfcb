"""The Tokenizer protocol and what works on any tokenizer (the factory is arlm/tokenizers/__init__.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

from arlm.errors import UserError

EOT = "<|endoftext|>"  # document separator, as in GPT-2
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"  # Hugging Face's: special tokens, chat template


@runtime_checkable
class Tokenizer(Protocol):
    """Domain data <-> token ids. For text (``modality`` "text") the data is a ``str``; other modalities
    encode their own values (an image's pixels: arlm/tokenizers/image.py) and decode ids back to them."""

    kind: str  # "char", "bpe", "hf" (a Hugging Face checkpoint's own tokenizer), "pixels", "mulaw"
    modality: str  # "text", "image", "audio" or "series": what encode takes and decode returns
    vocab_size: int
    eot_id: int | None  # id that separates documents and ends generation

    def encode(self, data: Any) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> Any: ...

    def save(self, directory: str | Path) -> None: ...


def require_text(tok: "Tokenizer | None") -> None:
    """Refuse a text verb (generate, chat, eval on text, serve) for a model of another modality."""
    modality = getattr(tok, "modality", "text")
    if modality != "text":
        what = {"image": "images", "series": "forecasts"}.get(modality, modality)
        verb = {"series": "ts"}.get(modality, modality)
        raise UserError(f"this model generates {what}, not text; see `arlm {verb} --help` for what it can do")


def expect_tokenizer(tok: "Tokenizer | None", cls: type, what: str, verb: str):
    """``tok`` if it is a ``cls`` (a model trained on ``what``), else the one-line refusal naming the
    ``arlm VERB prepare`` that makes such data."""
    if not isinstance(tok, cls):
        kind = getattr(tok, "modality", "text") if tok is not None else "unknown"
        raise UserError(f"this model was not trained on {what} (its tokenizer is {kind}); train one on a folder made "
                        f"by `arlm {verb} prepare`")
    return tok


# What the tokenizers library (Rust) raises for a file it cannot read: plain Exception, or pyo3's
# PanicException, which derives from BaseException, when its Rust code panics on malformed data.
def library_failure(e: BaseException) -> bool:
    return isinstance(e, Exception) or type(e).__name__ == "PanicException"


def same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
    """Whether two tokenizers give the same ids the same text (checked on up to ~2,000 ids across the vocabulary)."""
    if a.vocab_size != b.vocab_size or getattr(a, "modality", "text") != getattr(b, "modality", "text"):
        return False
    if getattr(a, "modality", "text") != "text":  # colours, sizes and classes: the whole saved form
        return a.to_dict() == b.to_dict()
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


def encode_with_offsets(tok: Tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids of ``text`` and each token's character span (start, end) in it: the tokenizers library's
    offsets for BPE and Hugging Face tokenizers, one character per token for a character vocabulary.
    Task heads label tokens by the words and answers these spans overlap (arlm/data/tasks.py)."""
    inner = getattr(tok, "tok", None)
    if inner is not None and hasattr(inner, "encode"):
        enc = inner.encode(text, add_special_tokens=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]
    if getattr(tok, "kind", "") == "char":
        ids = tok.encode(text)
        return ids, [(i, i + 1) for i in range(len(text))]
    raise UserError(f"a {getattr(tok, 'kind', 'unknown')} tokenizer cannot say which characters each token covers; "
                    f"task heads need a text tokenizer (char, bpe or a Hugging Face one)")
