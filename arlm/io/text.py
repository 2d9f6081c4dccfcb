"""Text entering arlm: one policy for every place it comes in (files, JSONL records, flags, the API).

Text must be valid Unicode that UTF-8 can encode. Python strings can hold lone surrogate halves
(U+D800..U+DFFF): JSON's ``"\\ud800"`` escape produces one, and so do undecodable bytes in argv or
on stdin (PEP 383). Tokenizers cannot encode them and files cannot store them, so they are refused
where the text enters, naming the place; where a verb has ``--errors replace``, they become U+FFFD
instead, as undecodable bytes in a text file do.
"""

from __future__ import annotations

import re
from typing import Any

from arlm.errors import UserError

SURROGATE = re.compile("[\ud800-\udfff]")
ERRORS = ("strict", "replace")


def check_text(text: Any, where: str, errors: str = "strict", hint: str = "") -> str:
    """``text`` if it is a str UTF-8 can encode; with ``errors="replace"`` lone surrogates become
    U+FFFD. Otherwise a UserError naming ``where`` (and adding ``hint``, e.g. how to replace them)."""
    if not isinstance(text, str):
        raise UserError(f"{where} must be text (a string), got {type(text).__name__}")
    bad = SURROGATE.search(text)
    if bad is None:
        return text
    if errors == "replace":
        return SURROGATE.sub("\ufffd", text)
    raise UserError(f"{where} is not valid Unicode: U+{ord(bad.group()):04X} at character {bad.start()} is half of a "
                    f"surrogate pair (from a JSON \\u escape, or bytes that are not UTF-8); fix the text"
                    + (f", or {hint}" if hint else ""))


def check_strings(value: Any, where: str, errors: str = "strict", hint: str = "") -> Any:
    """:func:`check_text` on every string inside a JSON value (keys included); returns the value,
    with replacements made when ``errors="replace"``."""
    if isinstance(value, str):
        return check_text(value, where, errors, hint)
    if isinstance(value, list):
        return [check_strings(v, where, errors, hint) for v in value]
    if isinstance(value, dict):
        return {check_text(k, where, errors, hint): check_strings(v, where, errors, hint) for k, v in value.items()}
    return value


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

