"""Benchmark results: run the pytest-benchmark suites, and turn their JSON into ratio tables.

Convention (every suite in ``benchmarks/`` follows it): ``benchmark.group = "<suite>: <case>"`` and
``benchmark.extra_info = {"suite": ..., "variant": ..., "baseline": bool}``. Within a group, each
non-baseline variant is reported as its speed-up over each baseline (ratio of medians, measured side
by side in one run, so machine noise mostly cancels).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rela_fast.errors import UserError


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
    """All (variant, baseline) speed-ups of a pytest-benchmark JSON document, grouped as stored."""
    groups: dict[str, list[dict]] = {}
    for bench in results.get("benchmarks", []):
        groups.setdefault(bench.get("group") or bench["name"], []).append(bench)
    rows = []
    for group, benches in groups.items():
        base = [b for b in benches if b.get("extra_info", {}).get("baseline")]
        other = [b for b in benches if not b.get("extra_info", {}).get("baseline")]
        for b in base:
            for v in other:
                rows.append(
                    Ratio(group, _variant(v), _variant(b), v["stats"]["median"], b["stats"]["median"])
                )
    return rows


def _variant(bench: dict) -> str:
    return bench.get("extra_info", {}).get("variant") or bench["name"]


def format_table(rows: list[Ratio]) -> str:
    """A plain-text table: group, variant, baseline, medians (ms) and the speed-up."""
    if not rows:
        return "(no baseline comparisons in these results)"
    header = ("group", "variant", "vs baseline", "variant ms", "baseline ms", "speed-up")
    lines = [
        (r.group, r.variant, r.baseline, f"{r.variant_median_s * 1e3:.3f}", f"{r.baseline_median_s * 1e3:.3f}",
         f"{r.speedup:.2f}x")
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*ln) for ln in lines])


def benchmarks_dir() -> Path:
    """The ``benchmarks/`` folder of the source checkout this package runs from."""
    path = Path(__file__).resolve().parent.parent / "benchmarks"
    if not path.is_dir():
        raise UserError(
            f"{path}: no benchmarks folder; run `rela-fast bench` from a source checkout (`pip install -e .`)"
        )
    return path


def available_suites() -> list[str]:
    """Suite names, from ``benchmarks/bench_<suite>.py``."""
    return sorted(p.stem[len("bench_"):] for p in benchmarks_dir().glob("bench_*.py"))


def run_suites(
    suites: list[str] | None, out: Path | None = None, extra_args: list[str] | None = None
) -> tuple[dict, Path]:
    """Run the named suites (all when None) in one pytest process; save and return the merged JSON."""
    from rela_fast.environment import describe, machine_name

    bdir = benchmarks_dir()
    known = available_suites()
    suites = suites or known
    unknown = [s for s in suites if s not in known]
    if unknown:
        raise UserError(f"--suite {', '.join(unknown)}: no such suite; available: {', '.join(known)}")
    raw = bdir / "results" / f".raw-{os.getpid()}.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-only",
           f"--benchmark-json={raw}", *(str(bdir / f"bench_{s}.py") for s in suites), *(extra_args or [])]
    print("running:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=bdir.parent)
    if not raw.exists():
        raise UserError(f"the benchmark run wrote no results (pytest exit {proc.returncode}); see its output above")
    results = json.loads(raw.read_text())
    raw.unlink()
    date = _dt.date.today().isoformat()
    results["rela_fast"] = {
        "command": "rela-fast bench " + " ".join(f"--suite {s}" for s in suites),
        "machine": describe(),
        "date": date,
        "pytest_exit": proc.returncode,
        "ratios": [r.__dict__ | {"speedup": r.speedup} for r in ratios(results)],
    }
    out = out or bdir / "results" / f"{machine_name()}-{date}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out)
    return results, out
