"""ScoreBook update in plain PyTorch: the specification of the ``score_update`` kernels.

For each sample index i in the batch whose loss is finite:

* ``l`` = the largest finite loss of i in this batch (duplicate indices: max, exact and order-free, so
  every backend agrees bit for bit; ``-0.0`` counts as ``0.0``);
* ``score[i] = a * score[i] + b * l`` if i was seen before (``a`` = momentum, ``b`` = 1 - momentum, both
  float32, two products and one sum, no FMA), else ``score[i] = l``;
* ``seen[i] +=`` the number of finite occurrences of i; ``last_epoch[i] = epoch``.

Non-finite losses (NaN, +-inf) are skipped, so one diverged step cannot poison the book. An index
outside [0, n) rejects the whole batch: nothing is written and the number of bad indices is returned.
"""

from __future__ import annotations

import torch

from rela_fast.ops.scores.checks import check_update


def update(score, seen, last_epoch, indices, losses, a: float, b: float, epoch: int, bad, scratch=None) -> int:
    """Apply one batch in place; returns the number of out-of-range indices (0: applied).

    ``bad`` and ``scratch`` are the Triton kernel's device counter and scratch space; unused here.
    """
    check_update(score, seen, last_epoch, indices, losses)
    n = score.numel()
    idx = indices.to(device=score.device, dtype=torch.int64)
    n_bad = int(((idx < 0) | (idx >= n)).sum())
    if n_bad:
        return n_bad
    loss = losses.to(device=score.device, dtype=torch.float32)
    ok = torch.isfinite(loss)
    idx, loss = idx[ok], loss[ok]
    loss = torch.where(loss == 0, 0.0, loss)
    uniq, inverse, counts = torch.unique(idx, return_inverse=True, return_counts=True)
    top = torch.full(uniq.shape, -float("inf"), device=score.device).scatter_reduce(0, inverse, loss, "amax")
    old, times = score[uniq], seen[uniq]
    ema = old * a + top * b
    score[uniq] = torch.where(times > 0, ema, top)
    seen[uniq] = times + counts.to(seen.dtype)
    last_epoch[uniq] = epoch
    return 0
