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
from rela_fast.outputs import inside, read_bounded

WHAT_TO_DO = "pass a JSON file that `rela-fast bench run` wrote (benchmarks/results/*.json)"


MAX_RESULTS_BYTES = 64 << 20  # pytest-benchmark JSON of a few hundred benchmarks is well under 1 MB


def is_results_doc(doc: Any) -> bool:
    """Whether ``doc`` looks like a benchmark results document (a dict holding a ``benchmarks`` list)."""
    return isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list)


def _finite_positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _check_bench(bench: Any, i: int, source: str) -> None:
    """One entry of ``benchmarks``: a name, an optional group, dict-shaped extra_info and stats, a median."""
    if not isinstance(bench, dict) or not isinstance(bench.get("name"), str):
        raise UserError(f"{source}: benchmarks[{i}] has no name; {WHAT_TO_DO}")
    name = bench["name"]
    if not isinstance(bench.get("group"), str | None):
        raise UserError(f"{source}: benchmarks[{i}] ({name}): 'group' is not text; {WHAT_TO_DO}")
    for key in ("extra_info", "stats"):
        if not isinstance(bench.get(key, {}), dict):
            raise UserError(f"{source}: benchmarks[{i}] ({name}): {key!r} is not an object; {WHAT_TO_DO}")
    if not isinstance(bench.get("extra_info", {}).get("variant"), str | None):
        raise UserError(f"{source}: benchmarks[{i}] ({name}): extra_info.variant is not text; {WHAT_TO_DO}")
    median = bench.get("stats", {}).get("median")
    if not _finite_positive(median):
        raise UserError(f"{source}: benchmarks[{i}] ({name}) has no finite positive median "
                        f"(got {str(median)[:40]}); {WHAT_TO_DO}")


def check_results(doc: Any, source: str) -> dict:
    """``doc`` itself when it is a results document of the right shape (every field the reports read has
    its type; medians finite and positive), else a one-line UserError naming ``source``."""
    if not is_results_doc(doc):
        raise UserError(f"{source}: not a benchmark results file (no 'benchmarks' list); {WHAT_TO_DO}")
    for i, bench in enumerate(doc["benchmarks"]):
        _check_bench(bench, i, source)
    meta = doc.get("rela_fast", {})
    if not isinstance(meta, dict) or not isinstance(meta.get("machine", {}), dict):
        raise UserError(f"{source}: its 'rela_fast' block (command, machine, date) is not an object; {WHAT_TO_DO}")
    return doc


def read_text(path: str | Path, what: str, root: str | Path | None = None,
              limit: int = MAX_RESULTS_BYTES) -> str:
    """The UTF-8 text of ``path``: refused when it is a link out of ``root`` (a results folder), larger than
    ``limit`` bytes (checked before reading), or not UTF-8. ``what`` says what to pass instead."""
    if root is not None:
        inside(path, root)
    data = read_bounded(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; {what}") from None


def load_results(path: str | Path, root: str | Path | None = None) -> dict:
    """Read and check one results file; any other file is a UserError naming it and what to pass instead.

    With ``root`` (the results folder being read) a link pointing out of it is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; {WHAT_TO_DO}")
    text = read_text(path, WHAT_TO_DO, root)
    try:
        doc = json.loads(text)
    except ValueError:
        raise UserError(f"{path}: not a benchmark results file (not JSON); {WHAT_TO_DO}") from None
    except RecursionError:
        raise UserError(f"{path}: not a benchmark results file (nested too deeply); {WHAT_TO_DO}") from None
    return check_results(doc, str(path))


def result_files(results_dir: Path) -> list[Path]:
    """The results files directly in ``results_dir``, by name (other JSON files there are skipped; a link
    pointing out of the folder, or a file over :data:`MAX_RESULTS_BYTES`, is refused)."""
    out = []
    for path in sorted(Path(results_dir).glob("*.json")):
        inside(path, results_dir)
        data = read_bounded(path, MAX_RESULTS_BYTES, "keep only benchmark results in the results folder")
        try:
            doc = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError):  # not JSON, not UTF-8: another kind of file, skipped
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
