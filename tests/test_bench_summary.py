"""The README's generated summary: the claim table (regime test, each ReLA row against the strongest BYOL of
either recipe, overall and at its budget) and the speed table, checked against numbers computed here; and
``rela-fast bench readme`` filling each marked block of several files."""

from __future__ import annotations

import json
import statistics

from rela_fast.bench.readme import SUMMARY_END, SUMMARY_START, summary_text
from rela_fast.bench.summary import claim_section, speed_table
from rela_fast.cli import main


def _row(acc, *, rela=False, prior=None, recipe="default", budget=1.0, variant=None):
    row = {"method": "byol", "rela": rela, "prior": prior, "recipe": recipe, "budget": budget,
           "seeds": list(range(len(acc))), "acc": acc, "steps": round(1000 * budget)}
    if variant:
        row["variant"] = variant
    return row


def _headline(folder, pixels, rows, epochs=30):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"dataset": "fashion-mnist", "student": "convnet-16",
                                                     "epochs": epochs, "baselines": {"pixels": pixels},
                                                     "rows": rows}))


def _bench(path, medians):
    benches = [{"name": f"t{i}", "group": group, "stats": {"median": m},
                "extra_info": {"variant": variant, "baseline": base}}
               for i, (group, variant, base, m) in enumerate(medians)]
    path.write_text(json.dumps({"benchmarks": benches, "rela_fast": {
        "command": "rela-fast bench run --suite select", "date": "2026-12-02",
        "machine": {"cpu": "x86_64", "cpu_count": 2, "torch": "2.14.1"}}}))


def test_claims_against_the_strongest_byol_of_either_recipe(tmp_path):
    rows = [_row([0.84, 0.85]), _row([0.856, 0.858], recipe="authors"),           # strongest BYOL 100 %: authors
            _row([0.83], budget=0.2), _row([0.80, 0.81], recipe="authors", budget=0.2),
            _row([0.861, 0.865, 0.857], rela=True, prior="lite0", budget=0.2),
            _row([0.85], rela=True, prior="random", recipe="authors", budget=0.5, variant="warmheads:200")]
    _headline(tmp_path / "headline-x", 0.83, rows)
    text = "\n".join(claim_section(tmp_path / "headline-x"))
    best = 100 * statistics.fmean([0.856, 0.858])
    assert "**passed**" in text and f"({best - 83:+.2f})" in text and "recipe `authors`, 2 seeds" in text
    lite = [100 * a for a in (0.861, 0.865, 0.857)]
    mean, sd = statistics.fmean(lite), statistics.stdev(lite)
    same_budget = 100 * 0.83  # the default recipe's 20 % beats the authors' here
    line = next(ln for ln in text.splitlines() if ln.startswith("| lite0, default"))
    assert line == (f"| lite0, default | 20 % | {mean:.2f} +- {sd:.2f} | 3 | {mean - best:+.2f} | "
                    f"{mean - same_budget:+.2f} ({same_budget:.2f}, default) |")
    line = next(ln for ln in text.splitlines() if ln.startswith("| random, authors, warmheads:200"))
    assert line.endswith(f"| 1 | {85 - best:+.2f} | - |")  # no BYOL row at 50 %: nothing to compare with
    assert "| 100 % |" not in text  # BYOL rows are references, not claims


def test_the_summary_can_keep_only_rows_with_enough_seeds(tmp_path):
    rows = [_row([0.84, 0.85, 0.845]), _row([0.86, 0.861, 0.859], rela=True, prior="lite0", budget=0.2),
            _row([0.87], rela=True, prior="random", budget=0.1),
            _row([0.85, 0.86], rela=True, prior="byol", budget=0.5)]
    _headline(tmp_path / "headline-x", 0.80, rows)
    every = [ln for ln in "\n".join(claim_section(tmp_path / "headline-x")).splitlines() if ln.startswith("| ")]
    three = claim_section(tmp_path / "headline-x", 3)
    kept = [ln for ln in "\n".join(three).splitlines() if ln.startswith("| ")]
    assert len(every) == len(kept) + 2 and [ln for ln in kept if ln.startswith("| lite0")] == \
        [ln for ln in every if ln.startswith("| lite0")]
    assert not [ln for ln in kept if ln.startswith(("| random", "| byol"))]
    assert "2 more ReLA row(s) with fewer than 3 seeds" in "\n".join(three)


def test_a_folder_where_byol_does_not_learn_gets_one_line_and_no_table(tmp_path):
    _headline(tmp_path / "headline-weak", 0.835, [_row([0.84, 0.842]), _row([0.86], rela=True, prior="lite0",
                                                                              budget=0.5)], epochs=15)
    lines = claim_section(tmp_path / "headline-weak")
    assert len([ln for ln in lines if ln]) == 1
    assert "**failed**" in lines[0] and "+0.60" in lines[0] and "not summarised" in lines[0] and "|" not in lines[0]


def test_speed_table_one_line_per_suite_pair_with_the_range(tmp_path):
    _bench(tmp_path / "m-2026-12-02.json", [
        ("select: topk N=10", "ours", False, 0.001), ("select: topk N=10", "torch.topk", True, 0.004),
        ("select: topk N=99", "ours", False, 0.002), ("select: topk N=99", "torch.topk", True, 0.003),
        ("select: topk N=99", "other", False, 0.0001),  # not the group's first variant: left out
        ("decode: jpeg", "dali", False, 0.5), ("decode: jpeg", "pil", True, 1.0), ("decode: jpeg", "pil2", True, 9.0)])
    text = speed_table(tmp_path, lambda p: p.name)
    assert "| select | ours | torch.topk | 2 | 1.50x - 4.00x | `m-2026-12-02.json` |" in text
    assert "| decode | dali | pil | 1 | 2.00x | `m-2026-12-02.json` |" in text
    assert "other" not in text and "pil2" not in text
    assert "* `m-2026-12-02.json`: x86_64 x2, torch 2.14.1; `rela-fast bench run --suite select`, 2026-12-02." in text


def test_bench_readme_fills_the_summary_and_the_full_report_of_two_files(tmp_path, capsys):
    checkout = tmp_path / "checkout"
    results = checkout / "benchmarks" / "results"
    rows = [_row([0.85]), _row([0.86, 0.85, 0.87], rela=True, prior="lite0", budget=0.5),
            _row([0.9], rela=True, prior="random", budget=0.5)]
    _headline(results / "headline-x", 0.80, rows)
    _bench(results / "m-2026-12-02.json", [("decode: jpeg", "dali", False, 0.5), ("decode: jpeg", "pil", True, 1.0)])
    readme, full = checkout / "README.md", results / "README.md"
    readme.write_text(f"# t\n{SUMMARY_START}\nold\n{SUMMARY_END}\nkept\n")
    full.write_text("# results\n<!-- report:start -->\nold\n<!-- report:end -->\nkept too\n")
    assert main(["bench", "readme", str(readme), str(full), "--results", str(results)]) == 0
    top, bottom = readme.read_text(), full.read_text()
    assert "old" not in top and top.endswith(f"{SUMMARY_END}\nkept\n")
    assert "[benchmarks/results/README.md](benchmarks/results/README.md)" in top  # relative to the README
    assert "| lite0, default | 50 % | 86.00 +- 1.00 | 3 | +1.00 | - |" in top  # the summary: 3 seeds or more
    assert "| random" not in top and "1 more ReLA row(s) with fewer than 3 seeds" in top
    assert "`benchmarks/results/m-2026-12-02.json`" in top and "## Performance" not in top
    assert "## Performance" in bottom and "## Results" in bottom and "file: `m-2026-12-02.json`" in bottom
    assert "old" not in bottom and bottom.endswith("<!-- report:end -->\nkept too\n")
    out = capsys.readouterr().out
    assert "(summary)" in out and "(performance and results)" in out
    assert main(["bench", "readme", "--print", "--section", "summary", "--results", str(results)]) == 0
    assert summary_text(results) in capsys.readouterr().out
