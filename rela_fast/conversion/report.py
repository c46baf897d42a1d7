"""Timing of one conversion, library versions, and the one-line summary a run prints."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

# The stages timed on every run (seconds, always on: a perf_counter pair per stage, per shard at most), so a
# run's meta.json says where its time went and benchmarks/bench_scale.py can fit each stage's growth.
STAGES = (
    "listing_s",  # opening the source: listing the folder / indexing the tars / reading the IDX file
    "prior_s",  # building the prior (create_prior) and the decoder
    "fingerprint_s",  # every row's identity key and the source fingerprint
    "reuse_check_s",  # opening an existing store and comparing it with the request (decide)
    "prepare_s",  # the work folder: dropping stale shards, checking kept ones, plan.json
    "encoder_build_s",  # building the fused encoder
    "decode_wait_s",  # waiting for decoded batches (decode runs in threads, overlapped with encoding)
    "encode_call_s",  # host time in encoder calls (on CUDA only launch time: the GPU runs asynchronously)
    "shard_write_s",  # writing finished shards (features, rows, info) atomically
    "shard_moments_s",  # per-shard PCA moments and their ordered merge (reading kept shards back on resume)
    "pca_fit_s",  # the eigendecomposition
    "projection_pass_s",  # pass 1 over the shards: the projections' per-dimension moments
    "targets_pass_s",  # pass 2: standardised targets written in source order
    "arrays_s",  # rows, labels, projection arrays and source.json (every row's path and key)
)


@dataclass
class Timing:
    """Wall-clock marks of the phases (perf_counter) plus rank 0's split into :data:`STAGES`."""

    start: float = field(default_factory=time.perf_counter)
    loop: float = 0.0
    encoded: float = 0.0
    finalize: float = 0.0
    processed: int = 0
    split: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, key: str, seconds: float) -> None:
        self.split[key] += seconds

    @contextlib.contextmanager
    def stage(self, key: str):
        """Add the time spent inside the ``with`` block to stage ``key``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.split[key] += time.perf_counter() - t0

    def as_meta(self, end: float) -> dict[str, float | int]:
        """meta.json's ``timing``."""
        total = end - self.start
        return {
            "setup_s": round(self.loop - self.start, 4),
            "decode_encode_s": round(self.encoded - self.loop, 4),
            **{k: round(v, 4) for k, v in self.split.items()},
            "pca_store_s": round(end - self.finalize, 4),
            "total_s": round(total, 4),
            "processed_this_run": self.processed,
            "images_per_s": round(self.processed / total, 2) if total > 0 else 0.0,
        }


def versions() -> dict[str, str]:
    import importlib.metadata

    import rela_fast

    out = {"rela_fast": rela_fast.__version__, "torch": torch.__version__, "numpy": np.__version__}
    for dist_name in ("timm", "torchvision", "nvidia-dali-cuda130", "pillow"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist_name] = importlib.metadata.version(dist_name)
    return out


def log(enabled: bool, message: str) -> None:
    if enabled:
        print(f"rela-fast convert: {message}", file=sys.stderr, flush=True)


def summary(store, out) -> str:
    """The line printed after a run: counts, time, throughput, where the store is."""
    t = store.meta["timing"]
    return (
        f"{store.meta['count']} images, {len(store.skipped)} skipped, {t['total_s']:.1f} s, "
        f"{t['images_per_s']:.1f} images/s ({t['processed_this_run']} decoded this run) -> {out} "
        f"({store.meta['count']} x {store.dim})"
    )
