"""The C++ radix select (``rela_fast._C.radix_select``) on contiguous CPU buffers."""

from __future__ import annotations

import torch

from rela_fast.ops.backend import cpp_extension
from rela_fast.ops.cpp_buffers import buffer
from rela_fast.ops.select.checks import check_select


def _addresses(values, ids) -> tuple[int, int]:
    v = buffer(values, "values", (torch.float32,)) if values is not None else 0
    i = buffer(ids, "ids", (torch.int64,)) if ids is not None else 0
    return v, i


def select(values, ids, n: int, k: int, mode: int, keys: tuple[int, int, int], device, min_chunk: int = 0):
    """Positions of the k largest keys (see reference.select); returns ``(positions, n_nan, n_neg)``.

    Threads: one per ``min_chunk`` elements (default 2 Mi), at most OpenMP's (= torch's) thread count.
    """
    check_select(values, ids, n, k, device)
    out = torch.empty(k, dtype=torch.int64)
    v, i = _addresses(values, ids)
    n_nan, n_neg = cpp_extension().radix_select.select(v, i, n, k, mode, *keys, buffer(out, "out"), min_chunk)
    if n_nan or n_neg:
        return None, n_nan, n_neg
    return out, 0, 0


def keys(values, ids, n: int, mode: int, keys: tuple[int, int, int], device) -> torch.Tensor:
    """The uint32 key of every position, as int64 (tests compare them with the reference's)."""
    check_select(values, ids, n, None, device)
    out = torch.empty(n, dtype=torch.int32)
    v, i = _addresses(values, ids)
    cpp_extension().radix_select.keys(v, i, n, mode, *keys, buffer(out, "out"))
    return out.to(torch.int64) & 0xFFFFFFFF
