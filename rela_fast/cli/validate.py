"""Argument checks shared by the subcommands: each bad value becomes one line naming the argument.

Two kinds of check:

* ``type=`` callables for argparse (:func:`integer`, :func:`real`, :func:`fraction`, :func:`device`,
  :func:`out_path`): they look at the text alone and raise ``argparse.ArgumentTypeError``, which the CLI's
  parser prints as ``rela-fast CMD: error: argument --x: ...`` on one line, exit 2.
* run-time checks that look at the machine (:func:`check_device`, :func:`check_run_dir`): they raise
  :class:`~rela_fast.errors.UserError`.

Non-finite numbers are never accepted: ``nan`` and ``inf`` parse as floats but are not settings.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from rela_fast.errors import UserError
from rela_fast.paths import output_problem
from rela_fast.runlock import RUN_MARKER

# A folder that holds one of these was written by a rela_fast run (RUN_MARKER since this version;
# the others for runs made before it existed), so a new run may resume in it or replace its files.
RUN_FILES = (RUN_MARKER, "checkpoint.pt", "metrics.jsonl", "summary.json")
# Paths that are never an output folder: the file-system root and the kernel's virtual file systems.
MAX_IMAGE_SIZE = 4096  # training/eval side in pixels; 4096^2 x 3 bytes is already 48 MiB per image


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[lo, hi]`` (either bound optional)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        _check_range(value, lo, hi, False, False, text)
        return value

    parse.__name__ = "integer"
    return parse


def real(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
         hi_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in the range (``lo_open``/``hi_open`` exclude the bound)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        _check_range(value, lo, hi, lo_open, hi_open, text)
        return value

    parse.__name__ = "number"
    return parse


def _check_range(value: float, lo, hi, lo_open: bool, hi_open: bool, text: str) -> None:
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    high_bad = hi is not None and (value >= hi if hi_open else value > hi)
    if low_bad or high_bad:
        left = "-inf" if lo is None else f"{lo}"
        right = "inf" if hi is None else f"{hi}"
        interval = f"{'(' if lo_open or lo is None else '['}{left}, {right}{')' if hi_open or hi is None else ']'}"
        raise argparse.ArgumentTypeError(f"{text} is outside {interval}")


fraction = real(0.0, 1.0, hi_open=True)
"""An argparse type: a fraction in ``[0, 1)`` (e.g. the warm-up share of the steps)."""


def device(text: str) -> str:
    """An argparse type: ``cpu``, ``cuda`` or ``cuda:N`` (availability is checked at run time)."""
    if re.fullmatch(r"cpu|cuda(:\d+)?", text.strip()) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device this tool runs on; use cpu, cuda or cuda:N")
    return text.strip()


def check_device(text: str | None) -> str:
    """The device to run on: ``text`` (checked: CUDA must be present) or cuda when available, else cpu."""
    import torch

    if text is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    text = device(text) if isinstance(text, str) else str(text)
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {text}: no CUDA device is available here; use --device cpu")
        index = int(text.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def out_path(text: str) -> str:
    """An argparse type for an output folder: not empty, not ``/``, not under /proc, /sys or /dev."""
    problem = output_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return text


def is_run_dir(path: Path, names: Iterable[str] = RUN_FILES) -> bool:
    """True when ``path`` is a training run's folder that rela_fast made: its manifest lists every file in
    it with a matching size and hash (:mod:`rela_fast.outputs`); a file's name alone proves nothing."""
    from rela_fast.train.guards import run_is_ours

    return run_is_ours(path)


def check_run_dir(path: str | os.PathLike, option: str = "--out", names: Iterable[str] = RUN_FILES) -> Path:
    """Refuse an output folder that would mix a new run with someone else's files.

    Allowed: a path that does not exist yet (its parent must be a writable folder), an empty folder, or a
    folder an earlier rela_fast run wrote, proven by its manifest (:func:`is_run_dir`). Refused: a file, a
    folder holding any file rela_fast did not write, a parent that is a file, and a folder this user cannot
    write. ``path/..`` is resolved first where ``path`` does not exist (nothing is created on the way).
    """
    from rela_fast.outputs import normalize_out

    p = normalize_out(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{option} {path}: is a file, not a folder; give a new or an empty folder")
    if p.is_dir():
        if any(True for _ in p.iterdir()) and not is_run_dir(p, names):
            from rela_fast.outputs import check_claim
            from rela_fast.train.guards import RUN_KIND, lock_file_entry

            why = check_claim(p, RUN_KIND, also_ours=lock_file_entry) or f"{path}: changed while it was checked"
            raise UserError(f"{option} {why}")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"{option} {path}: the folder is not writable; give a folder you can write")
        return p
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, so the folder cannot be made; give another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot create it, {parent} is not writable; give a folder you can write")
    return p
