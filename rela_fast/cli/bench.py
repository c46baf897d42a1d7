"""``rela-fast bench run|report|readme``: run the benchmark suites, print a results file, update README.

The suites live in a source checkout's ``benchmarks/`` folder, found from the working directory upward
or named with ``--bench-dir``. The old spellings ``rela-fast bench [--suite NAME] [--out FILE]`` and
``rela-fast bench --report FILE`` still work (hidden, with a note on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "run benchmark suites (benchmarks/bench_*.py), print speed-up tables, regenerate README's results"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_action", metavar="ACTION")
    run_p = sub.add_parser("run", help="run suites; write benchmarks/results/<machine>-<date>.json; print speed-ups",
                           description="Run the pytest-benchmark suites in one process and print each variant's "
                                       "speed-up over its baselines.")
    run_p.add_argument("--suite", action="append", help="suite name (repeatable; default: all); see --list")
    run_p.add_argument("--list", action="store_true", help="list the suites and exit")
    run_p.add_argument("--out", type=Path, help="results JSON to write (default benchmarks/results/<machine>-<date>"
                                                ".json; an existing file is never overwritten)")
    _bench_dir_argument(run_p)
    report_p = sub.add_parser("report", help="print the speed-up table of a results file",
                              description="Print the machine and the speed-up table of one results file.")
    report_p.add_argument("file", type=Path, help="a results JSON written by `rela-fast bench run`")
    report_p.add_argument("--format", choices=("text", "markdown"), default="text", help="table format")
    readme_p = sub.add_parser("readme", help="regenerate the README sections made from benchmarks/results/",
                              description="In each file, replace the text between <!-- report:start --> and "
                                          "<!-- report:end --> with every table, and the text between "
                                          "<!-- report:summary:start --> and <!-- report:summary:end --> with the "
                                          "short summary, generated from benchmarks/results/.")
    readme_p.add_argument("readme", type=Path, nargs="*",
                          help="the files to update, e.g. README.md benchmarks/results/README.md (omit with --print)")
    readme_p.add_argument("--print", action="store_true", help="print the sections instead of updating a file")
    readme_p.add_argument("--section", choices=("all", "performance", "results", "summary"), default="all",
                          help="which generated section to fill or print (default: all)")
    readme_p.add_argument("--results", type=Path, help="the results folder (default: <bench-dir>/results)")
    _bench_dir_argument(readme_p, "default: found from README's folder upward")
    # the old spellings, kept working: rela-fast bench [--suite S] [--list] [--out F] | --report FILE
    for flag, kw in (("--suite", {"action": "append"}), ("--list", {"action": "store_true"}),
                     ("--out", {"type": Path}), ("--report", {"type": Path})):
        parser.add_argument(flag, dest=f"old_{flag[2:]}", help=argparse.SUPPRESS, **kw)


def _bench_dir_argument(parser: argparse.ArgumentParser, where: str = "default: found from here upward") -> None:
    parser.add_argument("--bench-dir", type=Path, help=f"the checkout's benchmarks/ folder ({where})")


def run(args: argparse.Namespace) -> int:
    from rela_fast.errors import UserError

    action = args.bench_action
    if action is None and not (args.old_report or args.old_suite or args.old_list or args.old_out):
        raise UserError("choose an action: run, report FILE or readme README.md (see rela-fast bench --help)")
    if action is None:  # the old spellings
        new = "report FILE" if args.old_report else "run [--suite NAME]"
        print(f"rela-fast bench: note: this spelling is deprecated; use `rela-fast bench {new}`", file=sys.stderr)
        if args.old_report:
            return _report(args.old_report, "text")
        return _run(args.old_suite, args.old_list, args.old_out, None)
    if action == "run":
        return _run(args.suite, args.list, args.out, args.bench_dir)
    if action == "report":
        return _report(args.file, args.format)
    return _readme(args)


def _run(suites: list[str] | None, list_only: bool, out: Path | None, bench_dir: Path | None) -> int:
    from rela_fast.bench import available_suites, find_bench_dir, run_suites

    bdir = find_bench_dir(bench_dir)
    if list_only:
        print("\n".join(available_suites(bdir)))
        return 0
    results, path = run_suites(bdir, suites, out)
    print(f"results written to {path}")
    _print_table(results, "text")
    exit_code = results["rela_fast"]["pytest_exit"]
    if exit_code != 0:
        print(f"rela-fast bench: pytest exited with {exit_code}: some benchmarks failed or were skipped "
              f"(see above); {path} holds the rest", file=sys.stderr)
        return 1
    return 0


def _report(file: Path, fmt: str) -> int:
    from rela_fast.bench import load_results

    _print_table(load_results(file), fmt)
    return 0


def _print_table(results: dict, fmt: str) -> None:
    from rela_fast.bench import machine_line, ratio_table, ratios

    meta = results.get("rela_fast", {})
    print(f"machine: {machine_line(meta.get('machine', {}))}; date: {meta.get('date', '?')}; "
          f"command: {meta.get('command', '?')}")
    print(ratio_table(ratios(results), fmt=fmt))


def _readme(args: argparse.Namespace) -> int:
    from rela_fast.bench import find_bench_dir, report_text
    from rela_fast.bench.readme import summary_text, update_file
    from rela_fast.errors import UserError

    if bool(args.readme) == args.print:
        raise UserError("give the README.md files to update, or --print to print the sections")
    for readme in args.readme:
        if not readme.is_file():
            raise UserError(f"{readme}: no such file; pass a README.md holding <!-- report:start --> or "
                            "<!-- report:summary:start -->")
    start = args.readme[0].resolve().parent if args.readme else None
    results = args.results or find_bench_dir(args.bench_dir, start) / "results"
    if not results.is_dir():
        raise UserError(f"--results {results}: no such folder; pass the benchmarks/results folder")
    if not args.readme:
        print(summary_text(results) if args.section == "summary" else report_text(results, args.section))
        return 0
    for readme in args.readme:
        print(f"updated {readme} ({', '.join(update_file(readme, results))})")
    return 0
