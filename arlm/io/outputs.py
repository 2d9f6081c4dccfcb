"""What a verb may replace: the one guard every verb that writes goes through, before any work.

The rule (docs/reliability.md, "What each verb may write, and what it may replace"):

- an output is never an input: not one of the files read, not inside a folder read (a model, data);
- an output that exists is replaced only when arlm wrote it *for the same purpose* (a plot of
  ``arlm inspect attention`` by ``arlm inspect attention``), or, where a verb has ``--overwrite``,
  when it is a file of the kind the verb writes (a PNG for a PNG, a GGUF file for a GGUF file);
  anything else (a user's notes, a model's weights) is refused, ``--overwrite`` or not;
- a companion file (the PNG written beside a CSV or a WAV) is checked like the named output;
- a folder that is replaced whole holds only what arlm writes into it, or it is refused, naming
  the files that are not arlm's.

How arlm's own files are recognised: a PNG carries the standard ``Software`` text chunk
("arlm VERB", the PNG specification's keyword for the program that made the image), a WAV the
RIFF INFO ``ISFT`` field (the same, in RIFF's words), a CSV arlm's own header line, a model folder
only the files a model folder holds. Files written by an older arlm carry no mark: ``--overwrite``
(where the verb has it) or another name.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from arlm.errors import UserError
from arlm.io.atomic import resolve
from arlm.io.paths import check_writable, is_within, output_dir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_CHUNKS = 256  # chunks read looking for a mark before giving up (arlm writes it among the first few)


def software(verb: str) -> str:
    """The mark arlm writes into a file made by ``arlm VERB``."""
    return f"arlm {verb}"


def _head(path: Path, n: int = 16) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def png_text(path: Path) -> dict[str, str]:
    """A PNG's ``tEXt`` chunks before its image data (keyword -> text); {} for anything that is not a PNG."""
    out: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            if f.read(8) != PNG_SIGNATURE:
                return out
            for _ in range(MAX_CHUNKS):
                header = f.read(8)
                if len(header) < 8:
                    break
                length, kind = struct.unpack(">I4s", header)
                if kind in (b"IDAT", b"IEND"):
                    break
                if kind == b"tEXt" and length <= 1 << 16:
                    key, _, value = f.read(length).partition(b"\0")
                    out[key.decode("latin-1")] = value.decode("latin-1")
                    f.seek(4, os.SEEK_CUR)  # CRC
                else:
                    f.seek(length + 4, os.SEEK_CUR)
    except (OSError, struct.error):
        pass
    return out


def wav_software(path: Path) -> str:
    """A WAV file's RIFF INFO ``ISFT`` (the program that wrote it), or ""."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return ""
            for _ in range(MAX_CHUNKS):
                header = f.read(8)
                if len(header) < 8:
                    break
                kind, size = struct.unpack("<4sI", header)
                if kind == b"LIST" and size <= 1 << 16:
                    body = f.read(size)
                    pos = 4 if body[:4] == b"INFO" else len(body)
                    while pos + 8 <= len(body):
                        sub, n = struct.unpack("<4sI", body[pos:pos + 8])
                        if sub == b"ISFT":
                            return body[pos + 8:pos + 8 + n].split(b"\0")[0].decode("latin-1")
                        pos += 8 + n + (n & 1)
                    if size & 1:
                        f.seek(1, os.SEEK_CUR)
                else:
                    f.seek(size + (size & 1), os.SEEK_CUR)
    except (OSError, struct.error):
        pass
    return ""


def _first_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 16).split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
    except OSError:
        return ""


def _is_onnx(path: Path) -> bool:
    """An ONNX model: protobuf whose first field is ``ir_version`` (tag 0x08), which the onnx package reads."""
    if _head(path, 1) != b"\x08":
        return False
    try:
        import onnx

        onnx.load_model(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any failure to parse means "not an ONNX model"
        return False
    return True


@dataclass(frozen=True)
class Kind:
    """A kind of file a verb writes: its name in messages (with its article) and how it is recognised."""

    name: str
    suffix: str
    test: Callable[[Path], bool]
    mark: Callable[[Path], str] = lambda path: ""  # the program that wrote it, where the format records one


PNG = Kind("a PNG image", ".png", lambda p: _head(p, 8) == PNG_SIGNATURE, lambda p: png_text(p).get("Software", ""))
WAV = Kind("a WAV file", ".wav", lambda p: _head(p, 12)[:4] == b"RIFF" and _head(p, 12)[8:12] == b"WAVE", wav_software)
CSV = Kind("a CSV table", ".csv", lambda p: bool(_first_line(p)) and b"\0" not in _head(p, 4096))
GGUF = Kind("a GGUF file", ".gguf", lambda p: _head(p, 4) == b"GGUF")
ONNX = Kind("an ONNX model", ".onnx", _is_onnx)


def _json_lines(path: Path, keys: frozenset[str], limit: int = 1 << 30) -> bool:
    """Every line of ``path`` a JSON object with exactly ``keys`` (a file arlm wrote as JSON Lines)."""
    import json

    try:
        if path.stat().st_size > limit:
            return False
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return bool(lines) and all(isinstance(r := json.loads(ln), dict) and set(r) == keys for ln in lines)
    except (OSError, ValueError, RecursionError):
        return False


JSONL = Kind("a JSON Lines file", ".jsonl", lambda p: b"\0" not in _head(p, 4096))


@dataclass(frozen=True)
class Output:
    """A file one verb writes: its kind, the verb (whose mark it carries), and where the format has no
    place for a mark, what arlm's own looks like: a CSV's header line, or the keys of every JSON line."""

    kind: Kind
    verb: str
    header: str = ""
    keys: frozenset[str] = frozenset()

    def ours(self, path: Path) -> bool:
        """Whether ``path`` is this verb's own earlier output (then it may be replaced without asking)."""
        if self.keys:
            return _json_lines(path, self.keys)
        if self.header:
            return self.kind.test(path) and _first_line(path) == self.header
        mark = self.kind.mark(path)
        return mark == software(self.verb) or mark.startswith(software(self.verb) + " (")  # libsndfile adds "(its name)"


def _shown(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_not_input(target: Path, flag: str, shown: str | Path, inputs: Iterable[tuple[str, str | Path]],
                    input_folders: Iterable[tuple[str, str | Path]]) -> None:
    """An output is never one of the files read, nor inside a folder read."""
    for what, p in inputs:
        if p and resolve(p) == target:
            raise UserError(f"{flag} {shown} is the {what} being read; write to another file")
    for what, folder in input_folders:
        if folder and Path(folder).exists() and is_within(target, folder):
            raise UserError(f"{flag} {shown} is inside the {what} {folder}; write it somewhere else")


def check_existing(label: str, what: Output, target: Path, overwrite: bool | None, replace_own: bool = True) -> None:
    """``target`` exists: allowed when it is the verb's own earlier output (``replace_own``), or with
    ``overwrite`` a file of the verb's kind; refused otherwise, saying why and what would be allowed
    (``overwrite`` None: the verb has no --overwrite)."""
    if replace_own and what.ours(target):
        return
    if not what.kind.test(target):
        raise UserError(f"{label} exists and is not {what.kind.name}; arlm will not replace it: choose another name")
    if overwrite:
        return
    if not replace_own:
        raise UserError(f"{label} already exists; choose another name or add --overwrite to replace it")
    again = ", or add --overwrite to replace it" if overwrite is not None else ""
    raise UserError(f"{label} exists and was not written by `arlm {what.verb}`; choose another name{again}")


def claim_file(path: str | Path, flag: str, what: Output, *, inputs: Iterable[tuple[str, str | Path]] = (),
               input_folders: Iterable[tuple[str, str | Path]] = (), overwrite: bool | None = None,
               replace_own: bool = True, companions: Iterable[tuple[Path | str, Output]] = ()) -> Path:
    """The file ``flag`` names (links followed), checked before any work: not a folder, in a folder
    that exists and can be written, not an input, and, if it exists, replaceable under the rule of
    this module. ``overwrite``: the verb's --overwrite (None: it has none). ``replace_own``: False
    for outputs that are replaced only with --overwrite (exported models), even arlm's own.
    ``companions``: (path, Output) of the files written beside it, checked the same way."""
    target = resolve(path)
    items = [(target, str(path), what)] + [(resolve(p), str(p), o) for p, o in companions]
    for i, (t, shown, o) in enumerate(items):
        label = f"{flag} {shown}" if i == 0 else f"{shown} (written beside {flag} {path})"
        if t.is_dir():
            raise UserError(f"{label} is a folder; give the name of a file to write")
        if not t.parent.is_dir():
            raise UserError(f"the folder of {flag} {path} does not exist; create it first")
        check_not_input(t, flag, shown, inputs, input_folders)
        if t.exists() and not t.is_file():  # a device or a pipe: nothing to read a mark from, nothing to replace
            raise UserError(f"{label} is not a regular file (a device, pipe or socket); name a file to write")
        if t.exists():
            check_existing(label, o, t, overwrite, replace_own)
        check_writable(t, flag)
    return target


def claim_dir(path: str | Path, flag: str, verb: str, own: Callable[[Path], bool], *, overwrite: bool | None = None,
              what: str = "") -> Path:
    """A folder that is replaced whole (links followed): new, empty, or holding only entries for which
    ``own(entry)`` holds (what ``arlm VERB`` writes there), which ``--overwrite`` must confirm where
    the verb has it (``overwrite`` not None). Anything else in it is the user's: refused, naming it."""
    target = output_dir(path, flag, replace_whole=True)
    if not target.is_dir():
        return target
    entries = sorted(target.iterdir())
    foreign = [e.name + ("/" if e.is_dir() else "") for e in entries if not own(e)]
    if foreign:
        keeps = f" (it replaces only a folder holding {what})" if what else ""
        raise UserError(f"{flag} {path} holds files `arlm {verb}` did not write ({_shown(foreign)}); choose a new or "
                        f"empty folder{keeps}")
    if entries and overwrite is False:
        raise UserError(f"{flag} {path} already exists; choose another folder or add --overwrite to replace it")
    return target


# The files a model folder holds: what arlm writes (an arlm checkpoint, a Hugging Face export) and what
# Hugging Face folders carry beside them. A folder holding only these may be replaced by a model.
MODEL_FILES = frozenset({
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
    "pytorch_model.bin.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "trainer_state.pt", "spiece.model", "tokenizer.model",
})
_SHARD = re.compile(r"(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)")


def model_file(entry: Path) -> bool:
    """Whether ``entry`` is a file a model folder holds (weights, config, tokenizer), not a user's."""
    named = entry.name in MODEL_FILES or bool(_SHARD.fullmatch(entry.name))
    return named and entry.is_file() and not entry.is_symlink()


def claim_model_dir(path: str | Path, flag: str, verb: str, overwrite: bool) -> Path:
    """A folder a model is written to whole: new, empty, or (with ``overwrite``) one holding only a model's files."""
    return claim_dir(path, flag, verb, model_file, overwrite=overwrite,
                     what="a model: weights, config and tokenizer files")


def safe_name(name: str, fallback: str = "series") -> str:
    """``name`` (from data: a CSV column, a class) as one file name: no folders, no hidden or special names."""
    cleaned = re.sub(r"[^\w.+-]+", "_", name).strip("._")[:100]
    return cleaned or fallback
