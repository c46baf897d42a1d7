"""The CLI as a careless or hostile user drives it: every refusal is exactly one line on stderr naming
the argument or path, exit code 2, and nothing on disk changes; real bugs exit 1 (traceback only under
RELA_FAST_DEBUG=1)."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from idx_files import tiny_idx_folder
from PIL import Image

from rela_fast.cli import main
from rela_fast.errors import UserError


def _refused(capsys, argv, *words, code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def idx_dir(tmp_path):
    """A tiny labelled IDX folder: 32 images of 16 x 16, two classes."""
    return tiny_idx_folder(tmp_path / "idx")


@pytest.fixture
def flat_dir(tmp_path):
    """A tiny unlabelled folder of 16 PNGs."""
    folder = tmp_path / "flat"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def _train(data, out, *extra):
    return ["train", str(data), "--out", str(out), "--arch", "convnet-4", "--epochs", "1", "--batch-size", "8",
            "--device", "cpu", "--no-progress", "--method-arg", "hidden_dim=16", "--method-arg", "proj_dim=8",
            *extra]


# --------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("args, words", [
    (["--device", "tpu"], ["--device", "tpu"]),
    (["--lr", "nan"], ["--lr", "finite"]),
    (["--lr", "-1"], ["--lr", "-1"]),
    (["--lr", "inf"], ["--lr", "finite"]),
    (["--image-size", "0"], ["--image-size", "0"]),
    (["--workers", "-1"], ["--workers", "-1"]),
    (["--max-steps", "-1"], ["--max-steps", "-1"]),
    (["--warmup", "5"], ["--warmup", "5"]),
    (["--budget", "0"], ["--budget"]),
    (["--epochs", "many"], ["--epochs", "many"]),
    (["--batch-size", "0"], ["--batch-size"]),
])
def test_bad_train_arguments_are_one_line(capsys, tmp_path, idx_dir, args, words):
    out = tmp_path / "run"
    _refused(capsys, [*_train(idx_dir, out), *args], *words)
    assert not out.exists()


def test_a_device_this_machine_lacks_is_one_line(capsys, tmp_path, idx_dir):
    import torch

    missing = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    _refused(capsys, [*_train(idx_dir, tmp_path / "run"), "--device", missing], "--device", missing)
    _refused(capsys, ["eval", str(tmp_path), "--data", str(idx_dir), "--device", missing], "--device")


@pytest.mark.parametrize("item, words", [
    ("hidden_dim", ["--method-arg", "KEY=VALUE"]),
    ("=3", ["--method-arg", "KEY=VALUE"]),
    ("nope=3", ["--method-arg", "no option 'nope'"]),
    ("hidden_dim=-5", ["--method-arg", "hidden_dim"]),
    ("hidden_dim=1e12", ["--method-arg", "hidden_dim"]),
    ("proj_dim=nan", ["--method-arg", "finite"]),
])
def test_malformed_method_args_are_one_line(capsys, tmp_path, idx_dir, item, words):
    out = tmp_path / "run"
    _refused(capsys, [*_train(idx_dir, out), "--method-arg", item], *words)
    assert not out.exists()


@pytest.mark.parametrize("args, words", [
    (["--device", "tpu"], ["--device"]), (["--lr", "nan"], ["--lr"]), (["--epochs", "0"], ["--epochs"]),
    (["--workers", "-1"], ["--workers"]), (["--batch-size", "-3"], ["--batch-size"]),
])
def test_bad_eval_arguments_are_one_line(capsys, tmp_path, idx_dir, args, words):
    _refused(capsys, ["eval", str(tmp_path), "--data", str(idx_dir), *args], *words)


# --------------------------------------------------------------------------------------------- --out


@pytest.mark.parametrize("out, words", [
    ("", ["--out", "empty"]), ("/", ["--out", "root"]), ("/proc/rela", ["--out", "/proc"]),
    ("/sys/kernel/x", ["--out", "/sys"]), ("/dev/shm/../null", ["--out", "/dev"]),
])
def test_out_paths_that_are_never_a_run_folder(capsys, idx_dir, out, words):
    _refused(capsys, _train(idx_dir, out), *words)


def test_out_that_is_a_file_a_foreign_folder_or_below_a_file(capsys, tmp_path, idx_dir, monkeypatch):
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's own file")
    line = _refused(capsys, _train(idx_dir, precious), "--out", "is a file")
    assert str(precious) in line
    _refused(capsys, _train(idx_dir, precious / "sub"), "--out", "is a file")
    assert precious.read_text() == "the user's own file"
    # `--out .` in a folder holding the user's files
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("do not touch")
    monkeypatch.chdir(home)
    _refused(capsys, _train(idx_dir, "."), "--out", "holds other files")
    assert sorted(os.listdir(home)) == ["thesis.tex"]


def test_a_read_only_out_is_one_line(capsys, tmp_path, idx_dir, monkeypatch):
    import rela_fast.cli.validate as validate

    out = tmp_path / "ro"
    out.mkdir()
    monkeypatch.setattr(validate.os, "access", lambda path, mode: False)  # what a read-only mount answers
    _refused(capsys, _train(idx_dir, out), "--out", "not writable")
    monkeypatch.undo()
    # and when the file system turns read-only between the check and the write: the OSError is one line
    import rela_fast.train.guards as guards

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(out / ".rela_fast_run"))

    monkeypatch.setattr(guards.RunLock, "try_acquire", read_only)
    _refused(capsys, _train(idx_dir, out), str(out), "read-only file system")


def test_stratify_on_unlabelled_data_is_refused(capsys, tmp_path, flat_dir):
    out = tmp_path / "run"
    _refused(capsys, [*_train(flat_dir, out), "--stratify"], "stratify", "labels")
    assert not (out / "checkpoint.pt").exists()


# ------------------------------------------------------------------------------- a full disk, one run per --out


def test_disk_full_while_checkpointing_is_one_line_and_keeps_no_tmp(capsys, tmp_path, idx_dir, monkeypatch):
    import rela_fast.train.checkpoint as checkpoint

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", full)
    out = tmp_path / "run"
    line = _refused(capsys, [*_train(idx_dir, out), "--max-steps", "2"], "no space left")
    assert str(out) in line  # names the file it was writing (the first write of the run: config.json)
    assert not list(out.glob("*checkpoint.pt*")) and not list(out.glob("*.rela-tmp-*"))  # no temporary left


def test_a_second_train_on_the_same_out_is_refused(capsys, tmp_path, idx_dir):
    import json
    import socket

    from rela_fast.outputs import MANIFEST
    from rela_fast.runlock import RUN_MARKER, RunLock

    out = tmp_path / "run"
    assert main([*_train(idx_dir, out), "--max-steps", "2"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()  # the first run's output
    with RunLock(out / RUN_MARKER, "busy"):  # another process's run holds the folder
        _refused(capsys, [*_train(idx_dir, out), "--max-steps", "2"], str(out), "another rela-fast train")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a killed run's temporary (listed in the manifest by a process that is gone) is removed by the next run
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["pending"][".checkpoint.pt.rela-tmp-999999-0123abcd"] = {"name": "checkpoint.pt", "pid": 999999,
                                                                     "host": socket.gethostname()}
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / ".checkpoint.pt.rela-tmp-999999-0123abcd").write_bytes(b"torn")
    assert main([*_train(idx_dir, out), "--max-steps", "2"]) == 0  # resumes: same settings, done
    assert (out / "checkpoint.pt").is_file() and not list(out.glob("*.rela-tmp-*"))


# ------------------------------------------------------------------------------------------ the edge itself


def _fake_command(monkeypatch, exc: BaseException):
    import rela_fast.cli.info as info

    def run(args):
        raise exc

    monkeypatch.setattr(info, "run", run)


@pytest.mark.parametrize("exc, words, code", [
    (UserError("data/x.png: broken; remove it"), ["data/x.png: broken"], 2),
    (OSError(errno.ENOSPC, "No space left on device", "/big/out/file"), ["/big/out/file", "no space left"], 2),
    (OSError(errno.ENOSPC, "No space left on device"), ["no space left"], 2),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), ["/root/x", "permission denied"], 2),
    (OSError("Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
             "  File \"x.py\", line 1\nOSError: shard-3.tar: no such file"), ["shard-3.tar: no such file"], 2),
    (ZeroDivisionError("division by zero"), ["internal error", "ZeroDivisionError", "RELA_FAST_DEBUG=1"], 1),
])
def test_the_cli_edge_prints_one_line(capsys, monkeypatch, exc, words, code):
    monkeypatch.delenv("RELA_FAST_DEBUG", raising=False)
    _fake_command(monkeypatch, exc)
    _refused(capsys, ["info"], "rela-fast info", *words, code=code)


def test_debug_shows_the_traceback_of_a_bug(capsys, monkeypatch):
    _fake_command(monkeypatch, ZeroDivisionError("division by zero"))
    monkeypatch.setenv("RELA_FAST_DEBUG", "1")
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
