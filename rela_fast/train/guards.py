"""Training-run safety: settings and inputs checked before a run, one run per folder, finite losses.

The trainer calls these at four points (kept tiny so its loop stays readable):

* :func:`check_settings` in ``__init__``: numbers must be finite and in range, the device must exist;
* :func:`check_inputs` once the data is open: targets finite, labels class ids below ``MAX_CLASSES``,
  ``stratify`` only with labels;
* :func:`claim_run_dir` around the run: the folder's lock (a second run on the same ``--out`` is refused,
  under DDP on every rank), then a stale ``checkpoint.pt.tmp`` from a killed run is removed;
* :func:`check_loss` after every optimiser step: a NaN or inf loss stops the run before anything is saved,
  so the last checkpoint on disk is the last good one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rela_fast.data.limits import MAX_CLASSES
from rela_fast.errors import UserError
from rela_fast.models.checkpoint import MAX_IMAGE_SIZE
from rela_fast.runlock import RUN_MARKER, RunLock
from rela_fast.train.checkpoint import remove_stale_tmp

_CHUNK_ROWS = 1 << 16


def _number(name: str, value: Any, lo: float, hi: float = math.inf, *, hi_open: bool = False,
            integer: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and lo <= value and (value < hi if hi_open else value <= hi)
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        bound = f"[{lo}, {hi}{')' if hi_open else ']'}"
        raise UserError(f"{name}={value!r}: must be a finite {'whole ' if integer else ''}number in {bound}")


def check_settings(*, lr: float, warmup: float, weight_decay: float, momentum: float, image_size: int | None,
                   num_workers: int, max_steps: int | None, checkpoint_every: int | None, soft_steps: int,
                   lambda_const: float | None, device: Any, warm_heads: int = 0) -> None:
    """Refuse settings that would crash late or train on NaN (all numbers finite, each in its range)."""
    _number("lr", lr, 0.0)
    _number("warmup", warmup, 0.0, 1.0, hi_open=True)  # a fraction of the steps (lr_at's warm-up)
    _number("weight_decay", weight_decay, 0.0)
    _number("momentum", momentum, 0.0, 1.0)
    _number("num_workers", num_workers, 0, 256, integer=True)
    _number("soft_steps", soft_steps, 0, integer=True)
    _number("warm_heads", warm_heads, 0, integer=True)
    for name, value, lo, hi in (("image_size", image_size, 1, MAX_IMAGE_SIZE), ("max_steps", max_steps, 1, math.inf),
                                ("checkpoint_every", checkpoint_every, 1, math.inf),
                                ("lambda_const", lambda_const, 0.0, 1.0)):
        if value is not None:
            _number(name, value, lo, hi, integer=name != "lambda_const")
    if device is not None and not isinstance(device, torch.device):
        try:
            torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise UserError(f"device={device!r}: not a device; use 'cpu' or 'cuda'") from None


def check_finite_rows(t: torch.Tensor | np.ndarray, what: str) -> None:
    """Raise UserError naming the first row of ``t`` that holds NaN or inf (checked in chunks: a
    memory-mapped store is never loaded whole)."""
    for lo in range(0, len(t), _CHUNK_ROWS):
        chunk = t[lo:lo + _CHUNK_ROWS]
        if isinstance(chunk, np.ndarray):
            bad = np.flatnonzero(~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1))
        else:
            bad = (~torch.isfinite(chunk.reshape(len(chunk), -1)).all(dim=1)).nonzero().flatten().cpu().numpy()
        if len(bad):
            row = lo + int(bad[0])
            raise UserError(f"{what}: row {row} holds NaN or inf (and maybe more); a model cannot learn from "
                            "it; convert the data again (check the prior's weights)")


def check_inputs(targets: torch.Tensor | None, labels: torch.Tensor | None, stratify: bool) -> None:
    """Targets finite; labels class ids in ``[0, MAX_CLASSES)``; ``stratify`` only for labelled data."""
    if targets is not None:
        check_finite_rows(targets, "targets")
    if labels is not None and len(labels):
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= MAX_CLASSES:
            bad = low if low < 0 else high
            raise UserError(f"labels: {bad} is not a class id in [0, {MAX_CLASSES}); labels number the classes "
                            "0, 1, 2, ...")
    if stratify and labels is None:
        raise UserError("stratify: needs labels (class-stratified subsets), and this data has none; "
                        "drop --stratify or give labelled data")


@contextlib.contextmanager
def claim_run_dir(out: Path | None, rank: int = 0, world: int = 1) -> Iterator[None]:
    """Hold ``out``'s run lock for the block (rank 0 locks; every rank raises if it is taken), and remove
    a stale ``checkpoint.pt.tmp`` once the lock is ours: no other run can be writing it then."""
    lock, message = None, None
    if out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        lock = RunLock(out / RUN_MARKER, f"{out}: another rela-fast train is running in this folder (lock file "
                                          f"{out / RUN_MARKER}); wait for it to finish or use another --out")
        message = lock.try_acquire()
        if message is None:
            remove_stale_tmp(out / "checkpoint.pt")
    if world > 1:
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message is not None:
        raise UserError(message)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def check_loss(loss: float, step: int, epoch: int) -> None:
    """Stop on a non-finite training loss (the same value on every rank: it is all-reduced first)."""
    if not math.isfinite(loss):
        raise UserError(f"the training loss became {loss} at step {step} (epoch {epoch}); the run stopped and "
                        "the last good checkpoint is kept; lower --lr, or check the targets for extreme values")
