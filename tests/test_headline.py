"""benchmarks/headline.py at toy size on real Fashion-MNIST: the summary's shape, InfoBatch against a random
subset of the same size, and a re-run that skips every finished run."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _headline():
    spec = importlib.util.spec_from_file_location("headline", ROOT / "benchmarks" / "headline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_headline_toy_run_summary_and_resume(fashion_mnist_dir, tmp_path):
    headline = _headline()
    out = tmp_path / "hl"
    argv = ["--out", str(out), "--data", fashion_mnist_dir, "--arch", "convnet-4", "--train-images", "640",
            "--epochs", "2", "--batch-size", "64", "--probe-train", "300", "--seeds", "1", "--priors", "random",
            "--only", "baselines,rela,infobatch", "--recipes", "default"]
    assert headline.main(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["dataset"] == "fashion-mnist" and s["train_images"] == 640 and s["probe"] == {"train": 300, "test": 10000}
    base = s["baselines"]
    for v in (base["pixels"], base["untrained"], base["prior_targets"]["random"], base["pixels_train_split"]):
        assert 0.1 < v <= 1.0  # ten classes: any working probe beats chance
    full = 2 * (640 // 64)
    rows = {(r["rela"], r["budget"], r.get("variant")): r for r in s["rows"]}
    for r in s["rows"]:
        assert all(math.isfinite(a) and 0.0 <= a <= 1.0 for a in r["acc"]) and r["seeds"] == [0]
        assert r["method"] == "byol" and r["recipe"] == "default"
        assert (r["prior"] == "random") == r["rela"] and (r["time_to_byol100"] is None or r["rela"])
    for rela in (False, True):
        ib = rows[(rela, 1.0, "infobatch")]
        # epoch 0 keeps every (unseen) sample, epoch 1 prunes half of the below-mean ones: a real saving
        assert full // 2 < ib["steps"] < full and ib["steps_saved"] == round(1 - ib["steps"] / full, 3)
        matched = rows[(rela, round(ib["steps"] / full, 2), None)]  # random subset of InfoBatch's size
        assert abs(matched["steps"] - ib["steps"]) <= 2
    assert {(True, b, None) for b in (0.5, 0.2, 0.1)} <= set(rows)
    table = (out / "table.md").read_text()
    assert "% saved)" in table and "linear probe on the raw pixels" in table
    assert "Each ReLA row against the strongest BYOL baseline" in table and "| random, default, 50 % | 1 |" in table
    assert "python benchmarks/headline.py" in (out / "commands.txt").read_text()

    stamps = {p.name: p.read_text() for p in (out / "runs").glob("*.json")}
    assert headline.main(argv) == 0  # every run is done: skipped, nothing rewritten
    assert {p.name: p.read_text() for p in (out / "runs").glob("*.json")} == stamps


@pytest.mark.parametrize("bad", ["warmheads:x", "soft:-3", "floor:abc", "constant:", "lr:cosine", "retarget:2",
                                 "bogus:1"])
def test_headline_refuses_a_malformed_variant_in_one_line(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        _headline().parse(["--variants", f"soft:100,{bad}"])
    assert exc.value.code == 2
    assert f"error: --variants {bad}:" in capsys.readouterr().err


def test_headline_accepts_every_documented_variant():
    args = _headline().parse(["--variants", "soft:500,floor:0.1,lr:constant,retarget,warmheads:200,constant:1.0",
                              "--variant-seeds", "3"])
    assert args.variant_seeds == 3


def test_commands_txt_reruns_exactly_the_row_groups_the_folder_holds(tmp_path):
    """A variant run with one seed must not be reproduced with another variant's three seeds, and a folder
    without InfoBatch rows must not be told to train them."""
    headline = _headline()
    runs = tmp_path / "runs"
    runs.mkdir()

    def run(row, prior, budget, seed, variant=None, policy="random"):
        r = {"row": row, "rela": row == "rela", "prior": prior, "recipe": "authors", "budget": budget, "seed": seed,
             "variant": variant, "policy": policy}
        (runs / f"{row}-{prior}-{budget}-{seed}-{variant}-{policy}.json").write_text(json.dumps(r))

    for seed in range(3):
        run("byol", None, 1.0, seed)
        run("rela", "lite0", 0.5, seed, "warmheads:200")
        run("rela", "random", 0.5, seed, "warmheads:200")
    run("rela", "lite0", 0.5, 0, "constant:1.0")
    args = headline.parse(["--out", str(tmp_path), "--epochs", "15"])
    main, *variants, rep = headline.reproduce_commands(headline.Experiment(args))
    common = ["--out", str(tmp_path), "--epochs", "15"]
    assert main == common + ["--seeds", "3", "--recipes", "authors,default", "--only", "baselines,byol"]
    assert sorted(variants) == sorted([
        common + ["--seeds", "1", "--only", "variants", "--variants", "constant:1.0", "--variant-prior", "lite0",
                  "--variant-recipe", "authors", "--variant-seeds", "1"],
        common + ["--seeds", "3", "--only", "variants", "--variants", "warmheads:200", "--variant-prior",
                  "lite0,random", "--variant-recipe", "authors", "--variant-seeds", "3"]])
    assert rep == common + ["--report"]
    for cmd in (main, *variants):
        headline.parse(cmd)  # every printed command is one parse() accepts


def test_first_seed_lets_two_processes_split_the_seeds(tmp_path, monkeypatch):
    headline = _headline()
    calls = []
    monkeypatch.setattr(headline.Experiment, "train", lambda self, *a, **k: calls.append(a))
    args = headline.parse(["--out", str(tmp_path), "--only", "byol", "--recipes", "default", "--seeds", "3",
                           "--first-seed", "2"])
    headline.Experiment(args).run()
    assert calls and {c[5] for c in calls} == {2}  # train(method, recipe, store, prior, budget, seed, ...)
    assert sorted(c[4] for c in calls) == sorted(headline.SEEDED["byol"])


@pytest.mark.parametrize("first", ["-1", "3"])
def test_headline_refuses_a_first_seed_outside_the_seeds(first, capsys):
    with pytest.raises(SystemExit) as exc:
        _headline().parse(["--seeds", "3", "--first-seed", first])
    assert exc.value.code == 2 and f"error: --first-seed {first}:" in capsys.readouterr().err


def _fake_rows(runs: Path, rows: list[tuple]) -> None:
    """One run file per (row, prior, recipe, budget, seed, variant): what reproduce_commands() reads."""
    for row, prior, recipe, budget, seed, variant in rows:
        r = {"row": row, "rela": row == "rela", "prior": prior, "recipe": recipe, "budget": budget, "seed": seed,
             "variant": variant, "policy": "random", "acc": 0.8 if prior == "byol" else 0.7}
        (runs / f"{row}-{prior}-{recipe}-{budget}-{seed}-{variant}.json").write_text(json.dumps(r))


def test_commands_txt_reruns_extra_seeds_and_variant_budgets(tmp_path):
    """Lite0's extra seeds at 10 / 20 % (not the best prior) and a variant at 50 and 20 % under two recipes each
    get a command that trains exactly those rows, and every command parses."""
    headline = _headline()
    (runs := tmp_path / "runs").mkdir()
    rows = [("byol", None, "default", 1.0, s, None) for s in range(3)]
    rows += [("rela", "byol", "default", 0.5, s, None) for s in range(3)]  # the best prior: main grid
    rows += [("rela", "lite0", "default", b, s, None) for b in (0.2, 0.1) for s in range(3)]
    rows += [("rela", "lite0", "default", b, s, "warmheads:200") for b in (0.5, 0.2) for s in range(3)]
    rows += [("rela", "lite0", "authors", 0.5, s, "warmheads:200") for s in range(2)]
    _fake_rows(runs, rows)
    args = headline.parse(["--out", str(tmp_path)])
    main, *extra, rep = headline.reproduce_commands(headline.Experiment(args))
    common = ["--out", str(tmp_path)]
    assert main == common + ["--seeds", "3", "--recipes", "default", "--only", "baselines,byol,rela"]
    assert sorted(extra) == sorted([
        common + ["--seeds", "3", "--recipes", "default", "--only", "rela", "--priors", "lite0",
                  "--rela-budgets", "0.2,0.1", "--every-seed"],
        common + ["--seeds", "3", "--only", "variants", "--variants", "warmheads:200", "--variant-prior", "lite0",
                  "--variant-recipe", "default", "--variant-seeds", "3", "--variant-budgets", "0.5,0.2"],
        common + ["--seeds", "2", "--only", "variants", "--variants", "warmheads:200", "--variant-prior", "lite0",
                  "--variant-recipe", "authors", "--variant-seeds", "2"]])
    for cmd in (main, *extra):
        headline.parse(cmd)


def _calls(headline, tmp_path, monkeypatch, argv):
    """The (recipe, prior, budget, seed, variant) of every train() that run() asks for, trained by nothing."""
    calls = []
    monkeypatch.setattr(headline.Experiment, "train", lambda self, method, recipe, store, prior, budget, seed, conv_s=0,
                        variant="", **k: calls.append((recipe, prior, budget, seed, variant)))
    monkeypatch.setattr(headline.Experiment, "conversion", lambda self, prior: (object(), 1.0))
    headline.Experiment(headline.parse(["--out", str(tmp_path), *argv])).run()
    return calls


def test_every_seed_and_rela_budgets_complete_one_prior(tmp_path, monkeypatch):
    headline = _headline()
    calls = _calls(headline, tmp_path, monkeypatch, ["--only", "rela", "--recipes", "default", "--priors", "lite0",
                                                     "--rela-budgets", "0.1", "--every-seed", "--first-seed", "1"])
    assert calls == [("default", "lite0", 0.1, 1, ""), ("default", "lite0", 0.1, 2, "")]
    # without --every-seed lite0 (not the best prior once byol leads) gets seed 0 only
    _fake_rows(tmp_path / "runs", [("rela", "byol", "default", 0.5, 0, None), ("rela", "lite0", "default", 0.5, 0,
                                                                                 None)])
    calls = _calls(headline, tmp_path, monkeypatch, ["--only", "rela", "--recipes", "default", "--priors", "lite0"])
    assert calls == [("default", "lite0", b, 0, "") for b in (0.5, 0.2, 0.1)]


def test_variant_budgets_run_each_variant_at_each_budget(tmp_path, monkeypatch):
    headline = _headline()
    calls = _calls(headline, tmp_path, monkeypatch, ["--only", "variants", "--variants", "warmheads:200",
                                                     "--variant-prior", "lite0", "--variant-seeds", "2",
                                                     "--variant-budgets", "0.2"])
    assert calls == [("default", "lite0", 0.2, s, "warmheads:200") for s in (0, 1)]
    assert _calls(headline, tmp_path, monkeypatch, ["--only", "variants", "--variants", "soft:5", "--variant-prior",
                                                    "lite0"]) == [("default", "lite0", 0.5, 0, "soft:5")]


@pytest.mark.parametrize("flag", ["--rela-budgets", "--variant-budgets"])
@pytest.mark.parametrize("bad", ["0", "1.5", "half", ","])
def test_headline_refuses_a_budget_outside_0_1(flag, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        _headline().parse([flag, bad])
    assert exc.value.code == 2 and f"error: {flag} {bad}:" in capsys.readouterr().err


def test_shown_paths_are_relative_to_the_repository_that_holds_them(tmp_path):
    headline = _headline()
    assert headline.shown(headline.ROOT / "benchmarks/results/x") == "benchmarks/results/x"
    assert headline.shown(tmp_path / "other" / "benchmarks" / "results" / "x") == "benchmarks/results/x"
    assert headline.shown(tmp_path / "elsewhere") == str(tmp_path / "elsewhere")


def test_a_rebuilt_store_keeps_the_recorded_conversion_seconds(tmp_path, monkeypatch):
    """work/ is not committed: on a new machine the store is rebuilt, but every seed keeps the recorded cost."""
    headline = _headline()
    exp = headline.Experiment(headline.parse(["--out", str(tmp_path)]))
    exp._data = object()
    exp.record("conversion-lite0", {"row": "conversion", "prior": "lite0", "seconds": 134.0, "size": 32, "dim": 8,
                                    "n": 10})
    before = (tmp_path / "runs" / "conversion-lite0.json").read_text()
    monkeypatch.setattr(headline.D, "feature_dim_of", lambda arch, size: 8)
    monkeypatch.setattr(headline.D, "prior_width", lambda mod, size: 16)
    monkeypatch.setattr(headline.D, "convert_with", lambda data, out, mod, size, dim: ("store", 740.0))
    assert exp.conversion("lite0") == ("store", 134.0)
    assert (tmp_path / "runs" / "conversion-lite0.json").read_text() == before
