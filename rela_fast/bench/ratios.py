"""Speed-up ratios from a results document, and their table.

Convention (every suite in ``benchmarks/`` follows it): ``benchmark.group = "<suite>: <case>"`` and
``benchmark.extra_info = {"suite": ..., "variant": ..., "baseline": bool}``. Within a group, each
non-baseline variant is reported as its speed-up over each baseline (ratio of medians, measured side
by side in one run, so machine noise mostly cancels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rela_fast.tables import render_table


@dataclass(frozen=True)
class Ratio:
    """One line of the report: ``variant`` is ``speedup`` times faster than ``baseline`` in ``group``."""

    group: str
    variant: str
    baseline: str
    variant_median_s: float
    baseline_median_s: float

    @property
    def speedup(self) -> float:
        return self.baseline_median_s / self.variant_median_s


def ratios(results: dict) -> list[Ratio]:
    """All (variant, baseline) speed-ups of a results document (see :func:`check_results`), grouped as stored."""
    groups: dict[str, list[dict]] = {}
    for bench in results.get("benchmarks", []):
        groups.setdefault(bench.get("group") or bench["name"], []).append(bench)  # shapes: check_results
    rows = []
    for group, benches in groups.items():
        base = [b for b in benches if b.get("extra_info", {}).get("baseline")]
        other = [b for b in benches if not b.get("extra_info", {}).get("baseline")]
        for b in base:
            for v in other:
                rows.append(Ratio(group, _variant(v), _variant(b), v["stats"]["median"], b["stats"]["median"]))
    return rows


def _variant(bench: dict) -> str:
    return bench.get("extra_info", {}).get("variant") or bench["name"]


def ratio_table(rows: list[Ratio], fmt: Literal["markdown", "text"] = "text") -> str:
    """The ratio table: group, variant, baseline, both medians (ms) and the speed-up."""
    if not rows:
        return "(no baseline comparisons in these results)"
    headers = ("group", "variant", "baseline", "variant (ms)", "baseline (ms)", "speed-up")
    cells = [(r.group, r.variant, r.baseline, f"{r.variant_median_s * 1e3:.3f}", f"{r.baseline_median_s * 1e3:.3f}",
              f"{r.speedup:.2f}x") for r in rows]
    return render_table(headers, cells, align="lllrrr", fmt=fmt)
