"""Reading the files arlm is given: bytes, JSON and JSONL, each failure one UserError naming the file.

What a file must hold is checked by the typed readers of :mod:`arlm.io.schema`; this module only
gets the bytes and the JSON values out safely: a missing path, a folder where a file was expected,
unreadable permissions, bytes that are not UTF-8, malformed or absurdly nested JSON and strings
that are not valid Unicode all become one line, and nothing is read without a size bound.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arlm.errors import UserError
from arlm.io.text import ERRORS, check_strings, decode_utf8

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # Python 3.10: the same parser, packaged as tomli
    import tomli as tomllib

MAX_JSON_BYTES = 512 << 20  # a metadata file beyond this is not one arlm wrote or can use (tokenizers are ~10 MB)


def read_bytes(path: str | Path, what: str = "file", limit: int | None = None) -> bytes:
    """The bytes of a regular file; a missing path, a folder, a device or an unreadable file is a UserError."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} not found: {p}")
    if p.is_dir():
        raise UserError(f"{p} is a folder, not a {what}")
    if not p.is_file():
        raise UserError(f"{p} is not a regular file (a {what} was expected)")
    try:
        if limit is not None and p.stat().st_size > limit:
            raise UserError(f"{p} is {p.stat().st_size:,} bytes, too large for a {what} (at most {limit:,})")
        return p.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {p}: {e.strerror or e}") from None


def read_text_file(path: str | Path, errors: str = "strict", what: str = "file") -> str:
    """A UTF-8 text file's contents; a missing, unreadable or non-UTF-8 file is a UserError naming it."""
    return decode_utf8(read_bytes(path, what), str(path), errors)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML config file's keys (what they must be is checked by the config classes of arlm/config.py)."""
    text = read_text_file(path, what="config file")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None


def parse_json(text: str, source: str, fix: str = "", errors: str = "strict", hint: str = "") -> Any:
    """A JSON value from ``text``; malformed or absurdly nested JSON, and strings that are not valid
    Unicode (replaced by U+FFFD with ``errors="replace"``), are a UserError naming ``source``."""
    tail = f"; {fix}" if fix else ""
    if not text.strip():
        raise UserError(f"{source} is empty (not valid JSON){tail}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{source}: not valid JSON ({e}){tail}") from None
    except RecursionError:
        raise UserError(f"{source}: not valid JSON (nested too deeply){tail}") from None
    return check_strings(value, source, errors, hint)


def read_json(path: str | Path, fix: str = "", expect: type | None = dict) -> Any:
    """Parse a JSON file (``expect``: the type its top level must have, by default an object); a
    missing or damaged file is a UserError that ends with ``fix``."""
    p = Path(path)
    if not p.exists() and fix:
        raise UserError(f"{p} is missing; {fix}")
    text = decode_utf8(read_bytes(p, "JSON file", MAX_JSON_BYTES), str(p))
    value = parse_json(text, str(p), fix)
    if expect is not None and not isinstance(value, expect):
        kind = {dict: "a JSON object ({...})", list: "a JSON list ([...])"}.get(expect, expect.__name__)
        raise UserError(f"{p} must hold {kind}, found {type(value).__name__}" + (f"; {fix}" if fix else ""))
    return value


def read_jsonl(path: str | Path, errors: str = "strict", hint: str = "") -> list[tuple[int, Any]]:
    """``(line number, record)`` for each non-blank line of a JSONL file. A malformed line, or text
    that is not valid Unicode (replaced by U+FFFD with ``errors="replace"``), is a UserError naming
    the line."""
    assert errors in ERRORS
    text = decode_utf8(read_bytes(path, "JSONL file"), str(path), errors)
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            records.append((n, parse_json(line, f"{path} line {n}", "each line must be one JSON object", errors, hint)))
    return records
