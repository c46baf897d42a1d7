"""Exact k-selection (kernel family ``radix_select``): the k largest keys, ties to the lower position.

Modes (see :mod:`rela_fast.ops.select.reference`, the specification): ``LARGEST`` / ``SMALLEST`` of
float32 values, ``RANDOM`` (uniform without replacement, from a keyed hash of the sample index) and
``WEIGHTED`` (without replacement, probability proportional to a non-negative weight). The random
modes depend only on ``keys`` (from :func:`stream_keys` of a seed and an epoch) and the sample ids, so
every backend draws the same set. Backends: reference (sort), C++ (radix select with OpenMP), Triton
(radix select on CUDA). :func:`random_bits` gives the same keyed hash per sample for independent
(Bernoulli) draws, such as InfoBatch's.
"""

from __future__ import annotations

import sys

import torch

from rela_fast.errors import UserError
from rela_fast.ops.backend import dispatch, families, register
from rela_fast.ops.select.reference import LARGEST, MODE_NAMES, RANDOM, SMALLEST, WEIGHTED, bad_counts

register(
    "radix_select",
    reference="rela_fast.ops.select.reference:select",
    triton="rela_fast.ops.select.triton_kernels:select",
    cpp="rela_fast.ops.select.cpp:select",
)

M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def stream_keys(seed: int, epoch: int, salt: int = 0) -> tuple[int, int, int]:
    """Three 32-bit hash keys from ``(seed, epoch, salt)`` (any Python ints; SplitMix64 chain)."""
    s = _splitmix64(_splitmix64(_splitmix64(seed & M64) ^ (epoch & M64)) ^ (salt & M64))
    t = _splitmix64(s)
    return s & 0xFFFFFFFF, s >> 32, t & 0xFFFFFFFF


def raise_bad(name: str, mode: int, n_nan: int, n_neg: int) -> None:
    """The UserError for inputs that ``mode`` rejects (NaN anywhere, negative weights)."""
    if n_nan:
        raise UserError(
            f"{name}: {n_nan} NaN value(s); selection needs comparable scores (+inf and -inf are allowed and rank "
            "highest / lowest); replace them first, e.g. torch.nan_to_num(scores, nan=0.0)"
        )
    if n_neg:
        raise UserError(
            f"{name}: {n_neg} negative value(s); policy 'weighted' samples with probability proportional to the "
            "score, so scores must be >= 0; shift or clamp them first"
        )


def select_k(
    values: torch.Tensor | None,
    k: int,
    mode: int,
    keys: tuple[int, int, int] = (0, 0, 0),
    *,
    ids: torch.Tensor | None = None,
    n: int | None = None,
    device: torch.device | str | None = None,
    backend: str | None = None,
    name: str = "scores",
) -> torch.Tensor:
    """Positions (int64, ascending, on the inputs' device) of the k largest keys of ``mode``.

    ``values``: 1-D float32 (ignored by RANDOM, may be None there); ``ids``: the global sample index of each
    position (int64, ascending; default: the position), which the random modes hash; ``n``/``device`` size
    and place a RANDOM draw without values. Raises UserError (naming ``name``) for NaN values, or negative
    ones in WEIGHTED mode, whatever k is.
    """
    if mode not in MODE_NAMES:
        raise ValueError(f"mode={mode}: not one of {sorted(MODE_NAMES)}")
    like = values if values is not None else ids
    if like is not None:
        if like.dim() != 1:
            raise UserError(f"{name}: expected a 1-D tensor, got shape {tuple(like.shape)}")
        n, device = like.numel(), like.device
    if mode == RANDOM:
        values = None
    if mode in (LARGEST, SMALLEST):
        ids = None  # only the random modes hash the sample index
    if n is None:
        raise ValueError("select_k needs values, ids or n")
    device = torch.device(device if device is not None else "cpu")
    if values is not None:
        values = values.to(torch.float32).contiguous()
    if ids is not None:
        ids = ids.to(device=device, dtype=torch.int64).contiguous()
        if ids.numel() != n:
            raise ValueError(f"ids: {ids.numel()} entries for {n} values")
    if n >= 2**31 - 1:
        raise UserError(f"{name}: {n} samples; selection supports fewer than 2**31 - 1")
    if not 0 <= k <= n:
        raise UserError(f"k: {k} is outside [0, {n}]; ask for at most as many samples as there are")
    if k == 0 or k == n:
        raise_bad(name, mode, *bad_counts(values, mode))
        return torch.arange(k, dtype=torch.int64, device=device)
    positions, n_nan, n_neg = dispatch("radix_select", device, backend)(values, ids, n, k, mode, keys, device)
    raise_bad(name, mode, n_nan, n_neg)
    return positions


def random_bits(
    n: int,
    keys: tuple[int, int, int],
    *,
    ids: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """The keyed 32-bit hash of each of n sample ids (int64 in [0, 2**32), on ``device``), by the backend.

    The same uniform 32-bit word per ``(keys, id)`` as the RANDOM mode's keys (a bijection of the id for
    fixed keys), so a Bernoulli draw ``bits < p * 2**32`` is the same on every backend. ``ids``: int64
    sample ids (default: 0..n-1).
    """
    device = torch.device(device if device is not None else (ids.device if ids is not None else "cpu"))
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    if ids is not None:
        ids = ids.to(device=device, dtype=torch.int64).contiguous()
    fn = dispatch("radix_select", device, backend)
    return sys.modules[fn.__module__].keys(None, ids, n, RANDOM, keys, device)


def backend_module(backend: str):
    """The loaded module behind ``backend`` of radix_select (the Triton one for the current interpret mode)."""
    return sys.modules[families()["radix_select"].implementation(backend).__module__]


__all__ = ["LARGEST", "RANDOM", "SMALLEST", "WEIGHTED", "backend_module", "random_bits", "raise_bad", "select_k",
           "stream_keys"]
