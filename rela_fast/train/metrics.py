"""Training metrics: one JSON object per line, and a PNG plot of accuracy against steps and wall time.

The plot needs the optional ``plot`` extra (matplotlib), imported only when a plot is drawn.

Rows have an ``event``: ``"step"`` (per logged optimiser step: loss, rela_loss, method_loss, rho, phase,
lr, step_time, images_per_s, online_acc, wall_time, ...), ``"epoch"`` (epoch summaries with the subset's
digest) and ``"probe"`` (linear-probe results). A resumed run first drops rows past its checkpoint so
the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rela_fast.errors import UserError
from rela_fast.outputs import OutputDir, claimed_for
from rela_fast.plotting import require_pyplot


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and getattr(value, "numel", lambda: 2)() == 1:
        return _clean(value.item())
    return value


class MetricsLog:
    """Appends rows to a JSONL file (only on the process that owns it; others pass ``path=None``).

    In a folder claimed with :func:`rela_fast.outputs.claim` (``output``, or the open claim ``path`` lies in)
    the file is an append-only log of the folder's manifest: appends never write through a link, and a
    rewrite is atomic. Elsewhere it is a plain file (appended; rewritten atomically)."""

    def __init__(self, path: str | os.PathLike | None, output: OutputDir | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.output = output if output is not None or self.path is None else claimed_for(self.path)
        self.rows: list[dict[str, Any]] = []

    def log(self, row: Mapping[str, Any]) -> None:
        row = {k: _clean(v) for k, v in row.items()}
        self.rows.append(row)
        if self.path is None:
            return
        line = json.dumps(row) + "\n"
        if self.output is not None:
            self.output.append(self.path.name, line)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(line)

    def truncate_after(self, step: int) -> None:
        """Drop step/epoch rows logged after optimiser step ``step`` (resume), atomically; keep the rest."""
        if self.path is None or not self.path.exists():
            return
        self.rewrite([r for r in read_metrics(self.path) if not _number(r.get("step")) or r["step"] <= step])

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        """Replace the file's rows atomically (temp + fsync + rename)."""
        self.rows = list(rows)
        if self.path is None:
            return
        text = "".join(json.dumps(r) + "\n" for r in self.rows)
        if self.output is not None:
            self.output.rewrite_log(self.path.name, text)
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


MAX_METRICS_BYTES = 1 << 30  # a step row is ~300 bytes: 1 GB is millions of logged steps


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a metrics JSONL file: JSON objects, one a line. A line that is not one (a torn last line
    from a kill, bytes that are not UTF-8) is skipped; a file over :data:`MAX_METRICS_BYTES` is a UserError."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_METRICS_BYTES:
            raise UserError(f"{path}: {path.stat().st_size} bytes, more than a metrics log of rela_fast holds; "
                            "pass the metrics.jsonl of a run")
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc}); pass the metrics.jsonl of a run") from None
    rows = []
    for line in lines:
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def plot_metrics(runs: Mapping[str, str | os.PathLike | Iterable[Mapping[str, Any]]] | str | os.PathLike,
                 png: str | os.PathLike, *, metric: str = "online_acc", missing_ok: bool = False,
                 output: OutputDir | None = None) -> Path | None:
    """Plot ``metric`` (default: online accuracy) against optimisation steps and wall time, one line per run.

    ``runs`` is one metrics file, or ``{label: metrics file or rows}``. Probe rows (``event == "probe"``)
    are drawn as markers at their step / wall time. Also plots the loss and rho of each run. Needs the
    ``plot`` extra (matplotlib): without it this raises a :class:`~rela_fast.errors.UserError`, or, with
    ``missing_ok`` (a training run's closing plot, which must not fail the run), warns and returns None.
    In a claimed folder (``output``, or the open claim ``png`` lies in) the PNG is written through it.
    """
    try:
        plt = require_pyplot(str(png))
    except UserError as exc:
        if not missing_ok:
            raise
        warnings.warn(f"not written: {exc}", stacklevel=2)
        return None
    if isinstance(runs, str | os.PathLike):
        runs = {Path(runs).parent.name or "run": runs}
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for label, source in runs.items():
        rows = read_metrics(source) if isinstance(source, str | os.PathLike) else list(source)
        steps = [r for r in rows if r.get("event") == "step" and _number(r.get("step"))]  # typed rows only
        acc = [r for r in steps if _number(r.get(metric))]
        line = axes[0, 0].plot([r["step"] for r in acc], [r[metric] for r in acc], label=label)[0]
        timed = [r for r in acc if _number(r.get("wall_time"))]
        axes[0, 1].plot([r["wall_time"] for r in timed], [r[metric] for r in timed], color=line.get_color(),
                        label=label)
        for r in rows:
            if r.get("event") == "probe" and _number(r.get("accuracy")):
                step, wall = r.get("step"), r.get("wall_time")
                axes[0, 0].plot(step if _number(step) else 0, r["accuracy"], "*", ms=12, color=line.get_color())
                axes[0, 1].plot(wall if _number(wall) else 0, r["accuracy"], "*", ms=12, color=line.get_color())
        lossy = [r for r in steps if _number(r.get("loss"))]
        axes[1, 0].plot([r["step"] for r in lossy], [r["loss"] for r in lossy], color=line.get_color(), label=label)
        rho = [r for r in steps if _number(r.get("rho"))]
        axes[1, 1].plot([r["step"] for r in rho], [r["rho"] for r in rho], color=line.get_color(), label=label)
        switch = next((r["step"] for r in steps if r.get("phase") == 2), None)
        if switch is not None and steps and steps[0].get("phase") == 1:
            for ax in (axes[0, 0], axes[1, 0], axes[1, 1]):
                ax.axvline(switch, ls=":", color=line.get_color())
    axes[0, 0].set(xlabel="optimisation steps", ylabel=metric.replace("_", " "), title="accuracy vs steps")
    axes[0, 1].set(xlabel="wall time (s)", ylabel=metric.replace("_", " "), title="accuracy vs wall time")
    axes[1, 0].set(xlabel="optimisation steps", ylabel="training loss", title="loss (ReLA, then method)")
    axes[1, 1].set(xlabel="optimisation steps", ylabel="rho", title="hand-over signal (switch at 0.995)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    png = Path(png)
    output = output if output is not None else claimed_for(png)
    try:
        if output is not None:
            with output.atomic(png.name) as tmp:
                fig.savefig(tmp, dpi=110, format="png")
            return output.path / png.name
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=110)
    finally:
        plt.close(fig)
    return png
