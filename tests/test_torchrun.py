"""README's scale-out lines run as written: every ``torchrun`` line of README.md, in order, with 2 gloo processes
on a 256-image slice of Fashion-MNIST (the only edit: the data path)."""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from idx_files import write_idx

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DATA = "/usr/share/datasets/fashion-mnist"
N = 256


def readme_torchrun_lines() -> list[str]:
    """The lines of README's fenced blocks that start with ``torchrun`` (continuations joined)."""
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", README.read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip().startswith("torchrun ")]


def _slice(src: str, dst: Path) -> None:
    """The first N training images and labels of the IDX folder ``src`` (or random ones without it)."""
    dst.mkdir()
    rng = np.random.default_rng(0)
    for name, fallback in (("train-images-idx3-ubyte.gz", lambda: rng.integers(0, 256, (N, 28, 28))),
                           ("train-labels-idx1-ubyte.gz", lambda: rng.integers(0, 10, N))):
        if os.path.isfile(os.path.join(src, name)):
            with gzip.open(os.path.join(src, name)) as f:
                data = f.read()
            ndim = data[3]
            shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
            array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)[:N]
        else:
            array = fallback().astype(np.uint8)
        write_idx(dst / name, array)


def test_readme_has_runnable_torchrun_lines():
    lines = readme_torchrun_lines()
    assert [line.split(" -m rela_fast ")[1].split()[0] for line in lines] == ["convert", "train"], lines
    for line in lines:  # `torchrun ... rela-fast ...` would run a file named rela-fast: it must not come back
        assert " -m rela_fast " in line or " --no-python rela-fast " in line, line


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="torchrun with gloo on Linux/macOS")
def test_readme_torchrun_lines_run_as_written(tmp_path):
    _slice(DATA, tmp_path / "fmnist")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ.get('PATH', '')}"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    for line in readme_torchrun_lines():
        command = line.replace(DATA, str(tmp_path / "fmnist"))
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env={**env, "CUDA_VISIBLE_DEVICES": ""},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    from rela_fast.targets import load_targets

    store = load_targets(tmp_path / "fmnist-targets")
    assert store.targets.shape == (N, 64)
    summary = json.loads((tmp_path / "run-ddp" / "summary.json").read_text())
    assert summary["steps"] == 10 and summary["images_seen"] == 10 * 2 * 64  # 2 processes x batch 64 per step
