"""Encode-only throughput: the fused inference encoder vs an eager fp32 model with separate normalisation.

Run: ``pytest benchmarks/bench_encoder.py --benchmark-only``. Groups ``encoder: <model> S=224 b=<B> <device>``;
the baseline is what the authors' scripts do per batch: ``uint8 -> float / 255 -> (x - mean) / std ->
model(x)`` in fp32 under ``torch.no_grad``, default (NCHW) layout. Variants: the fused engine (BN and
normalisation folded, channels_last), the engine without channels_last, with oneDNN prepacked convolutions
(``fused_prepack``), in bf16 (``fused_bf16``, CPUs with native bf16 only), and (``RELA_BENCH_COMPILE=1``,
slow to compile on the CPU) the engine with ``torch.compile``. On the CPU these run with the process-wide
allocator setting off; ``fused_malloc`` turns it on (``tune_cpu_allocator``, what ``build_encoder`` does by
default on the CPU) and the second baseline ``eager_fp32_malloc``, run after it, is the eager model with
that setting, so the allocator's share of the speed-up is visible. CUDA cases (bf16 autocast, compile, CUDA
graph, batch 256, resnet18 / resnet50 / efficientnet_lite0) run only with a GPU. Images/s = batch / median.
"""

from __future__ import annotations

import os

import pytest
import torch

from rela_fast.encoder import build_encoder, create_prior
from rela_fast.encoder.engine import cpu_bf16_supported, tune_cpu_allocator

pytest.importorskip("timm")

CPU_MODELS = ["resnet18", "efficientnet_lite0"]
GPU_MODELS = ["resnet18", "resnet50", "efficientnet_lite0"]
SIZE = 224


def _baseline(model, cfg, device):
    mean = torch.tensor(cfg.mean, device=device).reshape(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=device).reshape(1, 3, 1, 1)
    model = model.to(device).eval()

    def run(images):
        with torch.no_grad():
            x = images.to(device, non_blocking=True).float().div(255.0).sub(mean).div(std)
            out = model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def _engine(enc):
    def run(images):
        out = enc(images)
        if enc.device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def _cases(device: str):
    variants = ["eager_fp32_unfused", "fused", "fused_nchw", "fused_prepack"]
    if device == "cuda":
        variants = ["eager_fp32_unfused", "fused", "fused_compile", "fused_cuda_graph"]
    else:
        if cpu_bf16_supported():
            variants.append("fused_bf16")
        if os.environ.get("RELA_BENCH_COMPILE") == "1":
            variants.append("fused_compile")
        variants += ["fused_malloc", "eager_fp32_malloc"]  # last: the allocator setting is process-wide
    models = GPU_MODELS if device == "cuda" else CPU_MODELS
    plain = [(m, v) for m in models for v in variants if "malloc" not in v]
    return plain + [(m, v) for m in models for v in variants if "malloc" in v]


@pytest.fixture(scope="module")
def priors():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = create_prior(f"timm:{name}")
        return cache[name]

    return get


def _bench(benchmark, priors, name, variant, device, batch, rounds):
    model, cfg = priors(name)
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, SIZE, SIZE), generator=gen, dtype=torch.uint8)
    if device == "cuda":
        images = images.pin_memory()
    if variant.startswith("eager"):
        if variant == "eager_fp32_malloc":
            tune_cpu_allocator()
        fn = _baseline(model, cfg, dev)
    else:
        enc = build_encoder(
            model,
            cfg,
            dev,
            compile=variant == "fused_compile",
            cuda_graph=variant == "fused_cuda_graph",
            batch_size=batch,
            channels_last=variant != "fused_nchw",
            prepack=variant == "fused_prepack",
            precision="bf16" if variant == "fused_bf16" else "auto",
            tune_allocator=variant == "fused_malloc",
        )
        fn = _engine(enc)
        benchmark.extra_info["fusions"] = ",".join(enc.fusions)
    benchmark.group = f"encoder: {name} S={SIZE} b={batch} {device}"
    benchmark.extra_info.update(suite="encoder", variant=variant, baseline=variant.startswith("eager"), batch=batch)
    benchmark.pedantic(fn, args=(images,), rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize(("name", "variant"), _cases("cpu"))
def test_encoder_cpu(benchmark, priors, name, variant):
    _bench(benchmark, priors, name, variant, "cpu", batch=32, rounds=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("name", "variant"), _cases("cuda"))
def test_encoder_cuda(benchmark, priors, name, variant):
    _bench(benchmark, priors, name, variant, "cuda", batch=256, rounds=20)
