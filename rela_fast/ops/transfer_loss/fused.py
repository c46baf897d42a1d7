"""The fused transfer loss shared by the C++ and Triton backends: one torch custom op with its own backward.

Forward: the prediction matmul ``p = h @ W.T + b`` runs in torch (BLAS / cuBLAS), then ONE row kernel
reads each prediction row and its target row ``r % B`` (targets are never repeated for the views) and
writes the row's loss ``1 - cos`` and, over the prediction itself, the row's gradient
``g = d(1 - cos)/dp`` (in the prediction dtype). So the forward allocates nothing beyond the matmul's
output, and ``g`` is saved for backward.

Backward scales ``g`` by the incoming per-row gradient (``1/(V*B)`` times the loss's gradient, for the
mean; in place when autograd frees the graph afterwards, and on CPU in one C++ pass that also sums the
bias gradient) and does ``grad_h = g @ W``, ``grad_W = g.T @ h``, ``grad_b = g.sum(0)``: nothing of the
cosine is recomputed.

The op is ``rela_fast::transfer_loss_rows`` (with a fake implementation and an autograd formula), so
``torch.compile(fullgraph=True)`` traces through it without a graph break.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import is_fake

from rela_fast.ops.transfer_loss.reference import accumulation_dtype

_ROW_KERNELS = {"cpp": "rela_fast.ops.transfer_loss.cpp", "triton": "rela_fast.ops.transfer_loss.triton_kernels"}


def _row_kernel(backend: str):
    """The ``rows(pred, targets, out=None) -> (row_loss, grad)`` function of ``backend``'s module."""
    if backend == "triton":
        from rela_fast.ops.backend import triton_interpret

        module = importlib.import_module(_ROW_KERNELS["triton"])
        if triton_interpret() != module._INTERPRET:
            # @triton.jit reads TRITON_INTERPRET when the kernels are defined: re-create them on a flip
            # (checked on every call: a cached function of the other mode would run the wrong kernels)
            module = importlib.reload(module)
        return module.rows
    if backend == "cpp":
        return importlib.import_module(_ROW_KERNELS["cpp"]).rows
    raise ValueError(f"backend={backend!r}: the fused transfer loss runs on 'cpp' or 'triton'")


@torch.library.custom_op("rela_fast::transfer_loss_rows", mutates_args=())
def transfer_loss_rows(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``1 - cos(h[r] @ W.T + b, targets[r % B])`` and its gradient w.r.t. the prediction."""
    pred = F.linear(h, weight, bias)
    return _row_kernel(backend)(pred, targets, out=pred)  # the gradient overwrites the prediction


@transfer_loss_rows.register_fake
def _transfer_loss_rows_fake(h, weight, bias, targets, backend):
    grad = h.new_empty((h.shape[0], weight.shape[0]))
    return h.new_empty(h.shape[0], dtype=accumulation_dtype(h.dtype)), grad


def _setup_context(ctx, inputs, output) -> None:
    h, weight, bias, _, backend = inputs
    ctx.save_for_backward(h, weight, output[1])
    ctx.has_bias = bias is not None
    ctx.backend = backend
    ctx.mark_non_differentiable(output[1])


def _may_overwrite(g: torch.Tensor) -> bool:
    """True when this backward may scale the saved gradient in place: a plain tensor (not traced by
    torch.compile / AOTAutograd / fake tensors) and a graph that autograd frees afterwards
    (``retain_graph=False``, so no second backward can read ``g`` again)."""
    if torch.compiler.is_compiling() or type(g) is not torch.Tensor or torch._is_functional_tensor(g) or is_fake(g):
        return False
    try:
        return not torch._C._autograd._get_current_graph_task_keep_graph()
    except (AttributeError, RuntimeError):  # private API moved, or no graph task: play safe
        return False


def _backward(ctx, grad_rows: torch.Tensor, _grad_g: torch.Tensor | None):
    h, weight, g = ctx.saved_tensors
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = need_b and ctx.has_bias
    grad_b = None
    if not _may_overwrite(g):  # retain_graph, gradcheck, double backward, tracing: leave g intact
        g = (g * grad_rows.unsqueeze(1)).to(g.dtype)
    elif ctx.backend == "cpp":  # scale and bias gradient in one C++ pass over g, in place
        grad_b = importlib.import_module(_ROW_KERNELS["cpp"]).scale_rows_(g, grad_rows, need_b)
    else:  # the usual single backward: no second (V*B, D) buffer
        g = g.mul_(grad_rows.unsqueeze(1))
    grad_h = g @ weight if need_h else None
    grad_w = g.t() @ h if need_w else None
    if need_b and grad_b is None:
        grad_b = g.sum(0)
    return grad_h, grad_w, grad_b, None, None


transfer_loss_rows.register_autograd(_backward, setup_context=_setup_context)


def fused_transfer_loss(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    backend: str,
    sample_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, per_sample)`` with the row kernel of ``backend`` ("cpp" or "triton").

    ``sample_weights`` (B,) weight each sample's rows in the mean; the backward's per-row scaling of the
    saved gradient carries them, so a weighted loss costs nothing more than the plain one.
    """
    from rela_fast.ops.transfer_loss.checks import check_inputs

    check_inputs(h, weight, bias, targets, sample_weights)
    device = h.device.type
    if torch.is_autocast_enabled(device):  # what autocast does to F.linear (the op itself is not autocast-aware)
        dtype = torch.get_autocast_dtype(device)
        h, weight = h.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    rows, _ = torch.ops.rela_fast.transfer_loss_rows(h, weight, bias, targets.detach(), backend)
    by_view = rows.view(-1, targets.shape[0])
    per_sample = by_view.detach().mean(0)
    if sample_weights is None:
        return rows.mean(), per_sample
    return (by_view * sample_weights.detach().to(rows.dtype)).mean(), per_sample
