"""Exact k-selection in plain PyTorch: the specification the Triton and C++ kernels must match bit for bit.

Everything random is a pure function of ``(keys, index)``: a keyed 32-bit hash of the global sample index
(three rounds of MurmurHash3's ``fmix32``, a bijection on 32-bit words for fixed keys), so the same
``(seed, epoch)`` gives the same draw on every backend and device. The arithmetic below is written as an
explicit sequence of IEEE float32 operations (no ``log`` from a math library, whose last bit differs
between libms) so that the kernels can repeat it exactly.

Selection rule (all modes): keep the k largest keys, ties broken by lower position; return the kept
positions in ascending order. Keys per mode:

* ``LARGEST`` / ``SMALLEST``: the float32 value itself (``-0.0 == 0.0``, ``+inf`` largest, ``-inf`` smallest);
  ``SMALLEST`` is ``LARGEST`` with the order reversed (ties still go to the lower position).
* ``RANDOM``: the 32-bit hash ``h`` (distinct for distinct indices, so there are no ties).
* ``WEIGHTED``: ``w / E`` with ``E = -ln(u) ~ Exp(1)`` from the hash; the k largest of ``w_i / E_i`` are a
  draw without replacement with probability proportional to ``w`` (Efraimidis-Spirakis). Zero weights get
  the key ``-E`` (below every positive weight): they are picked, uniformly at random, only when k exceeds
  the number of positive weights.
"""

from __future__ import annotations

import torch

from rela_fast.ops.select.checks import check_select

LARGEST, SMALLEST, RANDOM, WEIGHTED = 0, 1, 2, 3
MODE_NAMES = {LARGEST: "largest", SMALLEST: "smallest", RANDOM: "random", WEIGHTED: "weighted"}

M32 = 0xFFFFFFFF
FMIX_M1, FMIX_M2 = 0x85EBCA6B, 0xC2B2AE35
# float32 constants, exactly representable (the kernels spell the same bits): 2/3, 2/5, 2/7, 2/9, ln 2, sqrt 2
C3, C5, C7, C9 = 0.6666666865348816, 0.4000000059604645, 0.2857142984867096, 0.2222222238779068
LN2, SQRT2 = 0.6931471824645996, 1.4142135381698608


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for int64 ``x`` in [0, 2**32) without int64 overflow (16-bit halves)."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & M32


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding uint32 values (a bijection)."""
    h = h ^ (h >> 16)
    h = _mul32(h, FMIX_M1)
    h = h ^ (h >> 13)
    h = _mul32(h, FMIX_M2)
    return h ^ (h >> 16)


def hash32(index: torch.Tensor, keys: tuple[int, int, int]) -> torch.Tensor:
    """The keyed hash of sample indices (int64 in [0, 2**32)), as int64 values in [0, 2**32)."""
    k0, k1, k2 = keys
    h = fmix32((index.to(torch.int64) & M32) ^ k0)
    h = fmix32((h + k1) & M32)
    return fmix32(h ^ k2)


def exponential(h: torch.Tensor) -> torch.Tensor:
    """``E = -ln(u)``, ``u = (2 (h >> 9) + 1) / 2**24`` in (0, 1): an Exp(1) variate per hash, float32, > 0.

    ``ln`` is computed as ``(e - 24) ln2 + 2 atanh(s)``, ``s = (m - 1) / (m + 1)``, ``m`` in [sqrt(1/2), sqrt(2)],
    with the series to ``s**9`` (absolute error below 1e-7): only +, -, *, / in a fixed order.
    """
    x = ((h >> 9) * 2 + 1).to(torch.float32)  # odd integer < 2**24: exact
    bits = x.view(torch.int32)
    e = (bits >> 23) - 127
    m = ((bits & 0x7FFFFF) | 0x3F800000).view(torch.float32)
    big = m > SQRT2
    m = torch.where(big, m * 0.5, m)
    e = torch.where(big, e + 1, e)
    f = m - 1.0
    s = f / (f + 2.0)
    z = s * s
    p = z * C9 + C7
    p = p * z + C5
    p = p * z + C3
    t = s * (z * p)
    lnm = s * 2.0 + t
    lnu = (e - 24).to(torch.float32) * LN2 + lnm
    return -lnu


def weighted_keys(weights: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The float32 key of ``WEIGHTED``: ``w / E`` for ``w > 0``, ``-E`` for ``w == 0``."""
    e = exponential(h)
    return torch.where(weights > 0, weights / e, -e)


def bad_counts(values: torch.Tensor | None, mode: int) -> tuple[int, int]:
    """(number of NaN values, number of negative values) that ``mode`` rejects; RANDOM reads no values."""
    if values is None or mode == RANDOM:
        return 0, 0
    n_nan = int(torch.isnan(values).sum())
    n_neg = int((values < 0).sum()) if mode == WEIGHTED else 0
    return n_nan, n_neg


def select(values, ids, n: int, k: int, mode: int, keys: tuple[int, int, int], device):
    """Positions (int64, ascending) of the k largest keys of ``mode``, ties to the lower position.

    ``values``: float32 (n,) or None (RANDOM); ``ids``: the global sample index of each position (int64,
    ascending) or None for ``ids = positions``; the hash uses ids, the tie-break uses positions.
    Returns ``(positions, n_nan, n_neg)``; on rejected values the positions are not computed (None).
    """
    device = check_select(values, ids, n, k, device)
    n_nan, n_neg = bad_counts(values, mode)
    if n_nan or n_neg:
        return None, n_nan, n_neg
    if ids is None:
        ids = torch.arange(n, device=device, dtype=torch.int64)
    if mode == LARGEST:
        order = torch.sort(values, descending=True, stable=True).indices
    elif mode == SMALLEST:
        order = torch.sort(values, descending=False, stable=True).indices
    elif mode == RANDOM:
        order = torch.sort(hash32(ids, keys), descending=True, stable=True).indices
    elif mode == WEIGHTED:
        order = torch.sort(weighted_keys(values, hash32(ids, keys)), descending=True, stable=True).indices
    else:
        raise ValueError(f"mode={mode}: unknown selection mode")
    return torch.sort(order[:k]).values, 0, 0


def order_key(values: torch.Tensor) -> torch.Tensor:
    """The order-preserving uint32 image of float32 values (as int64; ``-0.0`` maps like ``0.0``)."""
    b = values.contiguous().view(torch.int32).to(torch.int64) & M32
    b = torch.where(b == 0x80000000, 0, b)
    return torch.where((b & 0x80000000) != 0, (~b) & M32, b | 0x80000000)


def keys(values, ids, n: int, mode: int, keys: tuple[int, int, int], device) -> torch.Tensor:
    """The uint32 key of every position as int64: the kernels' keys, for tests of their bit-exactness."""
    device = check_select(values, ids, n, None, device)
    if ids is None:
        ids = torch.arange(n, device=device, dtype=torch.int64)
    if mode == LARGEST:
        return order_key(values)
    if mode == SMALLEST:
        return (~order_key(values)) & M32
    if mode == RANDOM:
        return hash32(ids, keys)
    return order_key(weighted_keys(values, hash32(ids, keys)))
