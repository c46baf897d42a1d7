"""Triton ScoreBook update: any batch in one launch of one program (CUDA).

Spec: :mod:`rela_fast.ops.scores.reference`. The program works in three sweeps over the batch, with a
barrier between them (one program, so the barrier orders all of its memory traffic):

0. count out-of-range indices; if there are any, nothing below happens (the count goes to a device
   counter that the ScoreBook checks later, so a training step never waits on the host);
1. every finite occurrence does ``atomic_max(scratch_key[i], order_key(loss))`` and
   ``atomic_add(scratch_count[i], 1)``: the batch's largest loss and occurrence count per sample;
2. every occurrence does ``c = atomic_xchg(scratch_count[i], 0)``: exactly one gets ``c > 0`` and becomes
   the writer, takes (and clears) the key, and applies the EMA step, ``seen += c`` and ``last_epoch``.

Max and count are order-free, so the result does not depend on atomic order; the scratch arrays (two
int32 per sample, owned by the ScoreBook) are all zero again afterwards. FMA contraction is off, so the
EMA matches the reference bit for bit. Only builtins and local jit helpers are used (see
:mod:`rela_fast.ops.select.triton_kernels` on the interpreter).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rela_fast.errors import UserError
from rela_fast.ops.scores.checks import check_update

_INTERPRET = None  # set by rela_fast.ops.backend when it (re)loads this module

BLOCK = 1024


_add = tl.standard._sum_combine  # see rela_fast.ops.select.triton_kernels


@triton.jit
def _order(v):
    b = v.to(tl.uint32, bitcast=True)
    b = tl.where(b == 0x80000000, 0, b)
    return tl.where((b & 0x80000000) != 0, b ^ 0xFFFFFFFF, b | 0x80000000)


@triton.jit
def _unorder(k):
    b = tl.where((k & 0x80000000) != 0, k & 0x7FFFFFFF, k ^ 0xFFFFFFFF)
    return b.to(tl.float32, bitcast=True)


@triton.jit
def update_kernel(score_ptr, seen_ptr, last_ptr, scratch_key_ptr, scratch_count_ptr, bad_ptr, n, idx_ptr, loss_ptr,
                  batch, a, b, epoch, BLOCK: tl.constexpr):
    lane = tl.arange(0, BLOCK)
    n_bad = tl.full([BLOCK], 0, dtype=tl.int32)
    for start in range(0, batch, BLOCK):
        j = start + lane
        inside = j < batch
        idx = tl.load(idx_ptr + j, mask=inside, other=0)
        n_bad += (inside & ((idx < 0) | (idx >= n))).to(tl.int32)
    n_bad = tl.reduce(n_bad, 0, _add)
    tl.atomic_add(bad_ptr, n_bad)
    ok = n_bad == 0
    for start in range(0, batch, BLOCK):
        j = start + lane
        inside = j < batch
        idx = tl.load(idx_ptr + j, mask=inside, other=0)
        loss = tl.load(loss_ptr + j, mask=inside, other=0.0)
        live = inside & ok & (tl.abs(loss) < float("inf"))  # finite losses only (NaN compares false)
        tl.atomic_max(scratch_key_ptr + idx, _order(loss), mask=live)
        tl.atomic_add(scratch_count_ptr + idx, 1, mask=live)
    tl.debug_barrier()
    for start in range(0, batch, BLOCK):
        j = start + lane
        inside = j < batch
        idx = tl.load(idx_ptr + j, mask=inside, other=0)
        loss = tl.load(loss_ptr + j, mask=inside, other=0.0)
        live = inside & ok & (tl.abs(loss) < float("inf"))
        count = tl.atomic_xchg(scratch_count_ptr + idx, 0, mask=live)
        write = live & (count > 0)
        top = _unorder(tl.atomic_xchg(scratch_key_ptr + idx, 0, mask=write))
        old = tl.load(score_ptr + idx, mask=write, other=0.0)
        times = tl.load(seen_ptr + idx, mask=write, other=0)
        t1 = a * old
        t2 = b * top
        tl.store(score_ptr + idx, tl.where(times > 0, t1 + t2, top), mask=write)
        tl.store(seen_ptr + idx, times + count, mask=write)
        tl.store(last_ptr + idx, tl.full([BLOCK], 0, dtype=tl.int32) + epoch, mask=write)


def _check_own(score, bad, scratch) -> None:
    """The Triton kernel's own buffers: a 1-element int32 counter and (2, n) int32 scratch on the book's device."""
    if not isinstance(bad, torch.Tensor) or bad.dtype != torch.int32 or bad.numel() < 1 or bad.device != score.device:
        raise UserError(f"bad: expected a 1-element int32 counter on {score.device}")
    if (scratch.dtype != torch.int32 or tuple(scratch.shape) != (2, score.numel()) or scratch.device != score.device
            or not scratch.is_contiguous()):
        raise UserError(f"scratch: expected contiguous (2, {score.numel()}) int32 zeros on {score.device}")


def update(score, seen, last_epoch, indices, losses, a: float, b: float, epoch: int, bad, scratch=None):
    """Apply one batch in place with one launch; out-of-range indices are counted into ``bad`` (returns None).

    ``scratch``: (2, n) int32 zeros that the kernel leaves zero (the ScoreBook keeps one); made here if None.
    """
    check_update(score, seen, last_epoch, indices, losses)
    batch = indices.numel()
    if batch == 0:
        return 0
    if scratch is None:
        scratch = torch.zeros(2, score.numel(), dtype=torch.int32, device=score.device)
    _check_own(score, bad, scratch)
    idx = indices.to(device=score.device, dtype=torch.int64).contiguous()
    loss = losses.to(device=score.device, dtype=torch.float32).contiguous()
    update_kernel[(1,)](score, seen, last_epoch, scratch[0].view(torch.uint32), scratch[1], bad, score.numel(), idx,
                        loss, batch, a, b, epoch, BLOCK=BLOCK, num_warps=8, enable_fp_fusion=False)
    return None
