"""The ReLA transfer loss in plain PyTorch: the specification every fused backend is tested against.

For rows ``r = v*B + i`` of ``h`` (view ``v`` of sample ``i``) and targets ``y_i``::

    p_r    = h_r @ weight.T + bias                       (in the inputs' dtype, like an autocast model)
    cos_r  = <p_r, y_i> / (max(||p_r||, eps) * max(||y_i||, eps))   (accumulated in float32, float64 for float64)
    loss   = mean_r (1 - cos_r)                          (or mean_r w_i (1 - cos_r) with sample_weights w)
    per_sample_i = mean_v (1 - cos_{v*B+i})              (detached)

Epsilon convention: each norm is clamped on its own, which is what ``torch.nn.functional.cosine_similarity``
computes with its default eps = 1e-8 (so the loss is the one a ``cosine_similarity`` training loop
computes), and a zero prediction or zero target gives cos = 0: loss 1 with a finite gradient, of size
at most 2 / eps. For float16
predictions eps is 1e-4 instead, so that this gradient stays representable in float16 (max 65504); a
float16 norm below 1e-4 is rounding noise anyway.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8
EPS_FLOAT16 = 1e-4


def eps_for(dtype: torch.dtype) -> float:
    """The norm clamp used for predictions of ``dtype`` (see the module docstring)."""
    return EPS_FLOAT16 if dtype == torch.float16 else EPS


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 predictions, float32 for everything else (float32, bfloat16, float16)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def transfer_loss(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    sample_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, per_sample)`` of the transfer head on ``V*B`` rows of features; see the module docstring.

    With ``sample_weights`` (B,) the loss is ``mean_i(w_i * per_sample_i)`` (constants; per_sample unweighted).
    """
    from rela_fast.ops.transfer_loss.checks import check_inputs

    check_inputs(h, weight, bias, targets, sample_weights)
    pred = F.linear(h, weight, bias)
    acc = accumulation_dtype(pred.dtype)
    eps = eps_for(pred.dtype)
    p = pred.to(acc).view(-1, *targets.shape)  # (V, B, D): targets broadcast over views, never repeated
    y = targets.detach().to(acc)
    cos = (p * y).sum(-1) / (p.norm(dim=-1).clamp_min(eps) * y.norm(dim=-1).clamp_min(eps))
    rows = 1 - cos  # (V, B)
    loss = rows.mean() if sample_weights is None else (rows * sample_weights.detach().to(acc)).mean()
    return loss, rows.detach().mean(0)
