"""Hostile and damaged sources: each test builds its input and asserts a refusal (one line) or a skip that
is reported, never a hang, a traceback or an unbounded read."""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import os
import signal
import struct
import tarfile
import warnings

import numpy as np
import pytest
from PIL import Image

from rela_fast.data import make_decoder, open_source
from rela_fast.errors import UserError


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the block takes longer than ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s (a FIFO was opened?)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _png(path, value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text.strip(), text
    return text


# ------------------------------------------------------------------------------------ special files


def test_fifos_devices_and_sockets_in_a_folder_are_skipped_and_reported(tmp_path):
    import socket

    for i in range(3):
        _png(tmp_path / f"{i}.png", i)
    os.mkfifo(tmp_path / "fifo.png")  # a FIFO with an image name
    os.mkfifo(tmp_path / "hidden_fifo")
    os.symlink(tmp_path / "hidden_fifo", tmp_path / "link_to_fifo.jpg")
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.png"))
    try:
        with deadline(20), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            src = open_source(tmp_path)
            batches = list(make_decoder("pil", 8, "cpu", num_threads=1).iterate(src, batch_size=8))
    finally:
        sock.close()
    assert src.paths == ["0.png", "1.png", "2.png"]
    assert sum(len(b.indices) for b in batches) == 3
    reported = " ".join(str(w.message) for w in caught)
    assert "not regular files" in reported and "4 entries" in reported


def test_a_file_list_naming_a_fifo_or_dev_zero_never_reads_it(tmp_path):
    _png(tmp_path / "ok.png")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "list.txt").write_text("ok.png\npipe.png\n/dev/zero\n")
    src = open_source(tmp_path / "list.txt")
    with deadline(20):
        assert isinstance(src.read(0), bytes)
        for row in (1, 2):
            with pytest.raises(OSError, match="not an image file") as info:
                src.read(row)
            assert info.value.filename.endswith(("pipe.png", "zero"))
        batch = next(iter(make_decoder("pil", 8, "cpu", num_threads=1).iterate(src, batch_size=8)))
    assert batch.indices.tolist() == [0] and {r for r, _ in batch.failures} == {1, 2}


def test_a_fifo_or_device_given_as_the_data_path_is_refused(tmp_path):
    os.mkfifo(tmp_path / "list.txt")
    with deadline(20):
        for path in (tmp_path / "list.txt", "/dev/zero"):
            with pytest.raises(UserError, match="not a data file") as info:
                open_source(path)
            _one_line(info.value)


def test_images_over_the_size_cap_are_skipped_with_the_reason(tmp_path, monkeypatch):
    _png(tmp_path / "small.png")
    (tmp_path / "big.png").write_bytes(b"\x89PNG" + b"\0" * 5000)
    monkeypatch.setenv("RELA_FAST_MAX_IMAGE_BYTES", "1000")
    src = open_source(tmp_path)
    with pytest.raises(OSError) as info:
        src.read(src.paths.index("big.png"))
    assert info.value.errno == errno.EFBIG and "RELA_FAST_MAX_IMAGE_BYTES" in str(info.value)
    monkeypatch.setenv("RELA_FAST_MAX_IMAGE_BYTES", "lots")
    with pytest.raises(UserError, match="RELA_FAST_MAX_IMAGE_BYTES"):
        src.read(0)


# ------------------------------------------------------------------------------------------- tar shards


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_truncated_tar_is_one_line(tmp_path):
    png = _png(tmp_path / "x.png")
    shard = tmp_path / "shard.tar"
    _tar(shard, {f"{i:03d}.png": png + bytes(600) for i in range(4)})
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:
        offsets = [m.offset_data for m in tar.getmembers()]
    for cut in (offsets[-1] + 100, offsets[0] + 100):  # in the last member's data; in the first member's data
        shard.write_bytes(data[:cut])
        with pytest.raises(UserError, match="shard.tar") as info:
            open_source(shard)
        assert "truncated" in _one_line(info.value) or "damaged" in str(info.value)


def test_a_tar_member_with_an_absurd_declared_size_is_refused(tmp_path):
    png = _png(tmp_path / "x.png")
    shard = tmp_path / "shard.tar"
    _tar(shard, {"000.png": png, "001.png": png})
    data = bytearray(shard.read_bytes())
    header = data[512 * (1 + (len(png) + 511) // 512):][:512]  # the second member's header
    start = 512 * (1 + (len(png) + 511) // 512)
    header[124:136] = b"77777777777\0"  # 8 GiB, in octal
    header[148:156] = b"        "
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    data[start:start + 512] = header
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="001.png") as info:
        open_source(shard)
    _one_line(info.value)


@pytest.mark.parametrize("label", [b"100000000000000000000000", b"1000000000", b"1000000"])
def test_huge_cls_labels_are_refused(tmp_path, label):
    png = _png(tmp_path / "x.png")
    shard = tmp_path / "shard.tar"
    _tar(shard, {"000.png": png, "000.cls": b"1", "001.png": png, "001.cls": label})
    with pytest.raises(UserError, match="001.cls") as info:
        open_source(shard)
    assert "class id below 1000000" in _one_line(info.value)


def test_huge_labels_in_a_file_list_or_given_are_refused(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "list.txt").write_text("a.png 1000000000\n")
    with pytest.raises(UserError, match="1000000000"):
        open_source(tmp_path / "list.txt")
    with pytest.raises(UserError, match="class id"):
        open_source(np.zeros((2, 8, 8), np.uint8), labels=[0, 10**12])


def test_a_shard_deleted_during_a_run_is_an_oserror_naming_it(tmp_path):
    from rela_fast.cli.errors import describe_os_error

    png = _png(tmp_path / "x.png")
    shard = tmp_path / "shard.tar"
    _tar(shard, {"000.png": png, "001.png": png})
    src = open_source(shard)
    shard.unlink()
    for call in (lambda: src.read(0), src.entry_keys):
        with pytest.raises(OSError) as info:
            call()
        assert describe_os_error(info.value) == f"{shard}: no such file or folder; check the path"


# ------------------------------------------------------------------------------------------------ IDX


def _idx(path, shape, payload: bytes, compress=False) -> None:
    data = bytes([0, 0, 8, len(shape)]) + struct.pack(">" + "I" * len(shape), *shape) + payload
    with (gzip.open(path, "wb", compresslevel=1) if compress else open(path, "wb")) as f:
        f.write(data)


def test_an_idx_header_whose_dims_overflow_is_refused(tmp_path):
    # 2^31 x 2^31 x 4 = 2^64: wraps to 0 in int64, which "matches" an empty payload
    _idx(tmp_path / "train-images-idx3-ubyte", (2**31, 2**31, 4), b"")
    with pytest.raises(UserError, match="header declares") as info:
        open_source(tmp_path)
    _one_line(info.value)


def test_a_gzip_bomb_is_not_decompressed_past_the_declared_size(tmp_path, monkeypatch):
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    _idx(bomb, (4, 8, 8), bytes(4 * 8 * 8) + bytes(24 << 20), compress=True)  # 24 MiB of zeros: ~25 KB on disk
    assert bomb.stat().st_size < 200_000
    decompressed = []
    original = gzip.GzipFile.read

    def counting(self, size=-1):
        data = original(self, size)
        decompressed.append(len(data))
        return data

    monkeypatch.setattr(gzip.GzipFile, "read", counting)
    with pytest.raises(UserError, match="header says 256") as info:
        open_source(tmp_path)
    _one_line(info.value)
    assert sum(decompressed) <= 4 + 12 + 256 + 1
    # a header declaring more than the cap is refused before anything is decompressed
    monkeypatch.setenv("RELA_FAST_MAX_IDX_BYTES", "100000")
    _idx(bomb, (1000, 100, 100), bytes(1 << 20), compress=True)
    decompressed.clear()
    with pytest.raises(UserError, match="RELA_FAST_MAX_IDX_BYTES"):
        open_source(tmp_path)
    assert sum(decompressed) <= 16


def test_a_link_back_to_the_source_root_does_not_list_its_images_twice(tmp_path):
    """``loop -> .`` inside an image folder (issue 26): the root's images are listed once, not again under
    ``loop/`` (the old walk started a fresh loop guard for each top-level folder)."""
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "loop").symlink_to(".")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to("..")  # a deeper link back to the root
    source = open_source(str(tmp_path))
    assert source.paths == ["0.png", "1.png", "2.png"]
