"""Writing MNIST-format IDX files for tests, independently of rela_fast's reader.

An IDX file is a magic number (0, 0, 0x08 for uint8, the number of dimensions), each size as a big-endian
uint32, then the bytes. ``.gz`` names are gzip-compressed, as Fashion-MNIST ships them.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> Path:
    """``array`` (uint8) as an IDX file at ``path``; gzip when the name ends in ``.gz``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(payload, compresslevel=1) if path.suffix == ".gz" else payload)
    return path


def tiny_idx_folder(folder: Path, n: int = 32, side: int = 16, seed: int = 0) -> Path:
    """A labelled IDX train split in ``folder`` (made): ``n`` random ``side`` x ``side`` images, two classes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (n, side, side), dtype=np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte", (np.arange(n) % 2).astype(np.uint8))
    return folder
