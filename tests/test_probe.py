"""Linear probe: cached-feature training per the spec, feature extraction, real Fashion-MNIST images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rela_fast.data import open_source
from rela_fast.errors import UserError
from rela_fast.eval import extract_features, linear_probe
from rela_fast.eval.probe import train_probe
from rela_fast.train import ConvNet, eval_transform

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n, d, c, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=torch.Generator().manual_seed(99)) * 4
    y = torch.randint(0, c, (n,), generator=g)
    return centers[y] + torch.randn(n, d, generator=g), y


def test_train_probe_reports_mean_of_last_three_epochs():
    xtr, ytr = _blobs(300, 8, 4, 0)
    xte, yte = _blobs(100, 8, 4, 1)
    r = train_probe(xtr, ytr, xte, yte, epochs=12, lr=3e-2, batch_size=100)
    assert len(r.test_accuracies) == 12 and r.epochs == 12
    assert r.accuracy == pytest.approx(np.mean(r.test_accuracies[-3:]))
    assert r.accuracy > 0.95 and r.num_classes == 4 and r.feature_dim == 8
    # labels unrelated to the features: about chance level
    shuffled = ytr[torch.randperm(300, generator=torch.Generator().manual_seed(3))]
    rand = train_probe(xtr, shuffled, xte, yte[torch.randperm(100)], epochs=5, lr=3e-2, batch_size=100)
    assert rand.accuracy < 0.6
    # same seed, same result
    again = train_probe(xtr, ytr, xte, yte, epochs=12, lr=3e-2, batch_size=100)
    assert again.test_accuracies == r.test_accuracies


def test_probe_spec_defaults_and_errors():
    import inspect

    sig = inspect.signature(linear_probe)
    assert sig.parameters["epochs"].default == 100 and sig.parameters["lr"].default == 3e-4
    xtr, ytr = _blobs(20, 4, 2, 0)
    with pytest.raises(UserError, match="labels"):
        train_probe(xtr, torch.full((20,), -1), xtr, ytr)
    with pytest.raises(UserError, match="at least 3"):
        train_probe(xtr, ytr, xtr, ytr, epochs=2)


def test_extract_features_matches_direct_forward():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 20, 24, 3), dtype=np.uint8)
    src = open_source(images, labels=[0, 1, 2, 0, 1, 2, 0])
    torch.manual_seed(0)
    net = ConvNet(4)
    net.train()
    feats, labels = extract_features(net, src, image_size=16, batch_size=3)
    assert net.training  # restored
    net.eval()
    t = eval_transform(16)
    with torch.no_grad():
        direct = net(torch.stack([t(torch.from_numpy(im).permute(2, 0, 1)) for im in images]))
    torch.testing.assert_close(feats, direct, rtol=1e-5, atol=1e-5)
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    _, unlabelled = extract_features(net, open_source(images), image_size=16)
    assert (unlabelled == -1).all()
    with pytest.raises(UserError, match="labels"):
        linear_probe(net, open_source(images), src, epochs=3, image_size=16)


def test_linear_probe_on_fashion_mnist_random_features(fashion_mnist_dir):
    train = open_source(fashion_mnist_dir)
    test = open_source(fashion_mnist_dir, split="test")
    take_tr, take_te = np.arange(0, 60000, 100), np.arange(0, 10000, 50)  # 600 + 200 real images
    tr = open_source(np.stack([train.read(int(i)) for i in take_tr]), labels=[train.labels[i] for i in take_tr])
    te = open_source(np.stack([test.read(int(i)) for i in take_te]), labels=[test.labels[i] for i in take_te])
    # reference path (raw features) with pixel features: Fashion-MNIST pixels are linearly separable well
    # above chance (10 %)
    pixels = nn.Sequential(nn.AvgPool2d(2), nn.Flatten())
    r = linear_probe(pixels, tr, te, batch_size=200)
    assert r.accuracy > 0.6, r
    assert r.n_train == 600 and r.n_test == 200 and r.num_classes == 10 and r.feature_dim == 3 * 14 * 14
    # a randomly initialised ConvNet has tiny features: the opt-in standardisation makes them probe well
    torch.manual_seed(0)
    r = linear_probe(ConvNet(8), tr, te, epochs=20, lr=1e-2, batch_size=200, standardize=True)
    assert r.accuracy > 0.5, r

def test_same_folder_for_train_and_test_is_refused(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    with pytest.raises(UserError, match="test split"):
        linear_probe(ConvNet(2), str(tmp_path), str(tmp_path), epochs=3, image_size=8)
