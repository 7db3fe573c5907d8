"""One ledger per SQLite file: an exclusive ``flock`` on ``<file>.lock`` for the service's life.

Two ledgers on one file corrupt the books (each caches accounts and positions and overwrites the
other's rows; issue 14). Each replica has its own file (``LEDGER_DB_PATH``) and its own consumer
(``LEDGER_INSTANCE``); a second ledger started on a file another ledger holds is refused at start with
the holder's pid. The kernel drops the lock when its process dies (kill -9 included): nothing to clean.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class FileInUse(RuntimeError):
    """Another ledger holds the file."""


class FileLock:
    """``take()`` the lock (or :class:`FileInUse`), ``release()`` it."""

    def __init__(self, db_path: str | Path) -> None:
        db = Path(db_path)
        self.path = db.with_name(db.name + ".lock")
        self._fd: int | None = None

    def take(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FileInUse(
                f"another ledger (pid {holder}) writes {self.path.name.removesuffix('.lock')}: each ledger "
                "replica needs its own LEDGER_DB_PATH"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
