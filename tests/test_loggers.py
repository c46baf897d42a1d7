"""Loggers (rela_fast.train.loggers): what a run writes to TensorBoard, CSV and W&B is read back with each
tool's own reader and compared with the trainer's own metrics.jsonl rows."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from idx_files import tiny_idx_folder

from rela_fast.cli import main
from rela_fast.errors import UserError
from rela_fast.train import ReLATrainer, TrainState
from rela_fast.train.loggers import CSVLogger, TensorBoardLogger, WandbLogger, make_loggers, parse_loggers, read_csv

pytestmark = pytest.mark.usefixtures("one_thread")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

try:
    import wandb  # noqa: F401

    HAVE_WANDB = True
except ImportError:  # documented as untested where it does not install
    HAVE_WANDB = False


def _scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar in TensorBoard's event files under ``folder``, read with tensorboard's EventAccumulator."""
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _wandb_history(run_file: Path) -> list[dict]:
    """The history records of an offline W&B run file (a LevelDB-style log of protobuf Records: 7-byte file
    header, 32 KiB blocks, each chunk ``crc32 | length u16 | type u8``; types full / first / middle / last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, parts, rows = run_file.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """One short ReLA run (random targets, a hand-over forced by a constant schedule) with every logger."""
    out = tmp_path_factory.mktemp("logged") / "run"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 16, 16), dtype=np.uint8)
    labels = np.arange(48) % 3
    targets = torch.from_numpy(rng.normal(size=(48, 8)).astype(np.float32))
    names = ["tensorboard", "csv"] + (["wandb"] if HAVE_WANDB else [])
    trainer = ReLATrainer("convnet-4", "byol", targets, budget=0.5, epochs=4, batch_size=8, device="cpu", out=out,
                          handover="constant", lambda_const=0.5, method_kwargs={"hidden_dim": 16, "proj_dim": 8},
                          callbacks=make_loggers(names))
    from rela_fast.data import open_source

    result = trainer.fit(open_source(images, labels=labels))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, result, rows


def test_tensorboard_events_hold_the_trainers_numbers(logged_run):
    out, result, rows = logged_run
    scalars = _scalars(out / "tensorboard")
    steps = [r for r in rows if r.get("event") == "step"]
    assert len(steps) == result.steps > 0
    assert sorted(scalars["train/loss"]) == [r["step"] for r in steps]
    for r in steps:
        for key in ("loss", "lr", "phase", "rela_weight", "subset_size"):
            assert scalars[f"train/{key}"][r["step"]] == pytest.approx(r[key], rel=1e-6), (key, r["step"])
        if r["rho"] is not None:
            assert scalars["train/rho"][r["step"]] == pytest.approx(r["rho"], rel=1e-6)
        if r["online_acc"] is not None:
            assert scalars["train/online_acc"][r["step"]] == pytest.approx(r["online_acc"], rel=1e-6)
    phases = {r["phase"] for r in steps}
    assert phases == {1, 2}  # both phases logged; the switch step is marked
    switch = result.handover["switch_step"]
    assert scalars["handover/step"] == {switch: float(switch)}
    epochs = [r for r in rows if r.get("event") == "epoch"]
    assert [scalars["epoch/online_acc"][r["step"]] for r in epochs] == pytest.approx([r["online_acc"] for r in epochs])
    assert [scalars["epoch/subset_size"][r["step"]] for r in epochs] == [r["subset_size"] for r in epochs]


def test_csv_rows_read_back(logged_run):
    out, result, rows = logged_run
    csv_rows = read_csv(out / "metrics.csv")
    steps = {r["step"]: r for r in rows if r.get("event") == "step"}
    logged = {int(r["step"]): r for r in csv_rows if r["loss"] != ""}
    assert sorted(logged) == sorted(steps) and len(logged) == result.steps
    for step, r in steps.items():
        assert float(logged[step]["loss"]) == r["loss"]  # written with repr: exact
        assert float(logged[step]["lr"]) == r["lr"]
        assert int(logged[step]["phase"]) == r["phase"]
        assert (logged[step]["rho"] == "") == (r["rho"] is None)
    epoch_rows = [r for r in csv_rows if r["epoch/online_acc"] != ""]
    assert len(epoch_rows) == len([r for r in rows if r.get("event") == "epoch"])


@pytest.mark.skipif(not HAVE_WANDB, reason="wandb is not installed (the W&B logger is then untested)")
def test_wandb_runs_offline_and_records_the_history(logged_run, monkeypatch):
    out, result, rows = logged_run
    runs = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1  # offline: written here, nothing synced
    history = _wandb_history(runs[0])
    by_step = {}
    for h in history:
        by_step.setdefault(h["_step"], {}).update(h)
    for r in (r for r in rows if r.get("event") == "step"):
        assert by_step[r["step"]]["loss"] == pytest.approx(r["loss"], rel=1e-12)
        assert by_step[r["step"]]["phase"] == r["phase"]


def test_csv_resume_drops_rows_past_the_checkpoint_and_refuses_foreign_files(tmp_path):
    class Run:
        out = tmp_path

    state = TrainState()
    logger = CSVLogger()
    logger.on_fit_start(Run(), state)
    for step in range(1, 6):
        state.step, state.losses = step, {"loss": 1.0 / step, "lr": 0.1}
        logger.on_step_end(Run(), state)
    logger.on_fit_end(Run(), state)
    state = TrainState(step=3)  # a resumed run: its checkpoint is at step 3
    logger = CSVLogger()
    logger.on_fit_start(Run(), state)
    state.step, state.losses = 4, {"loss": 9.0}
    logger.on_step_end(Run(), state)
    logger.on_fit_end(Run(), state)
    rows = read_csv(tmp_path / "metrics.csv")
    assert [(r["step"], r["loss"]) for r in rows] == [("1", "1.0"), ("2", "0.5"), ("3", str(1 / 3)), ("4", "9.0")]
    foreign = tmp_path / "mine.csv"
    foreign.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a CSV log rela_fast wrote"):
        CSVLogger(foreign).on_fit_start(Run(), TrainState())
    assert foreign.read_text() == "a,b\n1,2\n"


def test_tensorboard_resume_hides_events_past_the_checkpoint(tmp_path):
    class Run:
        out = tmp_path

    state = TrainState()
    logger = TensorBoardLogger()
    logger.on_fit_start(Run(), state)
    for step in range(1, 6):
        state.step, state.losses = step, {"loss": float(step)}
        logger.on_step_end(Run(), state)
    logger.on_fit_end(Run(), state)
    state = TrainState(step=3)
    logger = TensorBoardLogger()
    logger.on_fit_start(Run(), state)
    state.step, state.losses = 4, {"loss": 40.0}
    logger.on_step_end(Run(), state)
    logger.on_fit_end(Run(), state)
    assert _scalars(tmp_path / "tensorboard")["train/loss"] == {1: 1.0, 2: 2.0, 3: 3.0, 4: 40.0}


def test_logger_names_and_the_cli_flag(tmp_path, capsys):
    assert parse_loggers("TensorBoard, csv,csv") == ["tensorboard", "csv"]
    with pytest.raises(UserError, match="unknown logger 'tb'"):
        parse_loggers("tb")
    assert make_loggers([]) == []
    assert isinstance(make_loggers(["wandb"])[0], WandbLogger)
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--logger", "tensorboard,nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--logger" in err[0] and "'nope'" in err[0]
    assert not (tmp_path / "run").exists()


def test_cli_logger_flag_writes_tensorboard_and_csv(tmp_path, capsys):
    folder = tiny_idx_folder(tmp_path / "idx", seed=1)
    out = tmp_path / "run"
    assert main(["train", str(folder), "--out", str(out), "--arch", "convnet-4", "--epochs", "1", "--batch-size", "8",
                 "--device", "cpu", "--quiet", "--method-arg", "hidden_dim=16", "--method-arg", "proj_dim=8",
                 "--logger", "tensorboard,csv"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if r.get("event") == "step"}
    assert _scalars(out / "tensorboard")["train/loss"] == pytest.approx(losses, rel=1e-6)
    assert {int(r["step"]): float(r["loss"]) for r in read_csv(out / "metrics.csv") if r["loss"]} == losses
    assert all(math.isfinite(v) for v in losses.values()) and len(losses) == 4
