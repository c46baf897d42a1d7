"""The C++ ScoreBook update (``rela_fast._C.score_update``) on contiguous CPU buffers."""

from __future__ import annotations

import torch

from rela_fast.ops.backend import cpp_extension
from rela_fast.ops.cpp_buffers import buffer
from rela_fast.ops.scores.checks import check_update


def update(score, seen, last_epoch, indices, losses, a: float, b: float, epoch: int, bad, scratch=None) -> int:
    """Apply one batch in place (see reference.update); returns the number of out-of-range indices.

    ``bad`` and ``scratch`` belong to the Triton kernel; unused here.
    """
    check_update(score, seen, last_epoch, indices, losses)
    idx = indices.to(dtype=torch.int64).contiguous()
    loss = losses.to(dtype=torch.float32).contiguous()
    return cpp_extension().score_update.update(
        buffer(score, "score", (torch.float32,)), buffer(seen, "seen", (torch.int32,)),
        buffer(last_epoch, "last_epoch", (torch.int32,)), score.numel(), buffer(idx, "indices"),
        buffer(loss, "losses"), idx.numel(), a, b, epoch,
    )
