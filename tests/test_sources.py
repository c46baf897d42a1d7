"""Sources: folders, file lists, webdataset tars, IDX files and arrays; order, labels, bytes and fingerprints."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
from idx_files import write_idx
from PIL import Image

from rela_fast.data import open_source
from rela_fast.errors import UserError


def _jpeg(seed: int, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _write(path, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# --------------------------------------------------------------------------------------------- folders


def test_class_folders_labels_order_hidden_and_symlinks(tmp_path):
    root = tmp_path / "data"
    files = {
        "b/x.jpg": 1, "b/deeper/y.PNG": 2, "a/z.jpeg": 3, "a/b.webp": 4, "a-b/c.bmp": 5, "a/.hidden.jpg": 6,
        ".cache/q.jpg": 7, "a/notes.txt": 8, "b/.git/w.jpg": 9,
    }
    for rel, seed in files.items():
        _write(root / rel, _jpeg(seed))
    (tmp_path / "elsewhere").mkdir()
    _write(tmp_path / "elsewhere" / "far.jpg", _jpeg(10))
    os.symlink(tmp_path / "elsewhere", root / "b" / "linked")  # symlinked folder is followed
    os.symlink(root / "a" / "z.jpeg", root / "b" / "alias.jpg")  # symlinked file is followed
    os.symlink(root / "b", root / "b" / "deeper" / "loop")  # a loop must not hang
    src = open_source(str(root))
    assert src.kind == "folder" and src.root == str(root)
    assert src.classes == ["a", "a-b", "b"]  # sorted class names; hidden folders are not classes
    expected = [
        ("a/b.webp", 0), ("a/z.jpeg", 0), ("a-b/c.bmp", 1),
        ("b/alias.jpg", 2), ("b/deeper/y.PNG", 2), ("b/linked/far.jpg", 2), ("b/x.jpg", 2),
    ]
    assert list(zip(src.paths, src.labels)) == expected
    assert len(src) == 7
    for i, (rel, _) in enumerate(expected):
        assert src.read(i) == (root / rel).read_bytes()


def test_flat_folder_is_unlabelled_and_mixed_layout_warns(tmp_path):
    for name in ["2.jpg", "10.jpg", "1.png"]:
        _write(tmp_path / "flat" / name, _jpeg(len(name)))
    src = open_source(tmp_path / "flat")
    assert src.labels is None and src.classes is None
    assert src.paths == ["1.png", "10.jpg", "2.jpg"]
    _write(tmp_path / "flat" / "sub" / "3.jpg", _jpeg(3))
    with pytest.warns(UserWarning, match="unlabelled"):
        mixed = open_source(tmp_path / "flat")
    assert mixed.labels is None and mixed.paths == ["1.png", "10.jpg", "2.jpg", "sub/3.jpg"]


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        open_source(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    _write(tmp_path / "empty" / "cls" / "readme.txt", b"hi")
    with pytest.raises(UserError, match="no images found"):
        open_source(tmp_path / "empty")
    _write(tmp_path / "one.jpg", _jpeg(0))
    with pytest.raises(UserError, match="single image"):
        open_source(tmp_path / "one.jpg")


def test_folder_entry_keys_track_size_and_mtime(tmp_path):
    for k in range(3):
        _write(tmp_path / "d" / f"{k}.jpg", _jpeg(k))
    src = open_source(tmp_path / "d")
    keys = src.entry_keys()
    st = os.stat(tmp_path / "d" / "1.jpg")
    assert keys[1] == f"1.jpg|{st.st_size}|{st.st_mtime_ns}"
    before = src.fingerprint(keys)
    assert before["kind"] == "folder" and before["count"] == 3 and before == src.fingerprint()
    os.utime(tmp_path / "d" / "1.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after = src.entry_keys()
    assert after[0] == keys[0] and after[2] == keys[2] and after[1] != keys[1]
    assert src.fingerprint()["digest"] != before["digest"]


# ---------------------------------------------------------------------------------------------- lists


def test_file_list_relative_absolute_labels_comments(tmp_path):
    _write(tmp_path / "imgs" / "a.jpg", _jpeg(1))
    _write(tmp_path / "other" / "b.png", _jpeg(2))
    absolute = str(tmp_path / "other" / "b.png")
    (tmp_path / "list.txt").write_text(f"# comment\nimgs/a.jpg 3\n\n{absolute}\t0\nimgs/missing.jpg 1\n")
    src = open_source(tmp_path / "list.txt")
    assert src.kind == "filelist" and src.root == str(tmp_path)
    assert src.paths == ["imgs/a.jpg", absolute, "imgs/missing.jpg"]
    assert src.labels == [3, 0, 1]
    assert src.read(0) == (tmp_path / "imgs" / "a.jpg").read_bytes()
    assert src.read(1) == (tmp_path / "other" / "b.png").read_bytes()
    with pytest.raises(OSError):
        src.read(2)  # a missing listed file fails when read (the decoder reports it), not when opened
    assert "missing" in src.entry_key(2)
    (tmp_path / "nolabels.txt").write_text("imgs/a.jpg\nimgs/a.jpg 2\n")
    assert open_source(tmp_path / "nolabels.txt").labels is None  # labels only if every line has one


def test_file_list_errors(tmp_path):
    (tmp_path / "wrong.txt").write_text("nope/a.jpg\nnope/b.jpg\n")
    with pytest.raises(UserError, match="none of the first 2 listed files exist"):
        open_source(tmp_path / "wrong.txt")
    (tmp_path / "empty.txt").write_text("\n# only a comment\n")
    with pytest.raises(UserError, match="empty"):
        open_source(tmp_path / "empty.txt")
    (tmp_path / "binary.bin").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(UserError, match="not a text file list"):
        open_source(tmp_path / "binary.bin")


# ------------------------------------------------------------------------------------------------ tar


def _tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_tar_shards_group_by_key_with_labels(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    a = [(f"s0/{k:04d}", _jpeg(k)) for k in range(3)]
    b = [(f"s1/{k:04d}", _jpeg(10 + k)) for k in range(2)]
    _tar(shards / "train-000.tar", [m for key, data in a for m in (
        (f"{key}.jpg", data), (f"{key}.cls", str(int(key[-1]) % 2).encode()), (f"{key}.json", b"{}"))])
    _tar(shards / "train-001.tar", [(f"{b[0][0]}.cls", b"5"), (f"{b[0][0]}.PNG", b[0][1]),
                                    (f"{b[1][0]}.jpeg", b[1][1]), (f"{b[1][0]}.cls", b"7"),
                                    ("s1/orphan.json", b"{}")])
    with pytest.warns(UserWarning, match="without an image"):
        src = open_source(shards)
    assert src.kind == "tar" and src.root == str(shards)
    assert src.paths == ["train-000.tar#s0/0000.jpg", "train-000.tar#s0/0001.jpg", "train-000.tar#s0/0002.jpg",
                         "train-001.tar#s1/0000.PNG", "train-001.tar#s1/0001.jpeg"]
    assert src.labels == [0, 1, 0, 5, 7]
    originals = [d for _, d in a] + [d for _, d in b]
    assert [src.read(i) for i in range(len(src))] == originals
    assert src.entry_key(0).startswith("train-000.tar#s0/0000.jpg|")
    # one shard, a glob and a brace range name the same members
    assert len(open_source(shards / "train-000.tar")) == 3
    with pytest.warns(UserWarning):
        assert open_source(str(shards / "train-*.tar")).paths == src.paths
    with pytest.warns(UserWarning):
        assert open_source(str(shards / "train-{000..001}.tar")).paths == src.paths
    clone = pickle.loads(pickle.dumps(src))  # picklable for loader workers: descriptors are reopened
    assert clone.read(4) == originals[4]
    assert not any(p.suffix in (".jpg", ".png", ".jpeg") for p in shards.rglob("*"))  # nothing extracted


def test_tar_errors(tmp_path):
    with tarfile.open(tmp_path / "c.tar", "w:gz") as tf:
        info = tarfile.TarInfo("x.jpg")
        data = _jpeg(0)
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError, match="uncompressed"):
        open_source(tmp_path / "c.tar")
    _tar(tmp_path / "n.tar", [("a.txt", b"x")])
    with pytest.raises(UserError, match="no images"):
        open_source(tmp_path / "n.tar")
    _tar(tmp_path / "l.tar", [("a.jpg", _jpeg(1)), ("a.cls", b"cat")])
    with pytest.raises(UserError, match="not an integer"):
        open_source(tmp_path / "l.tar")
    with pytest.raises(UserError, match="matches no"):
        open_source(str(tmp_path / "none-*.tar"))


# ------------------------------------------------------------------------------------------------ IDX


def _independent_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, n = struct.unpack(">II", raw[:8])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8).reshape(dims)


def test_fashion_mnist_idx(fashion_mnist_dir):
    src = open_source(fashion_mnist_dir)
    assert src.kind == "idx" and len(src) == 60000
    assert sorted(set(src.labels)) == list(range(10)) and len(src.classes) == 10
    assert src.paths[42] == "train-images-idx3-ubyte.gz#00042"
    images = _independent_idx(os.path.join(fashion_mnist_dir, "train-images-idx3-ubyte.gz"))
    labels = _independent_idx(os.path.join(fashion_mnist_dir, "train-labels-idx1-ubyte.gz"))
    rng = np.random.default_rng()
    for i in [0, 59999, *rng.integers(0, 60000, 5).tolist()]:
        row = src.read(i)
        assert row.dtype == np.uint8 and row.shape == (28, 28)
        np.testing.assert_array_equal(row, images[i])
        assert src.labels[i] == labels[i]
    test = open_source(fashion_mnist_dir, split="test")
    assert len(test) == 10000 and test.paths[0].startswith("t10k-images")
    with pytest.raises(UserError, match="splits"):
        open_source(fashion_mnist_dir, split="val")


def test_idx_raw_files_and_errors(tmp_path):
    rng = np.random.default_rng()
    images = rng.integers(0, 256, (7, 5, 6), dtype=np.uint8)
    labels = rng.integers(0, 3, 7).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    src = open_source(tmp_path)
    assert len(src) == 7 and src.labels == labels.tolist() and src.paths[3] == "train-images-idx3-ubyte#3"
    np.testing.assert_array_equal(src.read(6), images[6])
    direct = open_source(tmp_path / "train-images-idx3-ubyte")  # the images file itself: labels found beside it
    assert direct.labels == labels.tolist()
    # per-row content keys: changing one row changes only that key
    keys = src.entry_keys()
    images[2, 0, 0] ^= 1
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    changed = open_source(tmp_path).entry_keys()
    assert [k1 == k2 for k1, k2 in zip(keys, changed)] == [True, True, False, True, True, True, True]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train-images-idx3-ubyte").write_bytes(b"\x08\x03\x00\x00" + b"\x00" * 20)
    with pytest.raises(UserError, match="magic"):
        open_source(tmp_path / "bad")
    write_idx(tmp_path / "bad" / "train-images-idx3-ubyte", images)
    with open(tmp_path / "bad" / "train-images-idx3-ubyte", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(UserError, match="header says"):
        open_source(tmp_path / "bad")
    write_idx(tmp_path / "bad" / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "bad" / "train-labels-idx1-ubyte", labels[:5])
    with pytest.raises(UserError, match="5 labels for 7 images"):
        open_source(tmp_path / "bad")


# ---------------------------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NHWC1", "NCHW-torch"])
def test_array_layouts(layout):
    rng = np.random.default_rng()
    hwc = rng.integers(0, 256, (6, 9, 11, 3), dtype=np.uint8)
    gray = hwc[..., 0]
    if layout == "NHW":
        data, expect = gray, gray
    elif layout == "NHWC":
        data, expect = hwc, hwc
    elif layout == "NHWC1":
        data, expect = gray[..., None], gray
    else:
        data, expect = torch.from_numpy(hwc).permute(0, 3, 1, 2), hwc
    labels = torch.arange(6) % 4
    src = open_source(data, labels=labels)
    assert src.kind == "array" and len(src) == 6 and src.paths[4] == "array#4"
    assert src.labels == (np.arange(6) % 4).tolist()
    for i in range(6):
        np.testing.assert_array_equal(src.read(i), expect[i])
    keys = src.entry_keys()
    assert len(set(keys)) == 6
    assert src.fingerprint()["digest"] == open_source(data).fingerprint()["digest"]


def test_array_errors():
    with pytest.raises(UserError, match="dtype float32"):
        open_source(np.zeros((2, 4, 4), np.float32))
    with pytest.raises(UserError, match="shape"):
        open_source(np.zeros((2, 4), np.uint8))
    with pytest.raises(UserError, match="channel axis"):
        open_source(np.zeros((2, 5, 6, 7), np.uint8))
    with pytest.raises(UserError, match="one integer per image"):
        open_source(np.zeros((3, 4, 4), np.uint8), labels=[0, 1])


def test_source_read_is_thread_safe(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    members = [(f"{k:03d}.jpg", _jpeg(k)) for k in range(40)]
    _tar(tmp_path / "s.tar", members)
    src = open_source(tmp_path / "s.tar")
    order = np.random.default_rng().permutation(40).tolist() * 3
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(src.read, order))
    assert got == [members[i][1] for i in order]
