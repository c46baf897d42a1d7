"""Benchmark result files: the pytest-benchmark JSON that ``rela-fast bench run`` writes, read and checked.

A results file is a JSON object with a ``benchmarks`` list (pytest-benchmark's format); ``rela-fast bench``
adds a ``rela_fast`` block with the command, the machine (:func:`rela_fast.environment.describe`) and the
date. Anything else handed to the tooling is rejected with one line that names the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rela_fast.errors import UserError

WHAT_TO_DO = "pass a JSON file that `rela-fast bench run` wrote (benchmarks/results/*.json)"


def is_results_doc(doc: Any) -> bool:
    """Whether ``doc`` looks like a benchmark results document (a dict holding a ``benchmarks`` list)."""
    return isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list)


def check_results(doc: Any, source: str) -> dict:
    """``doc`` itself when it is a results document whose medians are finite and positive, else a UserError."""
    if not is_results_doc(doc):
        raise UserError(f"{source}: not a benchmark results file (no 'benchmarks' list); {WHAT_TO_DO}")
    for i, bench in enumerate(doc["benchmarks"]):
        median = bench.get("stats", {}).get("median") if isinstance(bench, dict) else None
        if not isinstance(bench, dict) or not isinstance(bench.get("name"), str):
            raise UserError(f"{source}: benchmarks[{i}] has no name; {WHAT_TO_DO}")
        if not isinstance(median, int | float) or isinstance(median, bool) or not math.isfinite(median) or median <= 0:
            raise UserError(f"{source}: benchmarks[{i}] ({bench['name']}) has no finite positive median "
                            f"(got {median!r}); {WHAT_TO_DO}")
    return doc


def load_results(path: str | Path) -> dict:
    """Read and check one results file; any other file is a UserError naming it and what to pass instead."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; {WHAT_TO_DO}")
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"{path}: not a benchmark results file (not JSON); {WHAT_TO_DO}") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror}); {WHAT_TO_DO}") from None
    return check_results(doc, str(path))


def result_files(results_dir: Path) -> list[Path]:
    """The results files directly in ``results_dir``, by name (other JSON files there are skipped)."""
    out = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if is_results_doc(doc):
            out.append(path)
    return out


def machine_line(machine: dict[str, Any]) -> str:
    """One line naming the machine of a results file (the GPU when there was one, the CPU, torch, threads)."""
    if not machine:
        return "machine not recorded"
    parts = []
    if machine.get("cuda_device"):
        parts.append(f"{machine['cuda_device']} (CUDA {machine.get('cuda_runtime', '?')})")
    parts.append(f"{machine.get('cpu') or 'CPU'} x{machine.get('cpu_count', '?')}")
    parts.append(f"torch {machine.get('torch', '?')}")
    if machine.get("torch_threads"):
        parts.append(f"{machine['torch_threads']} torch threads")
    return ", ".join(parts)
