"""Loggers: the run's numbers to TensorBoard, a CSV file or Weights & Biases, through the callback seam.

Each logger is a :class:`~rela_fast.train.callbacks.Callback` (pass it in ``callbacks=[...]``, or name it with
``rela-fast train --logger tensorboard,csv,wandb``). Only the process of rank 0 writes. What is logged:

* every ``every``-th optimiser step (``on_step_end``): what the trainer put in ``state.losses`` (``loss``,
  ``rela_loss``, ``method_loss``, ``lr``, ``rho``, ``rela_weight``, ``step_time``, ``images_per_s``), the
  ``phase`` the step trained in, the engine's ``subset_size``, and ``epoch``, ``online_acc`` (this rank's
  running accuracy of the online classifier over the epoch so far), ``images_seen`` and ``wall_time``;
  keys without a value (None, NaN) are left out;
* at each epoch's end: ``epoch/online_acc``, ``epoch/subset_size`` and ``epoch/wall_time``;
* at the hand-over: ``handover/step`` (and the phase changes in the step rows).

All values are indexed by the optimiser step. A resumed run continues the same logs: TensorBoard purges the
events past the checkpoint's step, the CSV file drops its rows past it; W&B starts a new offline run.

W&B runs **offline** (nothing leaves the machine; ``wandb sync DIR`` uploads later) unless the user set
``WANDB_MODE`` or passes ``mode=``.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rela_fast.errors import UserError
from rela_fast.train.callbacks import Callback, TrainState

LOGGERS = ("tensorboard", "csv", "wandb")
STEP_KEYS = ("loss", "rela_loss", "method_loss", "lr", "rho", "rela_weight", "phase", "subset_size", "online_acc",
             "epoch", "images_seen", "wall_time", "step_time", "images_per_s")


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (None, NaN, infinities, non-numbers)."""
    if value is None or isinstance(value, bool | str):
        return None
    if hasattr(value, "item"):
        value = value.item()
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _is_main() -> bool:
    from rela_fast.distributed import rank_and_world

    return rank_and_world()[0] == 0


def _engine_metrics(trainer: Any) -> dict[str, Any]:
    """The engine's numbers (phase, subset size, ...) when the trainer has an engine; else what it exposes."""
    engine = getattr(trainer, "engine", None)
    if engine is not None and hasattr(engine, "metrics"):
        return dict(engine.metrics())
    sampler = getattr(trainer, "sampler", None)
    return {"subset_size": sampler.size()} if sampler is not None and hasattr(sampler, "size") else {}


def step_values(trainer: Any, state: TrainState, phase: int | None = None) -> dict[str, float]:
    """The numbers of one optimiser step (see the module docstring), None and NaN left out; ``phase``: the
    phase the step trained in (``state.phase`` is already the next step's after a switch)."""
    engine = _engine_metrics(trainer)
    values: dict[str, Any] = {**state.losses, "phase": state.phase if phase is None else phase,
                              "subset_size": engine.get("subset_size"), "epoch": state.epoch,
                              "images_seen": state.images_seen, "wall_time": state.wall_time,
                              "online_acc": state.correct / state.seen if state.seen else None}
    if values.get("rho") is None:
        values["rho"] = engine.get("rho")
    out = {}
    for key in STEP_KEYS:
        number = _number(values.get(key))
        if number is not None:
            out[key] = number
    return out


def run_config(trainer: Any) -> dict[str, Any]:
    """The trainer's configuration as a flat ``{"optim.lr": 0.001, ...}`` dict of plain values (for W&B)."""
    config = getattr(trainer, "config", None)
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    elif hasattr(trainer, "_config"):
        config = trainer._config()
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif value is None or isinstance(value, bool | int | float | str):
            flat[prefix] = value
        else:
            flat[prefix] = str(value)

    walk("", config if isinstance(config, Mapping) else {})
    return flat


class MetricLogger(Callback):
    """Base class: turns the trainer's callbacks into ``write(values, step)`` calls on rank 0.

    Subclasses implement :meth:`open` (at fit start, with the step the run starts from), :meth:`write`
    and :meth:`close`. ``every``: log every N-th optimiser step (epoch ends and the hand-over always)."""

    def __init__(self, every: int = 1) -> None:
        if int(every) < 1:
            raise UserError(f"every={every}: log every N >= 1 steps")
        self.every = int(every)
        self.active, self.phase = False, 1

    def on_fit_start(self, trainer: Any, state: TrainState) -> None:
        self.active, self.phase = _is_main(), state.phase
        if self.active:
            with _untimed(trainer):
                self.open(trainer, state)

    def on_step_end(self, trainer: Any, state: TrainState) -> None:
        if self.active and state.step % self.every == 0:
            with _untimed(trainer):
                self.write(step_values(trainer, state, self.phase), state.step)

    def on_handover(self, trainer: Any, state: TrainState) -> None:
        self.phase = state.phase  # the steps from here on train in the new phase
        if self.active:
            with _untimed(trainer):
                self.write({"handover/step": float(state.step)}, state.step)

    def on_epoch_end(self, trainer: Any, state: TrainState) -> None:
        if not self.active:
            return
        values = {"epoch/online_acc": state.correct / state.seen if state.seen else None,
                  "epoch/subset_size": _engine_metrics(trainer).get("subset_size"),
                  "epoch/wall_time": state.wall_time, "epoch/epoch": state.epoch}
        with _untimed(trainer):
            self.write({k: v for k, v in ((k, _number(v)) for k, v in values.items()) if v is not None}, state.step)

    def on_fit_end(self, trainer: Any, state: TrainState) -> None:
        if self.active:
            self.close()
            self.active = False

    def open(self, trainer: Any, state: TrainState) -> None:
        """Start writing; ``state.step`` > 0 means a resumed run (drop what was logged past it)."""

    def write(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release the files."""


def _untimed(trainer: Any) -> contextlib.AbstractContextManager:
    """Logging is not training: it stays out of the run's wall time (``trainer.untimed()``)."""
    return trainer.untimed() if hasattr(trainer, "untimed") else contextlib.nullcontext()


def _folder(given: str | os.PathLike | None, trainer: Any, name: str, what: str) -> Path:
    if given is not None:
        return Path(given)
    out = getattr(trainer, "out", None)
    if out is None:
        raise UserError(f"{what}: the trainer has no out= folder; give the logger a folder or file")
    return Path(out) / name


class TensorBoardLogger(MetricLogger):
    """Scalars to TensorBoard event files in ``log_dir`` (default ``<out>/tensorboard``), one tag per key.

    Needs the ``tensorboard`` package (``pip install tensorboard``; the ``loggers`` extra)."""

    def __init__(self, log_dir: str | os.PathLike | None = None, every: int = 1) -> None:
        super().__init__(every)
        self.log_dir, self.writer = log_dir, None

    def open(self, trainer: Any, state: TrainState) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("logger tensorboard: the tensorboard package is not installed; `pip install "
                            "tensorboard` (or the rela_fast[loggers] extra)") from None
        folder = _folder(self.log_dir, trainer, "tensorboard", "TensorBoardLogger")
        # events an earlier (killed or replaced) run wrote past this run's starting step are hidden
        self.writer = SummaryWriter(str(folder), purge_step=state.step + 1)

    def write(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key if "/" in key else f"train/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class CSVLogger(MetricLogger):
    """One row per logged step in ``path`` (default ``<out>/metrics.csv``): ``step`` then :data:`STEP_KEYS`;
    epoch-end and hand-over rows fill their own columns (``epoch/online_acc``, ``handover/step``, ...).

    The file is rewritten whole when a new column appears (rare: the first epoch end and the hand-over), so
    it always has one header line."""

    FIXED = ("step", *STEP_KEYS, "epoch/online_acc", "epoch/subset_size", "epoch/wall_time", "epoch/epoch",
             "handover/step")
    INTEGERS = frozenset({"phase", "epoch", "subset_size", "images_seen", "epoch/subset_size", "epoch/epoch",
                          "handover/step"})

    def __init__(self, path: str | os.PathLike | None = None, every: int = 1) -> None:
        super().__init__(every)
        self.path_arg, self.path = path, None
        self.columns = list(self.FIXED)

    def open(self, trainer: Any, state: TrainState) -> None:
        self.path = _folder(self.path_arg, trainer, "metrics.csv", "CSVLogger")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not _written_by_us(self.path):
            raise UserError(f"{self.path}: exists and is not a CSV log rela_fast wrote; give the CSVLogger "
                            "another path (nothing was changed)")
        resumed = state.step > 0 and self.path.exists()
        kept = [r for r in read_csv(self.path) if _step_of(r) <= state.step] if resumed else []
        for row in kept:
            self.columns += [k for k in row if k not in self.columns]
        self._rewrite(kept)

    def _rewrite(self, rows: Iterable[Mapping[str, Any]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, values: dict[str, float], step: int) -> None:
        row = {"step": step, **{k: int(v) if k in self.INTEGERS else v for k, v in values.items()}}
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite(read_csv(self.path))
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns, restval="").writerow(row)


def _step_of(row: Mapping[str, str]) -> float:
    try:
        return float(row.get("step") or "inf")
    except ValueError:
        return math.inf


def _written_by_us(path: Path) -> bool:
    """True when ``path`` starts with the header a :class:`CSVLogger` writes."""
    try:
        with open(path, newline="") as f:
            head = f.readline().strip()
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith(",".join(CSVLogger.FIXED[:4]))


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows a :class:`CSVLogger` wrote, as dicts of strings (empty string: no value that step)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class WandbLogger(MetricLogger):
    """Weights & Biases, **offline** by default: the run is written under ``<dir>/wandb`` (default ``<out>``)
    and nothing leaves the machine; ``wandb sync`` uploads it later. ``mode`` (or the ``WANDB_MODE``
    environment variable, when set) chooses otherwise. The run's configuration is logged as W&B's config.

    Needs the ``wandb`` package (``pip install wandb``; the ``loggers`` extra)."""

    def __init__(self, project: str = "rela_fast", name: str | None = None, dir: str | os.PathLike | None = None,
                 mode: str | None = None, every: int = 1, **init_kwargs: Any) -> None:
        super().__init__(every)
        self.project, self.name, self.dir, self.mode, self.init_kwargs = project, name, dir, mode, init_kwargs
        self.run = None

    def open(self, trainer: Any, state: TrainState) -> None:
        try:
            import wandb
        except ImportError:
            raise UserError("logger wandb: the wandb package is not installed; `pip install wandb` (or the "
                            "rela_fast[loggers] extra)") from None
        folder = Path(self.dir) if self.dir is not None else _folder(None, trainer, "", "WandbLogger")
        folder.mkdir(parents=True, exist_ok=True)
        mode = self.mode or os.environ.get("WANDB_MODE") or "offline"
        name = self.name or (Path(trainer.out).name if getattr(trainer, "out", None) is not None else None)
        kwargs = {"settings": wandb.Settings(quiet=True), **self.init_kwargs}
        self.run = wandb.init(project=self.project, name=name, dir=str(folder), mode=mode,
                              config=run_config(trainer), reinit="create_new", **kwargs)

    def write(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def parse_loggers(text: str) -> list[str]:
    """``"tensorboard,csv"`` -> ``["tensorboard", "csv"]``; an unknown name raises :class:`UserError`."""
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    unknown = [n for n in names if n not in LOGGERS]
    if unknown or not names:
        raise UserError(f"unknown logger {', '.join(map(repr, unknown)) or '(none given)'}; choose from "
                        f"{', '.join(LOGGERS)} (comma-separated)")
    return list(dict.fromkeys(names))


def make_loggers(names: Iterable[str], out: str | os.PathLike | None = None, every: int = 1) -> list[MetricLogger]:
    """Loggers by name (:data:`LOGGERS`), writing under ``out`` (default: the trainer's ``out``)."""
    names = list(names)
    if not names:
        return []
    folder = Path(out) if out is not None else None
    makers = {
        "tensorboard": lambda: TensorBoardLogger(folder / "tensorboard" if folder else None, every=every),
        "csv": lambda: CSVLogger(folder / "metrics.csv" if folder else None, every=every),
        "wandb": lambda: WandbLogger(dir=folder, every=every),
    }
    return [makers[name]() for name in parse_loggers(",".join(names))]
