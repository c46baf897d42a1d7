"""``rela-fast bench run|report|readme``: suites found from the working directory, result files checked,
speed-up ratios, and the README sections generated from committed results."""

from __future__ import annotations

import json
import math
import random
import stat
from pathlib import Path

import pytest

from rela_fast.bench import find_bench_dir, load_results, performance_section, ratios, results_section
from rela_fast.cli import main
from rela_fast.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def _bench(name, group, median, variant, baseline):
    return {"name": name, "group": group, "stats": {"median": median},
            "extra_info": {"suite": group.split(":")[0], "variant": variant, "baseline": baseline}}


def _write_bench(path, medians):
    doc = {"benchmarks": [_bench("t_ref", "loss: 8x4", medians[0], "reference", True),
                          _bench("t_cpp", "loss: 8x4", medians[1], "cpp", False),
                          _bench("t_other", "select: 100", 1.0, "only", False)],
           "rela_fast": {"command": "rela-fast bench run --suite loss", "date": "2026-11-24",
                         "machine": {"cpu": "x86_64", "cpu_count": 2, "torch": "2.14.1", "torch_threads": 1}}}
    path.write_text(json.dumps(doc))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# -- ratios ------------------------------------------------------------------------------------------------


def test_ratios_pair_each_variant_with_each_baseline_within_its_group():
    rng = random.Random()
    medians = {k: rng.uniform(1e-4, 1.0) for k in ("eager", "compiled", "fused", "other_eager", "other_fused")}
    results = {"benchmarks": [
        _bench("a", "loss: s", medians["eager"], "eager", True),
        _bench("b", "loss: s", medians["compiled"], "compiled", True),
        _bench("c", "loss: s", medians["fused"], "fused", False),
        _bench("d", "loss: t", medians["other_eager"], "eager", True),
        _bench("e", "loss: t", medians["other_fused"], "fused", False),
    ]}
    rows = {(r.group, r.variant, r.baseline): r.speedup for r in ratios(results)}
    assert set(rows) == {("loss: s", "fused", "eager"), ("loss: s", "fused", "compiled"), ("loss: t", "fused", "eager")}
    assert rows[("loss: s", "fused", "eager")] == pytest.approx(medians["eager"] / medians["fused"])
    assert rows[("loss: s", "fused", "compiled")] == pytest.approx(medians["compiled"] / medians["fused"])
    assert rows[("loss: t", "fused", "eager")] == pytest.approx(medians["other_eager"] / medians["other_fused"])


@pytest.mark.parametrize("path", sorted((REPO / "benchmarks" / "results").glob("*.json")), ids=lambda p: p.name)
def test_committed_results_give_the_ratios_recorded_when_they_were_run(path):
    doc = load_results(path)
    recorded = {(r["group"], r["variant"], r["baseline"]): r["speedup"] for r in doc["rela_fast"]["ratios"]}
    now = {(r.group, r.variant, r.baseline): r.speedup for r in ratios(doc)}
    assert now.keys() == recorded.keys() and recorded
    for key, value in now.items():
        assert value == pytest.approx(recorded[key], rel=1e-12), key


# -- rela-fast bench report ------------------------------------------------------------------------------


def test_report_prints_machine_and_table(tmp_path, capsys):
    path = tmp_path / "r.json"
    _write_bench(path, (0.002, 0.0005))
    assert main(["bench", "report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "x86_64 x2, torch 2.14.1" in out and "rela-fast bench run --suite loss" in out
    row = next(ln for ln in out.splitlines() if ln.startswith("loss: 8x4"))
    assert row.split() == ["loss:", "8x4", "cpp", "reference", "0.500", "2.000", "4.00x"]
    assert main(["bench", "report", str(path), "--format", "markdown"]) == 0
    assert "| loss: 8x4 | cpp | reference | 0.500 | 2.000 | 4.00x |" in capsys.readouterr().out


def test_report_old_spelling_still_works_with_a_note(tmp_path, capsys):
    path = tmp_path / "r.json"
    _write_bench(path, (0.002, 0.0005))
    assert main(["bench", "--report", str(path)]) == 0
    captured = capsys.readouterr()
    assert "4.00x" in captured.out and "rela-fast bench report FILE" in captured.err


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {"missing": tmp_path / "missing.json", "folder": tmp_path}
    for name, content in {"text.txt": "root:x:0:0:root:/root:/bin/bash\n", "list.json": "[1, 2]",
                          "other.json": json.dumps({"runs": {}}), "empty.json": ""}.items():
        files[name] = tmp_path / name
        files[name].write_text(content)
    files["binary"] = tmp_path / "blob.bin"
    files["binary"].write_bytes(bytes(range(256)))
    for name, median in {"nan": math.nan, "inf": math.inf, "zero": 0.0, "negative": -1.0, "string": "1"}.items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps({"benchmarks": [_bench("a", "g", median, "v", True)]}))
    files["no_stats"] = tmp_path / "no_stats.json"
    files["no_stats"].write_text(json.dumps({"benchmarks": [{"name": "a"}]}))
    return files


def test_report_of_a_non_result_file_is_a_one_line_error(tmp_path, capsys):
    for name, path in [("passwd", Path("/etc/passwd")), *_bad_files(tmp_path).items()]:
        if name == "passwd" and not path.is_file():
            continue
        assert main(["bench", "report", str(path)]) == 2, name
        err = _one_line_error(capsys)
        assert str(path) in err and "rela-fast bench run" in err, (name, err)
        assert capsys.readouterr().out == ""


def test_readme_skips_other_json_but_rejects_a_broken_results_file(tmp_path):
    (tmp_path / "notes.json").write_text(json.dumps({"not": "a benchmark file"}))
    (tmp_path / "junk.json").write_bytes(b"\xff\xfe")
    assert "No benchmark results" in performance_section(tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps({"benchmarks": [_bench("a", "g", math.nan, "v", True)]}))
    with pytest.raises(UserError, match="bad.json"):
        performance_section(tmp_path)


# -- finding benchmarks/ and running suites --------------------------------------------------------------


FAKE_SUITE = '''
def _work(n):
    return sum(range(n))


def test_slow(benchmark):
    benchmark.group = "fake: sum"
    benchmark.extra_info.update(suite="fake", variant="slow", baseline=True)
    benchmark.pedantic(_work, args=(20000,), rounds=3, iterations=1)


def test_fast(benchmark):
    benchmark.group = "fake: sum"
    benchmark.extra_info.update(suite="fake", variant="fast", baseline=False)
    benchmark.pedantic(_work, args=(10,), rounds=3, iterations=1)
'''


@pytest.fixture
def checkout(tmp_path):
    """A fake source checkout: checkout/benchmarks/bench_fake.py and checkout/src/deep/."""
    bench = tmp_path / "checkout" / "benchmarks"
    bench.mkdir(parents=True)
    (bench / "bench_fake.py").write_text(FAKE_SUITE)
    (tmp_path / "checkout" / "src" / "deep").mkdir(parents=True)
    return tmp_path / "checkout"


def test_benchmarks_folder_is_found_from_the_working_directory_upward(checkout, tmp_path, monkeypatch, capsys):
    bench = checkout / "benchmarks"
    for where in (checkout, checkout / "src" / "deep", bench):
        assert find_bench_dir(start=where).resolve() == bench.resolve()
    monkeypatch.chdir(checkout / "src" / "deep")
    assert main(["bench", "run", "--list"]) == 0
    assert capsys.readouterr().out.split() == ["fake"]
    assert main(["bench", "run", "--list", "--bench-dir", str(tmp_path / "nope")]) == 2
    assert "--bench-dir" in _one_line_error(capsys)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    with pytest.raises(UserError, match="--bench-dir"):
        find_bench_dir(start=lonely)


def test_unknown_suite_is_a_one_line_error(checkout, capsys):
    assert main(["bench", "run", "--bench-dir", str(checkout / "benchmarks"), "--suite", "no_such_suite"]) == 2
    err = _one_line_error(capsys)
    assert "no_such_suite" in err and "fake" in err


def test_run_writes_a_results_file_and_never_overwrites_one(checkout, monkeypatch, capsys):
    pytest.importorskip("pytest_benchmark")
    monkeypatch.chdir(checkout)
    assert main(["bench", "run", "--suite", "fake"]) == 0
    out = capsys.readouterr().out
    written = sorted((checkout / "benchmarks" / "results").glob("*.json"))
    assert len(written) == 1 and "results written to" in out and written[0].name in out
    doc = load_results(written[0])
    assert doc["rela_fast"]["command"] == "rela-fast bench run --suite fake"
    assert doc["rela_fast"]["pytest_exit"] == 0
    [ratio] = ratios(doc)
    assert (ratio.variant, ratio.baseline) == ("fast", "slow") and ratio.speedup > 1
    assert f"{ratio.speedup:.2f}x" in out
    first = written[0].read_bytes()
    assert main(["bench", "run", "--suite", "fake"]) == 0  # same machine, same day: a new name
    again = {p.name for p in (checkout / "benchmarks" / "results").glob("*.json")}
    assert again == {written[0].name, f"{written[0].stem}-2.json"} and written[0].read_bytes() == first
    capsys.readouterr()
    assert main(["bench", "run", "--suite", "fake", "--out", str(written[0])]) == 2
    assert "already exists" in _one_line_error(capsys) and written[0].read_bytes() == first


# -- README sections -------------------------------------------------------------------------------------


def test_performance_section_lists_each_ratio_with_command_and_machine(tmp_path):
    _write_bench(tmp_path / "m-2026-11-24.json", (0.003, 0.0012))
    (tmp_path / "notes.json").write_text(json.dumps({"not": "a benchmark file"}))
    text = performance_section(tmp_path, base=tmp_path)
    assert text.startswith("## Performance")
    assert "`rela-fast bench run --suite loss`" in text and "x86_64 x2" in text and "torch 2.14.1" in text
    assert "file: `m-2026-11-24.json`" in text
    assert "|---|---|---|---:|---:|---:|" in text
    row = [ln for ln in text.splitlines() if ln.startswith("| loss: 8x4")]
    assert row == [f"| loss: 8x4 | cpp | reference | 1.200 | 3.000 | {0.003 / 0.0012:.2f}x |"]
    assert "select: 100" not in text  # no baseline in its group: no ratio
    assert "notes" not in text


def test_results_section_embeds_table_plot_and_commands(tmp_path):
    d = tmp_path / "results" / "headline-cpu"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"runs": {}}))
    (d / "table.md").write_text("| method | acc |\n|---|---|\n| BYOL | 70.00 +- 0.10 |\n")
    (d / "plot.png").write_bytes(b"\x89PNG")
    (d / "commands.txt").write_text("python benchmarks/headline.py --out x\n")
    text = results_section(tmp_path / "results", base=tmp_path)
    assert "### headline-cpu" in text and "| BYOL | 70.00 +- 0.10 |" in text
    assert "![headline-cpu](results/headline-cpu/plot.png)" in text  # relative to the README's folder
    assert "python benchmarks/headline.py --out x" in text


def test_readme_print_and_empty_and_missing_folders(tmp_path, capsys):
    assert "No benchmark results committed yet" in performance_section(tmp_path)
    assert "No headline results committed yet" in results_section(tmp_path)
    assert main(["bench", "readme", "--print", "--results", str(tmp_path / "missing")]) == 2
    assert "no such folder" in _one_line_error(capsys)
    assert main(["bench", "readme", "--print", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "## Performance" in out and "## Results" in out
    assert main(["bench", "readme"]) == 2
    assert "--print" in _one_line_error(capsys)


def test_readme_splice_replaces_only_the_marked_block(checkout, capsys):
    results = checkout / "benchmarks" / "results"
    results.mkdir()
    _write_bench(results / "m-2026-11-24.json", (0.004, 0.001))
    readme = checkout / "README.md"
    readme.write_text("# title\n\nintro\n<!-- report:start -->\nstale\n<!-- report:end -->\n\n## After\nkept\n")
    readme.chmod(0o640)
    assert main(["bench", "readme", str(readme)]) == 0  # benchmarks/ found from the README's folder
    doc = readme.read_text()
    assert doc.startswith("# title\n\nintro\n<!-- report:start -->\n## Performance")
    assert "stale" not in doc and "| loss: 8x4 | cpp | reference | 1.000 | 4.000 | 4.00x |" in doc
    assert "file: `benchmarks/results/m-2026-11-24.json`" in doc
    assert doc.endswith("<!-- report:end -->\n\n## After\nkept\n")
    assert stat.S_IMODE(readme.stat().st_mode) == 0o640
    assert sorted(p.name for p in checkout.iterdir()) == ["README.md", "benchmarks", "src"]  # no temp left
    for broken in ("no markers here\n", "<!-- report:end -->\n<!-- report:start -->\n",
                   "<!-- report:start -->\n<!-- report:start -->\n<!-- report:end -->\n"):
        path = checkout / "BROKEN.md"
        path.write_text(broken)
        assert main(["bench", "readme", str(path)]) == 2
        err = _one_line_error(capsys)
        assert "report:start" in err and str(path) in err
        assert path.read_text() == broken
    assert main(["bench", "readme", str(checkout / "NOPE.md")]) == 2
    assert "NOPE.md" in _one_line_error(capsys)
