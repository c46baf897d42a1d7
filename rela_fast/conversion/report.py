"""Timing of one conversion, library versions, and the one-line summary a run prints."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Timing:
    """Wall-clock marks of the phases (perf_counter) plus rank 0's split of the decode + encode loop."""

    start: float = field(default_factory=time.perf_counter)
    loop: float = 0.0
    encoded: float = 0.0
    finalize: float = 0.0
    processed: int = 0
    # building the fused encoder, waiting for decoded batches (decode slower than encode when large),
    # host time in encoder calls (on CUDA only launch time: the GPU runs asynchronously)
    split: dict[str, float] = field(
        default_factory=lambda: {"encoder_build_s": 0.0, "decode_wait_s": 0.0, "encode_call_s": 0.0}
    )

    def add(self, key: str, seconds: float) -> None:
        self.split[key] += seconds

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
