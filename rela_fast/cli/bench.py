"""``rela-fast bench``: run the benchmark suites this machine can run and print speed-up ratios."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run benchmark suites (benchmarks/bench_*.py) and print speed-ups over their baselines"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", action="append", help="suite name (repeatable; default: all); see --list")
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/<machine>-<date>.json)")
    parser.add_argument("--report", type=Path, help="print the ratio table of an existing results JSON and exit")


def run(args: argparse.Namespace) -> int:
    import json

    from rela_fast import benchreport
    from rela_fast.errors import UserError

    if args.list:
        print("\n".join(benchreport.available_suites()))
        return 0
    if args.report:
        if not args.report.is_file():
            raise UserError(f"--report {args.report}: no such file")
        results = json.loads(args.report.read_text())
    else:
        results, out = benchreport.run_suites(args.suite, args.out)
        print(f"results written to {out}")
    machine = results.get("rela_fast", {}).get("machine", {})
    print(f"machine: {machine.get('cuda_device') or machine.get('cpu')} x{machine.get('cpu_count')}, "
          f"torch {machine.get('torch')}")
    print(benchreport.format_table(benchreport.ratios(results)))
    return 0
