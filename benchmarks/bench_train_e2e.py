"""End-to-end training input path on the CPU: one two-view batch, per-sample torchvision vs batched tensors.

Run: ``pytest benchmarks/bench_train_e2e.py --benchmark-only``. Group ``train_e2e: two views <recipe>
b=<B> 28px cpu``; the baseline is the stock CPU loader's work for one batch (:class:`TwoViewDataset`:
torchvision transforms-v2 per image, seeded per sample), the variant the demo's batched implementation of
the same :class:`ViewSpec` recipe (:func:`rela_fast.demo.augment_batch`, one ``grid_sample`` for crop + flip,
vectorised jitter / blur / solarize). Plus ``train_e2e: fit 4 steps b=<B> ...``: a whole 4-step
``fit`` (set-up included) of the trainer with the batched loader, BYOL (baseline) vs ReLA phase 1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rela_fast.demo import augment_batch
from rela_fast.train import TwoViewDataset, two_views

B = 64


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _images(n=B):
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("recipe", ["byol", "rela"])
@pytest.mark.parametrize("variant", ["torchvision_per_sample", "batched_tensor"])
def test_two_view_batch(benchmark, recipe, variant):
    from rela_fast.data import open_source

    imgs = _images()
    views = two_views(recipe, 28)
    benchmark.group = f"train_e2e: two views {recipe} b={B} 28px cpu"
    benchmark.extra_info.update(suite="train_e2e", variant=variant, baseline=variant == "torchvision_per_sample")
    if variant == "torchvision_per_sample":
        ds = TwoViewDataset(open_source(imgs), views)

        def run():
            return [ds[j] for j in range(B)]
    else:
        t = torch.from_numpy(imgs)[:, None]
        gen = torch.Generator().manual_seed(0)

        def run():
            return augment_batch(t, views[0], gen), augment_batch(t, views[1], gen)
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("kind", ["byol", "rela_phase1"])
def test_train_step(benchmark, kind):
    from rela_fast.data import open_source
    from rela_fast.demo import FastTrainer

    n = 4 * B
    src = open_source(_images(n), labels=np.arange(n) % 10)
    targets = torch.randn(n, 64) if kind == "rela_phase1" else None
    benchmark.group = f"train_e2e: fit 4 steps b={B} convnet-16 28px cpu"
    benchmark.extra_info.update(suite="train_e2e", variant=kind, baseline=kind == "byol")

    def run():
        tr = FastTrainer("convnet-16", "byol", targets, budget=1.0, epochs=1, batch_size=B, device="cpu",
                         handover="constant" if targets is not None else "adaptive",
                         lambda_const=1.0 if targets is not None else None,
                         method_kwargs={"hidden_dim": 512, "proj_dim": 128})
        return tr.fit(src, resume=False)
    result = benchmark.pedantic(run, rounds=3, warmup_rounds=0)
    assert result.steps == 4
