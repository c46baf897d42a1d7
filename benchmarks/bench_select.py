"""Subset selection benchmarks: exact top-k and random draws against torch.topk / torch.randperm.

Groups ``"select: <what> N=<n> k=<pct>% <device>"``; baselines are torch's own ops measured side by side.
CPU: N in {1_281_167, 10_000_000}; CUDA adds 100_000_000. Also the ScoreBook update of a 4096-sample batch
(one kernel) against the same rule in plain torch index ops (the reference). Run:
``pytest benchmarks/bench_select.py --benchmark-only``.
"""

from __future__ import annotations

import pytest
import torch

from rela_fast import ScoreBook, select_subset

CPU_SIZES = [1_281_167, 10_000_000]
GPU_SIZES = [1_281_167, 10_000_000, 100_000_000]
FRACTIONS = [0.1, 0.2, 0.5]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _cases():
    for device in DEVICES:
        for n in CPU_SIZES if device == "cpu" else GPU_SIZES:
            for frac in FRACTIONS:
                yield pytest.param(device, n, frac, id=f"{device}-{n}-{int(frac * 100)}")


def _timed(device: str, fn):
    if device == "cuda":
        def run():
            out = fn()
            torch.cuda.synchronize()
            return out
        return run
    return fn


def _measure(benchmark, device, fn, rounds):
    fn = _timed(device, fn)
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


def _rounds(n: int, device: str) -> int:
    return 20 if device == "cuda" else (15 if n < 5_000_000 else 3)


def _label(kind, n, frac, device):
    return f"select: {kind} N={n} k={int(frac * 100)}% {device}"


def _scores(n, device):
    return torch.rand(n, generator=torch.Generator().manual_seed(0)).to(device)


@pytest.mark.parametrize("device,n,frac", list(_cases()))
@pytest.mark.parametrize("variant", ["rela_fast topk", "torch.topk"])
def test_topk(benchmark, variant, device, n, frac):
    scores, k = _scores(n, device), int(frac * n)
    benchmark.group = _label("topk", n, frac, device)
    baseline = variant == "torch.topk"
    benchmark.extra_info.update(suite="select", variant=variant, baseline=baseline)
    if baseline:
        _measure(benchmark, device, lambda: torch.topk(scores, k), _rounds(n, device))
    else:
        out = _measure(benchmark, device, lambda: select_subset(scores, k, "topk"), _rounds(n, device))
        assert out.numel() == k


@pytest.mark.parametrize("device,n,frac", list(_cases()))
@pytest.mark.parametrize("variant", ["rela_fast random", "torch.randperm"])
def test_random(benchmark, variant, device, n, frac):
    k = int(frac * n)
    benchmark.group = _label("random", n, frac, device)
    baseline = variant == "torch.randperm"
    benchmark.extra_info.update(suite="select", variant=variant, baseline=baseline)
    if baseline:
        gen = torch.Generator(device=device).manual_seed(0)
        _measure(benchmark, device, lambda: torch.randperm(n, generator=gen, device=device)[:k], _rounds(n, device))
    else:
        scores = _scores(n, device)  # random ignores the values; they only place the draw on the device
        out = _measure(benchmark, device, lambda: select_subset(scores, k, "random", seed=1, epoch=2),
                       _rounds(n, device))
        assert out.numel() == k


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["rela_fast weighted", "torch.topk of exponential keys"])
def test_weighted(benchmark, variant, device):
    n, frac = 1_281_167, 0.2
    k, weights = int(frac * n), _scores(n, device)
    benchmark.group = _label("weighted", n, frac, device)
    baseline = variant != "rela_fast weighted"
    benchmark.extra_info.update(suite="select", variant=variant, baseline=baseline)
    if baseline:
        gen = torch.Generator(device=device).manual_seed(0)

        def keys_topk():
            e = torch.empty(n, device=device).exponential_(generator=gen)
            return torch.topk(weights / e, k)

        _measure(benchmark, device, keys_topk, _rounds(n, device))
    else:
        _measure(benchmark, device, lambda: select_subset(weights, k, "weighted", seed=1, epoch=2), _rounds(n, device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["ScoreBook.update", "torch index ops (reference)"])
def test_scorebook_update(benchmark, variant, device):
    n, batch = 1_281_167, 4096
    baseline = variant != "ScoreBook.update"
    book = ScoreBook(n, device=device, backend="reference" if baseline else None)
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(n, (batch,), generator=gen).to(device)
    loss = torch.rand(batch, generator=gen).to(device)
    benchmark.group = f"select: ScoreBook.update B={batch} N={n} {device}"
    benchmark.extra_info.update(suite="select", variant=variant, baseline=baseline)
    fn = _timed(device, lambda: book.update(idx, loss))
    benchmark.pedantic(fn, rounds=50, iterations=1, warmup_rounds=2)
