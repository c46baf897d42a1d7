"""Hostile inputs to ``rela-fast convert`` and to target stores (issue 15): every one is refused with a
one-line error (exit 2 on the CLI), and nothing the user or an earlier run made is deleted or changed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from rela_fast.cli import main as cli_main
from rela_fast.conversion import convert
from rela_fast.errors import UserError
from rela_fast.ownership import MARKER
from rela_fast.targets import TargetStore, load_targets

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The .grad attribute:UserWarning"),
              pytest.mark.usefixtures("one_thread")]
KW = dict(size=16, dim=4, batch_size=4, shard_size=8, decoder="pil", progress=False)


class _Prior(nn.Module):
    """P = 12; ``fragile=True``: features divided by the image's pixel spread (inf for a flat image)."""

    def __init__(self, fragile: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 12, 3, stride=2)
        self.fragile = fragile

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.conv(x)).mean(dim=(2, 3)) + 0.1
        if self.fragile:
            f = f / (x.amax(dim=(2, 3)) - x.amin(dim=(2, 3))).sum(dim=1, keepdim=True)
        return f


def _folder(root: Path, n: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 22, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256), to prove nothing changed."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _user_folder(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work\n")
    (path / "sub" / "data.csv").write_text("1,2,3\n")
    return path


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("prior") / "p.pt"
    torch.jit.script(_Prior().eval()).save(str(path))
    return f"torchscript:{path}"


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = cli_main(["convert", *args])
    err = capsys.readouterr().err.strip()
    return code, err


def _one_line_exit_2(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("rela-fast convert: error:"), err
    assert needle in err, err


# -- ownership --------------------------------------------------------------------------------------
def test_overwrite_never_replaces_a_folder_rela_fast_did_not_make(tmp_path, capsys, prior_file):
    src = _folder(tmp_path / "imgs")
    mine = _user_folder(tmp_path / "mine")
    before = _snapshot(mine)
    common = [str(src), "--out", str(mine), "--prior", prior_file, "--size", "16", "--dim", "4", "--decoder",
              "pil", "--quiet"]
    code, err = _cli(capsys, *common)
    _one_line_exit_2(code, err, "did not make")
    assert "--overwrite" not in err  # no advice to destroy it
    code, err = _cli(capsys, *common, "--overwrite")
    _one_line_exit_2(code, err, "did not make")
    assert _snapshot(mine) == before


def test_out_may_not_be_the_source_or_above_it(tmp_path, capsys, prior_file):
    src = _folder(tmp_path / "data" / "imgs")
    before = _snapshot(tmp_path / "data")
    for out in (src, tmp_path / "data"):
        code, err = _cli(capsys, str(src), "--out", str(out), "--prior", prior_file, "--size", "16", "--dim", "4",
                         "--decoder", "pil", "--quiet", "--overwrite")
        _one_line_exit_2(code, err, "source folder")
    assert _snapshot(tmp_path / "data") == before


def test_user_folders_named_like_work_and_temporaries_survive(tmp_path, capsys, prior_file):
    src = _folder(tmp_path / "imgs")
    out = tmp_path / "store"
    work = _user_folder(tmp_path / "store.work")
    tmp_old = [_user_folder(tmp_path / "store.tmp-1"), _user_folder(tmp_path / "store.old-1")]
    lock = tmp_path / "store.lock"
    lock.write_text("my notes\n")
    before = {p: _snapshot(p) for p in (work, *tmp_old)}
    code, err = _cli(capsys, str(src), "--out", str(out), "--prior", prior_file, "--size", "16", "--dim", "4",
                     "--decoder", "pil", "--quiet", "--overwrite")
    _one_line_exit_2(code, err, "store.work")
    assert not out.exists()
    shutil.move(work, tmp_path / "moved")  # with the work name free, the conversion runs ...
    store = convert(src, out, prior_file, **KW)
    assert len(store) == 12 and (out / MARKER).is_file()
    for path in tmp_old:  # ... and the look-alike folders and the lock file are left as they were
        assert _snapshot(path) == before[path]
    assert _snapshot(tmp_path / "moved") == before[work]
    assert lock.read_text() == "my notes\n"


def test_store_of_the_previous_version_is_recognised_as_ours(tmp_path, prior_file):
    src = _folder(tmp_path / "imgs")
    out = tmp_path / "store"
    convert(src, out, prior_file, **KW)
    (out / MARKER).unlink()  # the 0.1 layout: no marker, meta.json with schema_version 1
    with pytest.raises(UserError, match=r"dim d=4 \(requested 3\).*--overwrite"):
        convert(src, out, prior_file, **{**KW, "dim": 3})
    store = convert(src, out, prior_file, **{**KW, "dim": 3}, overwrite=True)
    assert store.dim == 3 and (out / MARKER).is_file()


def test_empty_out_folder_is_used_and_an_empty_user_lock_file_kept(tmp_path, prior_file):
    src = _folder(tmp_path / "imgs")
    (tmp_path / "store").mkdir()
    (tmp_path / "store.lock").touch()  # a user's (empty) file with the lock's name
    assert len(convert(src, tmp_path / "store", prior_file, **KW)) == 12
    assert (tmp_path / "store.lock").read_bytes() == b""
    convert(src, tmp_path / "other", prior_file, **KW)
    assert not (tmp_path / "other.lock").exists()  # rela_fast's own lock file is removed


# -- finite numbers -----------------------------------------------------------------------------------
def test_prior_weights_with_nan_are_refused(tmp_path, capsys):
    src = _folder(tmp_path / "imgs")
    model = _Prior().eval()
    with torch.no_grad():
        model.conv.weight[0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.jit.script(model).save(str(path))
    code, err = _cli(capsys, str(src), "--out", str(tmp_path / "s"), "--prior", f"torchscript:{path}", "--size", "16",
                     "--dim", "4", "--decoder", "pil", "--quiet")
    _one_line_exit_2(code, err, "NaN or inf")
    assert "conv.weight" in err and not (tmp_path / "s").exists()


def test_non_finite_features_stop_at_the_first_image(tmp_path):
    src = _folder(tmp_path / "imgs")
    Image.fromarray(np.full((20, 22, 3), 128, np.uint8)).save(src / "05_flat.png")
    with pytest.raises(UserError) as info:
        convert(src, tmp_path / "s", _Prior(fragile=True), **KW)
    message = str(info.value)
    assert "05_flat.png" in message and "non-finite" in message and "\n" not in message
    assert not (tmp_path / "s").exists()


# -- stores validated on load --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good")
    src = _folder(root / "imgs")
    convert(src, root / "store", _Prior(), labels=[i % 3 for i in range(12)], **KW)
    return root / "store"


def _damaged_copy(good: Path, tmp_path: Path, damage) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    damage(bad)
    return bad


def _npy(name, value, **kw):
    return lambda d: np.save(d / name, value, **kw)


class _Boom:
    """Unpickling this would create the file named in its state: proof that nothing is unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _truncate(name: str):
    def damage(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) - 40])
    return damage


def _meta(change):
    def damage(d: Path) -> None:
        meta = json.loads((d / "meta.json").read_text())
        change(meta)
        (d / "meta.json").write_text(json.dumps(meta))
    return damage


DAMAGE = {
    "negative_row": ("rows.npy", lambda d: np.save(d / "rows.npy", np.r_[-1, np.arange(1, 12)].astype(np.int64))),
    "row_out_of_range": ("rows.npy", lambda d: np.save(d / "rows.npy", np.arange(1, 13, dtype=np.int64))),
    "rows_float": ("rows.npy", _npy("rows.npy", np.arange(12, dtype=np.float64))),
    "truncated_targets": ("targets.npy", _truncate("targets.npy")),
    "truncated_rows": ("rows.npy", _truncate("rows.npy")),
    "nan_target": ("targets.npy", lambda d: np.save(d / "targets.npy", np.where(
        np.arange(48).reshape(12, 4) == 17, np.nan, 0.5).astype(np.float32))),
    "inf_target": ("targets.npy", lambda d: np.save(d / "targets.npy", np.full((12, 4), np.inf, np.float32))),
    "meta_not_json": ("meta.json", lambda d: (d / "meta.json").write_text("{not json")),
    "meta_list": ("meta.json", lambda d: (d / "meta.json").write_text("[1, 2]")),
    "meta_no_dim": ("meta.json", _meta(lambda m: m.pop("dim"))),
    "meta_bad_count": ("meta.json", _meta(lambda m: m.update(count="12"))),
    "meta_no_source": ("meta.json", _meta(lambda m: m.pop("source"))),
    "short_labels": ("labels.npy", _npy("labels.npy", np.zeros(11, np.int64))),
    "negative_label": ("labels.npy", _npy("labels.npy", np.r_[-3, np.zeros(11)].astype(np.int64))),
    "skipped_not_pairs": ("skipped.json", lambda d: (d / "skipped.json").write_text('"x"')),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_store_files_are_refused_naming_the_file(good_store, tmp_path, case):
    name, damage = DAMAGE[case]
    bad = _damaged_copy(good_store, tmp_path, damage)
    before = _snapshot(bad)
    with pytest.raises(UserError) as info:
        load_targets(bad)
    message = str(info.value)
    assert name in message and "\n" not in message and "rela-fast convert" in message, message
    assert _snapshot(bad) == before


@pytest.mark.parametrize("name", ["labels.npy", "targets.npy", "rows.npy"])
def test_object_arrays_are_never_unpickled(good_store, tmp_path, name):
    witness = tmp_path / "unpickled"
    payload = np.array([_Boom(str(witness))] * 12, dtype=object)
    bad = _damaged_copy(good_store, tmp_path, _npy(name, payload, allow_pickle=True))
    with pytest.raises(UserError, match=name):
        TargetStore(bad)
    assert not witness.exists()


def test_stale_check_still_works_on_a_valid_store(good_store):
    assert len(load_targets(good_store)) == 12


# -- command-line values --------------------------------------------------------------------------------
def test_bad_convert_arguments_exit_2(tmp_path, capsys, prior_file, monkeypatch):
    src = _folder(tmp_path / "imgs")
    (tmp_path / "afile").write_text("x")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "keep.txt").write_text("keep")
    monkeypatch.chdir(cwd)
    base = [str(src), "--prior", prior_file, "--dim", "4", "--decoder", "pil", "--quiet"]
    cases = [
        (["--out", str(tmp_path / "o1"), "--threads", "-2"], "--threads -2"),
        (["--out", str(tmp_path / "o2"), "--threads", "0"], "--threads 0"),
        (["--out", str(tmp_path / "o3"), "--size", "100000"], "--size 100000"),
        (["--out", str(tmp_path / "o4"), "--size", "0"], "--size 0"),
        (["--out", "/"], "file-system root"),
        (["--out", ""], "empty"),
        (["--out", "."], "current folder"),
        (["--out", ".."], "current folder"),
        (["--out", str(tmp_path / "afile" / "sub")], "is a file"),
        (["--out", str(tmp_path / "afile")], "is a file"),
        (["--out", "/proc/rela_fast_store"], "/proc"),
        (["--out", "/sys/rela_fast_store"], "/sys"),
        (["--out", str(tmp_path / "o5"), "--batch-size", "0"], "--batch-size 0"),
    ]
    before = _snapshot(tmp_path)
    for args, needle in cases:
        code, err = _cli(capsys, *base, *args)
        _one_line_exit_2(code, err, needle)
    assert _snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "cwd", "imgs"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_exits_2(tmp_path, capsys, prior_file):
    src = _folder(tmp_path / "imgs")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, err = _cli(capsys, str(src), "--out", str(locked / "store"), "--prior", prior_file, "--size", "16",
                         "--dim", "4", "--quiet")
        _one_line_exit_2(code, err, "cannot write")
    finally:
        locked.chmod(0o755)


# -- --verify-content ------------------------------------------------------------------------------------
def test_verify_content_notices_a_same_size_edit_that_keeps_the_mtime(tmp_path, capsys, prior_file):
    src = _folder(tmp_path / "imgs")
    out = tmp_path / "store"
    args = [str(src), "--out", str(out), "--prior", prior_file, "--size", "16", "--dim", "4", "--decoder", "pil",
            "--quiet", "--verify-content"]
    assert cli_main(["convert", *args]) == 0
    store = load_targets(out)
    assert store.meta["source"]["key_mode"] == "content" and store.source_keys[0].startswith("sha256:")
    victim = src / "03.png"
    stat = victim.stat()
    image = np.asarray(Image.open(victim)).copy()
    image[0, 0] ^= 1  # one pixel; PNG size may change, so pad back to the same size with a text chunk
    data = victim.read_bytes()
    Image.fromarray(image).save(victim)
    new = victim.read_bytes()
    if len(new) != len(data):  # same-size edit: keep the original bytes but flip one in the pixel data
        new = bytearray(data)
        new[len(new) // 2] ^= 0xFF
        victim.write_bytes(bytes(new))
    assert victim.stat().st_size == stat.st_size
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    time.sleep(0.01)
    code, err = _cli(capsys, *args)
    _one_line_exit_2(code, err, "1 modified: 03.png")
    with pytest.raises(UserError, match="1 modified: 03.png"):
        load_targets(out).check_matches(str(src))
    # by size + mtime (the default) the edit is invisible: that is what --verify-content is for
    plain = convert(src, tmp_path / "plain", prior_file, **KW)
    assert plain.meta["source"].get("key_mode", "stat") == "stat"
