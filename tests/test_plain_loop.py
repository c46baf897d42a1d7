"""The plain-loop driver: IndexedDataset over any map-style dataset, and the engine's calls in a loop you own.

Real torchvision, Hugging Face and Fashion-MNIST data; references computed here with torchvision / NumPy.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from rela_fast import IndexedDataset, ReLAEngine
from rela_fast.errors import UserError
from rela_fast.train.augment import BatchViews, two_views
from rela_fast.train.views import two_view_batch


def _rgb_chw(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


def test_torchvision_dataset_rows_and_resize_match_torchvision():
    torchvision = pytest.importorskip("torchvision")
    from torchvision.transforms.v2 import functional as F

    fake = torchvision.datasets.FakeData(size=12, image_size=(3, 30, 41), num_classes=3)
    ds = IndexedDataset(fake, rows=[4, 1, 9], image_size=24)
    assert len(ds) == 3
    for j, row in enumerate([4, 1, 9]):
        image, label, index = ds[j]
        pil, want_label = fake[row]
        want = F.pil_to_tensor(F.center_crop(F.resize(pil, 24), 24))  # torchvision's Resize + CenterCrop
        assert index == j and label == want_label and image.dtype == torch.uint8
        assert torch.equal(image, want)
    with pytest.raises(IndexError):
        ds[3]


def test_hugging_face_dataset_gray_and_colour_rows():
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (9, 7), dtype=np.uint8)),  # gray (mode L)
              Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8))]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    hf = datasets.Dataset.from_dict({"image": images, "label": [2, 0]}, features=features)
    ds = IndexedDataset(hf)
    for j in range(2):
        image, label, index = ds[j]
        assert (label, index) == ([2, 0][j], j)
        assert torch.equal(image, _rgb_chw(images[j]))  # gray replicated to three channels


def test_idx_source_without_warnings_and_unlabelled_lists(fashion_mnist_dir):
    from rela_fast.data import open_source

    source = open_source(fashion_mnist_dir)
    array, labels = source.array(), source.labels
    rows = [59999, 3, 17, 4242]
    ds = IndexedDataset(source, rows=torch.tensor(rows))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the source's memory is read-only: no NumPy/torch warning on the way
        images, got_labels, idx = next(iter(DataLoader(ds, batch_size=4)))
    assert images.shape == (4, 3, 28, 28) and idx.tolist() == [0, 1, 2, 3]
    assert got_labels.tolist() == [labels[r] for r in rows]
    for k, r in enumerate(rows):
        assert all(np.array_equal(images[k, c].numpy(), array[r]) for c in range(3))
    unlabelled = IndexedDataset([Image.fromarray(array[0]), Image.fromarray(array[1])])
    assert unlabelled[1][1] == -1 and torch.equal(unlabelled[1][0][0], torch.from_numpy(array[1].copy()))


def test_bad_rows_and_sizes_are_one_line_errors():
    data = np.zeros((5, 8, 8), dtype=np.uint8)
    for rows in ([0, 5], [-1], []):
        with pytest.raises(UserError, match=r"rows=.*\[0, 5\)"):
            IndexedDataset(data, rows=rows)
    for size in (0, 2.5, True):
        with pytest.raises(UserError, match="image_size"):
            IndexedDataset(data, image_size=size)


def test_a_plain_loop_gets_the_methods_views_from_the_step_after_the_switch(fashion_mnist_dir):
    """threshold 0.3 < rho at the first update (exp(-1)): the switch comes at step 1, mid-epoch; a loader
    worker has batches of the epoch in flight, and the very next batch still gets the method's views."""
    from rela_fast.data import open_source

    images = open_source(fashion_mnist_dir).array()[:128]
    targets = torch.randn(128, 8, generator=torch.Generator().manual_seed(0))
    engine = ReLAEngine.create(targets, feature_dim=16, budget=0.5, epochs=2, threshold=0.3, seed=5)
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 16))
    optimizer = torch.optim.SGD([*backbone.parameters(), *engine.head.parameters()], lr=0.01)
    loader = DataLoader(IndexedDataset(images), batch_size=16, sampler=engine.sampler, num_workers=1, drop_last=True)
    rela_ops = tuple(BatchViews(v) for v in two_views("rela", 28))
    byol_ops = tuple(BatchViews(v) for v in two_views("byol", 28))
    log = []
    for epoch in range(2):
        engine.set_epoch(epoch)
        seen = []
        for batch, _, idx in loader:
            seen += idx.tolist()
            phase = engine.view_phase
            v1, v2 = engine.views(batch, idx)
            ops = rela_ops if phase == 1 else byol_ops  # independent of the engine: the recipes by name
            w1, w2 = two_view_batch(batch, idx, ops, seed=5, epoch=epoch, phase=phase)
            assert torch.equal(v1, w1) and torch.equal(v2, w2)
            h = backbone(torch.cat([v1, v2]))
            loss = engine.mix(engine.loss(h, idx), lambda h=h: (h[:16] - h[16:]).pow(2).mean())
            loss.backward()
            engine.before_step(backbone)
            optimizer.step()
            optimizer.zero_grad()
            log.append((epoch, phase, engine.step({"loss": loss.item()})))
        assert seen == engine.shard().tolist()  # the loader walked this epoch's shard, in order
    assert [phase for _, phase, _ in log] == [1] + [2] * 7  # 4 steps per epoch; the second is already phase 2
    assert log[0][2]["switched"] and not any(out["switched"] for _, _, out in log[1:])
    assert all(np.isfinite(out["loss"]) for _, _, out in log)
