"""The README's short results summary: a speed table and a claim table, generated from committed results.

* Speed: one line per benchmark group of each results file in ``benchmarks/results/*.json``: the group's first
  variant against its first baseline (the full tables, every pair, are in ``benchmarks/results/README.md``).
* Claims: for each headline experiment (``benchmarks/results/headline*/summary.json``) whose baseline learns,
  every ReLA row against the strongest BYOL 100 % of either recipe and against the strongest BYOL at the same
  budget. The regime test: the strongest BYOL 100 % beats the linear probe on the raw pixels by at least
  :data:`REGIME_POINTS`; a folder that fails it gets one line saying so instead of a table, because there a
  "speed-up" only measures how fast a run reaches an accuracy the raw pixels already give.

Accuracies are mean +- sample standard deviation over seeds, in percent; differences are between means, in
points.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from rela_fast.bench.ratios import ratios
from rela_fast.bench.results import load_results, machine_line, read_text, result_files
from rela_fast.errors import UserError
from rela_fast.tables import render_table

REGIME_POINTS = 2.0  # the strongest BYOL 100 % must beat the pixel probe by this many points
SUMMARY_SEEDS = 3  # the README's summary shows the ReLA rows with at least this many seeds


def speed_table(results_dir: Path, rel) -> str:
    """Markdown: per results file and suite, each group's first variant against its first baseline; groups
    that compare the same pair (e.g. sizes of one kernel) share a line with the range of their speed-ups."""
    lines: dict[tuple[str, str, str, str], list[float]] = {}
    machines = []
    for path in result_files(results_dir):
        seen: set[str] = set()
        doc = load_results(path, results_dir)
        meta = doc.get("rela_fast", {})
        machines.append(f"* `{rel(path)}`: {machine_line(meta.get('machine', {}))}; `{meta.get('command', '?')}`, "
                        f"{meta.get('date', '?')}.")
        for r in ratios(doc):
            if r.group not in seen:
                seen.add(r.group)
                lines.setdefault((rel(path), r.group.split(":")[0], r.variant, r.baseline), []).append(r.speedup)
    if not lines:
        return "No benchmark results committed yet (`rela-fast bench run` writes them)."
    cells = []
    for (file, suite, variant, baseline), ups in lines.items():
        span = f"{ups[0]:.2f}x" if len(ups) == 1 else f"{min(ups):.2f}x - {max(ups):.2f}x"
        cells.append((suite, variant, baseline, len(ups), span, f"`{file}`"))
    table = render_table(("suite", "variant", "baseline", "cases", "speed-up", "file"), cells, align="lllrrl",
                         fmt="markdown")
    return table + "\n\n" + "\n".join(machines) if machines else table


_REGEN = "regenerate it with `python benchmarks/headline.py --report --out DIR`"


def _load_summary(path: Path) -> dict[str, Any]:
    """A headline folder's summary.json, read from inside the results folder and checked field by field."""
    text = read_text(path, _REGEN, path.parent.parent)  # a folder or file linked from outside is refused
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{path}: cannot read it as JSON ({str(exc)[:80]}); {_REGEN}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list) or not isinstance(doc.get("baselines"), dict):
        raise UserError(f"{path}: not a headline summary (no 'rows' list and 'baselines'); {_REGEN}")
    pixels = doc["baselines"].get("pixels")
    if pixels is not None and not _num(pixels):
        raise UserError(f"{path}: baselines.pixels is not a number; {_REGEN}")
    for i, row in enumerate(doc["rows"]):
        if isinstance(row, dict) and row.get("acc") and not _row_ok(row):
            raise UserError(f"{path}: rows[{i}] lacks a field of its type (acc and seeds lists of numbers, budget "
                            f"a number, recipe text); {_REGEN}")
    return doc


def _num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _row_ok(row: dict[str, Any]) -> bool:
    """The fields :func:`claim_section` reads, with their types."""
    return (isinstance(row["acc"], list) and all(_num(a) for a in row["acc"]) and isinstance(row.get("seeds"), list)
            and _num(row.get("budget")) and isinstance(row.get("recipe"), str)
            and ("steps_saved" not in row or _num(row["steps_saved"])))


def _mean(row: dict[str, Any]) -> float:
    return 100 * statistics.fmean(row["acc"])


def _pct(row: dict[str, Any]) -> str:
    xs = [100 * a for a in row["acc"]]
    return f"{statistics.fmean(xs):.2f}" + (f" +- {statistics.stdev(xs):.2f}" if len(xs) > 1 else "")


def _best_byol(rows: list[dict[str, Any]], budget: float) -> dict[str, Any] | None:
    """The BYOL row (no ReLA, no variant) with the highest mean accuracy at ``budget``, over the recipes."""
    cands = [r for r in rows if not r.get("rela") and not r.get("variant") and r.get("budget") == budget and r["acc"]]
    return max(cands, key=_mean, default=None)


def _versus(row: dict[str, Any], ref: dict[str, Any] | None, detail: bool = True) -> str:
    """``row``'s mean minus ``ref``'s, in points (with ``ref``'s accuracy and recipe when ``detail``)."""
    if ref is None:
        return "-"
    return f"{_mean(row) - _mean(ref):+.2f}" + (f" ({_pct(ref)}, {ref['recipe']})" if detail else "")


def claim_section(folder: Path, min_seeds: int = 1) -> list[str]:
    """The regime line and, when it passes, the claim table of one headline folder: its ReLA rows with at least
    ``min_seeds`` seeds, and a line counting those left out."""
    doc = _load_summary(folder / "summary.json")
    rows = [r for r in doc["rows"] if isinstance(r, dict) and r.get("acc")]
    pixels, best = doc["baselines"].get("pixels"), _best_byol(rows, 1.0)
    what = f"{doc.get('epochs', '?')} epochs, {doc.get('student', '?')}, {doc.get('dataset', '?')}"
    if pixels is None or best is None:
        return [f"**{folder.name}** ({what}): no pixel baseline or BYOL 100 % row yet; no claim to check.", ""]
    margin = _mean(best) - 100 * pixels
    verdict = "passed" if margin >= REGIME_POINTS else "failed"
    seeds = f"{len(best['seeds'])} seed" + ("s" if len(best["seeds"]) > 1 else "")
    line = (f"**{folder.name}** ({what}). Regime test (the strongest BYOL 100 % beats the raw-pixel probe by "
            f">= {REGIME_POINTS:g} points): **{verdict}**: BYOL 100 % {_pct(best)} % (recipe `{best['recipe']}`, "
            f"{seeds}) against the pixels' {100 * pixels:.2f} % ({margin:+.2f}).")
    if verdict == "failed":
        return [line + " Its rows are not summarised as claims here.", ""]
    lines = [line, ""]
    cells, fewer = [], 0
    for r in rows:
        if not r.get("rela"):
            continue
        if len(r["seeds"]) < min_seeds:
            fewer += 1
            continue
        name = f"{r.get('prior')}, {r.get('recipe')}" + (f", {r['variant']}" if r.get("variant") else "")
        budget = f"{100 * r['budget']:.0f} %" + (f" ({100 * r['steps_saved']:.0f} % saved)" if "steps_saved" in r
                                                 else "")
        cells.append((name, budget, _pct(r), len(r["seeds"]), _versus(r, best, False),
                      _versus(r, _best_byol(rows, r["budget"]))))
    lines.append(render_table(("ReLA-BYOL (prior, recipe, variant)", "budget", "probe acc. (%)", "seeds",
                               f"vs BYOL 100 % ({_mean(best):.2f})", "vs the strongest BYOL at the same budget"),
                              cells, align="llrrll", fmt="markdown"))
    if fewer:
        lines += ["", f"{fewer} more ReLA row(s) with fewer than {min_seeds} seeds: in the full results."]
    return lines + [""]


def summary_section(results_dir: Path, rel, full: str) -> str:
    """The README's "Results at a glance": the claim tables, then the speed table; ``full`` names the file
    holding every table, ``rel(path)`` turns a path into the text shown."""
    lines = ["Generated from `benchmarks/results/` by `rela-fast bench readme`; every table, the plots and the "
             f"commands that reproduce them are in [{full}]({full}).", "", "**The claim** (ReLA-BYOL against BYOL; "
             "differences in points of linear-probe accuracy):", ""]
    dirs = sorted(p for p in Path(results_dir).glob("headline*") if (p / "summary.json").is_file())
    if not dirs:
        lines += ["No headline results committed yet (`python benchmarks/headline.py` writes them).", ""]
    for d in dirs:
        lines += claim_section(d, SUMMARY_SEEDS)
    lines += ["**Speed** (ratios of medians measured side by side in one run; per benchmark group its first "
              "variant against its first baseline, cases of one suite on one line):", "", speed_table(results_dir, rel)]
    return "\n".join(lines) + "\n"
