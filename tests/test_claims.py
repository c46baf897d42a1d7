"""benchmarks/claims.py on a synthetic headline summary: the strongest baseline of either recipe, the
differences and their standard errors computed independently here, losses reported as losses."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _claims():
    spec = importlib.util.spec_from_file_location("claims", ROOT / "benchmarks" / "claims.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(acc, budget, recipe, prior=None, variant=None, wall=100.0):
    r = {"method": "byol", "rela": prior is not None, "prior": prior, "recipe": recipe, "budget": budget,
         "seeds": list(range(len(acc))), "acc": acc, "steps": round(1000 * budget), "wall_s": [wall] * len(acc)}
    if variant:
        r["variant"] = variant
    return r


SUMMARY = {"rows": [
    _row([0.850, 0.852, 0.848], 1.0, "default", wall=3000.0),
    _row([0.855, 0.857, 0.853], 1.0, "authors", wall=2000.0),  # the strongest BYOL 100 %
    _row([0.99], 1.0, "default", variant="infobatch"),  # not a plain BYOL row: never the baseline
    _row([0.820, 0.830, 0.810], 0.2, "default"),
    _row([0.840, 0.830, 0.835], 0.2, "authors"),  # the strongest BYOL 20 %
    _row([0.860, 0.861, 0.859], 0.2, "default", prior="lite0", wall=500.0),
    _row([0.836, 0.834, 0.835], 0.2, "authors", prior="random", wall=400.0),
    _row([0.840], 0.1, "default", prior="random", wall=140.0),  # one seed, no BYOL 10 % row
    _row([0.800, 0.900], 0.5, "default", prior="lite0", variant="warmheads:200", wall=1000.0),
]}


def _diff(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return 100 * (a.mean() - b.mean()), 100 * np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))


def test_each_claim_against_the_strongest_baseline_of_either_recipe():
    records = _claims().compare(SUMMARY)
    by = {(c["prior"], c["recipe"], c["budget"], c["variant"]): c for c in records}
    assert len(records) == 4  # every ReLA row, variants included, no BYOL row
    lite = by[("lite0", "default", 0.2, None)]
    d, se = _diff([0.860, 0.861, 0.859], [0.855, 0.857, 0.853])
    assert lite["vs_byol100"]["recipe"] == "authors" and lite["vs_byol100"]["diff"] == pytest.approx(d)
    assert lite["vs_byol100"]["se"] == pytest.approx(se) and lite["vs_byol100"]["verdict"] == "above"
    d, se = _diff([0.860, 0.861, 0.859], [0.840, 0.830, 0.835])
    assert lite["vs_same_budget"]["recipe"] == "authors" and lite["vs_same_budget"]["diff"] == pytest.approx(d)
    assert lite["wall_fraction"] == pytest.approx(500 / 2000)  # against the strongest BYOL 100 %'s wall time
    rnd = by[("random", "authors", 0.2, None)]
    d, se = _diff([0.836, 0.834, 0.835], [0.855, 0.857, 0.853])
    assert rnd["vs_byol100"]["diff"] == pytest.approx(d) and rnd["vs_byol100"]["verdict"] == "below"  # a loss
    d, se = _diff([0.836, 0.834, 0.835], [0.840, 0.830, 0.835])
    assert abs(d) <= 2 * se and rnd["vs_same_budget"]["verdict"] == "within noise"
    one = by[("random", "default", 0.1, None)]
    assert one["vs_byol100"]["se"] is None and one["vs_byol100"]["verdict"] == "below (1 seed)"
    assert one["vs_same_budget"] is None  # no BYOL 10 % row to compare with
    wide = by[("lite0", "default", 0.5, "warmheads:200")]
    assert wide["vs_byol100"]["diff"] == pytest.approx(100 * (0.85 - 0.855))
    assert wide["vs_byol100"]["verdict"] == "within noise" and wide["vs_same_budget"] is None


def test_table_and_cli(tmp_path, capsys):
    claims = _claims()
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(SUMMARY))
    assert claims.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("strongest BYOL 100 %: the authors recipe, 85.50 % over 3 seed(s)")
    line = next(x for x in out.splitlines() if x.startswith("| random, authors, 20 % |"))
    assert "| -2.00 +- " in line and ": below |" in line and "BYOL 20 %, authors: 83.50 (3 seeds)" in line
    assert "| random, default, 10 % | 1 | 84.00 | -1.50: below (1 seed) | - | - | 0.07 |" in out
    assert claims.main([str(path), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4


@pytest.mark.parametrize("content", ["not json", '{"rows": 3}'])
def test_a_bad_summary_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "summary.json"
    path.write_text(content)
    with pytest.raises(SystemExit) as exc:
        _claims().main([str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and str(path) in err[-1] and "headline.py --report" in err[-1]


def test_the_committed_summary_reads():
    claims = _claims()
    if not claims.DEFAULT.is_file():
        pytest.skip("no committed headline summary in this checkout")
    summary = json.loads(claims.DEFAULT.read_text())
    records = claims.compare(summary)
    assert len(records) == sum(r["rela"] for r in summary["rows"]) > 0
    assert all(c["vs_byol100"] is not None for c in records)
