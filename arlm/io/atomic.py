"""Atomic writes: a reader never sees a half-written file or folder, and a killed writer leaves
nothing that the next writer does not clean up.

A file is written to a temporary name in the same folder and renamed over the target
(``os.replace`` is atomic on POSIX and Windows). A folder is built under a temporary name and
swapped in; if the process dies between the two renames the previous folder survives as
``<name>.old`` and :func:`recover_dir` puts it back.

Temporary names carry the writer's process id, ``.<name>.<pid>.<random>.tmp``: a kill -9 during a
save leaves one behind, and the next write beside it removes those whose process is gone
(:func:`clean_stale`). Links are followed once: a symlinked output is written where it points, and
the link stays as it was. Files and folders get the usual permissions (``0666``/``0777`` less the
umask; an existing file keeps its own), whatever the library that wrote them chose.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from arlm.errors import EnvironmentFailure


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def resolve(path: str | Path) -> Path:
    """``path`` with every symlink followed (also a dangling one: the path it points to), absolute."""
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _fsync(path: str | Path, directory: bool = False) -> None:
    """Flush a file's data (or a folder's entries) to disk, so a rename after a power loss never
    exposes an empty file."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot sync folders; the data is still written
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OverflowError:
        return False
    return True


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def clean_stale(path: str | Path) -> list[Path]:
    """Remove the temporary files/folders that dead processes left beside ``path``; returns them."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^/]*\.tmp")
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m and not _alive(int(m.group(1))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
            removed.append(entry)
    return removed


def _mode(path: Path, default: int) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return default & ~umask()


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``, else removed."""
    path = resolve(path)
    clean_stale(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    except OSError as e:
        raise environment_failure(e, path) from None
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync(tmp)
        os.chmod(tmp, _mode(path, 0o666))  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException as e:
        failure = write_error(e, tmp) if isinstance(e, OSError) or _failed_write(e) else None  # before freeing the space
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if failure is not None:  # name the file being written, not its temporary name
            raise environment_failure(failure, path) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _failed_write(e: BaseException) -> bool:
    """A library's write error that is not an OSError (safetensors, torch.save)."""
    text = str(e)
    return type(e).__name__ == "SafetensorError" and "I/O error" in text or \
        isinstance(e, RuntimeError) and ("write failed" in text or "file write" in text)


def recover_dir(path: str | Path) -> None:
    """Finish an interrupted :func:`atomic_dir` swap: restore ``<path>.old`` if ``path`` is missing."""
    path = resolve(path)
    old = path.with_name(path.name + ".old")
    if old.is_dir() and not old.is_symlink():
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, path)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``path`` whole, on error it is removed."""
    path = resolve(path)
    tmp = _temp_dir_beside(path, ".tmp", recover=True)
    try:
        yield tmp
        file_mode, dir_mode = 0o666 & ~umask(), 0o777 & ~umask()
        for f in tmp.rglob("*"):  # libraries choose their own modes (safetensors writes 0600)
            if f.is_file() and not f.is_symlink():
                os.chmod(f, file_mode)
                _fsync(f)
            elif f.is_dir():
                os.chmod(f, dir_mode)
        os.chmod(tmp, dir_mode)  # mkdtemp makes 0700
        _fsync(tmp, directory=True)
        old = path.with_name(path.name + ".old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        failure = write_error(e, tmp) if isinstance(e, OSError) or _failed_write(e) else None  # before freeing the space
        shutil.rmtree(tmp, ignore_errors=True)
        if failure is not None:
            raise environment_failure(failure, path) from None
        raise


def _temp_dir_beside(path: Path, suffix: str, recover: bool = False) -> Path:
    """A new temporary folder next to ``path``, named so that :func:`clean_stale` removes it once this process
    is gone (after finishing a killed atomic write of ``path`` with ``recover``)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if recover:
            recover_dir(path)
        clean_stale(path)
        return Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=suffix))
    except OSError as e:
        raise environment_failure(e, path) from None


@contextlib.contextmanager
def scratch_dir(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``path`` for intermediate work (removed on exit, and, if this process dies,
    by the next writer of ``path``: it has the temporary files' name pattern)."""
    tmp = _temp_dir_beside(resolve(path), ".scratch.tmp")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _full(path: Path) -> bool:
    try:
        st = os.statvfs(path if path.is_dir() else path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 << 10


def write_error(e: BaseException, path: str | Path) -> OSError:
    """What a library's failed write really was, as an OSError: safetensors ("os error 28"), torch.save
    ("file write failed") and numpy ("N requested and M written") do not raise one with an errno."""
    if isinstance(e, OSError) and e.errno is not None:
        return e
    m = re.search(r"os error (\d+)", str(e))
    code = int(m.group(1)) if m else errno.ENOSPC if _full(Path(path)) else errno.EIO
    return OSError(code, os.strerror(code), str(path))


def environment_failure(e: OSError, path: str | Path | None = None) -> EnvironmentFailure:
    """An OSError as one line naming the path and the problem: "cannot write run/best: No space left on device"."""
    if path is not None:
        e = write_error(e, path)
    problem = e.strerror or str(e) or type(e).__name__
    if path is not None:
        return EnvironmentFailure(f"cannot write {path}: {problem}")
    return EnvironmentFailure(f"{e.filename}: {problem}" if e.filename else problem)
