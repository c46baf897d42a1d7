"""The one table renderer: rows of cells as a markdown table (README, reports) or aligned plain text (the CLI).

Every table the package prints or writes goes through :func:`render_table`, so a column's alignment and the
markdown syntax are decided in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

_ALIGN = {"l": ("---", str.ljust), "r": ("---:", str.rjust)}


def render_table(
    headers: Sequence[Any] | None,
    rows: Iterable[Sequence[Any]],
    align: str | None = None,
    fmt: Literal["markdown", "text"] = "markdown",
) -> str:
    """Render ``rows`` under ``headers`` (None: no header line) as ``fmt``.

    ``align`` has one letter per column, ``l`` (left, the default) or ``r`` (right, for numbers). Cells are
    converted with ``str``. ``markdown`` writes a GitHub table (cells unpadded, so lines diff cleanly);
    ``text`` pads each column to its widest cell, separated by two spaces, with a dashed rule under the
    header. The result has no trailing newline.
    """
    body = [[str(c) for c in row] for row in rows]
    head = None if headers is None else [str(h) for h in headers]
    ncols = len(head) if head is not None else max((len(r) for r in body), default=0)
    for i, row in enumerate(body):
        if len(row) != ncols:
            raise ValueError(f"row {i} has {len(row)} cells, the table has {ncols} columns")
    align = align or "l" * ncols
    if len(align) != ncols or set(align) - set(_ALIGN):
        raise ValueError(f"align={align!r}: give one of 'l'/'r' per column ({ncols})")
    if fmt == "markdown":
        return _markdown(head, body, align)
    if fmt == "text":
        return _text(head, body, align)
    raise ValueError(f"fmt={fmt!r}: use 'markdown' or 'text'")


def _markdown(head: list[str] | None, body: list[list[str]], align: str) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = []
    if head is not None:
        lines += [line(head), "|" + "|".join(_ALIGN[a][0] for a in align) + "|"]
    return "\n".join(lines + [line(r) for r in body])


def _text(head: list[str] | None, body: list[list[str]], align: str) -> str:
    everything = ([head] if head is not None else []) + body
    widths = [max((len(r[i]) for r in everything), default=0) for i in range(len(align))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(_ALIGN[a][1](c, w) for c, w, a in zip(cells, widths, align)).rstrip()

    lines = []
    if head is not None:
        lines += [line(head), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + [line(r) for r in body])
