"""Checkpoints that a SIGKILL cannot corrupt and that load with ``torch.load(weights_only=True)``.

Write: ``torch.save`` to a temporary file in the same directory, flush + ``fsync``, ``os.replace`` onto
the final name (atomic on POSIX), then ``fsync`` the directory so the rename itself is durable. A kill at
any moment leaves either the previous checkpoint or the new one, never a torn file (a stale ``.tmp``
may remain; the next run removes it, under its lock: :func:`remove_stale_tmp`). Non-finite weights are
never written over a good checkpoint.

Content must be tensors and plain Python values (dict, list, tuple, str, int, float, bool, None): no
pickled objects, so loading never executes code; :func:`~rela_fast.models.check_plain` enforces it at save
time. Loading lives in :mod:`rela_fast.models.checkpoint` (below both the encoder and the trainer).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any

import torch

from rela_fast.errors import UserError
from rela_fast.models.checkpoint import MODEL_KEYS, check_plain
from rela_fast.outputs import OutputDir, claimed_for, no_space


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)




def tmp_path(path: str | os.PathLike) -> Path:
    """The temporary file :func:`save_checkpoint` writes before renaming it onto ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def remove_stale_tmp(path: str | os.PathLike) -> bool:
    """Delete ``path``'s temporary file left by a run that was killed while saving; True if there was one.

    Call it only while holding the run's lock (no other process can be writing it then). Only a file or a
    symlink with exactly that name is removed (a symlink's target is never touched, and the next save
    cannot write through it); a folder of that name is left alone.
    """
    tmp = tmp_path(path)
    if not tmp.is_symlink() and not tmp.is_file():
        return False
    tmp.unlink()
    return True


def _check_finite(state: dict[str, Any], path: Path) -> None:
    """Refuse to write non-finite model weights: the previous (good) checkpoint stays in place."""
    for key in MODEL_KEYS:
        part = state.get(key)
        if not isinstance(part, dict):
            continue
        for name, t in part.items():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise UserError(f"{path}: not saved, {key}.{name} holds NaN or inf (the training diverged); the "
                                "last good checkpoint is kept; lower the learning rate or check the targets")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike, output: OutputDir | None = None) -> Path:
    """Atomically write ``state`` to ``path`` (temp + fsync + rename + directory fsync).

    In a folder claimed with :func:`rela_fast.outputs.claim` (``output``, or the open claim ``path`` lies in:
    a training run's folder) the write goes through it: the file is listed in the folder's manifest, and a
    file rela_fast did not write, or a link, is never replaced. Model weights (:data:`MODEL_KEYS`) must be
    finite; a full disk names the file and leaves the previous checkpoint untouched.
    """
    check_plain(state)
    path = Path(path)
    _check_finite(state, path)
    output = output if output is not None else claimed_for(path)
    if output is not None:
        with output.atomic(path.name) as tmp:
            _write(state, tmp, output.path / path.name)
        return output.path / path.name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        _write(state, tmp)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _write(state: dict[str, Any], tmp: Path, target: Path | None = None) -> None:
    """``torch.save`` into ``tmp``, flushed and fsynced; a failed write names ``target`` (default ``tmp``): a
    full disk as a UserError, anything else as an OSError."""
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        error = no_space(exc, target or tmp)
        if error is not None:
            raise error from None
        raise OSError(exc.errno, exc.strerror or str(exc), str(tmp)) from exc
    except RuntimeError as exc:  # torch's writer wraps the failed write of a full disk
        raise OSError(errno.EIO, f"cannot write the checkpoint ({str(exc).splitlines()[0]}); is the disk full?",
                      str(tmp)) from exc
