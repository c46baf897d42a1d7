"""README sections from committed results: "Performance" (benchmark ratios) and "Results" (the headline).

``python -m rela_fast.report [--results benchmarks/results] [--section performance|results|all]`` prints
markdown for the lead to paste into README. Every figure carries its command and the machine it ran on:

* Performance: every pytest-benchmark JSON written by ``rela-fast bench`` (``benchmarks/results/*.json``),
  one table per file: per group, each variant's speed-up over each baseline (ratio of medians, as
  :mod:`rela_fast.benchreport` computes it), with the file's command, date and machine.
* Results: every headline experiment folder (``benchmarks/results/headline*/`` holding ``results.json``):
  its ``table.md`` (mean +- std over seeds, plus the claim checks), its plot and its ``commands.txt``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def machine_line(machine: dict[str, Any]) -> str:
    """One line naming the machine of a benchmark file (GPU when there was one, else the CPU)."""
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


def bench_files(results_dir: Path) -> list[Path]:
    """The pytest-benchmark documents in ``results_dir`` (files with a ``benchmarks`` list), by name."""
    out = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list):
            out.append(path)
    return out


def performance_section(results_dir: Path = DEFAULT_RESULTS) -> str:
    """The README "Performance" section: one speed-up table per committed benchmark file."""
    from rela_fast.benchreport import ratios

    lines = ["## Performance", ""]
    files = bench_files(results_dir)
    if not files:
        lines.append(f"No benchmark results committed yet (`rela-fast bench` writes them to {_rel(results_dir)}/).")
        return "\n".join(lines) + "\n"
    lines += ["Speed-ups are ratios of medians of variants measured side by side in one run (pytest-benchmark); "
              "regenerate a table with `rela-fast bench --report FILE`.", ""]
    for path in files:
        doc = json.loads(path.read_text())
        meta = doc.get("rela_fast", {})
        rows = ratios(doc)
        lines.append(f"### {path.stem}")
        lines.append("")
        lines.append(f"Command: `{meta.get('command', 'rela-fast bench')}`; machine: "
                     f"{machine_line(meta.get('machine', {}))}; date: {meta.get('date', '?')}; file: "
                     f"`{_rel(path)}`.")
        lines.append("")
        if not rows:
            lines.append("(no baseline comparisons in this file)")
            lines.append("")
            continue
        lines.append("| group | variant | baseline | variant (ms) | baseline (ms) | speed-up |")
        lines.append("|---|---|---|---:|---:|---:|")
        for r in rows:
            lines.append(f"| {r.group} | {r.variant} | {r.baseline} | {r.variant_median_s * 1e3:.3f} | "
                         f"{r.baseline_median_s * 1e3:.3f} | {r.speedup:.2f}x |")
        lines.append("")
    return "\n".join(lines)


def headline_dirs(results_dir: Path) -> list[Path]:
    return sorted(p for p in Path(results_dir).glob("headline*") if (p / "results.json").is_file())


def results_section(results_dir: Path = DEFAULT_RESULTS) -> str:
    """The README "Results" section: each headline experiment's table, claim checks, plot and command."""
    lines = ["## Results", ""]
    dirs = headline_dirs(results_dir)
    if not dirs:
        lines.append("No headline results committed yet (`python benchmarks/headline.py` writes them).")
        return "\n".join(lines) + "\n"
    for d in dirs:
        lines.append(f"### {d.name}")
        lines.append("")
        table = d / "table.md"
        if table.is_file():
            lines.append(table.read_text().strip())
        else:
            lines.append(f"(`{_rel(d)}/results.json` has runs but no table yet: "
                         f"`python benchmarks/headline.py --report --out {_rel(d)}`)")
        lines.append("")
        if (d / "plot.png").is_file():
            lines.append(f"![{d.name}]({_rel(d / 'plot.png')})")
            lines.append("")
        cmds = d / "commands.txt"
        if cmds.is_file():
            lines.append("```bash")
            lines.append(cmds.read_text().strip())
            lines.append("```")
            lines.append("")
    return "\n".join(lines)


START, END = "<!-- report:start -->", "<!-- report:end -->"


def splice_readme(readme: Path, text: str) -> None:
    """Replace what stands between the START and END markers of ``readme`` with ``text`` (atomically)."""
    doc = Path(readme).read_text()
    if doc.count(START) != 1 or doc.count(END) != 1 or doc.index(START) > doc.index(END):
        raise ValueError(f"needs exactly one {START} followed by one {END}")
    head, rest = doc.split(START)
    _, tail = rest.split(END)
    tmp = Path(readme).with_suffix(".tmp")
    tmp.write_text(f"{head}{START}\n{text.strip()}\n{END}{tail}")
    tmp.replace(readme)


def _rel(path: Path) -> str:
    root = DEFAULT_RESULTS.parent.parent
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rela_fast.report", description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="the results folder (benchmarks/results)")
    p.add_argument("--section", choices=("all", "performance", "results"), default="all")
    p.add_argument("--readme", type=Path, help=f"replace the text between {START} and {END} in this file")
    args = p.parse_args(argv)
    if not args.results.is_dir():
        print(f"python -m rela_fast.report: error: --results {args.results}: no such folder", file=sys.stderr)
        return 2
    parts = []
    if args.section in ("all", "performance"):
        parts.append(performance_section(args.results))
    if args.section in ("all", "results"):
        parts.append(results_section(args.results))
    text = "\n".join(parts)
    if args.readme is None:
        print(text)
        return 0
    try:
        splice_readme(args.readme, text)
    except (OSError, ValueError) as exc:
        print(f"python -m rela_fast.report: error: --readme {args.readme}: {exc}", file=sys.stderr)
        return 2
    print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
