"""TargetStore: layout without pickles, memory mapping, the stored projection, staleness messages."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from rela_fast.conversion import convert
from rela_fast.data import open_source
from rela_fast.errors import UserError
from rela_fast.targets import SCHEMA_VERSION, StoreWriter, TargetStore, load_targets

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:The .grad attribute:UserWarning")


class _Prior(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 12, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        return torch.cat([y.mean(dim=(2, 3)), y.amax(dim=(2, 3))], dim=1)  # P = 24


def _images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 1, 1, 3))
    return (base + rng.normal(0, 30, size=(n, 20, 24, 3))).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    for i, image in enumerate(_images(24, seed=0)):
        Image.fromarray(image).save(root / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def store(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "targets"
    return convert(folder, out, _Prior(), size=16, dim=5, batch_size=4, shard_size=8, decoder="pil",
                   progress=False, keep_features=True)


def test_layout_is_npy_and_json_only(store):
    names = sorted(p.name for p in store.root.iterdir())
    assert names == sorted(["meta.json", "targets.npy", "rows.npy", "source.json", "skipped.json", "pca_mean.npy",
                            "pca_components.npy", "eigenvalues.npy", "target_mean.npy", "target_std.npy",
                            ".rela_fast.manifest.json"])  # the ownership manifest (issues 15, 26)
    listed = json.loads((store.root / ".rela_fast.manifest.json").read_text())
    assert listed["kind"] == "target-store" and sorted(listed["files"]) == sorted(names[1:])
    for name, entry in listed["files"].items():  # every file with its size and sha256
        data = (store.root / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    for path in store.root.glob("*.npy"):
        np.load(path, allow_pickle=False)  # raises if anything needed pickle
    meta = json.loads((store.root / "meta.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["prior"]["weights_hash"] and meta["size"] == 16 and meta["dim"] == 5 and meta["feature_dim"] == 24
    assert meta["source"]["count"] == 24 and len(meta["eigenvalues"]) == 5
    assert all(a >= b for a, b in zip(meta["eigenvalues"], meta["eigenvalues"][1:]))
    for key in ("total_s", "images_per_s", "decode_encode_s"):
        assert key in meta["timing"]
    assert {"torch", "numpy", "rela_fast"} <= set(meta["versions"])


def test_targets_are_memory_mapped_rows_in_source_order(store):
    array = np.load(store.root / "targets.npy", mmap_mode="r")
    assert isinstance(array, np.memmap)
    assert store.targets.dtype == torch.float32 and store.targets.shape == (24, 5)
    np.testing.assert_array_equal(store.targets.numpy(), array)
    assert store.rows.tolist() == list(range(24))
    assert store.paths == [f"{i:02d}.png" for i in range(24)]
    assert store.labels is None and store.skipped == []
    torch.testing.assert_close(store.targets.double().mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(store.targets.double().std(0, unbiased=False), torch.ones(5, dtype=torch.float64),
                               atol=1e-5, rtol=0)


def test_stored_projection_maps_features_like_the_rows(store):
    work = store.root.with_name(store.root.name + ".work")
    feats = np.concatenate([np.load(p / "features.npy") for p in sorted(work.glob("shard-*"))])
    torch.testing.assert_close(store.transform(torch.from_numpy(feats)), store.targets, rtol=0, atol=1e-5)


def test_check_matches_describes_changes(store, folder, tmp_path):
    store.check_matches(str(folder))
    store.check_matches(open_source(folder))
    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    (changed / "03.png").unlink()
    shutil.copy(changed / "04.png", changed / "05.png")
    shutil.copy(changed / "04.png", changed / "zz.png")
    with pytest.raises(UserError) as info:
        store.check_matches(str(changed))
    message = str(info.value)
    assert "1 added: zz.png" in message and "1 removed: 03.png" in message and "1 modified: 05.png" in message
    assert "\n" not in message and "--overwrite" in message
    with pytest.raises(UserError, match="labels changed"):
        store.check_matches(open_source(folder, labels=[i % 2 for i in range(24)]))


def test_arrays_labels_and_missing_or_damaged_stores(tmp_path):
    images = _images(12, seed=2)
    s = convert(images, tmp_path / "a", _Prior(), size=16, dim=3, batch_size=4, decoder="pil", progress=False,
                labels=[i % 3 for i in range(12)])
    assert s.labels.dtype == torch.int64 and s.labels.tolist() == [i % 3 for i in range(12)]
    s.check_matches(open_source(images, labels=[i % 3 for i in range(12)]))
    with pytest.raises(UserError, match="modified"):
        images2 = images.copy()
        images2[7] ^= 1
        s.check_matches(images2)

    with pytest.raises(UserError, match="no such target store"):
        load_targets(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "meta.json").write_text("{}")
    with pytest.raises(UserError, match="missing targets.npy"):
        load_targets(tmp_path / "half")
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "a", bad)
    np.save(bad / "targets.npy", np.zeros((12, 4), np.float32))
    with pytest.raises(UserError, match="expected float32 12 x 3"):
        TargetStore(bad)
    meta = json.loads((bad / "meta.json").read_text())
    meta["schema_version"] = 999
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="schema 999"):
        TargetStore(bad)


def test_writer_commit_replaces_atomically(tmp_path):
    out = tmp_path / "s"
    for value in (1.0, 2.0):
        w = StoreWriter(out)
        t = w.targets(3, 2)
        t[:] = value
        t.flush()
        del t
        w.array("rows", np.arange(3))
        w.json("source", {"paths": ["a", "b", "c"], "keys": ["1", "2", "3"]})
        w.json("skipped", [])
        w.json("meta", {"schema_version": SCHEMA_VERSION, "count": 3, "dim": 2, "prior": {"name": "x"}, "size": 4,
                        "source": {"kind": "folder", "count": 3, "digest": "d"}})
        s = w.commit()
        assert float(s.targets[0, 0]) == value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary or old directories left
