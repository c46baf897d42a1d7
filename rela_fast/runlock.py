"""An exclusive lock on an output path, held for a whole run: two runs never write one place.

``flock`` on a lock file (released by the kernel when the process dies, so a crash never leaves a stale
lock behind). Two kinds, one class:

* a *kept* lock file (``RunLock(path, busy)``): a training run's ``.rela_fast_run``. It stays after the
  run and marks the folder as a rela_fast run; it is never deleted (deleting it would let a third process
  lock a new file of the same name while a second one still holds the old one).
* an *owned* lock file (``RunLock(path, busy, owned_text=...)``): convert's ``<out>.lock`` beside the
  store. rela_fast writes ``owned_text`` into the file it creates and removes that file at the end; a
  user's file of that name is locked (flock changes nothing in it) and left exactly as it was.

Where ``fcntl`` is missing (not POSIX) there is no locking.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from rela_fast.errors import UserError


class RunLock:
    """:meth:`try_acquire` returns the busy message when the lock is taken; :meth:`acquire` raises it."""

    def __init__(self, lock_file: str | os.PathLike, busy_message: str, *, owned_text: str | None = None) -> None:
        self.path = Path(lock_file)
        self.busy_message = busy_message
        self.owned_text = owned_text
        self._fd: int | None = None
        self._ours = False  # remove the file on release (an owned lock whose file holds owned_text)

    def try_acquire(self) -> str | None:
        """None when acquired (or locking is unavailable), else why not (one line, for collective errors)."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
            return f"{self.path}: exists and is not a lock file rela_fast made; move it away or choose another output"
        try:
            fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            fd, created = os.open(self.path, os.O_RDWR), False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return self.busy_message
        self._fd = fd
        if self.owned_text is not None:
            text = self.owned_text.encode()
            if created:
                os.write(fd, text)
            self._ours = created or os.pread(fd, len(text) + 1, 0) == text  # ours, left by a killed run
        return None

    def acquire(self) -> RunLock:
        message = self.try_acquire()
        if message is not None:
            raise UserError(message)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        if self._ours:
            with contextlib.suppress(OSError):
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd, self._ours = None, False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


RUN_MARKER = ".rela_fast_run"
"""The lock file of a training run's folder; it stays, and marks the folder as a rela_fast run."""
