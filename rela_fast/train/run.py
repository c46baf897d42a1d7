"""A ReLATrainer run's folder: its lock, checkpoint, metrics log, plot and summary, and honest resumes.

A resume is the same run or nothing: the checkpoint holds the run's whole config and its identity (the
data's fingerprint, the targets' digest, the image size, the model's widths, the process count); every
setting that shapes the model or the subsets must match, and the first that differs is named. Checkpoint
fields are checked by type and range before use (a position inside the epoch, a step inside the schedule,
a known phase, finite numbers). Only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rela_fast.errors import UserError
from rela_fast.train.config import ReLAConfig, resume_changes
from rela_fast.train.metrics import MetricsLog, plot_metrics, read_metrics

CHECKPOINT_FORMAT = "rela_fast.train/3"
CONTINUE_KEYS = ("epochs", "max_steps")  # what `--continue` may change (docs: "Continue a finished run")


class RunFiles:
    """The files of one run under ``out`` (None: nothing is written), for process ``rank`` of ``world``."""

    def __init__(self, out: Path | None, rank: int = 0, world: int = 1) -> None:
        self.out, self.rank, self.world = out, rank, world
        self.writer = out is not None and rank == 0
        self.metrics_path = out / "metrics.jsonl" if out is not None else None
        self.checkpoint_path = out / "checkpoint.pt" if out is not None else None
        self.log_ = MetricsLog(None)
        self.allow_continue = False
        self.folder: Any = None  # the claimed OutputDir while the run holds its folder (rank 0)

    @contextlib.contextmanager
    def claim(self) -> Iterator[None]:
        """The folder's lock for the run (a second run on the same folder is refused, on every rank)."""
        from rela_fast.train.guards import claim_run_dir

        with claim_run_dir(self.out, self.rank, self.world) as folder:
            self.folder = folder
            try:
                yield
            finally:
                self.folder = None

    # -- checkpoints --------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        from rela_fast.train.checkpoint import save_checkpoint

        if self.writer:
            save_checkpoint({"format": CHECKPOINT_FORMAT, **state}, self.checkpoint_path)

    def load_checkpoint(self, config: ReLAConfig, plan: Any) -> dict[str, Any] | None:
        """The checkpoint to resume from, checked to be this run's, or None when there is none."""
        from rela_fast.models.checkpoint import load_checkpoint

        path = self.checkpoint_path
        if path is None or not path.is_file():
            return None
        state = load_checkpoint(path, map_location="cpu")
        if state.get("format") != CHECKPOINT_FORMAT or not isinstance(state.get("config"), dict):
            raise UserError(f"{path}: not a checkpoint of this rela_fast version's trainer; use another --out")
        ignore = CONTINUE_KEYS if self.allow_continue else ()
        changed = resume_changes(state["config"], config, ignore=ignore)
        changed += identity_changes(state.get("identity"), plan.identity, mid_epoch=_pos(state, path) > 0)
        if changed:
            raise UserError(f"{path}: the run in this folder is not this run ({'; '.join(changed)}); use another "
                            "--out, or the same data and settings to resume")
        check_train_state(state["train_state"], plan, config, path)
        return state

    # -- metrics --------------------------------------------------------------------------------------
    def open_log(self, resumed_at: int | None) -> None:
        """Start the metrics log: a resumed run first drops rows past its checkpoint; a new run starts empty."""
        self.log_ = MetricsLog(self.metrics_path if self.writer else None)
        if not self.writer:
            return
        if resumed_at is not None:
            self.log_.truncate_after(resumed_at)
        elif self.metrics_path.exists():
            self.log_.rewrite([])

    def log(self, row: dict[str, Any]) -> None:
        if self.rank == 0:
            self.log_.log(row)

    def history(self) -> list[dict[str, Any]]:
        p = self.log_.path
        return read_metrics(p) if p is not None and p.exists() else self.log_.rows

    def progress(self, enabled: bool, total: int, initial: int) -> Any:
        if not enabled or self.rank != 0:
            return None
        from rela_fast.progress import progress_bar

        return progress_bar(total, "train", unit="step", initial=initial)

    def finish(self, summary: dict[str, Any]) -> Path | None:
        """The closing plot and ``summary.json`` (rank 0); returns the plot's path, if drawn."""
        if not self.writer:
            return None
        import json

        png = plot_metrics({self.out.name or "run": self.metrics_path}, self.out / "metrics.png", missing_ok=True)
        self.folder.write_text("summary.json", json.dumps(summary, indent=1))
        return png

    def write_config(self, document: str) -> None:
        """The run's full resolved config (``--config`` reads it back) next to its results."""
        if self.writer:
            self.folder.write_text("config.json", document + "\n")


def _pos(state: dict[str, Any], path: Path) -> int:
    ts = state.get("train_state")
    if not isinstance(ts, dict) or not _is_int(ts.get("pos")):
        raise UserError(f"{path}: train_state.pos is missing or not a whole number; the checkpoint is damaged, "
                        "use another --out")
    return ts["pos"]


def identity_changes(old: Any, new: dict[str, Any], *, mid_epoch: bool) -> list[str]:
    """``"what: old -> new"`` for each part of the run's identity that differs (world only mid-epoch)."""
    if not isinstance(old, dict):
        return ["identity: missing (a checkpoint from another version)"]
    out = []
    for key, value in new.items():
        if key == "world" and not mid_epoch:
            continue
        if old.get(key) != value:
            what = {"data": "the data (its fingerprint)", "targets": "the targets (their digest)",
                    "rows": "the rows trained on"}.get(key, key)
            out.append(f"{what}: {_short(old.get(key))} -> {_short(value)}")
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_train_state(ts: dict[str, Any], plan: Any, config: ReLAConfig, path: Path) -> None:
    """Refuse a checkpoint whose loop state lies outside this run (a damaged or edited file)."""
    unit = plan.recipe.batch_size * config.optim.accumulate
    bounds = {"epoch": (0, config.epochs), "step": (0, max(plan.total_steps, 0)),
              "pos": (0, plan.n), "images_seen": (0, None), "correct": (0, None), "seen": (0, None),
              "phase": (1, 2)}
    for key, (lo, hi) in bounds.items():
        v = ts.get(key)
        if not _is_int(v) or v < lo or (hi is not None and v > hi):
            raise UserError(f"{path}: train_state.{key}={v!r} is not a whole number in [{lo}, {hi or 'inf'}]; the "
                            "checkpoint is damaged or from another run, use another --out")
    if ts["pos"] % unit:
        raise UserError(f"{path}: train_state.pos={ts['pos']} is not a multiple of the step's {unit} samples; the "
                        "checkpoint is damaged, use another --out")
    for key in ("wall_time", "rela_weight"):
        v = ts.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise UserError(f"{path}: train_state.{key}={v!r} is not a finite number >= 0; the checkpoint is "
                            "damaged, use another --out")
