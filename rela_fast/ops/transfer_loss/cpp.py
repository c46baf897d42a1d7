"""C++ backend of the transfer loss: the row kernel ``rela_fast._C.transfer_loss.rows`` (OpenMP over rows)."""

from __future__ import annotations

import torch

from rela_fast.errors import UserError
from rela_fast.ops.cpp_buffers import buffer, dtype_code
from rela_fast.ops.transfer_loss.checks import check_rows
from rela_fast.ops.transfer_loss.fused import fused_transfer_loss
from rela_fast.ops.transfer_loss.reference import accumulation_dtype, eps_for

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def rows(
    pred: torch.Tensor, targets: torch.Tensor, out: torch.Tensor | None = None, portable: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``1 - cos(pred[r], targets[r % B])`` and ``d(1 - cos)/d pred`` in one pass over the rows.

    The gradient goes to ``out`` (contiguous, ``pred``'s shape and dtype; may be ``pred`` itself) or to a
    new tensor. ``portable=True`` runs the baseline build of the loop even where the AVX2 + F16C one
    would run (tests).
    """
    from rela_fast import _C

    check_rows(pred, targets, out)
    pred = pred.contiguous()
    targets = targets.contiguous()
    n_rows, dim = pred.shape
    loss = torch.empty(n_rows, dtype=accumulation_dtype(pred.dtype))
    grad = torch.empty_like(pred) if out is None else out
    if grad.shape != pred.shape or grad.dtype != pred.dtype:
        raise ValueError(f"out: expected {tuple(pred.shape)} {pred.dtype}, got {tuple(grad.shape)} {grad.dtype}")
    _C.transfer_loss.rows(
        buffer(pred, "pred", _DTYPES), dtype_code(pred), buffer(targets, "targets", _DTYPES), dtype_code(targets),
        buffer(loss, "loss"), buffer(grad, "out"), n_rows, targets.shape[0], dim, eps_for(pred.dtype), portable,
    )
    return loss, grad


def scale_rows_(grad: torch.Tensor, scale: torch.Tensor, colsum: bool) -> torch.Tensor | None:
    """Backward's pass over the saved gradient: ``grad *= scale[:, None]`` in place, and the column sums
    (the bias gradient, in ``grad``'s dtype) when ``colsum``."""
    from rela_fast import _C

    n_rows, dim = grad.shape
    if tuple(scale.shape) != (n_rows,) or scale.device != grad.device:
        raise UserError(f"scale: expected ({n_rows},) on {grad.device}, got {tuple(scale.shape)} on {scale.device}")
    acc = accumulation_dtype(grad.dtype)
    scale = scale.to(acc).contiguous()
    sums = torch.empty(dim, dtype=acc) if colsum else None
    _C.transfer_loss.scale_rows(
        buffer(grad, "grad", _DTYPES), dtype_code(grad), buffer(scale, "scale"),
        0 if sums is None else buffer(sums, "colsum"), n_rows, dim,
    )
    return None if sums is None else sums.to(grad.dtype)


def transfer_loss(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    sample_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, per_sample)``: BLAS matmuls via torch, cosine, losses and prediction gradient in C++."""
    return fused_transfer_loss(h, weight, bias, targets, "cpp", sample_weights)
