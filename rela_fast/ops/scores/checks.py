"""Argument checks shared by every ``score_update`` backend, run before any kernel touches memory.

The C++ and Triton kernels write through raw pointers sized by ``score``; a shorter ``seen`` or
``last_epoch`` (or a tensor on another device, or of another dtype) would make them write out of bounds.
Every backend calls :func:`check_update` first, so such a call is a clean :class:`UserError` instead.
"""

from __future__ import annotations

import torch

from rela_fast.errors import UserError


def _need(name: str, t, dtype: torch.dtype | None, device: torch.device, length: int | None) -> None:
    if not isinstance(t, torch.Tensor):
        raise UserError(f"{name}: expected a tensor, got {type(t).__name__}")
    if t.dim() != 1:
        raise UserError(f"{name}: expected a 1-D tensor, got shape {tuple(t.shape)}")
    if dtype is not None and t.dtype != dtype:
        raise UserError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if t.device != device:
        raise UserError(f"{name}: on {t.device}, but the book is on {device}; move every tensor to one device")
    if length is not None and t.numel() != length:
        raise UserError(f"{name}: {t.numel()} entries, but the book has {length}; pass buffers of one length")


def check_update(score, seen, last_epoch, indices, losses) -> None:
    """Raise :class:`UserError` unless the book buffers and the batch can be updated safely in place.

    ``score`` float32, ``seen`` and ``last_epoch`` int32, all 1-D, contiguous, of one length and on one
    device; ``indices`` (integer) and ``losses`` (floating) 1-D of one length on that device.
    """
    _need("score", score, torch.float32, score.device if isinstance(score, torch.Tensor) else None, None)
    device, n = score.device, score.numel()
    _need("seen", seen, torch.int32, device, n)
    _need("last_epoch", last_epoch, torch.int32, device, n)
    for name, t in (("score", score), ("seen", seen), ("last_epoch", last_epoch)):
        if not t.is_contiguous():
            raise UserError(f"{name}: the book's buffers are updated in place and must be contiguous")
    _need("indices", indices, None, device, None)
    _need("losses", losses, None, device, indices.numel())
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise UserError(f"indices: expected integer sample indices, got {indices.dtype}")
    if not losses.is_floating_point():
        raise UserError(f"losses: expected floating-point losses, got {losses.dtype}")
