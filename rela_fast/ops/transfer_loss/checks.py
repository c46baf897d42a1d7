"""Input checks of every transfer-loss entry point: shapes, dtypes, lengths and one device for all tensors.

A tensor on another device than ``h`` is refused here: a ``meta`` target next to CPU features would
otherwise make the custom op dispatch to its fake implementation and hand back uninitialised memory.
"""

from __future__ import annotations

import torch

from rela_fast.errors import UserError

FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def same_device(**tensors: torch.Tensor | None) -> None:
    """Raise UserError unless all given tensors (None skipped) live on one device."""
    given = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(given.values())) > 1:
        listed = ", ".join(f"{name} on {dev}" for name, dev in given.items())
        raise UserError(f"transfer loss: tensors on different devices ({listed}); move them to one device")


def check_inputs(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                 sample_weights: torch.Tensor | None = None) -> None:
    """The arguments of ``transfer_loss``: (V*B, F) ``h``, (D, F) ``weight``, (D,) ``bias``, (B, D)
    ``targets``, (B,) ``sample_weights``; floating dtypes; one device."""
    for name, t in (("h", h), ("weight", weight), ("bias", bias), ("targets", targets),
                    ("sample_weights", sample_weights)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise UserError(f"{name}: expected a tensor, got {type(t).__name__}")
    same_device(h=h, weight=weight, bias=bias, targets=targets, sample_weights=sample_weights)
    if h.dim() != 2:
        raise UserError(f"h: expected (V*B, F) features, got shape {tuple(h.shape)}; flatten the views into rows")
    if weight.dim() != 2 or weight.shape[1] != h.shape[1]:
        raise UserError(f"weight: expected (D, {h.shape[1]}) to match h's feature width, got {tuple(weight.shape)}")
    dim = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (dim,):
        raise UserError(f"bias: expected shape ({dim},) or None, got {tuple(bias.shape)}")
    if targets.dim() != 2 or targets.shape[1] != dim or targets.shape[0] == 0:
        raise UserError(f"targets: expected (B, {dim}) with B >= 1, got {tuple(targets.shape)}")
    if h.shape[0] == 0 or h.shape[0] % targets.shape[0] != 0:
        raise UserError(
            f"h: {h.shape[0]} rows is not a positive multiple of the {targets.shape[0]} targets; "
            "pass V views of every sample as rows v*B + i"
        )
    for name, t in (("h", h), ("weight", weight), ("bias", bias), ("targets", targets),
                    ("sample_weights", sample_weights)):
        if t is not None and t.dtype not in FLOATS:
            raise UserError(f"{name}: dtype {t.dtype} is not supported; use float32, bfloat16 or float16")
    dtypes = [str(t.dtype).removeprefix("torch.") for t in (h, weight, bias) if t is not None]
    if len(set(dtypes)) > 1 and not _autocast(h.device.type):
        raise UserError(
            f"h, weight, bias: dtypes {', '.join(dtypes)} differ; cast them to one dtype or run under torch.autocast"
        )
    if sample_weights is not None and tuple(sample_weights.shape) != (targets.shape[0],):
        raise UserError(f"sample_weights: expected shape ({targets.shape[0]},), got {tuple(sample_weights.shape)}")


def check_rows(pred: torch.Tensor, targets: torch.Tensor, out: torch.Tensor | None) -> None:
    """The arguments of a row kernel: (N, D) ``pred``, (B, D) ``targets`` with B dividing N, an ``out`` of
    ``pred``'s shape and dtype; one device."""
    same_device(pred=pred, targets=targets, out=out)
    if pred.dim() != 2 or targets.dim() != 2 or targets.shape[1] != pred.shape[1]:
        raise UserError(f"pred {tuple(pred.shape)}, targets {tuple(targets.shape)}: expected (N, D) and (B, D)")
    if targets.shape[0] == 0 or pred.shape[0] % targets.shape[0] != 0:
        raise UserError(f"pred: {pred.shape[0]} rows is not a multiple of the {targets.shape[0]} targets")
    for name, t in (("pred", pred), ("targets", targets)):
        if t.dtype not in FLOATS:
            raise UserError(f"{name}: dtype {t.dtype} is not supported; use float32, bfloat16 or float16")
    if out is not None and (out.shape != pred.shape or out.dtype != pred.dtype):
        raise UserError(f"out: expected {tuple(pred.shape)} {pred.dtype}, got {tuple(out.shape)} {out.dtype}")


def _autocast(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (meta, ...)
        return False
