"""One writer per database: an advisory lock on ``<db>.lock`` beside the database file.

Commands that write (scan, catalog add and remove, calibration) hold it for their whole run,
so two cron jobs on one database never interleave their runs. The lock is the kernel's
(``flock``): it goes with the process, also when the process is killed, so a stale lock
file never blocks the next run. The file names who holds it, for the error message.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from detector.errors import StoreError
from detector.storage.sql import utc_now

_POLL_S = 0.2


class Locked(StoreError):
    """Another process holds the database's lock."""


class DatabaseLock:
    """``with DatabaseLock(db, "scan"):`` holds the lock of ``db`` or raises :class:`Locked`,
    after waiting up to ``wait`` seconds for it to be released."""

    def __init__(self, db: str | Path, command: str, wait: float = 0.0) -> None:
        # Keyed on the real file: a second name for the database (a symlink, another relative
        # path) must meet the same lock.
        self.database = Path(os.path.realpath(db))
        self.path = Path(f"{self.database}.lock")
        self.command = command
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> DatabaseLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise StoreError(f"cannot lock {self.database}: {self.path}: {e.strerror or e}") from e
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read(fd)
                    os.close(fd)
                    raise Locked(
                        f"{self.database} is in use by another copyscan run"
                        f"{f' ({holder})' if holder else ''}; try again later"
                    ) from None
                time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {self.command} since {utc_now()}".encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
