"""Each ReLA row of a headline summary against the strongest BYOL baseline, wins and losses alike.

A ReLA-BYOL row claims "BYOL's accuracy for a fraction of its steps". This script holds every such row of
``summary.json`` (written by ``benchmarks/headline.py --report``) to two baselines, each the strongest BYOL
row of EITHER recipe, whichever recipe the ReLA row itself used:

* BYOL at 100 % of the steps (the accuracy the claim promises), and
* BYOL at the ReLA row's own budget (what the same steps buy without ReLA).

For each it prints the difference of the means in points, with its standard error when both rows have at
least two seeds (sqrt(s1^2/n1 + s2^2/n2)), and a verdict: ``above`` / ``below`` when the difference exceeds
two standard errors, ``within noise`` when it does not, ``above (1 seed)`` / ``below (1 seed)`` when a side
has a single seed. The last column is the row's mean wall time (incl. its prior's conversion) as a fraction of
the strongest BYOL 100 %'s (the ``byol`` prior's own training, a BYOL 100 % run, is not in it).

    python benchmarks/claims.py                                   # the committed headline-fmnist-e30
    python benchmarks/claims.py path/to/summary.json --json       # machine-readable
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "benchmarks/results/headline-fmnist-e30/summary.json"


def _stats(accs: list[float]) -> tuple[float, float | None, int]:
    """(mean, sample standard deviation or None for one seed, seeds)."""
    return statistics.fmean(accs), (statistics.stdev(accs) if len(accs) > 1 else None), len(accs)


def strongest_byol(rows: list[dict[str, Any]], budget: float) -> dict[str, Any] | None:
    """The plain BYOL row at ``budget`` with the highest mean accuracy over the recipes (None when none)."""
    byol = [r for r in rows if not r["rela"] and r.get("method", "byol") == "byol" and not r.get("variant")
            and math.isclose(r["budget"], budget)]
    return max(byol, key=lambda r: statistics.fmean(r["acc"]), default=None)


def difference(row: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any] | None:
    """``row`` minus ``base`` in points: the difference of means, its standard error and the verdict."""
    if base is None:
        return None
    (m1, s1, n1), (m2, s2, n2) = _stats(row["acc"]), _stats(base["acc"])
    diff = 100 * (m1 - m2)
    se = 100 * math.sqrt(s1 ** 2 / n1 + s2 ** 2 / n2) if s1 is not None and s2 is not None else None
    if se is None:
        verdict = f"{'above' if diff > 0 else 'below'} (1 seed)"
    else:
        verdict = "within noise" if abs(diff) <= 2 * se else ("above" if diff > 0 else "below")
    return {"recipe": base["recipe"], "budget": base["budget"], "acc": 100 * m2, "seeds": n2, "diff": diff,
            "se": se, "verdict": verdict}


def compare(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per ReLA row of ``summary``: its mean accuracy and both differences."""
    rows = summary["rows"]
    full = strongest_byol(rows, 1.0)
    out = []
    for r in rows:
        if not r["rela"]:
            continue
        mean, sd, n = _stats(r["acc"])
        wall = statistics.fmean(r["wall_s"]) / statistics.fmean(full["wall_s"]) if full else None
        same = strongest_byol(rows, r["budget"])
        out.append({"prior": r["prior"], "recipe": r["recipe"], "budget": r["budget"], "variant": r.get("variant"),
                    "acc": 100 * mean, "sd": None if sd is None else 100 * sd, "seeds": n,
                    "vs_byol100": difference(r, full), "vs_same_budget": difference(r, same), "wall_fraction": wall})
    return out


def _vs(d: dict[str, Any] | None) -> str:
    if d is None:
        return "-"
    se = f" +- {d['se']:.2f}" if d["se"] is not None else ""
    return f"{d['diff']:+.2f}{se}: {d['verdict']}"


def render(records: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The markdown table, headed by the two strongest baselines it compares with."""
    from rela_fast.tables import render_table

    full = strongest_byol(summary["rows"], 1.0)
    head = ("ReLA-BYOL row (prior, recipe, budget)", "seeds", "probe acc. (%)",
            "vs strongest BYOL 100 % (points)", "vs strongest BYOL at the same budget (points)",
            "same-budget baseline", "wall time / strongest BYOL 100 %'s")
    body = []
    for c in records:
        name = f"{c['prior']}, {c['recipe']}, {100 * c['budget']:g} %" + (f", {c['variant']}" if c["variant"] else "")
        acc = f"{c['acc']:.2f}" + (f" +- {c['sd']:.2f}" if c["sd"] is not None else "")
        same = c["vs_same_budget"]
        base = "-" if same is None else (f"BYOL {100 * same['budget']:g} %, {same['recipe']}: {same['acc']:.2f} "
                                         f"({same['seeds']} seed{'s' * (same['seeds'] > 1)})")
        wall = "-" if c["wall_fraction"] is None else f"{c['wall_fraction']:.2f}"
        body.append((name, c["seeds"], acc, _vs(c["vs_byol100"]), _vs(same), base, wall))
    top = ("no BYOL 100 % row" if full is None else
           f"strongest BYOL 100 %: the {full['recipe']} recipe, {100 * statistics.fmean(full['acc']):.2f} % over "
           f"{len(full['acc'])} seed(s)")
    return top + "\n\n" + render_table(head, body, align="lrrrrlr")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("summary", nargs="?", type=Path, default=DEFAULT, help="a headline summary.json")
    p.add_argument("--json", action="store_true", help="print the records as JSON instead of the table")
    a = p.parse_args(argv)
    try:
        summary = json.loads(a.summary.read_text())
        records = compare(summary)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        p.error(f"{a.summary}: not a readable headline summary.json ({type(exc).__name__}: {exc}); "
                "write one with `python benchmarks/headline.py --report`")
    print(json.dumps(records, indent=1) if a.json else render(records, summary))
    return 0


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
