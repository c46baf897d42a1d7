"""Triton radix select: exact k largest keys (ties to the lower position), positions ascending.

Spec: :mod:`rela_fast.ops.select.reference`. The keys are recomputed in every pass from the inputs (a
bit map for largest/smallest, a hash and a short float32 series for random/weighted), so no key array
is stored. Kernels, all on the device, with no host round trip until the final check:

1. three histogram passes over digits 31..21, 20..10 and 9..0 of the key (2048, 2048, 1024 bins): each
   program loops over tiles, keeps a private histogram of the keys that match the digits chosen so far,
   and adds it to the global one with one vector atomic; after each pass one small program picks the
   bin holding the k-th largest key and updates the state (prefix, keys still needed);
2. a count pass (per block: keys above the threshold, keys equal to it), an exclusive cumsum of those
   counts, and a write pass that scatters each kept position to its rank.

Only builtins are used (``tl.reduce`` / ``tl.associative_scan`` with the standard combine functions,
not ``tl.sum`` / ``tl.cumsum``): the standard library's jit wrappers cannot
run in the interpreter when triton was imported before ``TRITON_INTERPRET=1`` was set.

Floating point: FMA contraction is disabled at launch (``enable_fp_fusion=False``) and the division is
``div_rn``, so the weighted keys are the reference's float32 values bit for bit.

State vector (int64): ``[k0, k1, k2, keys still needed, prefix, n_nan, n_neg, 0]``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rela_fast.ops.select.checks import check_select

_INTERPRET = None  # set by rela_fast.ops.backend when it (re)loads this module

HIST_BLOCK = 2048
GATHER_BLOCK = 2048
PASSES = ((21, 2048, 32), (10, 2048, 21), (0, 1024, 10))  # (shift, bins, prefix shift)
LAUNCH = {"enable_fp_fusion": False}


# The standard library's own combine functions: compiled they inline like tl.sum's; the interpreter
# recognises them and runs numpy instead of a Python loop per element.
_add = tl.standard._sum_combine
_maximum = tl.standard._elementwise_max


@triton.jit
def _fmix(h):
    h ^= h >> 16
    h = h * 0x85EBCA6B
    h ^= h >> 13
    h = h * 0xC2B2AE35
    h ^= h >> 16
    return h


@triton.jit
def _hash(i, k0, k1, k2):
    h = _fmix(i ^ k0)
    h = _fmix(h + k1)
    return _fmix(h ^ k2)


@triton.jit
def _exponential(h):
    x = ((h >> 9) * 2 + 1).to(tl.float32)
    bits = x.to(tl.uint32, bitcast=True)
    e = (bits >> 23).to(tl.int32) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
    big = m > 1.4142135381698608
    m = tl.where(big, m * 0.5, m)
    e = tl.where(big, e + 1, e)
    f = m - 1.0
    s = tl.div_rn(f, f + 2.0)
    z = s * s
    p = z * 0.2222222238779068
    p = p + 0.2857142984867096
    p = p * z
    p = p + 0.4000000059604645
    p = p * z
    p = p + 0.6666666865348816
    t = z * p
    t = s * t
    lnm = s * 2.0 + t
    lnu = (e - 24).to(tl.float32) * 0.6931471824645996
    lnu = lnu + lnm
    return -lnu


@triton.jit
def _order(v):
    b = v.to(tl.uint32, bitcast=True)
    b = tl.where(b == 0x80000000, 0, b)
    return tl.where((b & 0x80000000) != 0, b ^ 0xFFFFFFFF, b | 0x80000000)


@triton.jit
def _keys(values_ptr, ids_ptr, state_ptr, offs, mask, MODE: tl.constexpr, USE_IDS: tl.constexpr):
    """The uint32 keys at positions ``offs`` and the NaN / negative flags of their inputs."""
    if MODE >= 2:
        k0 = tl.load(state_ptr).to(tl.uint32)
        k1 = tl.load(state_ptr + 1).to(tl.uint32)
        k2 = tl.load(state_ptr + 2).to(tl.uint32)
        if USE_IDS:
            i = tl.load(ids_ptr + offs, mask=mask, other=0).to(tl.uint32)
        else:
            i = offs.to(tl.uint32)
        h = _hash(i, k0, k1, k2)
    if MODE == 2:
        key = h
        nan = offs < 0
        neg = offs < 0
    else:
        v = tl.load(values_ptr + offs, mask=mask, other=0.0)
        nan = v != v
        if MODE == 0:
            key = _order(v)
            neg = offs < 0
        elif MODE == 1:
            key = _order(v) ^ 0xFFFFFFFF
            neg = offs < 0
        else:
            ex = _exponential(h)
            key = _order(tl.where(v > 0, tl.div_rn(v, ex), -ex))
            neg = v < 0
    return key, nan & mask, neg & mask


@triton.jit
def keys_kernel(values_ptr, ids_ptr, state_ptr, out_ptr, n, MODE: tl.constexpr, USE_IDS: tl.constexpr,
                BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    key, nan, neg = _keys(values_ptr, ids_ptr, state_ptr, offs, mask, MODE, USE_IDS)
    tl.store(out_ptr + offs, key.to(tl.int64), mask=mask)


@triton.jit
def hist_kernel(values_ptr, ids_ptr, state_ptr, hist_ptr, n, n_tiles, MODE: tl.constexpr, USE_IDS: tl.constexpr,
                SHIFT: tl.constexpr, BINS: tl.constexpr, PREFIX_SHIFT: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    prefix = tl.load(state_ptr + 4).to(tl.uint32)
    acc = tl.full([BINS], 0, dtype=tl.int32)
    n_nan = tl.full([BLOCK], 0, dtype=tl.int32)
    n_neg = tl.full([BLOCK], 0, dtype=tl.int32)
    for t in range(pid, n_tiles, nprog):
        offs = t * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        key, nan, neg = _keys(values_ptr, ids_ptr, state_ptr, offs, mask, MODE, USE_IDS)
        digit = ((key >> SHIFT) & (BINS - 1)).to(tl.int32)
        if PREFIX_SHIFT == 32:
            sel = mask
            n_nan += nan.to(tl.int32)
            n_neg += neg.to(tl.int32)
        else:
            sel = mask & ((key >> PREFIX_SHIFT) == prefix)
        acc += tl.histogram(digit, BINS, mask=sel)
    tl.atomic_add(hist_ptr + tl.arange(0, BINS), acc)
    if PREFIX_SHIFT == 32:
        tl.atomic_add(state_ptr + 5, tl.reduce(n_nan, 0, _add).to(tl.int64))
        tl.atomic_add(state_ptr + 6, tl.reduce(n_neg, 0, _add).to(tl.int64))


@triton.jit
def pick_kernel(hist_ptr, state_ptr, BINS: tl.constexpr):
    """Choose the bin of the k-th largest key; append it to the prefix; subtract the keys above it."""
    d = tl.arange(0, BINS)
    h = tl.load(hist_ptr + d).to(tl.int64)
    k_rem = tl.load(state_ptr + 3)
    suffix = tl.reduce(h, 0, _add) - tl.associative_scan(h, 0, _add) + h  # keys in bins >= d
    best = tl.reduce(tl.where(suffix >= k_rem, d, -1), 0, _maximum)
    above = tl.reduce(tl.where(d > best, h, 0), 0, _add)
    prefix = tl.load(state_ptr + 4)
    tl.store(state_ptr + 3, k_rem - above)
    tl.store(state_ptr + 4, prefix * BINS + best)


@triton.jit
def count_kernel(values_ptr, ids_ptr, state_ptr, counts_ptr, n, n_blocks, MODE: tl.constexpr,
                 USE_IDS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    key, nan, neg = _keys(values_ptr, ids_ptr, state_ptr, offs, mask, MODE, USE_IDS)
    threshold = tl.load(state_ptr + 4).to(tl.uint32)
    tl.store(counts_ptr + pid, tl.reduce(((key > threshold) & mask).to(tl.int32), 0, _add))
    tl.store(counts_ptr + n_blocks + pid, tl.reduce(((key == threshold) & mask).to(tl.int32), 0, _add))


@triton.jit
def write_kernel(values_ptr, ids_ptr, state_ptr, before_ptr, out_ptr, n, n_blocks, MODE: tl.constexpr,
                 USE_IDS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    key, nan, neg = _keys(values_ptr, ids_ptr, state_ptr, offs, mask, MODE, USE_IDS)
    threshold = tl.load(state_ptr + 4).to(tl.uint32)
    need = tl.load(state_ptr + 3)
    gt = ((key > threshold) & mask).to(tl.int64)
    eq = ((key == threshold) & mask).to(tl.int64)
    gt_rank = tl.load(before_ptr + pid) + tl.associative_scan(gt, 0, _add) - gt
    eq_rank = tl.load(before_ptr + n_blocks + pid) + tl.associative_scan(eq, 0, _add) - eq
    keep = (gt != 0) | ((eq != 0) & (eq_rank < need))
    tl.store(out_ptr + gt_rank + tl.minimum(eq_rank, need), offs.to(tl.int64), mask=keep)


def _state(keys: tuple[int, int, int], k: int, device) -> torch.Tensor:
    return torch.tensor([keys[0], keys[1], keys[2], k, 0, 0, 0, 0], dtype=torch.int64, device=device)


def _programs(n_tiles: int, device: torch.device) -> int:
    if device.type == "cuda":
        return max(1, min(n_tiles, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(n_tiles, 4))


def select(values, ids, n: int, k: int, mode: int, keys: tuple[int, int, int], device):
    """Positions of the k largest keys (see module doc); returns ``(positions, n_nan, n_neg)``."""
    device = check_select(values, ids, n, k, device)
    dummy = torch.empty(1, dtype=torch.float32, device=device)
    values_arg = values if values is not None else dummy
    ids_arg = ids if ids is not None else dummy
    use_ids = ids is not None
    state = _state(keys, k, device)
    hists = torch.zeros(sum(b for _, b, _ in PASSES), dtype=torch.int32, device=device)
    n_tiles = triton.cdiv(n, HIST_BLOCK)
    grid = (_programs(n_tiles, device),)
    start = 0
    for shift, bins, prefix_shift in PASSES:
        hist = hists[start:start + bins]
        start += bins
        hist_kernel[grid](values_arg, ids_arg, state, hist, n, n_tiles, MODE=mode, USE_IDS=use_ids, SHIFT=shift,
                          BINS=bins, PREFIX_SHIFT=prefix_shift, BLOCK=HIST_BLOCK, num_warps=8, **LAUNCH)
        pick_kernel[(1,)](hist, state, BINS=bins, num_warps=4)
    n_blocks = triton.cdiv(n, GATHER_BLOCK)
    counts = torch.empty(2, n_blocks, dtype=torch.int32, device=device)
    count_kernel[(n_blocks,)](values_arg, ids_arg, state, counts, n, n_blocks, MODE=mode, USE_IDS=use_ids,
                              BLOCK=GATHER_BLOCK, num_warps=8, **LAUNCH)
    before = torch.cumsum(counts, 1, dtype=torch.int64) - counts
    out = torch.empty(k, dtype=torch.int64, device=device)
    write_kernel[(n_blocks,)](values_arg, ids_arg, state, before, out, n, n_blocks, MODE=mode, USE_IDS=use_ids,
                              BLOCK=GATHER_BLOCK, num_warps=8, **LAUNCH)
    n_nan, n_neg = state[5:7].tolist()
    if n_nan or n_neg:
        return None, n_nan, n_neg
    return out, 0, 0


def keys(values, ids, n: int, mode: int, keys: tuple[int, int, int], device) -> torch.Tensor:
    """The uint32 key of every position, as int64 (tests compare them with the reference's)."""
    device = check_select(values, ids, n, None, device)
    dummy = torch.empty(1, dtype=torch.float32, device=device)
    out = torch.empty(n, dtype=torch.int64, device=device)
    block = 1024
    keys_kernel[(triton.cdiv(n, block),)](values if values is not None else dummy, ids if ids is not None else dummy,
                                          _state(keys, 0, device), out, n, MODE=mode, USE_IDS=ids is not None,
                                          BLOCK=block, **LAUNCH)
    return out
