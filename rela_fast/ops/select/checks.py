"""Argument checks shared by every ``radix_select`` backend, run before any kernel reads memory.

The C++ and Triton kernels read ``n`` entries through raw pointers and write ``k`` positions; a shorter
``values`` or ``ids`` tensor, one on another device or of another dtype would make them read or write
out of bounds. Every backend calls :func:`check_select` first, so such a call is a clean :class:`UserError`.
"""

from __future__ import annotations

import torch

from rela_fast.errors import UserError


def _check(name: str, t, dtype: torch.dtype, n: int, device: torch.device) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise UserError(f"{name}: expected a tensor or None, got {type(t).__name__}")
    if t.dim() != 1 or t.numel() != n:
        raise UserError(f"{name}: expected a 1-D tensor of n={n} entries, got shape {tuple(t.shape)}")
    if t.dtype != dtype:
        raise UserError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if t.device != device:
        raise UserError(f"{name}: on {t.device}, but the selection runs on {device}; move it there")
    if not t.is_contiguous():
        raise UserError(f"{name}: the kernels read contiguous buffers; call .contiguous() first")


def check_select(values, ids, n: int, k: int | None, device) -> torch.device:
    """Raise :class:`UserError` unless ``values`` (float32) and ``ids`` (int64), each None or 1-D of ``n``
    contiguous entries on ``device``, and ``0 <= k <= n`` (``k=None``: no k) are safe to hand to a kernel.

    Returns ``device`` as a ``torch.device``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 2**31 - 1:
        raise UserError(f"n: {n!r} is not a sample count in [0, 2**31 - 1)")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n):
        raise UserError(f"k: {k!r} is outside [0, {n}]; ask for at most as many samples as there are")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    _check("values", values, torch.float32, n, device)
    _check("ids", ids, torch.int64, n, device)
    return device
