"""Progress reporting that suits where it goes: a live bar on a terminal, a plain line every few seconds in a
log file (CI, ``nohup``), so a long conversion or training run never writes thousands of ``\\r`` frames."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class LineProgress:
    """tqdm's small interface (``update``, ``set_postfix``, ``close``) printing one line per ``every`` seconds."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", initial: int = 0,
                 every: float = 10.0, file: TextIO | None = None, iterable: Any = None) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
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
        if self.n > self.n0:
            self._line(time.monotonic())

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class NoProgress(LineProgress):
    """Progress turned off: the same interface, nothing printed."""

    def _line(self, now: float) -> None:
        pass


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 file: TextIO | None = None, *, iterable: Any = None, enabled: bool = True, every: float = 10.0):
    """A tqdm bar when ``file`` (default stderr) is a terminal, else a :class:`LineProgress` (a line every
    ``every`` seconds); :class:`NoProgress` when not ``enabled``. Wraps ``iterable`` when given."""
    file = file or sys.stderr
    if not enabled:
        return NoProgress(total, desc, unit, initial, file=file, iterable=iterable)
    if hasattr(file, "isatty") and file.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc or None, unit=unit, initial=initial, dynamic_ncols=True,
                    file=file)
    return LineProgress(total, desc, unit, initial, every=every, file=file, iterable=iterable)
