"""ReLA-D conversion end to end: reference agreement, bad files, CLI errors, reuse / refusal, SIGKILL resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from rela_fast.cli import main as cli_main
from rela_fast.conversion import KILL_AFTER_ROWS_ENV, convert
from rela_fast.errors import UserError
from rela_fast.ownership import MARKER, make_temp_dir
from rela_fast.targets import load_targets

SIZE, DIM, BATCH, SHARD = 32, 8, 8, 16
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The .grad attribute:UserWarning")
REPO = Path(__file__).resolve().parents[1]


class TinyPrior(nn.Module):
    """A small conv net with BatchNorm (so the fusion passes have something to fold): P = 24."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 24, 3)
        self.bn2 = nn.BatchNorm2d(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(x))).mean(dim=(2, 3))


def _tiny_prior(seed: int = 0) -> TinyPrior:
    torch.manual_seed(seed)
    model = TinyPrior()
    with torch.no_grad():  # non-trivial BN statistics
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
    return model.eval()


def _image(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """Smooth random colour fields (so resampling matters) plus a little noise."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [np.sin(rng.uniform(1, 6) * xx + rng.uniform(1, 6) * yy + rng.uniform(0, 6)) for _ in range(3)]
    arr = (np.stack(chans, -1) * 100 + 128 + rng.normal(0, 8, (h, w, 3))).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def make_folder(root: Path, n: int = 40, seed: int = 0, bad: bool = True) -> Path:
    """``n`` labelled PNG/JPEG images in two class folders, plus three broken files when ``bad``."""
    rng = np.random.default_rng(seed)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = _image(rng, 32 + int(rng.integers(0, 12)), 32 + int(rng.integers(0, 12)))
        name = root / ("cat", "dog")[i % 2] / f"img{i:03d}"
        image.save(f"{name}.png") if i % 3 else image.save(f"{name}.jpg", quality=92)
    if bad:
        good = (root / "cat" / "img000.jpg").read_bytes()
        (root / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 2])
        (root / "dog" / "zero.png").write_bytes(b"")
        (root / "dog" / "notes.png").write_bytes(b"this is not an image\n" * 10)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def prior_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("prior") / "tiny.pt"
    torch.jit.script(_tiny_prior()).save(str(path))
    return f"torchscript:{path}"


def _convert(src, out, prior, **kw):
    args = dict(size=SIZE, dim=DIM, batch_size=BATCH, shard_size=SHARD, decoder="pil", progress=False)
    args.update(kw)
    return convert(src, out, prior, **args)


@pytest.fixture(scope="module")
def reference_store(data_dir, prior_file, tmp_path_factory):
    """One uninterrupted conversion that the resume / reuse tests compare against."""
    return _convert(data_dir, tmp_path_factory.mktemp("ref") / "store", prior_file)


def _reference_targets(paths: list[Path], model: nn.Module, d: int) -> tuple[np.ndarray, np.ndarray]:
    """The authors' pipeline, independently: PIL + torchvision transforms, eager fp32 model, numpy PCA."""
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(SIZE), T.CenterCrop(SIZE), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406),
                                                                                   (0.229, 0.224, 0.225))])
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        feats = model(x).double().numpy()
    centred = feats - feats.mean(axis=0)
    evals, evecs = np.linalg.eigh(centred.T @ centred / (len(feats) - 1))
    order = np.argsort(evals)[::-1][:d]
    y = centred @ evecs[:, order]
    return (y - y.mean(axis=0)) / y.std(axis=0), evals[order]


def test_matches_authors_pipeline_and_lists_bad_files(data_dir, tmp_path):
    model = _tiny_prior()
    store = _convert(data_dir, tmp_path / "store", model)
    assert sorted(p for p, _ in store.skipped) == ["cat/truncated.jpg", "dog/notes.png", "dog/zero.png"]
    assert all(reason for _, reason in store.skipped)
    good = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("img*"))
    assert sorted(store.paths) == good and len(store) == 40
    assert store.targets.shape == (40, DIM) and store.targets.dtype == torch.float32
    assert store.labels.tolist() == [0 if p.startswith("cat/") else 1 for p in store.paths]
    assert store.meta["feature_dim"] == 24 and store.meta["size"] == SIZE and store.meta["dim"] == DIM

    y_ref, evals = _reference_targets([data_dir / p for p in store.paths], model, DIM)
    y = store.targets.double().numpy()
    np.testing.assert_allclose(store.meta["eigenvalues"], evals, rtol=1e-4)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=0), 1, atol=1e-5)  # population std
    proj, proj_ref = y @ y.T / len(y), y_ref @ y_ref.T / len(y)  # projectors onto the target span
    assert np.linalg.norm(proj - proj_ref) < 1e-3
    corr = np.abs((y * y_ref).mean(axis=0))
    np.testing.assert_allclose(corr[:4], 1.0, atol=1e-4)
    assert store.array("pca_components").shape == (24, DIM)


def test_arrays_are_a_source(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(20, 36, 40, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, size=20)
    store = _convert(images, tmp_path / "arr", _tiny_prior(), labels=labels, dim=5)
    assert store.targets.shape == (20, 5) and store.skipped == []
    assert store.labels.tolist() == labels.tolist()
    assert store.paths[0] == "array#0"


def test_on_error_fail_names_the_file(data_dir, prior_file, tmp_path, capsys):
    code = cli_main(["convert", "--src", str(data_dir), "--out", str(tmp_path / "s"), "--prior", prior_file,
                     "--size", "32", "--dim", "4", "--decoder", "pil", "--on-error", "fail", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "cat/truncated.jpg" in err and "--on-error skip" in err
    assert not (tmp_path / "s").exists()


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, prior_file):
    empty = tmp_path / "empty"
    empty.mkdir()
    imgs = make_folder(tmp_path / "imgs", n=6, bad=False)
    cases = [
        ([str(empty), "--prior", prior_file], "no images"),
        ([str(imgs), "--prior", "timm:no_such_net_xyz"], "no_such_net_xyz"),
        ([str(imgs), "--prior", "timm:resnet18", "--dim", "513", "--size", "32"], "--dim 513"),
        ([str(imgs), "--prior", "timm:resnet18", "--weights", str(tmp_path / "missing.pth")], "missing.pth"),
        ([str(imgs), "--prior", prior_file, "--dim", "6", "--size", "32"], "at most 5 components"),
    ]
    for args, needle in cases:
        code = cli_main(["convert", *args, "--out", str(tmp_path / "out"), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2, (args, err)
        assert len(err.splitlines()) == 1 and needle in err, (args, err)
        assert err.startswith("rela-fast convert: error:")
    assert not (tmp_path / "out").exists()


def test_reuse_refuse_and_overwrite(data_dir, prior_file, reference_store, tmp_path):
    src = tmp_path / "data"
    shutil.copytree(data_dir, src)
    out = tmp_path / "store"
    first = _convert(src, out, prior_file)
    stamp = (out / "targets.npy").stat().st_mtime_ns
    again = _convert(src, out, prior_file)  # same fingerprint, prior, S, d: reused without work
    assert (out / "targets.npy").stat().st_mtime_ns == stamp
    assert again.meta["created"] == first.meta["created"]
    torch.testing.assert_close(first.targets, reference_store.targets, rtol=0, atol=1e-6)
    again.check_matches(str(src))

    with pytest.raises(UserError, match=r"dim d=8 \(requested 4\).*--overwrite"):
        _convert(src, out, prior_file, dim=4)
    _image(np.random.default_rng(9), 33, 35).save(src / "dog" / "img001.png")  # modified
    _image(np.random.default_rng(10), 33, 35).save(src / "cat" / "new.png")  # added
    with pytest.raises(UserError, match=r"1 added: cat/new.png.*1 modified: dog/img001.png.*--overwrite"):
        _convert(src, out, prior_file)
    with pytest.raises(UserError, match=r"different source \(43 -> 44 images; 1 added"):
        load_targets(out).check_matches(str(src))
    assert (out / "targets.npy").stat().st_mtime_ns == stamp  # nothing was touched

    fresh = _convert(src, out, prior_file, overwrite=True)
    assert len(fresh) == 41 and "cat/new.png" in fresh.paths
    fresh.check_matches(str(src))


def test_kept_features_recompute_only_changed_shards(data_dir, prior_file, tmp_path):
    src = tmp_path / "data"
    shutil.copytree(data_dir, src)
    out = tmp_path / "store"
    _convert(src, out, prior_file, keep_features=True)
    n_shards = len(list((tmp_path / "store.work").glob("shard-*")))
    _image(np.random.default_rng(11), 36, 34).save(src / "dog" / "img001.png")  # one row of one shard
    updated = _convert(src, out, prior_file, keep_features=True)
    assert updated.meta["settings"]["reused_shards"] == n_shards - 1
    assert updated.meta["timing"]["processed_this_run"] <= SHARD
    fresh = _convert(src, tmp_path / "fresh", prior_file)
    torch.testing.assert_close(updated.targets, fresh.targets, rtol=0, atol=1e-6)
    updated.check_matches(str(src))


def _cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def test_sigkill_mid_run_resumes_to_the_same_targets(data_dir, prior_file, reference_store, tmp_path):
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "rela_fast", "convert", str(data_dir), "--out", str(out), "--prior", prior_file,
           "--size", str(SIZE), "--dim", str(DIM), "--batch-size", str(BATCH), "--shard-size", str(SHARD),
           "--decoder", "pil", "--quiet"]
    # killed after 2.5 shards: shards 0 and 1 are on disk, shard 2 is half done and lost
    proc = subprocess.run(cmd, env=_cli_env(**{KILL_AFTER_ROWS_ENV: str(2 * SHARD + BATCH)}),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    work = tmp_path / "store.work"
    assert sorted(p.name for p in work.glob("shard-*")) == ["shard-000000", "shard-000001"]
    assert not out.exists()
    (work / "shard-000002.tmp-999999").mkdir()  # debris of a kill during a shard write
    # ... and during the store write: a marked temporary folder of a dead process (issue 15: only marked
    # folders are removed; a user's folder with the old debris name is kept)
    debris = make_temp_dir(tmp_path, "store")
    info = json.loads((debris / MARKER).read_text())
    (debris / MARKER).write_text(json.dumps({**info, "pid": 999999}))
    (tmp_path / "store.tmp-999999").mkdir()

    store = _convert(data_dir, out, prior_file)
    assert store.meta["settings"]["reused_shards"] == 2
    assert store.meta["timing"]["processed_this_run"] == 43 - 2 * SHARD
    assert not work.exists() and not debris.exists() and (tmp_path / "store.tmp-999999").is_dir()
    assert store.paths == reference_store.paths and store.skipped == reference_store.skipped
    torch.testing.assert_close(store.targets, reference_store.targets, rtol=0, atol=1e-6)


def test_a_second_conversion_of_the_same_store_is_refused(data_dir, prior_file, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "store"
    with open(tmp_path / "store.lock", "w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running conversion holds it
        with pytest.raises(UserError, match="another rela-fast convert is writing it"):
            _convert(data_dir, out, prior_file)
    assert not out.exists()
