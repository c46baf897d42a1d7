"""Hand tensors to the C++ kernels as raw buffers: checked, contiguous, CPU, of an expected dtype."""

from __future__ import annotations

import torch

# dtype codes shared with csrc/ (keep in sync with the `switch` in each kernel file)
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3, torch.int64: 4, torch.int32: 5}


def buffer(t: torch.Tensor, name: str, dtypes: tuple[torch.dtype, ...] | None = None) -> int:
    """The address of ``t``'s data for a C++ kernel; ``t`` must be a contiguous CPU tensor.

    Callers make tensors contiguous first (a copy is their decision, not a hidden one here).
    """
    if t.device.type != "cpu":
        raise ValueError(f"{name}: the C++ kernels take CPU tensors, got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name}: the C++ kernels take contiguous tensors; call .contiguous() first")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    return t.data_ptr()


def dtype_code(t: torch.Tensor) -> int:
    """The integer code the C++ kernels use for ``t.dtype``."""
    try:
        return DTYPE_CODES[t.dtype]
    except KeyError:
        raise TypeError(f"no C++ kernel takes {t.dtype}") from None
