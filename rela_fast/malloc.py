"""Keep freed CPU memory in the process, so that a training step does not fault its memory in again.

glibc's ``malloc`` serves a large block (over 128 KiB to 32 MiB, its moving threshold) with a fresh ``mmap``
and gives it back with ``munmap`` on ``free``; it also trims the top of its heap. A CPU training step
allocates and frees its activations and gradients every step, so every step the kernel zero-fills them page by
page again. Measured on 2 CPUs (``benchmarks/results/train_e2e/README.md``): BYOL at batch 256 took
17,000-54,000 page faults a step at 28 px and 900,000 (3.6 GB) at 64 px, where the kernel's share was half
the step's CPU time.

:func:`keep_freed_memory` tells glibc to serve every block from its heaps (``M_MMAP_MAX = 0``) and never
to trim them (``M_TRIM_THRESHOLD = -1``), so freed memory is reused by the next step. The process keeps its
peak memory until it exits, as CUDA's caching allocator keeps GPU memory. It is process-wide and cannot be
undone, so the trainer calls it only on CPU runs with ``runtime.keep_memory`` on (the default). Other C
libraries (musl, macOS, Windows) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

__all__ = ["keep_freed_memory", "keep_memory_for", "kept"]

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_LOCK = threading.Lock()
_STATE: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (no mmap for large blocks, no trimming); True when in force.

    Idempotent and thread-safe; False (and nothing changed) where the C library is not glibc.
    """
    with _LOCK:
        if "kept" not in _STATE:
            _STATE["kept"] = _apply()
        return _STATE["kept"]


def keep_memory_for(device: object, enabled: bool) -> bool:
    """:func:`keep_freed_memory` for a run on ``device`` when ``enabled`` (``runtime.keep_memory``) and the
    device is the CPU; True when in force. The trainer and the Lightning callback call it as they start."""
    import torch

    if not enabled or torch.device(device).type != "cpu":
        return kept()
    return keep_freed_memory()


def kept() -> bool:
    """Whether :func:`keep_freed_memory` is in force in this process."""
    return _STATE.get("kept", False)


def _apply() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only: musl has a mallopt that does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1
