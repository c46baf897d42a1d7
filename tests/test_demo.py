"""The demo orchestration: a tiny end-to-end run on real Fashion-MNIST, the batched augmentation, the CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rela_fast.cli import main
from rela_fast.demo import DemoConfig, Setup, format_table, normalise, run_demo

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_end_to_end_tiny(fashion_mnist_dir, tmp_path, capsys):
    cfg = DemoConfig(data=fashion_mnist_dir, out=str(tmp_path / "demo"), prior="random", n_train=256,
                     n_probe_train=200, n_probe_test=200,
                     setup=Setup(epochs=1, batch_size=32, threads=1, method_kwargs={"hidden_dim": 64, "proj_dim": 32}))
    summary = run_demo(cfg)
    out = capsys.readouterr().out
    # the choices are said in the output
    assert "256 of the 60000 train images" in out and "convnet-16" in out and "random init" in out
    for label in ("on the raw pixels", "untrained student", "the prior's own targets"):
        assert label in out
    assert "learning regime" in out  # the one-line verdict on whether BYOL learned at this budget
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows][-3:] == ["BYOL 100%", "ReLA-BYOL 50%", "ReLA-BYOL 20%"]
    assert all(0.0 <= v <= 1.0 for v in summary["baselines"].values())
    # the demo's targets are an ordinary store of the IDX folder: the public CLI trains from them
    assert main(["train", fashion_mnist_dir, "--targets", str(tmp_path / "demo" / "targets"), "--arch", "convnet-4",
                 "--epochs", "1", "--batch-size", "32", "--max-steps", "2", "--out", str(tmp_path / "cli"),
                 "--method-arg", "hidden_dim=16", "--method-arg", "proj_dim=8", "--no-progress"]) == 0
    runs = summary["runs"]
    # budget = fraction of the full run's steps: 256 / 32 = 8 steps; 128 / 32 = 4; round(51.2) // 32 = 1
    assert [r["steps"] for r in runs] == [8, 4, 1]
    for r in runs:
        assert 0.0 <= r["acc"] <= 1.0 and len(r["curve"]) == 1 and r["curve"][0]["step"] == r["steps"]
        assert r["curve"][-1]["train_s"] <= r["train_s"]  # the probe's own time is not the run's
    assert runs[0]["conversion_s"] == 0.0
    for r in runs[1:]:  # ReLA wall time includes the conversion
        assert r["conversion_s"] > 0 and r["wall_s"] == pytest.approx(r["train_s"] + r["conversion_s"])
    png = tmp_path / "demo" / "plot.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert [r["name"] for r in saved["runs"]] == ["BYOL 100%", "ReLA-BYOL 50%", "ReLA-BYOL 20%"]


def test_missing_dataset_is_one_line_with_the_install_command(tmp_path, capsys):
    assert main(["demo", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "apt-get install dataset-fashion-mnist" in err and str(tmp_path / "nowhere") in err


def test_normalise_is_the_eval_transform_for_small_images():
    imgs = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (6, 1, 28, 28), dtype=np.uint8))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(normalise(imgs, 28), (imgs.float().expand(-1, 3, -1, -1) / 255 - mean) / std,
                               atol=1e-5, rtol=1e-5)


def test_format_table_rows():
    runs = [{"name": "BYOL 100%", "spec": {"budget": 1.0}, "acc": 0.5, "steps": 10, "wall_s": 3.0},
            {"name": "ReLA-BYOL 20%", "spec": {"budget": 0.2}, "acc": 0.61234, "steps": 2, "wall_s": 1.25}]
    lines = format_table(runs, {"pixels": 0.8, "untrained": 0.7, "prior_targets": 0.75}).splitlines()
    assert lines[2].startswith("| baseline: linear probe on the raw pixels | - | 80.00 |")
    assert lines[5] == "| BYOL 100% | 100 % | 50.00 | 10 | 3.0 |"
    assert lines[6] == "| ReLA-BYOL 20% | 20 % | 61.23 | 2 | 1.2 |"
