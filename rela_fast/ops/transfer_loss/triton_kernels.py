"""Triton backend of the transfer loss: one launch over all V*B prediction rows (CUDA; CPU under the interpreter).

Each program takes ``BLOCK_R`` rows; target rows are read as ``r % B`` so the targets are never
repeated for the views. When a row fits one ``BLOCK_D`` chunk the tile stays in registers between the
reduction and the gradient write; wider rows take two sweeps over D (the second hits L2). The two big
matmuls stay with cuBLAS through torch (see ``fused.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rela_fast.ops.backend import triton_interpret
from rela_fast.ops.transfer_loss.fused import fused_transfer_loss
from rela_fast.ops.transfer_loss.reference import accumulation_dtype, eps_for

_INTERPRET: bool = triton_interpret()  # the mode the kernels below are defined in (checked by fused.py)

MAX_BLOCK_D = 1024


# Only builtins and this module's own @triton.jit functions are used in kernels: triton.language's
# jit'd helpers (tl.sum, tl.zeros, ...) are created when triton is imported and do not run in the
# interpreter if TRITON_INTERPRET=1 was set later (as the test fixtures do); reloading this module
# re-creates `_add` in the right mode.
@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _coefficients(dot, pp, yy, eps):
    """Row loss and the gradient's coefficients: g = coef_p * p - coef_y * y (see reference.py)."""
    pn_raw = tl.sqrt(pp)
    pn = tl.maximum(pn_raw, eps)
    yn = tl.maximum(tl.sqrt(yy), eps)
    coef_y = 1.0 / (pn * yn)
    cos = dot * coef_y
    coef_p = tl.where(pn_raw >= eps, cos / (pn * pn), 0.0)  # below eps the clamped norm is constant
    return 1.0 - cos, coef_p, coef_y


@triton.jit
def _transfer_rows_kernel(
    pred_ptr, target_ptr, loss_ptr, grad_ptr,
    R, B, D, stride_p, stride_t, stride_g, eps,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, ONE_CHUNK: tl.constexpr, ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    prow = rows.to(tl.int64)
    trow = (rows % B).to(tl.int64)  # the target of row v*B + i is row i: never repeated in memory
    cols = tl.arange(0, BLOCK_D)
    p_base = pred_ptr + prow[:, None] * stride_p
    t_base = target_ptr + trow[:, None] * stride_t
    g_base = grad_ptr + prow[:, None] * stride_g
    if ONE_CHUNK:  # the whole row in registers: read once, write the gradient from the same tile
        m = rmask[:, None] & (cols[None, :] < D)
        p = tl.load(p_base + cols[None, :], mask=m, other=0.0).to(ACC)
        y = tl.load(t_base + cols[None, :], mask=m, other=0.0).to(ACC)
        loss, coef_p, coef_y = _coefficients(
            tl.reduce(p * y, 1, _add), tl.reduce(p * p, 1, _add), tl.reduce(y * y, 1, _add), eps
        )
        g = coef_p[:, None] * p - coef_y[:, None] * y
        tl.store(g_base + cols[None, :], g.to(grad_ptr.dtype.element_ty), mask=m)
        tl.store(loss_ptr + prow, loss, mask=rmask)
    else:  # wide rows: one sweep for the sums, a second one (from L2) for the gradient
        dot = tl.full([BLOCK_R], 0.0, ACC)
        pp = tl.full([BLOCK_R], 0.0, ACC)
        yy = tl.full([BLOCK_R], 0.0, ACC)
        for d0 in range(0, D, BLOCK_D):
            c = d0 + cols
            m = rmask[:, None] & (c[None, :] < D)
            p = tl.load(p_base + c[None, :], mask=m, other=0.0).to(ACC)
            y = tl.load(t_base + c[None, :], mask=m, other=0.0).to(ACC)
            dot += tl.reduce(p * y, 1, _add)
            pp += tl.reduce(p * p, 1, _add)
            yy += tl.reduce(y * y, 1, _add)
        loss, coef_p, coef_y = _coefficients(dot, pp, yy, eps)
        for d0 in range(0, D, BLOCK_D):
            c = d0 + cols
            m = rmask[:, None] & (c[None, :] < D)
            p = tl.load(p_base + c[None, :], mask=m, other=0.0).to(ACC)
            y = tl.load(t_base + c[None, :], mask=m, other=0.0).to(ACC)
            g = coef_p[:, None] * p - coef_y[:, None] * y
            tl.store(g_base + c[None, :], g.to(grad_ptr.dtype.element_ty), mask=m)
        tl.store(loss_ptr + prow, loss, mask=rmask)


def _blocks(dim: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_D): about 4096 elements per program, all of D in one chunk up to MAX_BLOCK_D."""
    block_d = min(triton.next_power_of_2(max(dim, 1)), MAX_BLOCK_D)
    block_r = max(1, min(64, 4096 // block_d))
    return block_r, block_d


def rows(
    pred: torch.Tensor, targets: torch.Tensor, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``1 - cos(pred[r], targets[r % B])`` and ``d(1 - cos)/d pred``, one kernel launch.

    The gradient goes to ``out`` (``pred``'s shape and dtype, unit stride along D; may be ``pred``
    itself: each element is read before it is overwritten) or to a new tensor.
    """
    from rela_fast.ops.transfer_loss.checks import check_rows

    check_rows(pred, targets, out)
    if pred.stride(-1) != 1:
        pred = pred.contiguous()
    if targets.stride(-1) != 1:
        targets = targets.contiguous()
    n_rows, dim = pred.shape
    loss = torch.empty(n_rows, dtype=accumulation_dtype(pred.dtype), device=pred.device)
    grad = torch.empty((n_rows, dim), dtype=pred.dtype, device=pred.device) if out is None else out
    if grad.shape != pred.shape or grad.dtype != pred.dtype or grad.stride(-1) != 1:
        raise ValueError(f"out: expected {tuple(pred.shape)} {pred.dtype} with unit stride, got {grad.shape}")
    if n_rows == 0:
        return loss, grad
    block_r, block_d = _blocks(dim)
    grid = (triton.cdiv(n_rows, block_r),)
    _transfer_rows_kernel[grid](
        pred, targets, loss, grad, n_rows, targets.shape[0], dim,
        pred.stride(0), targets.stride(0), grad.stride(0), eps_for(pred.dtype),
        BLOCK_R=block_r, BLOCK_D=block_d, ONE_CHUNK=dim <= block_d,
        ACC=tl.float64 if pred.dtype == torch.float64 else tl.float32,
    )
    return loss, grad


def transfer_loss(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    sample_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, per_sample)``: cuBLAS matmuls via torch, cosine, losses and prediction gradient in Triton."""
    return fused_transfer_loss(h, weight, bias, targets, "triton", sample_weights)
