"""Where rela_fast may write: the checks every output path passes, in one place (convert, train, eval)."""

from __future__ import annotations

import os

VIRTUAL_ROOTS = ("/proc", "/sys", "/dev")  # kernel file systems: never an output


def output_problem(text: str) -> str | None:
    """Why ``text`` cannot name an output folder (empty, the file-system root, inside a kernel file system),
    or None when it may (further checks, such as writability, belong to the caller)."""
    if not text or not text.strip():
        return "empty; give the folder to write to"
    resolved = os.path.realpath(os.path.abspath(os.path.expanduser(text)))
    if resolved == os.path.sep:
        return "is the file-system root; give a folder of its own"
    for root in VIRTUAL_ROOTS:
        if resolved == root or resolved.startswith(root + os.path.sep):
            return f"lies in {root}, a kernel file system; choose a folder on disk"
    return None
