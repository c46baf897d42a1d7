"""ReLAConfig: validated once with one-line errors, round trips through files and the CLI, drives resumes;
``rela-fast train --continue`` trains a run further and draws the subsets a straight run would."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from rela_fast.cli import main
from rela_fast.errors import UserError
from rela_fast.train import ReLAConfig, ReLATrainer
from rela_fast.train.config import HandoverConfig, SubsetConfig, resume_changes
from rela_fast.train.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"hidden_dim": 32, "proj_dim": 16}


@pytest.mark.parametrize(("build", "words"), [
    (lambda: SubsetConfig(budget=0.0), "subset.budget=0.0"),
    (lambda: SubsetConfig(budget=float("nan")), "subset.budget"),
    (lambda: SubsetConfig(policy="hardest"), "subset.policy='hardest'"),
    (lambda: HandoverConfig(mode="constant"), "handover.lambda_const"),
    (lambda: HandoverConfig(soft_steps=-1), "handover.soft_steps=-1"),
    (lambda: HandoverConfig(warm_heads=2.5), "handover.warm_heads=2.5"),
    (lambda: ReLAConfig(epochs=True), "epochs=True"),
    (lambda: ReLAConfig().replace(**{"runtime.image_size": 2.5}), "runtime.image_size=2.5"),
    (lambda: ReLAConfig().replace(**{"optim.momentum": 5}), "optim.momentum=5"),
    (lambda: ReLAConfig().replace(**{"optim.lr": float("inf")}), "optim.lr=inf"),
    (lambda: ReLAConfig().replace(**{"optim.colour": 1}), "optim.colour"),
    (lambda: ReLAConfig(method_kwargs={"hidden_dim": float("nan")}), "method_kwargs.hidden_dim"),
])
def test_each_bad_setting_is_one_line_naming_it(build, words):
    with pytest.raises(UserError) as info:
        build()
    assert words in str(info.value) and "\n" not in str(info.value)


def test_dict_round_trip_and_unknown_keys():
    config = ReLAConfig(epochs=7, seed=3, subset=SubsetConfig(budget=0.25, policy="topk"),
                        handover=HandoverConfig(mode="constant", lambda_const=0.5, warm_heads=20))
    data = json.loads(json.dumps(config.to_dict()))  # through JSON, as a config file is
    assert ReLAConfig.from_dict(data) == config
    data["subset"]["budgett"] = 0.5
    with pytest.raises(UserError, match="unknown setting subset.budgett"):
        ReLAConfig.from_dict(data, where="run.yaml")
    with pytest.raises(UserError, match="run.yaml: subset.budget=2"):
        ReLAConfig.from_dict({"subset": {"budget": 2}}, where="run.yaml")


def test_resume_changes_name_what_shapes_the_run_only():
    old = ReLAConfig(epochs=4).to_dict()
    new = ReLAConfig(epochs=4, subset=SubsetConfig(budget=0.5)).replace(**{"runtime.log_every": 9})
    assert resume_changes(old, new) == ["subset.budget: 1.0 -> 0.5"]
    assert resume_changes(old, ReLAConfig(epochs=8), ignore=("epochs",)) == []


def _write_images(tmp_path, n=96, seed=0):
    """A flat folder of n random 12x12 grey PNGs (an unlabeled image-folder source)."""
    from PIL import Image

    folder = tmp_path / f"images{seed}"
    folder.mkdir(exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (n, 12, 12), dtype=np.uint8)
    for i, a in enumerate(arr):
        Image.fromarray(a).save(folder / f"{i:03d}.png")
    return folder


def _train_argv(data, out, *extra):
    return ["train", str(data), "--arch", "convnet-4", "--batch-size", "16", "--out", str(out), "--quiet",
            "--method-arg", "hidden_dim=32", "--method-arg", "proj_dim=16", *extra]


def test_print_config_round_trips_through_config(tmp_path, capsys):
    data = _write_images(tmp_path)
    argv = _train_argv(data, tmp_path / "run", "--epochs", "3", "--budget", "0.5", "--warm-heads", "5",
                       "--recipe", "authors", "--print-config")
    assert main(argv) == 0
    first = capsys.readouterr().out
    (tmp_path / "run.yaml").write_text(first)
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--print-config"]) == 0
    assert capsys.readouterr().out == first
    assert not (tmp_path / "run").exists()  # --print-config runs nothing
    # flags override the file
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--budget", "0.25", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["subset"]["budget"] == 0.25


@pytest.mark.parametrize(("text", "words"), [
    ('{"subset": {"budgett": 0.5}}', "unknown setting subset.budgett"),
    ('{"epochs": 0}', "epochs=0"),
    ("subset: [1, 2", "not valid YAML or JSON"),
])
def test_bad_config_file_is_one_line_exit_2(tmp_path, capsys, text, words):
    data = _write_images(tmp_path)
    (tmp_path / "bad.yaml").write_text(text)
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def _digests(run):
    return [r["subset_digest"] for r in read_metrics(run / "metrics.jsonl") if r.get("event") == "epoch"]


def test_continue_gives_the_subsets_of_a_straight_run(tmp_path, capsys):
    data = _write_images(tmp_path)
    assert main(_train_argv(data, tmp_path / "straight", "--epochs", "4", "--budget", "0.5")) == 0
    assert main(_train_argv(data, tmp_path / "cont", "--epochs", "2", "--budget", "0.5")) == 0
    written = json.loads((tmp_path / "cont" / "config.json").read_text())
    assert written["epochs"] == 2 and written["data"] == str(data)
    assert main(["train", "--continue", str(tmp_path / "cont"), "--epochs", "4", "--quiet"]) == 0
    assert _digests(tmp_path / "cont") == _digests(tmp_path / "straight") and len(_digests(tmp_path / "cont")) == 4
    summary = json.loads((tmp_path / "cont" / "summary.json").read_text())
    assert summary["config"]["epochs"] == 4 and summary["steps"] == 4 * 3
    capsys.readouterr()


def test_continue_and_resume_refuse_another_run_and_change_nothing(tmp_path, capsys):
    data, other = _write_images(tmp_path, seed=0), _write_images(tmp_path, seed=1)  # same count, other images
    run = tmp_path / "run"
    assert main(_train_argv(data, run, "--epochs", "1", "--budget", "0.5")) == 0
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    cases = [
        (["train", str(other), "--continue", str(run), "--epochs", "2", "--quiet"], "the data"),
        (["train", "--continue", str(run), "--epochs", "2", "--budget", "0.25"], "subset.budget"),
        (["train", "--continue", str(run), "--epochs", "0"], "epochs"),
        (_train_argv(other, run, "--epochs", "1", "--budget", "0.5"), "the data"),
        (_train_argv(data, run, "--epochs", "1", "--budget", "0.5", "--image-size", "16"), "image_size"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir() if p.is_file()}
    assert after == before


def test_checkpoint_fields_are_checked_before_use(tmp_path):
    from rela_fast.data import open_source
    from rela_fast.train.run import check_train_state

    src = open_source(_write_images(tmp_path))
    t = ReLATrainer("convnet-4", "byol", None, out=tmp_path / "run", budget=0.5, epochs=2, batch_size=16,
                    method_kwargs=SMALL, max_steps=2)
    t.fit(src)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["train_state"]
    check_train_state(state, t.plan, t.config, tmp_path)  # the real one passes
    for key, bad in (("pos", -7), ("pos", 5), ("pos", 97), ("step", "3"), ("step", 99), ("epoch", 3),
                     ("phase", 3), ("wall_time", float("nan")), ("images_seen", None)):
        with pytest.raises(UserError, match=f"train_state.{key}"):
            check_train_state({**state, key: bad}, t.plan, t.config, tmp_path)


def test_convert_config_file_round_trip_and_override(tmp_path, capsys):
    data = _write_images(tmp_path)
    argv = ["convert", str(data), "--out", str(tmp_path / "store"), "--prior", "random", "--size", "12", "--dim", "4",
            "--print-config"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    (tmp_path / "convert.yaml").write_text(printed)
    assert main(["convert", "--config", str(tmp_path / "convert.yaml"), "--print-config"]) == 0
    assert capsys.readouterr().out == printed
    assert main(["convert", "--config", str(tmp_path / "convert.yaml"), "--dim", "8", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["dim"] == 8
    (tmp_path / "bad.yaml").write_text("prior: random\nsizes: 12\n")
    assert main(["convert", str(data), "--out", str(tmp_path / "s2"), "--config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown setting sizes" in err and len(err.splitlines()) == 1 and not (tmp_path / "s2").exists()
