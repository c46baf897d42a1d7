"""Issue 26: rela_fast writes only what is its own, by one rule (:mod:`rela_fast.outputs`), and bad input is
one line with exit 2. One test per defect found by the hostile review of 3429a0a; every test builds its own
user files and proves they are byte for byte unchanged after a refusal.

The APIs added by the issue are imported inside the tests, so this file also runs against the old code (each
test then fails on its defect, not on an import)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from idx_files import tiny_idx_folder
from PIL import Image
from torch import nn

from rela_fast.cli import main
from rela_fast.errors import UserError

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning"),
              pytest.mark.usefixtures("one_thread")]


# ---------------------------------------------------------------------------------------------- helpers
def _refused(capsys, argv, *words) -> str:
    """Exit 2, exactly one line on stderr holding ``words``, no traceback."""
    capsys.readouterr()  # what earlier commands of the test printed
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, err)
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def _snapshot(root) -> dict[str, bytes | str]:
    """Every entry under ``root``: a file's bytes, a link's target (so a replaced link shows)."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = "link -> " + os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    out[rel] = f.read()
    return out


def _user_files(folder, **files: str):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text)
    return folder


@pytest.fixture
def idx_dir(tmp_path):
    """A tiny labelled IDX folder: 32 images of 16 x 16, two classes."""
    return tiny_idx_folder(tmp_path / "idx")


@pytest.fixture
def classes_dir(tmp_path):
    """Labelled PNGs of 16 x 16 in two class folders, a train and a test split (the probe's data)."""
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        for i in range(16):
            folder = tmp_path / "classes" / split / f"c{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return tmp_path / "classes"


def _create_backbone():
    """``create_backbone`` from where it lives."""
    from rela_fast.models import create_backbone

    return create_backbone


def _probe_args(data) -> list[str]:
    return ["--data", str(data / "train"), "--test-data", str(data / "test"), "--epochs", "3", "--device", "cpu",
            "--no-progress"]


def _train(data, out, *extra) -> list[str]:
    return ["train", str(data), "--out", str(out), "--arch", "convnet-4", "--epochs", "1", "--batch-size", "8",
            "--device", "cpu", "--max-steps", "2", "--no-progress", "--method-arg", "hidden_dim=16", "--method-arg",
            "proj_dim=8", *extra]


class _Prior(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 12, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3)) + 0.1


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("prior") / "p.pt"
    torch.jit.script(_Prior().eval()).save(str(path))
    return f"torchscript:{path}"


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (20, 22, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


def _convert(src, out, prior, *extra) -> list[str]:
    return ["convert", str(src), "--out", str(out), "--prior", prior, "--size", "16", "--dim", "4", "--decoder",
            "pil", "--batch-size", "4", "--shard-size", "8", "--quiet", *extra]


# ------------------------------------------------------------------------------------ the training run folder
def test_train_never_overwrites_a_users_summary_and_plot(capsys, tmp_path, idx_dir):
    """Old: a folder holding a file named summary.json counted as a run; both files were overwritten."""
    paper = _user_files(tmp_path / "paper", summary__json='{"mine": 1}', metrics__png="my plot",
                        notes__txt="my notes")
    before = _snapshot(paper)
    _refused(capsys, _train(idx_dir, paper), "--out", "rela_fast did not make")
    assert _snapshot(paper) == before


def test_no_resume_never_overwrites_a_users_checkpoint(capsys, tmp_path, idx_dir):
    mine = _user_files(tmp_path / "models", checkpoint__pt="my weights")
    before = _snapshot(mine)
    _refused(capsys, [*_train(idx_dir, mine), "--no-resume"], "checkpoint.pt")
    assert _snapshot(mine) == before


def test_a_users_metrics_log_is_neither_deleted_nor_replaced(capsys, tmp_path, idx_dir):
    mine = _user_files(tmp_path / "logs", metrics__jsonl='{"event": "mine"}\n')
    before = _snapshot(mine)
    _refused(capsys, _train(idx_dir, mine), "metrics.jsonl")
    assert _snapshot(mine) == before


def test_a_run_files_link_is_never_written_through(capsys, tmp_path, idx_dir):
    """Old: summary.json replaced by a link had its target overwritten by the next run."""
    run = tmp_path / "run"
    assert main(_train(idx_dir, run)) == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run / "summary.json").unlink()
    (run / "summary.json").symlink_to(victim)
    _refused(capsys, _train(idx_dir, run), "summary.json")  # the same command again: a resume of a done run
    assert victim.read_text() == "precious" and (run / "summary.json").is_symlink()


def test_output_dir_refuses_links_and_unlisted_files(tmp_path):
    from rela_fast.outputs import claim

    out = claim(tmp_path / "o", "eval")
    out.write_text("a.txt", "one")
    (tmp_path / "victim").write_text("precious")
    (tmp_path / "o" / "b.txt").symlink_to(tmp_path / "victim")
    with pytest.raises(UserError, match="link"):
        out.write_text("b.txt", "two")
    (tmp_path / "o" / "c.txt").write_text("the user's")
    with pytest.raises(UserError, match="did not write"):
        out.write_text("c.txt", "three")
    assert (tmp_path / "victim").read_text() == "precious" and (tmp_path / "o" / "c.txt").read_text() == "the user's"
    assert not out.remove("c.txt") and (tmp_path / "o" / "c.txt").exists()


def test_a_log_grows_and_a_changed_log_is_not_ours(tmp_path):
    """metrics.jsonl is listed with the size and hash of what was appended; a later claim accepts bytes after
    that prefix (a kill between the append and the manifest update), not a change inside it."""
    from rela_fast.outputs import check_claim, claim

    out = claim(tmp_path / "run", "train-run")
    out.append("metrics.jsonl", '{"step": 1}\n')
    out.append("metrics.jsonl", '{"step": 2}\n')
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3}\n')
    assert check_claim(tmp_path / "run", "train-run") is None
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 9}\n{"step": 2}\n{"step": 3}\n')
    assert "metrics.jsonl" in check_claim(tmp_path / "run", "train-run")


def test_out_newdir_dotdot_leaves_no_empty_folder(capsys, tmp_path, idx_dir, images, prior_file, monkeypatch):
    home = _user_files(tmp_path / "home", thesis__tex="do not touch")
    _user_files(home / "sub", notes__txt="mine")
    monkeypatch.chdir(home)
    _refused(capsys, _train(idx_dir, "newdir/.."), "holds other files")
    _refused(capsys, _convert(images, "sub/newdir/..", prior_file), "notes.txt")
    assert sorted(os.listdir(home)) == ["sub", "thesis.tex"] and os.listdir(home / "sub") == ["notes.txt"]


def test_outputs_keep_the_users_umask(tmp_path, images, prior_file):
    """Old: stores were made by mkdtemp, mode 0700 whatever the umask."""
    from rela_fast.conversion import convert

    old = os.umask(0o022)
    try:
        convert(images, tmp_path / "store", prior_file, size=16, dim=4, batch_size=4, shard_size=8, decoder="pil",
                progress=False)
    finally:
        os.umask(old)
    assert (tmp_path / "store").stat().st_mode & 0o777 == 0o755


# --------------------------------------------------------------------------------------------------- eval
def _foreign_checkpoint(folder) -> str:
    """A trainer-style checkpoint that the user saved themselves (not in a folder rela_fast made)."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = _create_backbone()("convnet-4", 16)[0].state_dict()
    torch.save({"config": {"backbone": {"arch": "convnet-4", "image_size": 16, "small_stem": False}},
                "backbone": weights, "train_state": {"step": 3}}, folder / "checkpoint.pt")
    return str(folder / "checkpoint.pt")


def test_eval_beside_a_checkpoint_rela_fast_did_not_make_writes_nothing(capsys, tmp_path, classes_dir):
    """Old: probe.json and metrics.png next to the checkpoint were overwritten, metrics.jsonl rewritten."""
    models = tmp_path / "models"
    ckpt = _foreign_checkpoint(models)
    _user_files(models, probe__json='{"mine": 1}', metrics__png="my plot", metrics__jsonl='{"event": "mine"}\n')
    before = _snapshot(models)
    assert main(["eval", ckpt, *_probe_args(classes_dir)]) == 0
    captured = capsys.readouterr()
    assert "probe acc" in captured.out and "not written" in captured.err
    assert _snapshot(models) == before


def test_eval_writes_beside_its_own_run_or_into_out(capsys, tmp_path, idx_dir, classes_dir):
    from rela_fast.outputs import check_claim

    run = tmp_path / "run"
    assert main(_train(idx_dir, run)) == 0
    probe = _probe_args(classes_dir)
    assert main(["eval", str(run), *probe]) == 0
    assert json.loads((run / "probe.json").read_text())["event"] == "probe"
    assert check_claim(run, "train-run") is None  # the run is still provably ours, probe included
    mine = _user_files(tmp_path / "mine", notes__txt="mine")
    _refused(capsys, ["eval", str(run), *probe, "--out", str(mine)], "notes.txt")
    assert main(["eval", str(run), *probe, "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "probe.json").is_file()


# ------------------------------------------------------------------------------------------ converter stores
def test_a_forged_marker_does_not_let_overwrite_delete_a_users_files(capsys, tmp_path, images, prior_file):
    thesis = _user_files(tmp_path / "thesis", ch1__tex="chapter one", ch2__tex="chapter two")
    (thesis / ".rela_fast.json").write_text(json.dumps({"format": "rela_fast"}))
    before = _snapshot(thesis)
    _refused(capsys, _convert(images, thesis, prior_file, "--overwrite"), "ch1.tex")
    assert _snapshot(thesis) == before


def test_a_marker_copied_into_a_users_work_folder_protects_nothing(capsys, tmp_path, images, prior_file):
    store, work = tmp_path / "res", tmp_path / "res.work"
    assert main(_convert(images, store, prior_file, "--keep-features")) == 0
    markers = {p.name: p.read_bytes() for p in work.glob(".rela_fast*")}  # whatever marks a work folder
    shutil.rmtree(work)
    shutil.rmtree(store)
    _user_files(work, results__csv="1,2,3")  # the user's folder, with rela_fast's markers copied into it
    (work / ".rela_fast.json").write_text(json.dumps({"format": "rela_fast", "kind": "work"}))
    for name, data in markers.items():
        (work / name).write_bytes(data)
    before = _snapshot(work)
    _refused(capsys, _convert(images, store, prior_file), "results.csv")
    assert _snapshot(work) == before


def test_an_old_layout_store_with_an_extra_file_is_not_replaced(capsys, tmp_path, images, prior_file):
    store = tmp_path / "store"
    assert main(_convert(images, store, prior_file)) == 0
    for marker in (".rela_fast.json", ".rela_fast.manifest.json"):
        (store / marker).unlink(missing_ok=True)  # the 0.1 layout: no marker
    np.save(store / "my_results.npy", np.arange(3))
    before = _snapshot(store)
    _refused(capsys, _convert(images, store, prior_file, "--dim", "3", "--overwrite"), "my_results.npy")
    assert _snapshot(store) == before
    (store / "my_results.npy").unlink()  # the exact old layout is still recognised and replaced
    assert main(_convert(images, store, prior_file, "--dim", "3", "--overwrite")) == 0


def test_a_copied_manifest_proves_nothing(capsys, tmp_path, images, prior_file):
    store = tmp_path / "store"
    assert main(_convert(images, store, prior_file)) == 0
    mine = _user_files(tmp_path / "mine", meta__json='{"mine": 1}', targets__npy="not an array")
    shutil.copy(store / ".rela_fast.manifest.json", mine / ".rela_fast.manifest.json")
    before = _snapshot(mine)
    _refused(capsys, _convert(images, mine, prior_file, "--overwrite"), "changed since rela_fast made it")
    assert _snapshot(mine) == before


def test_a_full_disk_during_convert_says_no_space(capsys, tmp_path, images, prior_file, monkeypatch):
    """Old: numpy's short write came out as ``102400 requested and 16352 written``."""
    import rela_fast.conversion.shards as shards

    def full(file, arr, allow_pickle=True):
        raise OSError("102400 requested and 16352 written")

    monkeypatch.setattr(shards.np, "save", full)
    line = _refused(capsys, _convert(images, tmp_path / "store", prior_file), "no space left")
    assert "requested and" not in line


# ---------------------------------------------------------------------------------------------------- bench
def _results_doc(**meta) -> dict:
    bench = [{"name": n, "group": "g: x", "extra_info": {"variant": n, "baseline": n == "a"},
              "stats": {"median": m}} for n, m in (("a", 2.0), ("b", 1.0))]
    return {"benchmarks": bench, "rela_fast": {"command": "rela-fast bench run", "machine": {}, "date": "d", **meta}}


def _readme(path, text: str = "# R\n<!-- report:start -->\nold\n<!-- report:end -->\ntail\n", newline="\n"):
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def test_bench_readme_refuses_links_out_of_results(capsys, tmp_path):
    results = tmp_path / "benchmarks" / "results"
    (results / "headline-a").mkdir(parents=True)
    (results / "headline-a" / "summary.json").write_text(json.dumps({"rows": [], "baselines": {}}))
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:secret")
    (results / "headline-a" / "table.md").symlink_to(secret)
    readme = _readme(tmp_path / "README.md")
    before = readme.read_bytes()
    _refused(capsys, ["bench", "readme", str(readme), "--results", str(results)], "table.md", "link")
    assert readme.read_bytes() == before
    (results / "headline-a" / "table.md").unlink()
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(_results_doc()))
    (results / "evil.json").symlink_to(outside)
    _refused(capsys, ["bench", "readme", str(readme), "--results", str(results)], "evil.json")
    assert readme.read_bytes() == before


def test_bench_readme_keeps_crlf_hard_links_and_one_marker_pair(tmp_path):
    results = tmp_path / "results"
    (results / "headline-a").mkdir(parents=True)
    (results / "headline-a" / "summary.json").write_text(json.dumps({"rows": [], "baselines": {}}))
    (results / "headline-a" / "table.md").write_text("| a |\n|---|\n| <!-- report:end --> |\n")
    readme = _readme(tmp_path / "README.md", newline="\r\n")
    (tmp_path / "copy.md").hardlink_to(readme)
    assert main(["bench", "readme", str(readme), "--results", str(results)]) == 0
    data = readme.read_bytes()
    assert data.startswith(b"# R\r\n<!-- report:start -->\r\n") and data.endswith(b"<!-- report:end -->\r\ntail\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")  # every line ends in CRLF
    assert data.count(b"<!-- report:end -->") == 1 and data.count(b"<!-- report:start -->") == 1
    assert (tmp_path / "copy.md").read_bytes() == data  # the hard link still shares the content
    assert main(["bench", "readme", str(readme), "--results", str(results)]) == 0  # and again


@pytest.mark.parametrize("damage", [
    lambda d: d.update(rela_fast=["not", "an", "object"]),
    lambda d: d["rela_fast"].update(machine="a string"),
    lambda d: d["benchmarks"][0].update(stats=[1, 2]),
    lambda d: d["benchmarks"][0].update(extra_info="text"),
    lambda d: d["benchmarks"][0].update(group=5),
    lambda d: d["benchmarks"][1]["extra_info"].update(variant=["b"]),
])
def test_bench_report_on_json_of_the_wrong_shape_is_one_line(capsys, tmp_path, damage):
    doc = _results_doc()
    damage(doc)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    _refused(capsys, ["bench", "report", str(path)], str(path))


def test_bench_report_refuses_a_huge_file_before_reading_it(capsys, tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GB that take no disk
    _refused(capsys, ["bench", "report", str(path)], str(path), "bytes")


# ------------------------------------------------------------------------------------------ the environment
@pytest.mark.parametrize("var, value", [("WORLD_SIZE", "abc"), ("LOCAL_RANK", "-1"), ("RANK", "x"),
                                        ("RELA_FAST_BACKEND", "garbage")])
@pytest.mark.parametrize("command", ["train", "convert", "info"])
def test_bad_environment_is_refused_alike_by_every_command(capsys, tmp_path, idx_dir, prior_file, monkeypatch,
                                                           var, value, command):
    monkeypatch.setenv(var, value)
    argv = {"train": _train(idx_dir, tmp_path / "run"), "convert": _convert(idx_dir, tmp_path / "s", prior_file),
            "info": ["info"]}[command]
    _refused(capsys, argv, var)
    assert not (tmp_path / "run").exists() and not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------------- bounded inputs
@pytest.mark.parametrize("arch", ["convnet-512", "vit_huge_patch14_224"])
def test_a_run_prior_naming_a_huge_model_is_refused_before_building(tmp_path, monkeypatch, arch):
    """Old: a small run:DIR checkpoint whose config names vit_huge_patch14_224 built it (3.2 GB RSS) first."""
    import rela_fast.models.backbones as backbones
    from rela_fast.models import load_backbone

    devices, real = [], backbones.create_backbone

    def recording(*args, **kwargs):
        built = real(*args, **kwargs)
        devices.append(next(built[0].parameters()).device.type)
        return built

    weights = real("convnet-4", 16)[0].state_dict()
    monkeypatch.setattr(backbones, "create_backbone", recording)
    torch.save({"config": {"backbone": {"arch": arch, "image_size": 224, "small_stem": False}}, "backbone": weights},
               tmp_path / "checkpoint.pt")
    with pytest.raises(UserError, match="values") as info:
        load_backbone(tmp_path)
    assert "\n" not in str(info.value)
    assert devices == ["meta"]  # counted on the meta device, never allocated


def test_an_image_size_of_two_and_a_half_is_refused(capsys, tmp_path, idx_dir):
    with pytest.raises(UserError, match="image_size"):
        _create_backbone()("convnet-4", 2.5)
    _refused(capsys, [*_train(idx_dir, tmp_path / "run"), "--image-size", "2.5"], "--image-size")


def test_byol_momentum_five_is_refused(capsys, tmp_path, idx_dir):
    from rela_fast.train.methods import create_method

    with pytest.raises(UserError, match="base_momentum"):
        create_method("byol", 16, base_momentum=5)
    _refused(capsys, [*_train(idx_dir, tmp_path / "run"), "--method-arg", "base_momentum=5"], "base_momentum")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_metrics_log_with_a_stray_byte_is_read(tmp_path):
    from rela_fast.train.metrics import MetricsLog, read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"event": "step", "step": 1}\n\xff\xfe junk\n5\n{"event": "step", "step": "two"}\n'
                     b'{"event": "step", "step": 3}\n')
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, "two", 3]  # objects only; the bad bytes and the bare 5 are skipped
    MetricsLog(path).truncate_after(2)  # a step of the wrong type is kept, not compared
    assert [r["step"] for r in read_metrics(path)] == [1, "two"]


@pytest.mark.parametrize("state", [
    {"config": [1, 2]},
    {"config": {"backbone": 5}},
    {"config": {"backbone": {"arch": "convnet-4", "image_size": 16}}, "backbone": [1, 2]},
    {"config": {"backbone": {"arch": "convnet-4", "image_size": 16}}, "backbone": {"features.0.weight": "x"}},
    {"config": {"backbone": {"arch": "convnet-4", "image_size": 16.0}}, "backbone": {}},
])
def test_checkpoints_with_wrong_typed_model_fields_are_one_line(capsys, tmp_path, classes_dir, state):
    """(These held before the issue too; kept as the regression net of the model fields.)"""
    torch.save(state, tmp_path / "checkpoint.pt")
    _refused(capsys, ["eval", str(tmp_path / "checkpoint.pt"), *_probe_args(classes_dir)], "checkpoint.pt")


@pytest.mark.parametrize("train_state", [[1, 2], {"step": 3, "wall_time": "an hour"}, "done"])
def test_eval_of_a_checkpoint_with_a_wrong_typed_train_state_is_no_internal_error(capsys, tmp_path, classes_dir,
                                                                                 train_state):
    """Old: ``state["train_state"].get`` or a format of ``wall_time`` ended in "internal error" after the probe."""
    weights = _create_backbone()("convnet-4", 16)[0].state_dict()
    torch.save({"config": {"backbone": {"arch": "convnet-4", "image_size": 16, "small_stem": False}},
                "backbone": weights, "train_state": train_state}, tmp_path / "checkpoint.pt")
    assert main(["eval", str(tmp_path / "checkpoint.pt"), *_probe_args(classes_dir)]) == 0
    assert "probe acc" in capsys.readouterr().out


def test_a_method_argument_that_does_not_fit_the_checkpoint_is_one_line(capsys, tmp_path, idx_dir):
    run = tmp_path / "run"
    assert main(_train(idx_dir, run)) == 0
    before = _snapshot(run)
    argv = [a if a != "hidden_dim=16" else "hidden_dim=32" for a in _train(idx_dir, run)]
    _refused(capsys, argv, "hidden_dim")
    assert _snapshot(run) == before
