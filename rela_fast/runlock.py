"""An exclusive lock on an output path, held for a whole run: two runs never write one place.

``flock`` on a lock file (released by the kernel when the process dies, so a crash never leaves a stale
lock behind). The lock file is not deleted on release: deleting it would let a third process lock a new
file of the same name while a second one still holds the old one. Where ``fcntl`` is missing (not
POSIX) there is no locking.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from rela_fast.errors import UserError


class RunLock:
    """``RunLock(lock_file, busy_message)``: :meth:`acquire` raises UserError(busy_message) when taken."""

    def __init__(self, lock_file: str | os.PathLike, busy_message: str) -> None:
        self.path = Path(lock_file)
        self.busy_message = busy_message
        self._file = None

    def try_acquire(self) -> str | None:
        """None when acquired (or locking is unavailable), else the busy message (for collective errors)."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return self.busy_message
        self._file = f
        return None

    def acquire(self) -> RunLock:
        message = self.try_acquire()
        if message is not None:
            raise UserError(message)
        return self

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


RUN_MARKER = ".rela_fast_run"
"""The lock file of a training run's folder; it stays, and marks the folder as a rela_fast run."""
