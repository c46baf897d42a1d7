"""Shards: fixed row ranges of the source, each written atomically to ``<out>.work/shard-KKKKKK/``.

A shard holds its rows' float32 features, the rows' source indices, the failures and a digest of the
rows' paths and identity keys, so a later run knows whether it still matches the source. Per-shard PCA
statistics are always computed the same way (:func:`shard_moments`) and merged in shard order
(:class:`OrderedMerge`), whether the shard was just computed or read back: resumed runs equal
uninterrupted ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rela_fast.pca import StreamingPCA
from rela_fast.targets import SCHEMA_VERSION


@dataclass(frozen=True)
class Shard:
    """One shard: rows ``start:stop`` of the source, stored in ``path``."""

    index: int
    start: int
    stop: int
    path: Path

    @property
    def size(self) -> int:
        return self.stop - self.start

    def exists(self) -> bool:
        return (self.path / "info.json").is_file()

    def info(self) -> dict[str, Any]:
        with open(self.path / "info.json", encoding="utf-8") as f:
            return json.load(f)

    def intact(self, digest: str, feature_dim: int) -> bool:
        """True when the shard on disk is complete, readable and made from these rows (paths + keys)."""
        try:
            info = self.info()
            feats = np.load(self.path / "features.npy", mmap_mode="r", allow_pickle=False)
            rows = np.load(self.path / "rows.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return False
        count = info.get("count") if isinstance(info, dict) else None
        return (
            (info.get("start"), info.get("stop"), info.get("keys_digest")) == (self.start, self.stop, digest)
            and feats.shape == (count, feature_dim) and feats.dtype == np.float32
            and rows.shape == (count,) and rows.dtype == np.int64
        )

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.load(self.path / "features.npy", allow_pickle=False),
                np.load(self.path / "rows.npy", allow_pickle=False))

    def write(self, feats: np.ndarray, rows: np.ndarray, failures: list[tuple[int, str]], digest: str,
              rank: int = 0) -> None:
        """Atomically (temporary folder inside the marked work folder, then rename)."""
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        np.save(tmp / "features.npy", np.ascontiguousarray(feats, dtype=np.float32), allow_pickle=False)
        np.save(tmp / "rows.npy", np.ascontiguousarray(rows, dtype=np.int64), allow_pickle=False)
        info = {"index": self.index, "start": self.start, "stop": self.stop, "count": int(len(rows)),
                "feature_dim": int(feats.shape[1]), "keys_digest": digest, "rank": rank,
                "failures": [[int(r), str(reason)] for r, reason in failures]}
        with open(tmp / "info.json", "w", encoding="utf-8") as f:
            json.dump(info, f)
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(tmp, self.path)


class ShardPlan:
    """The shards of one conversion and what makes them reusable (settings + each shard's row digest)."""

    def __init__(self, work: Path, n_rows: int, shard_size: int, paths: list[str], keys: list[str]) -> None:
        self.work, self.shard_size = work, shard_size
        self.paths, self.keys = paths, keys
        count = -(-n_rows // shard_size)
        self.shards = [
            Shard(k, k * shard_size, min((k + 1) * shard_size, n_rows), work / f"shard-{k:06d}") for k in range(count)
        ]

    def __len__(self) -> int:
        return len(self.shards)

    def digest(self, shard: Shard) -> str:
        """Identity of one shard's rows: their paths and entry keys."""
        h = hashlib.sha256()
        for i in range(shard.start, shard.stop):
            h.update(f"{self.paths[i]}\t{self.keys[i]}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    @staticmethod
    def settings(prior_id: dict[str, Any], size: int, feature_dim: int, shard_size: int, decoder: str
                 ) -> dict[str, Any]:
        """What ``plan.json`` records: shards made with other settings are never reused."""
        return {"schema_version": SCHEMA_VERSION, "prior": {k: prior_id.get(k) for k in ("name", "weights_hash")},
                "size": size, "feature_dim": feature_dim, "shard_size": shard_size, "decoder": decoder}

    def finished(self) -> set[int]:
        return {s.index for s in self.shards if s.exists()}


def shard_moments(feats: torch.Tensor, device: torch.device) -> StreamingPCA:
    """The one way per-shard statistics are computed (fresh or read back), so results are identical."""
    return StreamingPCA().update(feats.to(device=device, dtype=torch.float32))


def load_ahead(shards: list[Shard]) -> Iterator[tuple[Shard, tuple[np.ndarray, np.ndarray]]]:
    """Yield ``(shard, (features, rows))`` in order, reading the next shard in a thread meanwhile."""
    if not shards:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="rela-shard-read") as pool:
        future = pool.submit(shards[0].load)
        for i, shard in enumerate(shards):
            data = future.result()
            if i + 1 < len(shards):
                future = pool.submit(shards[i + 1].load)
            yield shard, data


class OrderedMerge:
    """Merges per-shard moments strictly in shard order (reading finished shards back when needed)."""

    def __init__(self, shards: list[Shard], device: torch.device) -> None:
        self.shards, self.device = shards, device
        self.total = StreamingPCA()
        self.cursor = 0
        self.held: dict[int, StreamingPCA] = {}

    def offer(self, index: int, moments: StreamingPCA) -> None:
        self.held[index] = moments

    def advance(self, ready: set[int]) -> None:
        """Merge every consecutive shard that is finished (held in memory or in ``ready`` on disk)."""
        while self.cursor < len(self.shards):
            k = self.cursor
            if k in self.held:
                self.total.merge(self.held.pop(k))
                self.cursor += 1
                continue
            run = []  # consecutive finished shards on disk: read them with read-ahead
            while k < len(self.shards) and k in ready and k not in self.held:
                run.append(self.shards[k])
                k += 1
            if not run:
                return
            for _, (feats, _) in load_ahead(run):
                self.total.merge(shard_moments(torch.from_numpy(feats), self.device))
                self.cursor += 1
