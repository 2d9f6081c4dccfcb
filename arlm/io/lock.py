"""An exclusive lock on an output folder, so two processes never write one run at once.

The lock is ``FOLDER/.lock``, holding the holder's process id, locked with ``flock``: the kernel
releases it when the holder exits, however it exits (kill -9 included), so a lock left by a dead
process is simply taken over. The file is removed on release; a process that finds the file
replaced between opening and locking it (someone released and another took it) tries again.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from arlm.errors import UserError
from arlm.io.atomic import environment_failure

LOCK_FILE = ".lock"


class RunLock:
    """``with RunLock(folder):`` holds the folder's lock; a second holder gets a UserError naming the first."""

    def __init__(self, folder: str | Path, what: str = "another arlm process"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self.fd: int | None = None

    def _holder(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def acquire(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise environment_failure(e, self.folder) from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise environment_failure(e, self.path) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise environment_failure(e, self.path) from None
                raise UserError(f"{self.folder} is in use by process {self._holder()} ({self.what}); wait for it to "
                                f"finish, stop it, or choose another output folder") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # released and removed while we opened it: lock the new file
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)  # closing releases the flock
        self.fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
