"""``arlm prepare``: text files, folders, globs or JSONL -> tokenizer + ``train.bin``/``val.bin`` + ``meta.json``.

Each input file (or JSONL record) is one document; documents are joined with the tokenizer's
end-of-text id. The token stream is split at ``1 - val_fraction``: the end of the corpus is the
validation split (as nanoGPT does), so validation text is never seen in training. Token ids are
stored as little-endian uint16 when the vocabulary fits, else uint32.

The output folder is written whole and atomically (a kill leaves the previous preparation or the
new one, never a mix), and only a folder that holds nothing but prepare's own four files (an
earlier preparation) is replaced: anything else in it is the user's, and the command is refused.
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
from arlm.io.atomic import atomic_dir
from arlm.io.files import read_jsonl
from arlm.io.paths import output_dir
from arlm.io.files import read_text_file
from arlm.tokenizers import train_tokenizer
from arlm.tokenizers.base import TOKENIZER_FILE, Tokenizer

log = logging.getLogger(__name__)

META_FILE = "meta.json"
FORMAT_VERSION = 1
PREPARED_FILES = ("train.bin", "val.bin", META_FILE, TOKENIZER_FILE)  # everything prepare writes


def collect_files(inputs: list[str], pattern: str = "**/*.txt") -> list[Path]:
    """Expand inputs (files, folders searched with ``pattern``, glob patterns) into a sorted, de-duplicated list."""
    if not pattern or Path(pattern).is_absolute():
        raise UserError(f"--glob {pattern!r} must be a relative pattern such as '**/*.txt' (it is matched inside "
                        f"each input folder)")
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
        elif p.exists():
            raise UserError(f"input {item} is not a regular file or folder (a device, pipe or socket); give text files")
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


def iter_documents(files: list[Path], jsonl_field: str = "text", errors: str = "strict") -> Iterator[tuple[str, dict]]:
    """Yield ``(document, fields)`` for each file: the whole file with {"name": its stem}, or one per
    line of a ``.jsonl`` file with the record's fields."""
    for f in files:
        if f.suffix.lower() != ".jsonl":
            yield read_text_file(f, errors), {"name": f.stem}
            continue
        for n, rec in read_jsonl(f, errors, "pass --errors replace to substitute U+FFFD"):
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
    except (ValueError, IndexError, AttributeError) as e:
        raise UserError(f"--control {template!r} is not a valid template ({e}); write fields as {{name}}") from None
    except (OverflowError, MemoryError):
        raise UserError(f"--control {template!r} asks for a field width beyond memory; write fields as {{name}}") from None


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


def check_output(path: str) -> Path:
    """The output folder (links followed): new, empty, or an earlier preparation, which is replaced whole.
    A folder holding anything else is refused: those files are the user's."""
    out = output_dir(path, "--out", replace_whole=True)
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in PREPARED_FILES)
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise UserError(f"--out {path} holds files `arlm prepare` did not write ({shown}); prepare into a new or "
                            f"empty folder (prepare replaces only an earlier preparation: {', '.join(PREPARED_FILES)})")
    return out


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def write_prepared(out: Path, tok: Tokenizer, train_ids: np.ndarray, val_ids: np.ndarray, **fields) -> dict:
    """Write a prepared folder whole and atomically: the two token shards, the tokenizer and meta.json
    (the shards' format and sizes, then ``fields``); returns the metadata. Every modality's prepare ends here."""
    dtype = token_dtype(tok.vocab_size)
    meta = {"format": FORMAT_VERSION, "tokenizer": tok.kind, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id,
            "dtype": dtype.name, "train_tokens": int(len(train_ids)), "val_tokens": int(len(val_ids)), **fields}
    with atomic_dir(out) as tmp:
        train_ids.astype(dtype).tofile(tmp / "train.bin")
        val_ids.astype(dtype).tofile(tmp / "val.bin")
        tok.save(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    return meta


def prepare(cfg: PrepareConfig) -> dict:
    """Run the whole preparation; returns the metadata written to ``meta.json``."""
    cfg.validate()
    t0 = time.perf_counter()
    out = check_output(cfg.out)
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
    train_ids, val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
    extra = dict(control=cfg.control, controls=sorted(controls)[:10_000]) if cfg.control else {}
    meta = write_prepared(out, tok, train_ids, val_ids, documents=len(docs), characters=n_chars,
                          val_fraction=cfg.val_fraction, split="tail", sources=[str(f) for f in files], **extra)
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    return meta
