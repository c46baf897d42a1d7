"""Developer tooling for benchmarks, behind ``rela-fast bench run|report|readme``.

* :mod:`~rela_fast.bench.suites`: find a checkout's ``benchmarks/`` folder and run its pytest-benchmark suites;
* :mod:`~rela_fast.bench.results`: read and check the result files they write;
* :mod:`~rela_fast.bench.ratios`: per-group speed-ups of variants over baselines, and their table;
* :mod:`~rela_fast.bench.readme`: the README's generated "Performance" and "Results" sections.
"""

from __future__ import annotations

from rela_fast.bench.ratios import Ratio, ratio_table, ratios
from rela_fast.bench.readme import performance_section, report_text, results_section, splice_readme
from rela_fast.bench.results import load_results, machine_line, result_files
from rela_fast.bench.suites import available_suites, find_bench_dir, run_suites

__all__ = [
    "Ratio", "available_suites", "find_bench_dir", "load_results", "machine_line", "performance_section",
    "ratio_table", "ratios", "report_text", "result_files", "results_section", "run_suites", "splice_readme",
]
