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
from rela_fast.plotting import require_pyplot


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and getattr(value, "numel", lambda: 2)() == 1:
        return _clean(value.item())
    return value


class MetricsLog:
    """Appends rows to a JSONL file (only on the process that owns it; others pass ``path=None``)."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        self.rows: list[dict[str, Any]] = []

    def log(self, row: Mapping[str, Any]) -> None:
        row = {k: _clean(v) for k, v in row.items()}
        self.rows.append(row)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop step/epoch rows logged after optimiser step ``step`` (resume), atomically; keep the rest."""
        if self.path is None or not self.path.exists():
            return
        self.rewrite([r for r in read_metrics(self.path) if (r.get("step") or 0) <= step])

    def rewrite(self, rows: list[dict[str, Any]]) -> None:
        """Replace the file's rows atomically (temp + fsync + rename)."""
        self.rows = list(rows)
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a metrics JSONL file (a torn last line from a kill is skipped)."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def plot_metrics(runs: Mapping[str, str | os.PathLike | Iterable[Mapping[str, Any]]] | str | os.PathLike,
                 png: str | os.PathLike, *, metric: str = "online_acc", missing_ok: bool = False) -> Path | None:
    """Plot ``metric`` (default: online accuracy) against optimisation steps and wall time, one line per run.

    ``runs`` is one metrics file, or ``{label: metrics file or rows}``. Probe rows (``event == "probe"``)
    are drawn as markers at their step / wall time. Also plots the loss and rho of each run. Needs the
    ``plot`` extra (matplotlib): without it this raises a :class:`~rela_fast.errors.UserError`, or, with
    ``missing_ok`` (a training run's closing plot, which must not fail the run), warns and returns None.
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
        steps = [r for r in rows if r.get("event") == "step"]
        acc = [r for r in steps if r.get(metric) is not None]
        line = axes[0, 0].plot([r["step"] for r in acc], [r[metric] for r in acc], label=label)[0]
        axes[0, 1].plot([r["wall_time"] for r in acc], [r[metric] for r in acc], color=line.get_color(), label=label)
        for r in rows:
            if r.get("event") == "probe" and r.get("accuracy") is not None:
                axes[0, 0].plot(r.get("step", 0), r["accuracy"], "*", ms=12, color=line.get_color())
                axes[0, 1].plot(r.get("wall_time", 0), r["accuracy"], "*", ms=12, color=line.get_color())
        lossy = [r for r in steps if r.get("loss") is not None]
        axes[1, 0].plot([r["step"] for r in lossy], [r["loss"] for r in lossy], color=line.get_color(), label=label)
        rho = [r for r in steps if r.get("rho") is not None]
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
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
