"""The documentation's Python examples run as written: each ```python block of README.md, then of docs/*.md (by
name), in order, in one namespace, on a small IDX folder made here (the only edits: the data path, the store
folder, and the epochs/batch sizes)."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
pytestmark = pytest.mark.usefixtures("one_thread")


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_readme_python_examples_run(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    data = tmp_path / "fmnist"
    data.mkdir()
    _idx(data / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (256, 28, 28)))
    _idx(data / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 256))
    edits = [("/usr/share/datasets/fashion-mnist", str(data)), ('"fmnist-targets"', repr(str(tmp_path / "store"))),
             ("epochs, batch = 10, 256", "epochs, batch = 2, 32"), ("epochs=10", "epochs=1, batch_size=32"),
             ("hidden_dim=512, proj_dim=128", "hidden_dim=32, proj_dim=16")]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    counts = {}
    for doc in DOCS:
        blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
        counts[doc.name] = len(blocks)
        for block in blocks:
            for old, new in edits:
                block = block.replace(old, new)
            exec(compile(block, str(doc), "exec"), namespace)  # noqa: S102 - our own documentation
    assert counts["README.md"] >= 2, counts
    # README's trainer example trained; docs/USAGE.md's own loop ("Your own loop") took steps
    assert namespace["result"].steps > 0 and namespace["step"] > 0
