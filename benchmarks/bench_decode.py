"""Decode-only throughput: source rows -> uint8 (n, 3, S, S) batches, per decoder backend.

Run: ``pytest benchmarks/bench_decode.py --benchmark-only``. Data: a generated folder of 200 ImageNet-like
JPEGs (500 x 375, quality 90, crops of scikit-image's sample photos: ``rela_fast.data.synthetic``).
One round decodes the whole folder at S = 224 in batches of 64 with every usable core.
Groups ``decode: 200 jpeg 500x375 S=224 <device>``; the baseline is ``pil`` (Pillow on a thread pool,
the reference transform). CPU variants: ``dali-cpu`` and ``torchvision`` (libjpeg-turbo through
``torchvision.io.decode_jpeg`` + uint8 tensor resize). CUDA variants (with a GPU): ``dali`` (mixed, hardware
JPEG) and ``nvjpeg``, delivering batches on the GPU. Images/s = 200 / median; ``extra_info`` also holds
``cpu_ms_per_image`` (process CPU time, all threads, best round), which a loaded machine does not distort.
"""

from __future__ import annotations

import resource

import pytest
import torch

from rela_fast.data import dali_available, make_decoder, open_source

pytest.importorskip("skimage")

N_IMAGES, SIZE, BATCH = 200, 224, 64


def _cpu_seconds() -> float:
    """Process CPU time (all threads): cost per image that machine load does not distort."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    from rela_fast.data.synthetic import make_jpeg_folder

    return open_source(make_jpeg_folder(tmp_path_factory.mktemp("jpegs"), N_IMAGES, size=(500, 375), quality=90))


def _decoder(variant: str, device: str):
    return make_decoder(variant, SIZE, device=device)


CASES = [("cpu", "pil"), ("cpu", "dali-cpu"), ("cpu", "torchvision"),
         ("cuda", "pil"), ("cuda", "dali"), ("cuda", "nvjpeg")]


@pytest.mark.parametrize(("device", "variant"), CASES, ids=[f"{d}-{v}" for d, v in CASES])
def test_decode(benchmark, jpeg_folder, device, variant):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if variant.startswith("dali") and not dali_available():
        pytest.skip("NVIDIA DALI is not installed")
    decoder = _decoder(variant, device)

    cpu = []

    def run():
        start = _cpu_seconds()
        n = 0
        for batch in decoder.iterate(jpeg_folder, batch_size=BATCH):
            n += len(batch.indices)
        if device == "cuda":
            torch.cuda.synchronize()
        assert n == N_IMAGES
        cpu.append(_cpu_seconds() - start)
        return n

    benchmark.group = f"decode: {N_IMAGES} jpeg 500x375 S={SIZE} {device}"
    benchmark.extra_info.update(suite="decode", variant=variant, baseline=variant == "pil", images=N_IMAGES,
                                threads=decoder.num_threads)
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = N_IMAGES / benchmark.stats.stats.median
    benchmark.extra_info["cpu_ms_per_image"] = 1e3 * min(cpu) / N_IMAGES
