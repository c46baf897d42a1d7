"""README sections from committed results: "Performance" (benchmark ratios), "Results" (the headline), and
the short summary (:mod:`rela_fast.bench.summary`).

Every figure carries its command and the machine it ran on:

* Performance: each results file in ``benchmarks/results/*.json``, one ratio table per file, with the
  file's command, date and machine.
* Results: each headline experiment folder (``benchmarks/results/headline*/`` holding ``summary.json``, or
  the older ``results.json``):
  its ``table.md`` (mean +- std over seeds, plus the claim checks), its plot and its ``commands.txt``.

Paths in the text are relative to ``base`` (the README's folder when splicing), so links and images resolve.

A file names what it wants by its markers: the full sections go between :data:`START` and :data:`END`
(``benchmarks/results/README.md``), the summary between :data:`SUMMARY_START` and :data:`SUMMARY_END` (the
top-level README); :func:`update_file` fills every pair a file holds.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from rela_fast.bench.ratios import ratio_table, ratios
from rela_fast.bench.results import load_results, machine_line, read_text, result_files
from rela_fast.errors import UserError
from rela_fast.outputs import inside, read_bounded

START, END = "<!-- report:start -->", "<!-- report:end -->"
SUMMARY_START, SUMMARY_END = "<!-- report:summary:start -->", "<!-- report:summary:end -->"


def performance_section(results_dir: Path, base: Path | None = None) -> str:
    """The README "Performance" section: one speed-up table per results file in ``results_dir``."""
    lines = ["## Performance", ""]
    files = result_files(results_dir)
    if not files:
        lines.append(f"No benchmark results committed yet (`rela-fast bench run` writes them to "
                     f"{_rel(results_dir, base)}/).")
        return "\n".join(lines) + "\n"
    lines += ["Speed-ups are ratios of medians of variants measured side by side in one run (pytest-benchmark); "
              "print one file's table with `rela-fast bench report FILE`.", ""]
    for path in files:
        doc = load_results(path, results_dir)
        meta = doc.get("rela_fast", {})
        lines += [f"### {path.stem}", "",
                  f"Command: `{meta.get('command', 'rela-fast bench run')}`; machine: "
                  f"{machine_line(meta.get('machine', {}))}; date: {meta.get('date', '?')}; file: "
                  f"`{_rel(path, base)}`.", ""]
        rows = ratios(doc)
        lines += [ratio_table(rows, fmt="markdown") if rows else "(no baseline comparisons in this file)", ""]
    return "\n".join(lines)


def results_section(results_dir: Path, base: Path | None = None) -> str:
    """The README "Results" section: each headline experiment's table, claim checks, plot and command.

    Every file read must lie inside ``results_dir`` (a link pointing out of it is refused)."""
    lines = ["## Results", ""]
    dirs = sorted(p for p in Path(results_dir).glob("headline*")
                  if (p / "summary.json").is_file() or (p / "results.json").is_file())
    if not dirs:
        lines.append("No headline results committed yet (`python benchmarks/headline.py` writes them).")
        return "\n".join(lines) + "\n"
    what = "regenerate it with `python benchmarks/headline.py --report --out DIR`"
    for d in dirs:
        inside(d, results_dir)
        lines += [f"### {d.name}", ""]
        table = d / "table.md"
        if table.is_file():
            lines.append(read_text(table, what, results_dir).strip())
        else:
            lines.append(f"(`{_rel(d, base)}` has runs but no table yet: "
                         f"`python benchmarks/headline.py --report --out {_rel(d, base)}`)")
        lines.append("")
        if (d / "plot.png").is_file():
            inside(d / "plot.png", results_dir)
            lines += [f"![{d.name}]({_rel(d / 'plot.png', base)})", ""]
        cmds = d / "commands.txt"
        if cmds.is_file():
            lines += ["```bash", read_text(cmds, what, results_dir).strip(), "```", ""]
    return "\n".join(lines)


def report_text(results_dir: Path, section: str = "all", base: Path | None = None) -> str:
    """The chosen sections (``all``, ``performance`` or ``results``) as one markdown text."""
    parts = []
    if section in ("all", "performance"):
        parts.append(performance_section(results_dir, base))
    if section in ("all", "results"):
        parts.append(results_section(results_dir, base))
    return "\n".join(parts)


def summary_text(results_dir: Path, base: Path | None = None) -> str:
    """The short summary (claim and speed tables) for a README in ``base``."""
    from rela_fast.bench.summary import summary_section

    full = _rel(Path(results_dir) / "README.md", base)
    return summary_section(results_dir, lambda p: _rel(p, base), full)


def update_file(readme: Path, results_dir: Path) -> list[str]:
    """Fill every marked block of ``readme`` (paths relative to its folder); returns what was written.

    A file with neither marker pair is left untouched and reported as a UserError.
    """
    try:
        doc = read_bounded(readme, MAX_README_BYTES, "pass the README.md to update").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{readme}: cannot read it as text ({exc}); pass the README.md to update") from None
    base, done = Path(readme).resolve().parent, []
    if SUMMARY_START in doc or SUMMARY_END in doc:
        splice_readme(readme, summary_text(results_dir, base), (SUMMARY_START, SUMMARY_END))
        done.append("summary")
    if START in doc or END in doc or not done:
        splice_readme(readme, report_text(results_dir, "all", base))
        done.append("performance and results")
    return done


def splice_readme(readme: Path, text: str, markers: tuple[str, str] = (START, END)) -> None:
    """Replace what stands between the ``markers`` (START and END by default) of ``readme`` with ``text``.

    The rest of the file is kept byte for byte, its line endings included (the new text takes the file's:
    CRLF when the file uses CRLF). Marker text inside ``text`` (a table quoting a marker) is escaped, so the
    file keeps exactly one pair. A file without exactly one start marker before one end marker is left
    untouched and reported as a UserError. See :func:`_write_in_place` for how the file is replaced.
    """
    start, end = markers
    readme = Path(readme)
    try:
        raw = read_bounded(readme, MAX_README_BYTES, "pass the README.md to update")
        doc = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{readme}: cannot read it as text ({exc}); pass the README.md to update") from None
    if doc.count(start) != 1 or doc.count(end) != 1 or doc.index(start) > doc.index(end):
        raise UserError(f"{readme}: needs exactly one {start} followed by one {end}; add them around the "
                        f"generated sections")
    head, rest = doc.split(start)
    _, tail = rest.split(end)
    nl = "\r\n" if doc.count("\r\n") * 2 > doc.count("\n") else "\n"  # the file's own line ending
    body = nl.join(_escape_markers(text.strip()).splitlines())
    _write_in_place(readme, f"{head}{start}{nl}{body}{nl}{end}{tail}")  # head and tail byte for byte


MAX_README_BYTES = 16 << 20


def _escape_markers(text: str) -> str:
    """``text`` with every report marker's ``<!--`` written as ``&lt;!--`` (shown the same, never a marker)."""
    for marker in (START, END, SUMMARY_START, SUMMARY_END):
        text = text.replace(marker, marker.replace("<!--", "&lt;!--", 1))
    return text


def _write_in_place(readme: Path, text: str) -> None:
    """Replace ``readme``'s content with ``text``.

    A README is the user's file that rela_fast edits between markers, so its identity is kept: a symlinked
    README has its target updated (the link stays a link). The usual write is a temporary file in the
    target's folder, fsynced and renamed onto it with ``os.replace`` (atomic: a crash leaves the old or the
    new README). A file with several hard links is instead rewritten in place (``os.replace`` would give
    this name a new inode and silently split it from its other names); that is one write of the finished
    text, a truncate and an fsync, so only a crash inside that window can leave it torn.
    """
    target = readme.resolve()
    data = text.encode("utf-8")
    if target.stat().st_nlink > 1:
        with open(target, "r+b") as f:
            f.write(data)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, target.stat().st_mode & 0o7777)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _rel(path: Path, base: Path | None) -> str:
    """``path`` relative to ``base`` (default: the working directory) when inside it, else as given."""
    try:
        return Path(path).resolve().relative_to(Path(base or Path.cwd()).resolve()).as_posix()
    except ValueError:
        return str(path)
