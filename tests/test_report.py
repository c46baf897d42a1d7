"""README sections from committed results: benchmark speed-ups and the headline experiment."""

from __future__ import annotations

import json

from rela_fast.report import main, performance_section, results_section


def _bench(name, group, variant, baseline, median):
    return {"name": name, "group": group, "stats": {"median": median},
            "extra_info": {"suite": group.split(":")[0], "variant": variant, "baseline": baseline}}


def _write_bench(path, medians):
    doc = {"benchmarks": [_bench("t_ref", "loss: 8x4", "reference", True, medians[0]),
                          _bench("t_cpp", "loss: 8x4", "cpp", False, medians[1]),
                          _bench("t_other", "select: 100", "only", False, 1.0)],
           "rela_fast": {"command": "rela-fast bench --suite loss", "date": "2026-11-24",
                         "machine": {"cpu": "x86_64", "cpu_count": 2, "torch": "2.14.1", "torch_threads": 1}}}
    path.write_text(json.dumps(doc))


def test_performance_section_lists_each_ratio_with_command_and_machine(tmp_path):
    _write_bench(tmp_path / "m-2026-11-24.json", (0.003, 0.0012))
    (tmp_path / "notes.json").write_text(json.dumps({"not": "a benchmark file"}))
    text = performance_section(tmp_path)
    assert text.startswith("## Performance")
    assert "`rela-fast bench --suite loss`" in text and "x86_64 x2" in text and "torch 2.14.1" in text
    row = [ln for ln in text.splitlines() if ln.startswith("| loss: 8x4")]
    assert row == [f"| loss: 8x4 | cpp | reference | 1.200 | 3.000 | {0.003 / 0.0012:.2f}x |"]
    assert "select: 100" not in text  # no baseline in its group: no ratio
    assert "notes" not in text


def test_results_section_embeds_table_plot_and_commands(tmp_path):
    d = tmp_path / "headline-cpu"
    d.mkdir()
    (d / "results.json").write_text(json.dumps({"runs": {}}))
    (d / "table.md").write_text("| method | acc |\n|---|---|\n| BYOL | 70.00 +- 0.10 |\n")
    (d / "plot.png").write_bytes(b"\x89PNG")
    (d / "commands.txt").write_text("python benchmarks/headline.py --out x\n")
    text = results_section(tmp_path)
    assert "### headline-cpu" in text and "| BYOL | 70.00 +- 0.10 |" in text
    assert "plot.png)" in text and "python benchmarks/headline.py --out x" in text


def test_empty_and_missing_folders(tmp_path, capsys):
    assert "No benchmark results committed yet" in performance_section(tmp_path)
    assert "No headline results committed yet" in results_section(tmp_path)
    assert main(["--results", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "## Performance" in out and "## Results" in out


def test_readme_splice_replaces_only_the_marked_block(tmp_path, capsys):
    _write_bench(tmp_path / "m-2026-11-24.json", (0.004, 0.001))
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nintro\n<!-- report:start -->\nstale\n<!-- report:end -->\n\n## After\nkept\n")
    assert main(["--results", str(tmp_path), "--readme", str(readme)]) == 0
    doc = readme.read_text()
    assert doc.startswith("# title\n\nintro\n<!-- report:start -->\n## Performance")
    assert "stale" not in doc and "| loss: 8x4 | cpp | reference | 1.000 | 4.000 | 4.00x |" in doc
    assert doc.endswith("<!-- report:end -->\n\n## After\nkept\n")
    broken = tmp_path / "BROKEN.md"
    broken.write_text("no markers here\n")
    assert main(["--results", str(tmp_path), "--readme", str(broken)]) == 2
    assert "report:start" in capsys.readouterr().err
    assert broken.read_text() == "no markers here\n"
