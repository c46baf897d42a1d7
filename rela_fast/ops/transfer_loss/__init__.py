"""The ReLA transfer loss (ReLA-F): ``loss, per_sample = transfer_loss(h, weight, bias, targets)``.

``h`` holds ``V*B`` feature rows, row ``v*B + i`` being view ``v`` of sample ``i``; the transfer head
``(weight, bias)`` maps them to predictions that are compared with the ``B`` targets by cosine
similarity. Three backends behind :func:`rela_fast.ops.backend.dispatch`: the plain-PyTorch reference
(:mod:`.reference`, the specification and its epsilon convention), C++ for CPU tensors and Triton for
CUDA tensors; the last two share one custom op (:mod:`.fused`) that computes losses and the
prediction gradient in one pass, so backward is only the matmuls.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import nn

from rela_fast.errors import UserError
from rela_fast.ops.backend import choose_backend, dispatch, register
from rela_fast.ops.transfer_loss import reference
from rela_fast.ops.transfer_loss.checks import check_inputs
from rela_fast.ops.transfer_loss.fused import fused_transfer_loss

register(
    "transfer_loss",
    reference="rela_fast.ops.transfer_loss.reference:transfer_loss",
    triton="rela_fast.ops.transfer_loss.triton_kernels:transfer_loss",
    cpp="rela_fast.ops.transfer_loss.cpp:transfer_loss",
)

def transfer_loss(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    sample_weights: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ReLA loss ``1 - cos(h @ weight.T + bias, target)`` over all rows, and the per-sample losses.

    Args:
        h: (V*B, F) features, row ``v*B + i`` = view ``v`` of sample ``i`` (V >= 1); any strides.
        weight: (D, F) transfer-head weight. bias: (D,) or None.
        targets: (B, D), one per sample, shared by its V views; constants (no gradient flows to them).
            All tensors must be on one device (else a UserError: nothing is moved behind your back).
        sample_weights: optional (B,) constants; the loss becomes ``mean_i(w_i * per_sample_i)``
            (InfoBatch-style re-weighting) at no extra cost; ``per_sample`` stays unweighted.
        backend: "reference", "cpp" or "triton" to override the choice by device and RELA_FAST_BACKEND.

    Returns:
        ``loss``: scalar float32 (float64 for float64 inputs), differentiable in h, weight and bias;
        ``per_sample``: (B,) float32, detached, the mean over views of each sample's loss.

    float32, bfloat16 and float16 inputs (float64 too, for gradcheck): the matmul runs in the inputs'
    dtype (under ``torch.autocast`` in the autocast dtype, as ``F.linear`` would), the cosine in float32.
    Targets may have another dtype than the head. Norms are clamped one by one at eps = 1e-8 (1e-4 for
    float16), as ``F.cosine_similarity`` does: a zero prediction or target gives loss 1 and finite
    gradients (details in ``reference.py``). Under ``torch.compile`` the backend is chosen when tracing.
    """
    check_inputs(h, weight, bias, targets, sample_weights)
    if torch.compiler.is_compiling():
        # dispatch imports modules, which dynamo cannot trace: pick the backend once, at trace time
        name = _backend_when_compiling(str(h.device), backend)
        if name == "reference":
            return reference.transfer_loss(h, weight, bias, targets, sample_weights)
        return fused_transfer_loss(h, weight, bias, targets, name, sample_weights)
    return dispatch("transfer_loss", h.device, backend)(h, weight, bias, targets, sample_weights)


def _assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without importing torch._dynamo (2 s) with rela_fast."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True  # what that decorator does (torch/_dynamo/decorators.py)
    return fn


@_assume_constant_result
def _backend_when_compiling(device: str, backend: str | None) -> str:
    """The backend name for a traced call (baked into the compiled graph: set RELA_FAST_BACKEND before compiling)."""
    name = backend if backend is not None else choose_backend("transfer_loss", device)
    dispatch("transfer_loss", device, name)  # raises BackendUnavailable if it cannot run; loads its module
    return name


class TransferHead(nn.Module):
    """The ReLA transfer head ``Linear(F, D)``; ``forward(h, targets, sample_weights=None)`` returns
    ``(loss, per_sample)`` of :func:`transfer_loss`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise UserError(f"TransferHead({in_features}, {out_features}): both widths must be >= 1")
        factory = {"device": device, "dtype": dtype}
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation of ``nn.Linear`` (what the authors' ``nn.Linear`` head starts from)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(
        self, h: torch.Tensor, targets: torch.Tensor, sample_weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return transfer_loss(h, self.weight, self.bias, targets, sample_weights=sample_weights)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


__all__ = ["TransferHead", "transfer_loss"]
