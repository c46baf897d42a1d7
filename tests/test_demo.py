"""The demo: a small-slice run end to end (two spawned workers, a synthetic committed reference), the committed
reference read from the repository's headline summary, the regime test, the table, the output folder's
ownership, and the CLI's one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from idx_files import write_idx

from rela_fast.cli import main
from rela_fast.demo import (
    HEADLINE_DIR,
    DemoConfig,
    Setup,
    committed_reference,
    format_table,
    normalise,
    reached,
    regime_test,
    repo_root,
    run_demo,
)
from rela_fast.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")
TRAIN, TEST = 768, 300  # the slice: 768 train images (12 batches of 64), 300 test images


@pytest.fixture(scope="module")
def fmnist_slice(fashion_mnist_dir, tmp_path_factory) -> str:
    """The first TRAIN train and TEST test images of the real Fashion-MNIST, as an IDX folder of their own: the
    demo converts its whole train split, so the slice keeps the test's conversion to a second."""
    from rela_fast.data import open_source

    folder = tmp_path_factory.mktemp("fmnist-slice")
    for split, prefix, n in (("train", "train", TRAIN), ("test", "t10k", TEST)):
        src = open_source(fashion_mnist_dir, split=split)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", src.array()[:n])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.asarray(src.labels)[:n])
    return str(folder)


def _small(data: str, out: Path, **kw) -> DemoConfig:
    return DemoConfig(data=data, out=str(out), prior="random", n_train=TRAIN, n_probe_train=TRAIN, n_probe_test=TEST,
                      budget=0.5, probe_every=1, setup=Setup(arch="convnet-4", epochs=2, batch_size=64,
                                                             method_kwargs={"hidden_dim": 32, "proj_dim": 16}), **kw)


def _synthetic_reference(folder: Path, cfg: DemoConfig, byol100: dict[str, float]) -> Path:
    """A headline summary.json measured under ``cfg`` (as benchmarks/headline.py writes one), with commands.txt."""
    folder.mkdir()
    rows = [{"rela": False, "prior": None, "recipe": recipe, "budget": 1.0, "acc": [acc, acc - 0.01],
             "steps": 24, "wall_s": [50.0, 70.0], "seeds": [0, 1]} for recipe, acc in byol100.items()]
    rows.append({"rela": True, "prior": "random", "recipe": "default", "budget": 0.5, "acc": [0.5], "steps": 12,
                 "wall_s": [9.0], "seeds": [0], "variant": "warmheads:200"})  # a variant: not the demo's row
    s = cfg.setup
    summary = {"dataset": "fashion-mnist", "train_images": cfg.n_train, "student": s.arch, "epochs": s.epochs,
               "batch_size": s.batch_size, "probe": {"train": cfg.n_probe_train, "test": cfg.n_probe_test},
               "baselines": {"pixels": 0.7}, "rows": rows, "conversions": {}, "machine": "a test machine",
               "curves": {"byol-authors---b100-s0": [{"epoch": 1, "step": 12, "train_s": 20.0, "wall_s": 20.0,
                                                      "acc": 0.5}]}}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "commands.txt").write_text("# how\npython benchmarks/headline.py --out somewhere --seeds 2\n")
    return folder / "summary.json"


def test_demo_small_slice_end_to_end(fmnist_slice, tmp_path, capfd):
    """Two spawned workers train BYOL and ReLA-BYOL live; the committed rows come from the reference file; the
    table, the regime test, results.json, table.md and plot.png say the same; the store is an ordinary one."""
    out = tmp_path / "demo"
    cfg = _small(fmnist_slice, out)
    ref = _synthetic_reference(tmp_path / "ref", cfg, {"default": 0.0, "authors": 1.0})  # authors' always passes
    cfg.reference = str(ref)
    summary = run_demo(cfg)
    text = capfd.readouterr().out
    assert "COMMITTED headline result" in text and str(ref) in text
    assert "python benchmarks/headline.py --out somewhere --seeds 2" in text
    names = [(r["name"], r["source"]) for r in summary["rows"]]
    assert names == [("linear probe on the raw pixels", "live"), ("untrained student", "live"),
                     ("BYOL 50 %", "live"), ("ReLA-BYOL 50 %, random prior", "live"),
                     ("BYOL 100 %, default recipe", "committed, 2 seeds"),
                     ("BYOL 100 %, authors recipe", "committed, 2 seeds")]
    pixels, byol, rela, default100, authors100 = (summary["rows"][i] for i in (0, 2, 3, 4, 5))
    assert authors100["acc"] == pytest.approx(0.995) and authors100["wall_s"] == pytest.approx(60.0)
    assert authors100["acc_std"] == pytest.approx(np.std([1.0, 0.99], ddof=1))
    # budget = fraction of the full run's steps: 768 / 64 = 12 steps per epoch, 2 epochs, half of them
    for r in (byol, rela):
        assert r["steps"] == 12 and len(r["curve"]) == 2 and r["curve"][-1]["step"] == 12
        assert 0.0 <= r["acc"] <= 1.0 and all(0.0 <= p["acc"] <= 1.0 for p in r["curve"])
        assert r["curve"][-1]["train_s"] <= r["train_s"]  # the probe's own time is not the run's
        assert f"{r['name']}: epoch 2/2, step 12" in text  # the live progress lines of each worker
    assert byol["conversion_s"] == 0.0 and rela["conversion_s"] > 0
    assert rela["wall_s"] == pytest.approx(rela["train_s"] + rela["conversion_s"])
    # the regime test: on the strongest BYOL 100 % (committed, authors'), with the live pixel probe
    assert summary["regime"]["passed"] is True and summary["regime"]["gap"] == pytest.approx(0.995 - pixels["acc"])
    assert f"BYOL 100 %, default recipe (committed, 2 seeds): {100 * default100['acc']:.2f} %" in text
    assert "by >= 2 points: PASSED" in text and "(< 2)" in text
    table = (out / "table.md").read_text()
    assert "| ReLA-BYOL 50 %, random prior | live | 50 % | 12 |" in table and summary["regime"]["lines"][0] in table
    assert f"reaches {100 * 0.995:.2f} % (BYOL 100 %, authors recipe, committed, 2 seeds) at" in table
    assert "demo wall time" in summary["timing"] and "load average" in summary["timing"]
    saved = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in saved["rows"]] == [n for n, _ in names]
    png = out / "plot.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    manifest = json.loads((out / ".rela_fast.manifest.json").read_text())
    assert manifest["kind"] == "demo" and {"results.json", "table.md", "plot.png"} <= set(manifest["files"])
    # the demo's targets are an ordinary store of the IDX folder: the public CLI trains from them
    assert main(["train", fmnist_slice, "--targets", str(out / "targets"), "--arch", "convnet-4", "--epochs", "1",
                 "--batch-size", "32", "--max-steps", "2", "--out", str(tmp_path / "cli"),
                 "--method-arg", "hidden_dim=16", "--method-arg", "proj_dim=8", "--no-progress"]) == 0


def test_demo_refuses_an_output_folder_it_did_not_write(fmnist_slice, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(UserError, match="notes.txt") as exc:
        run_demo(_small(fmnist_slice, out))
    assert "\n" not in str(exc.value) and (out / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written, nothing trained


def test_a_killed_demo_folder_is_still_the_demos(tmp_path):
    """A conversion killed mid-way leaves its lock file and work folder beside the demo's files: a re-run may
    use the folder; a user's file of the lock's name is not the converter's."""
    from rela_fast.conversion.workdir import LOCK_TEXT
    from rela_fast.demo import _demo_entry
    from rela_fast.outputs import claim
    from rela_fast.ownership import claim_work, make_temp_dir

    out = claim(tmp_path / "demo", "demo", also_ours=_demo_entry)
    out.write_text("table.md", "a table")
    (out.path / "targets.lock").write_text(LOCK_TEXT)
    claim_work(out.path / "targets.work").write_text("plan.json", "{}")
    make_temp_dir(out.path, "targets")
    (out.path / "targets").mkdir()
    assert claim(out.path, "demo", also_ours=_demo_entry).files.keys() == {"table.md"}
    (out.path / "targets.lock").write_text("my lock")
    with pytest.raises(UserError, match="targets.lock"):
        claim(out.path, "demo", also_ours=_demo_entry)
    (out.path / "targets.lock").unlink()
    (out.path / "other").mkdir()  # a folder rela_fast did not mark
    with pytest.raises(UserError, match="other"):
        claim(out.path, "demo", also_ours=_demo_entry)


def _byol_rows(summary: dict, recipe: str, budget: float) -> list[float]:
    return [a for r in summary["rows"] if not r["rela"] and r["recipe"] == recipe and r["budget"] == budget
            and not r.get("variant") for a in r["acc"]]


def test_committed_reference_is_the_repository_headline():
    """The default demo's committed rows are the headline summary's (means over its seeds), and the regime
    test on them agrees with the summary's own numbers."""
    path = repo_root() / HEADLINE_DIR / "summary.json"
    if not path.is_file():
        pytest.skip(f"{path}: not in this checkout")
    summary = json.loads(path.read_text())
    ref, why_not = committed_reference(DemoConfig(), "efficientnet_lite0@32")
    assert why_not == "" and ref["file"] == str(path) and ref["command"].startswith("python benchmarks/headline.py")
    rows = {r["name"]: r for r in ref["rows"]}
    for recipe in ("default", "authors"):
        accs = _byol_rows(summary, recipe, 1.0)
        r = rows[f"BYOL 100 %, {recipe} recipe"]
        assert len(accs) >= 3 and r["acc"] == pytest.approx(np.mean(accs))
        assert r["source"] == f"committed, {len(accs)} seeds"
        assert r["curve"] == summary["curves"][f"byol-{recipe}---b100-s0"]
    lite = [r for r in summary["rows"] if r["rela"] and r["prior"] == "lite0" and r["recipe"] == "default"
            and r["budget"] == 0.1 and not r.get("variant")][0]
    assert rows["ReLA-BYOL 10 %, efficientnet_lite0 prior"]["acc"] == pytest.approx(np.mean(lite["acc"]))
    assert rows["BYOL 10 %"]["acc"] == pytest.approx(np.mean(_byol_rows(summary, "default", 0.1)))
    best = max(np.mean(_byol_rows(summary, r, 1.0)) for r in ("default", "authors"))
    regime = regime_test(ref["rows"], summary["baselines"]["pixels"])
    assert regime["passed"] == (best - summary["baselines"]["pixels"] >= 0.02)


def test_committed_reference_of_another_configuration_is_not_used(tmp_path):
    cfg = DemoConfig()
    cfg.setup.epochs = 15
    path = _synthetic_reference(tmp_path / "ref", DemoConfig(), {"default": 0.85})
    cfg.reference = str(path)
    ref, why_not = committed_reference(cfg, "random")
    assert ref is None and "epochs 30 (the demo: 15)" in why_not
    ref, why_not = committed_reference(DemoConfig(reference=str(path)), "efficientnet_lite0@64")
    assert ref is None and "no rows with the prior efficientnet_lite0@64" in why_not


@pytest.mark.parametrize("content", [None, "not json", '{"rows": 3}', "[]"])
def test_a_bad_reference_file_is_one_line(tmp_path, content):
    path = tmp_path / "summary.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError) as exc:
        committed_reference(DemoConfig(reference=str(path)), "random")
    assert str(path) in str(exc.value) and "\n" not in str(exc.value) and "summary.json" in str(exc.value)


def _row(name, acc, budget=1.0, rela=False, source="committed, 3 seeds", curve=()):
    return {"name": name, "acc": acc, "acc_std": None, "budget": budget, "rela": rela, "source": source,
            "steps": 100, "wall_s": 10.0, "curve": list(curve)}


@pytest.mark.parametrize("gap,passed", [(0.0199, False), (0.02, True), (0.05, True)])
def test_regime_test_is_on_the_strongest_byol_100(gap, passed):
    rows = [_row("pixels", 0.80, budget=None), _row("BYOL 100 %, a", 0.80 + gap), _row("BYOL 100 %, b", 0.79),
            _row("ReLA-BYOL 100 %", 0.99, rela=True), _row("BYOL 10 %", 0.99, budget=0.1)]
    r = regime_test(rows, 0.80)
    assert r["passed"] is passed and r["strongest"] == "BYOL 100 %, a" and r["gap"] == pytest.approx(gap)
    assert ("PASSED (the strongest BYOL 100 %: BYOL 100 %, a, committed, 3 seeds)" in r["lines"][0]) == passed
    assert ("FAILED" in r["lines"][0]) != passed
    assert len(r["lines"]) == 3 and "-1.00 points (< 2)" in r["lines"][2]  # every BYOL 100 % row is listed
    assert regime_test(rows[3:], 0.8)["passed"] is None  # no BYOL 100 % row: not run


def test_table_says_where_each_curve_reaches_the_targets():
    curve = [{"step": 10, "train_s": 5.0, "wall_s": 15.0, "acc": 0.70}, {"step": 20, "train_s": 9.0, "wall_s": 19.0,
                                                                          "acc": 0.86}]
    assert reached(curve, 0.85) == "step 20, 19 s" and reached(curve, 0.7) == "step 10, 15 s"
    assert reached(curve, 0.9) == "not reached" and reached([], 0.5) == "-"
    rows = [_row("ReLA", 0.86, budget=0.1, rela=True, source="live", curve=curve)]
    rows[0]["acc_std"] = 0.0025
    lines = format_table(rows, [("BYOL 100 %", 0.85), ("other", 0.9)]).splitlines()
    assert lines[0] == ("| row | source | budget | steps | wall s (incl. conversion) | probe acc. (%) | "
                        "reaches 85.00 % (BYOL 100 %) at | reaches 90.00 % (other) at |")
    assert lines[2] == "| ReLA | live | 10 % | 100 | 10 | 86.00 +- 0.25 | step 20, 19 s | not reached |"


def test_missing_dataset_is_one_line_with_the_install_command(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "apt-get install dataset-fashion-mnist" in err and str(tmp_path / "nowhere") in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,message", [(["--budget", "1.5"], "--budget 1.5"), (["--threads", "0"], "--threads 0"),
                                          (["--epochs", "0"], "--epochs 0"),
                                          (["--train-images", "10"], "--train-images 10")])
def test_cli_refuses_bad_numbers_in_one_line(fmnist_slice, tmp_path, capsys, args, message):
    assert main(["demo", "--data", fmnist_slice, "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_cli_help_names_the_committed_reference_and_the_live_option():
    out = subprocess.run([sys.executable, "-m", "rela_fast", "demo", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--live-reference" in out and "committed" in out and "--full" in out


def test_normalise_is_the_eval_transform_for_small_images():
    imgs = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 1, 28, 28), dtype=np.uint8))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(normalise(imgs, 28), (imgs.float().expand(-1, 3, -1, -1) / 255 - mean) / std,
                               atol=1e-5, rtol=1e-5)
