"""The CLI's edge: every failure becomes one line on stderr and an exit code.

* bad arguments (argparse), :class:`~rela_fast.errors.UserError`, and ``OSError`` (a full disk, a
  read-only file system, a missing or unreadable path): the user's input or environment, exit 2;
* Ctrl-C: exit 130;
* anything else is a bug in rela_fast: one line saying so, exit 1; ``RELA_FAST_DEBUG=1`` prints the
  traceback as well (for every kind of failure).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import traceback
from typing import NoReturn

from rela_fast.errors import UserError

DEBUG_ENV = "RELA_FAST_DEBUG"
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile() when the disk is full

_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space or write to another disk",
    errno.EDQUOT: "disk quota exceeded; free some space or write to another disk",
    errno.EROFS: "read-only file system; write to a writable folder",
    errno.EACCES: "permission denied; check the permissions or use another path",
    errno.EPERM: "operation not permitted; check the permissions or use another path",
    errno.ENOENT: "no such file or folder; check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "is a folder where a file was expected; check the path",
    errno.ENAMETOOLONG: "the file name is too long; use a shorter path",
}


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``PROG: error: MESSAGE (see PROG --help)``), exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def one_line(text: str) -> str:
    """``text`` as one line: a traceback re-raised by a DataLoader worker keeps only its last line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return ""
    if len(lines) == 1:
        return lines[0]
    last = lines[-1]
    if "Traceback" in text:  # "Caught X in DataLoader worker ... Original Traceback ...": the last line is X
        return re.sub(r"^[\w.]+(Error|Exception|Interrupt): ", "", last)
    return "; ".join(lines)


def describe_os_error(exc: OSError, args: argparse.Namespace | None = None) -> str:
    """One line for an OSError: the path (or the output folder it happened under) and what to do."""
    hint = _HINTS.get(exc.errno or -1)
    if hint is None and exc.errno is None and _SHORT_WRITE.search(str(exc)):  # numpy's write cut short by a full disk
        hint = _HINTS[errno.ENOSPC]
    what = hint or one_line(exc.strerror or str(exc)) or type(exc).__name__
    if exc.filename is not None:
        where = os.fsdecode(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {os.fsdecode(exc.filename2)}"
        return f"{where}: {what}"
    out = getattr(args, "out", None) if args is not None else None
    if out and hint:
        return f"--out {out}: {what}"
    return what if hint else one_line(str(exc)) or what


def report(exc: BaseException, args: argparse.Namespace) -> int:
    """Print ``exc`` as one line on stderr (plus the traceback under RELA_FAST_DEBUG=1); the exit code."""
    prog = f"rela-fast {getattr(args, 'command', '') or ''}".strip()
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, KeyboardInterrupt):
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    if isinstance(exc, UserError):
        print(f"{prog}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    if isinstance(exc, OSError):
        print(f"{prog}: error: {describe_os_error(exc, args)}", file=sys.stderr)
        return 2
    print(f"{prog}: internal error: {type(exc).__name__}: {one_line(str(exc))[:300]} (a bug in rela_fast; "
          f"rerun with {DEBUG_ENV}=1 for the traceback and report it)", file=sys.stderr)
    return 1
