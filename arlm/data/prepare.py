"""``arlm prepare``: text files, folders, globs or JSONL -> tokenizer + ``train.bin``/``val.bin`` + ``meta.json``.

Each input file (or JSONL record) is one document; documents are joined with the tokenizer's
end-of-text id. The token stream is split at ``1 - val_fraction``: the end of the corpus is the
validation split (as nanoGPT does), so validation text is never seen in training. Token ids are
stored as little-endian uint16 when the vocabulary fits, else uint32.
"""

from __future__ import annotations

import glob as globlib
import json
import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from arlm.config import PrepareConfig
from arlm.errors import UserError
from arlm.fsutil import atomic_dir
from arlm.tokenizers import train_tokenizer
from arlm.tokenizers.base import Tokenizer

log = logging.getLogger(__name__)

META_FILE = "meta.json"
FORMAT_VERSION = 1


def collect_files(inputs: list[str], pattern: str = "**/*.txt") -> list[Path]:
    """Expand inputs (files, folders searched with ``pattern``, glob patterns) into a sorted, de-duplicated list."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.glob(pattern) if f.is_file() and not f.name.startswith("."))
            if not found:
                raise UserError(f"folder {p} has no files matching '{pattern}'; pass --glob to choose others")
            files += found
        elif p.is_file():
            files.append(p)
        elif any(ch in item for ch in "*?["):
            found = sorted(Path(f) for f in globlib.glob(item, recursive=True) if Path(f).is_file())
            if not found:
                raise UserError(f"no files match the pattern '{item}'")
            files += found
        else:
            raise UserError(f"input not found: {item}")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def decode_utf8(data: bytes, source: str, errors: str = "strict") -> str:
    """Decode UTF-8 (a leading BOM is dropped); a bad byte is a UserError naming the file and offset."""
    try:
        return data.decode("utf-8-sig", errors=errors)
    except UnicodeDecodeError as e:
        bad = data[e.start:e.start + 4]
        raise UserError(
            f"{source} is not valid UTF-8: byte offset {e.start} ({bad!r}); convert it to UTF-8 "
            f"(e.g. iconv -f latin1 -t utf-8), or pass --errors replace to substitute U+FFFD"
        ) from None


def read_text_file(path: str | Path, errors: str = "strict") -> str:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    return decode_utf8(path.read_bytes(), str(path), errors)


def iter_documents(files: list[Path], jsonl_field: str = "text", errors: str = "strict") -> Iterator[tuple[str, dict]]:
    """Yield ``(document, fields)`` for each file: the whole file with {"name": its stem}, or one per
    line of a ``.jsonl`` file with the record's fields."""
    for f in files:
        text = read_text_file(f, errors)
        if f.suffix.lower() != ".jsonl":
            yield text, {"name": f.stem}
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{f} line {n}: not valid JSON ({e.msg}); each line must be one JSON object") from None
            if not isinstance(rec, dict) or jsonl_field not in rec:
                keys = ", ".join(rec) if isinstance(rec, dict) else type(rec).__name__
                raise UserError(f"{f} line {n}: no field '{jsonl_field}' (found: {keys}); choose one with --jsonl-field")
            value = rec[jsonl_field]
            if not isinstance(value, str):
                raise UserError(f"{f} line {n}: field '{jsonl_field}' must be a string, got {type(value).__name__}")
            yield value, {"name": f.stem, **rec}


def control_code(template: str, fields: dict, where: str) -> str:
    """``template`` with {FIELD}s filled from a document's fields (see PrepareConfig.control)."""
    try:
        return template.format_map(fields)
    except KeyError as e:
        raise UserError(f"--control {template!r}: {where} has no field {e}; available: {', '.join(fields)}") from None
    except (ValueError, IndexError) as e:
        raise UserError(f"--control {template!r} is not a valid template ({e}); write fields as {{name}}") from None


def _chunks(text: str, size: int = 1 << 16) -> list[str]:
    """Split text at line ends into pieces of about ``size`` characters, for parallel encoding."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def encode_documents(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    """Encode documents into one int64 id stream, with ``eot_id`` between documents."""
    parts: list[np.ndarray] = []
    sep = np.array([tok.eot_id], dtype=np.int64)
    for i, doc in enumerate(docs):
        if i:
            parts.append(sep)
        if hasattr(tok, "encode_array"):
            parts.append(tok.encode_array(doc))
        elif hasattr(tok, "encode_batch"):
            ids = tok.encode_batch(_chunks(doc))
            parts.append(np.fromiter((t for c in ids for t in c), dtype=np.int64))
        else:
            parts.append(np.asarray(tok.encode(doc), dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def prepare(cfg: PrepareConfig) -> dict:
    """Run the whole preparation; returns the metadata written to ``meta.json``."""
    cfg.validate()
    t0 = time.perf_counter()
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / META_FILE).exists())):
        raise UserError(f"output folder {out} exists and is not an arlm data folder; choose a new --out")
    files = collect_files(cfg.inputs, cfg.glob)
    docs, controls = [], set()
    for doc, fields in iter_documents(files, cfg.jsonl_field, cfg.errors):
        if doc and cfg.control:  # conditional training: the code opens the document (CTRL, Keskar et al. 2019)
            code = control_code(cfg.control, fields, fields.get("name", "a document"))
            controls.add(code)
            doc = code + doc
        if doc:
            docs.append(doc)
    n_chars = sum(len(d) for d in docs)
    if n_chars == 0:
        raise UserError(f"the corpus is empty: {len(files)} input file(s) contain no text")
    log.debug("read %d documents, %d characters from %d files", len(docs), n_chars, len(files))

    tok = train_tokenizer(cfg.tokenizer, docs, cfg.vocab_size)
    ids = encode_documents(tok, docs)
    n_val = int(round(len(ids) * cfg.val_fraction))
    if n_val < 2 or len(ids) - n_val < 2:
        raise UserError(
            f"the corpus is too small to split: {len(ids)} tokens with --val-fraction {cfg.val_fraction}; "
            f"add more text or change --val-fraction"
        )
    dtype = token_dtype(tok.vocab_size)
    train_ids, val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
    meta = {
        "format": FORMAT_VERSION,
        "tokenizer": tok.kind,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": dtype.name,
        "train_tokens": int(len(train_ids)),
        "val_tokens": int(len(val_ids)),
        "documents": len(docs),
        "characters": n_chars,
        "val_fraction": cfg.val_fraction,
        "split": "tail",
        "sources": [str(f) for f in files],
    }
    if cfg.control:
        meta["control"] = cfg.control
        meta["controls"] = sorted(controls)[:10_000]
    with atomic_dir(out) as tmp:
        train_ids.astype(dtype).tofile(tmp / "train.bin")
        val_ids.astype(dtype).tofile(tmp / "val.bin")
        tok.save(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    return meta
