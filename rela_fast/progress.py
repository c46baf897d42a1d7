"""Progress reporting that suits where it goes: a live bar on a terminal, a plain line every few seconds in a
log file (CI, ``nohup``), so a long conversion or training run never writes thousands of ``\\r`` frames."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class LineProgress:
    """tqdm's small interface (``update``, ``set_postfix``, ``close``) printing one line per ``every`` seconds."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", initial: int = 0,
                 every: float = 10.0, file: TextIO | None = None) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.every, self.file = every, file or sys.stderr
        self.t0 = self.last = time.monotonic()
        self.n0, self.postfix = initial, ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._line(now)

    def set_postfix(self, values: dict[str, Any] | None = None, **kw: Any) -> None:
        items = {**(values or {}), **kw}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def _line(self, now: float) -> None:
        rate = (self.n - self.n0) / max(now - self.t0, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        eta = ""
        if self.total and rate > 0:
            eta = f", eta {int((self.total - self.n) / rate)} s"
        post = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc + ': ' if self.desc else ''}{done} {self.unit}{pct}, {rate:.1f} {self.unit}/s{eta}{post}",
              file=self.file, flush=True)

    def close(self) -> None:
        self._line(time.monotonic())


def progress_bar(total: int | None, desc: str = "", unit: str = "it", initial: int = 0, file: TextIO | None = None):
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a :class:`LineProgress` (a line every 10 s)."""
    file = file or sys.stderr
    if hasattr(file, "isatty") and file.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc or None, unit=unit, initial=initial, dynamic_ncols=True, file=file)
    return LineProgress(total, desc, unit, initial, file=file)
