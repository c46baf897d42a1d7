"""Training-run safety: inputs checked before a run, one run per folder, finite losses (settings are typed and
ranged by ReLAConfig).

The trainer calls these at three points (kept tiny so its loop stays readable):

* :func:`check_inputs` once the data is open: targets finite, labels class ids below ``MAX_CLASSES``,
  ``stratify`` only with labels;
* :func:`claim_run_dir` around the run: the folder must be new, empty or a run rela_fast made (its manifest,
  :mod:`rela_fast.outputs`), its lock is held (a second run on the same ``--out`` is refused, under DDP on
  every rank), and it yields the :class:`~rela_fast.outputs.OutputDir` every run file is written through;
* :func:`check_loss` after every optimiser step: a NaN or inf loss stops the run before anything is saved,
  so the last checkpoint on disk is the last good one.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from rela_fast.data.limits import MAX_CLASSES
from rela_fast.errors import UserError
from rela_fast.outputs import OutputDir, check_claim, claim, is_ours, normalize_out
from rela_fast.runlock import RUN_MARKER, RunLock

_CHUNK_ROWS = 1 << 16


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


RUN_KIND = "train-run"  # the kind of a training run's folder in its manifest (rela_fast.outputs)


def lock_file_entry(name: str, path: Path) -> bool:
    """The run's lock file, :data:`~rela_fast.runlock.RUN_MARKER`: an empty regular file (flock only; rela_fast
    never writes or deletes it), accepted before the manifest lists it."""
    return name == RUN_MARKER and not path.is_symlink() and path.is_file() and path.stat().st_size == 0


def claim_run(out: Path) -> OutputDir:
    """``out`` as a training run's folder: new, empty, or a run rela_fast made (its manifest proves every file);
    else a UserError naming the first file it did not write. Call it with the run's lock held."""
    return claim(out, RUN_KIND, also_ours=lock_file_entry)


def run_is_ours(out: str | os.PathLike) -> bool:
    """Whether ``out`` is a non-empty training run's folder that rela_fast made (manifest proven)."""
    return is_ours(out, RUN_KIND, also_ours=lock_file_entry)


@contextlib.contextmanager
def claim_run_dir(out: Path | None, rank: int = 0, world: int = 1) -> Iterator[OutputDir | None]:
    """Claim ``out`` for a run and hold its lock for the block; yields the :class:`~rela_fast.outputs.OutputDir`
    to write every file through (rank 0; None on other ranks or without ``out``).

    The folder must be new, empty or a run of ours (:func:`claim_run`): a user's folder, or one holding any
    file the run did not write, is refused on every rank before anything is created or written. Then the
    lock is taken (a second run on the same folder is refused), and the claim repeated under it."""
    lock, message, run_dir = None, None, None
    if out is not None and rank == 0:
        out = normalize_out(out)
        message = check_claim(out, RUN_KIND, also_ours=lock_file_entry)
        if message is None:
            out.mkdir(parents=True, exist_ok=True)
            lock = RunLock(out / RUN_MARKER, f"{out}: another rela-fast train is running in this folder (lock file "
                                              f"{out / RUN_MARKER}); wait for it to finish or use another --out")
            message = lock.try_acquire()
        if message is None:
            try:
                run_dir = claim_run(out)
                if RUN_MARKER not in run_dir.files and (out / RUN_MARKER).is_file():
                    run_dir.record(RUN_MARKER)
            except UserError as exc:
                message = str(exc)
    if world > 1:
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message is not None:
        if lock is not None:
            lock.release()
        raise UserError(message)
    try:
        yield run_dir
    finally:
        if run_dir is not None:
            run_dir.close()
        if lock is not None:
            lock.release()


def check_loss(loss: float, step: int, epoch: int) -> None:
    """Stop on a non-finite training loss (the same value on every rank: it is all-reduced first)."""
    if not math.isfinite(loss):
        raise UserError(f"the training loss became {loss} at step {step} (epoch {epoch}); the run stopped and "
                        "the last good checkpoint is kept; lower --lr, or check the targets for extreme values")
