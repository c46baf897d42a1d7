"""Find the ``benchmarks/`` folder of a source checkout and run its pytest-benchmark suites.

The suites are developer files, not part of the installed package, so the folder is named explicitly
(``--bench-dir``) or found from the working directory upward, never from where the package is installed.
A suite is ``benchmarks/bench_<suite>.py``; all requested suites run in one pytest process, and the
merged JSON gets a ``rela_fast`` block (command, machine, date, pytest's exit code, the ratios).
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rela_fast.bench.ratios import ratios
from rela_fast.bench.results import check_results
from rela_fast.errors import UserError


def _is_bench_dir(path: Path) -> bool:
    return path.is_dir() and (any(path.glob("bench_*.py")) or (path / "results").is_dir())


def find_bench_dir(explicit: Path | None = None, start: Path | None = None) -> Path:
    """``explicit`` if given (it must be a folder), else the first ``benchmarks/`` at or above ``start``.

    ``start`` defaults to the working directory; a ``benchmarks`` folder that is ``start`` itself counts.
    A ``benchmarks/`` folder qualifies when it holds ``bench_*.py`` suites or a ``results/`` folder.
    """
    if explicit is not None:
        if not Path(explicit).is_dir():
            raise UserError(f"--bench-dir {explicit}: no such folder; pass the benchmarks/ folder of a source checkout")
        return Path(explicit)
    start = Path(start or Path.cwd()).resolve()
    if start.name == "benchmarks" and _is_bench_dir(start):
        return start
    for folder in (start, *start.parents):
        if _is_bench_dir(folder / "benchmarks"):
            return folder / "benchmarks"
    raise UserError(f"no benchmarks/ folder in {start} or above it; run this inside a rela_fast source checkout "
                    f"or pass --bench-dir DIR")


def available_suites(bench_dir: Path) -> list[str]:
    """Suite names, from ``bench_dir/bench_<suite>.py`` files that hold pytest-benchmark tests (the others, such as
    ``bench_train_e2e.py`` and ``bench_convert_memory.py``, are scripts that time whole processes: run them)."""
    return sorted(p.stem[len("bench_"):] for p in Path(bench_dir).glob("bench_*.py")
                  if "def test_" in p.read_text(encoding="utf-8", errors="replace"))


def default_out(bench_dir: Path, machine: str, date: str) -> Path:
    """``results/<machine>-<date>.json`` in ``bench_dir``, with ``-2``, ``-3``... so no earlier run is overwritten."""
    out = Path(bench_dir) / "results" / f"{machine}-{date}.json"
    n = 2
    while out.exists():
        out = out.with_name(f"{machine}-{date}-{n}.json")
        n += 1
    return out


def run_suites(bench_dir: Path, suites: list[str] | None = None, out: Path | None = None,
               extra_args: list[str] | None = None) -> tuple[dict, Path]:
    """Run the named suites (all when None) in one pytest process; write the merged JSON to ``out``.

    ``out`` defaults to :func:`default_out`; an existing ``out`` is refused, never overwritten. Returns the
    results document and where it was written (also when some benchmarks failed: see ``pytest_exit``).
    """
    from rela_fast.environment import describe, machine_name

    known = available_suites(bench_dir)
    suites = suites or known
    unknown = [s for s in suites if s not in known]
    if unknown:
        raise UserError(f"--suite {', '.join(unknown)}: no such suite in {bench_dir}; "
                        f"available: {', '.join(known) or 'none'}")
    if importlib.util.find_spec("pytest_benchmark") is None:
        raise UserError("running benchmarks needs pytest-benchmark: pip install 'rela_fast[test]' "
                        "(or pip install pytest-benchmark)")
    if out is not None and Path(out).exists():
        raise UserError(f"--out {out}: already exists; choose a new file name (earlier results are never overwritten)")
    date = _dt.date.today().isoformat()
    with tempfile.TemporaryDirectory(prefix="rela-bench-") as tmp:
        raw = Path(tmp) / "raw.json"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-only",
               f"--benchmark-json={raw}", *(str(Path(bench_dir) / f"bench_{s}.py") for s in suites),
               *(extra_args or [])]
        print("running:", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=Path(bench_dir).resolve().parent)
        if not raw.exists():
            raise UserError(f"the benchmark run wrote no results (pytest exit {proc.returncode}); see its output above")
        results = check_results(json.loads(raw.read_text()), "pytest-benchmark's output")
    results["rela_fast"] = {
        "command": "rela-fast bench run " + " ".join(f"--suite {s}" for s in suites),
        "machine": describe(),
        "date": date,
        "pytest_exit": proc.returncode,
        "ratios": [r.__dict__ | {"speedup": r.speedup} for r in ratios(results)],
    }
    out = Path(out) if out is not None else default_out(bench_dir, machine_name(), date)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp_out.write_text(json.dumps(results, indent=1))
    os.replace(tmp_out, out)
    return results, out
