"""Where ``rela-fast eval`` keeps a probe's result, by the one ownership rule (:mod:`rela_fast.outputs`).

* ``--out DIR``: ``DIR/probe.json``; DIR must be new, empty or an eval folder rela_fast made.
* Otherwise, beside the run's own files (``probe.json``, the probe row in ``metrics.jsonl`` and a redrawn
  ``metrics.png``) only when the folder is a training run that rela_fast made, its manifest proving every
  file, and with the run's lock held (no training writes it meanwhile).
* Otherwise nothing is written: the result is printed, and a note says how to keep it.

The destination is settled before the probe runs, so a refusal costs nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rela_fast.outputs import OutputDir, claim
from rela_fast.runlock import RUN_MARKER, RunLock

EVAL_KIND = "eval"

__all__ = ["EVAL_KIND", "not_kept_note", "probe_output", "record_probe", "run_folder"]


def run_folder(run: str | os.PathLike) -> Path:
    """The folder of ``run``: the run directory itself, or the folder holding a checkpoint file."""
    run = Path(run)
    return run if run.is_dir() else run.parent


@contextlib.contextmanager
def probe_output(run: str | os.PathLike, out: str | os.PathLike | None) -> Iterator[OutputDir | None]:
    """The claimed folder to write the probe's result into (held for the block), or None: print only.

    ``out`` (``--out``) is claimed as an eval folder (a UserError naming the first file in the way when it
    is not one). Without it, the run's own folder is used only when it is a run rela_fast made."""
    if out is not None:
        with claim(out, EVAL_KIND) as folder:
            yield folder
        return
    from rela_fast.train.guards import claim_run, run_is_ours

    folder = run_folder(run)
    if not run_is_ours(folder):
        yield None
        return
    busy = (f"{folder}: a rela-fast train is running in this folder; wait for it to finish, or pass --out DIR "
            "to write the probe's result elsewhere")
    with RunLock(folder / RUN_MARKER, busy), claim_run(folder) as run_dir:
        yield run_dir


def record_probe(folder: OutputDir, row: dict[str, Any], details: dict[str, Any]) -> list[Path]:
    """Write ``probe.json`` (``row`` plus ``details``) into ``folder``; in a run's folder also replace the
    probe row of its ``metrics.jsonl`` and redraw ``metrics.png``. Returns the files written."""
    from rela_fast.train.guards import RUN_KIND
    from rela_fast.train.metrics import MetricsLog, plot_metrics, read_metrics

    written = [folder.write_json("probe.json", {**row, **details})]
    if folder.kind != RUN_KIND or "metrics.jsonl" not in folder.files:
        return written
    metrics = folder / "metrics.jsonl"
    log = MetricsLog(metrics, folder)
    log.rewrite([r for r in read_metrics(metrics) if r.get("event") != "probe"])  # replaces an older probe
    log.log(row)
    written.append(metrics)
    png = plot_metrics({folder.path.name: metrics}, folder / "metrics.png", missing_ok=True, output=folder)
    return written + ([png] if png is not None else [])


def not_kept_note(run: str | os.PathLike) -> str:
    """The line printed when the result is not written anywhere (a folder rela_fast did not make)."""
    return (f"note: the result is not written: {run_folder(run)} is not a training run folder that rela_fast "
            "made (rela_fast writes only into its own folders); pass --out DIR to keep it")

