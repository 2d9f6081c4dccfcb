"""Output paths, checked before any work starts: what may be written where.

Every verb that writes resolves its outputs here first, so a bad output is refused in one line
before a model is trained or a prediction generated: a file where a folder is wanted (or the other
way round), a folder that cannot be written (read-only, no permission), an output that is one of
the inputs or contains them. Links are resolved once (:func:`arlm.io.atomic.resolve`): a symlinked
output is written where it points.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from arlm.errors import UserError
from arlm.io.atomic import resolve


def is_within(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved)."""
    p, f = resolve(path), resolve(folder)
    return p == f or f in p.parents


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: str | Path, flag: str) -> None:
    """``path`` (a file or folder to be created or replaced) can be written: the nearest folder that
    exists on its way is a folder this process may write."""
    target = resolve(path)
    where = _existing_ancestor(target if target.is_dir() else target.parent)
    if not where.is_dir():
        raise UserError(f"cannot write {flag} {path}: {where} is a file, not a folder")
    if not os.access(where, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(where).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        why = "is on a read-only file system" if read_only else "is not writable (permission denied)"
        raise UserError(f"cannot write {flag} {path}: {where} {why}; choose another location")


def output_dir(path: str | Path, flag: str = "--out", replace_whole: bool = False) -> Path:
    """The folder an output goes to (links followed): refused if it is a file or cannot be written.
    ``replace_whole``: the folder is swapped in whole, so its parent must be writable too."""
    target = resolve(path)
    if target.exists() and not target.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; choose a folder")
    check_writable(target.parent if replace_whole else target, flag)
    return target


def output_file(path: str | Path, flag: str, inputs: Iterable[tuple[str, str | Path]] = (),
                input_folders: Iterable[tuple[str, str | Path]] = ()) -> Path:
    """The file an output goes to (links followed). Refused if it is a folder, if its folder does not
    exist or cannot be written, if it is one of ``inputs`` or lies inside one of ``input_folders``
    (each given as (what, path))."""
    target = resolve(path)
    if target.is_dir():
        raise UserError(f"{flag} {path} is a folder; give the name of a file to write")
    if not target.parent.is_dir():
        raise UserError(f"the folder of {flag} {path} does not exist; create it first")
    for what, p in inputs:
        if p and resolve(p) == target:
            raise UserError(f"{flag} {path} is the {what} being read; write to another file")
    for what, folder in input_folders:
        if folder and is_within(target, folder):
            raise UserError(f"{flag} {path} is inside the {what} {folder}; write it somewhere else")
    check_writable(target, flag)
    return target


def check_apart(out: str | Path, source: str | Path, flag: str = "--out", what: str = "source") -> None:
    """Refuse an output folder that is the ``source`` folder, contains it or lies inside it (replacing
    it would delete the source, or the source would be read while it is replaced)."""
    o, s = resolve(out), resolve(source)
    if o == s:
        raise UserError(f"{flag} {out} is the {what} folder itself; choose another folder")
    if s in o.parents:
        raise UserError(f"{flag} {out} is inside the {what} folder {source}; choose a folder outside it")
    if o in s.parents:
        raise UserError(f"{flag} {out} contains the {what} folder {source}, which replacing it would delete; "
                        f"choose a folder that does not contain it")
