"""The batched view pipeline's shortcuts give the same views as the plain computation.

* Gray batches (one channel, or three equal ones) run the photometric ops on one channel: bit-identical to
  running them on three (the plain path is forced by replacing ``one_channel`` with the identity).
* Colour jitter groups rows by op instead of gathering each op's rows: checked row by row against
  torchvision's functional ops, applied in each row's drawn order with its drawn factors.
* Blur with p = 1 skips the gather: checked against torchvision's ``gaussian_blur`` per row.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from rela_fast.train import augment as A
from rela_fast.train.augment import BatchViews, two_views
from rela_fast.train.views import two_view_batch

RECIPES = ("byol", "simclr", "rela", "dino", "supervised")


def _gray(n: int, side: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("size", [12, 28])
def test_gray_views_on_one_channel_are_bit_identical_to_three(recipe, size, monkeypatch):
    gray = _gray(48, 20, seed=size)
    rgb = gray.expand(-1, 3, -1, -1).contiguous()
    ops = tuple(BatchViews(v) for v in two_views(recipe, size))
    idx = torch.arange(48)
    fast_1 = two_view_batch(gray, idx, ops, seed=3, epoch=2, phase=1)
    fast_3 = two_view_batch(rgb, idx, ops, seed=3, epoch=2, phase=1)
    monkeypatch.setattr(A, "one_channel", lambda x: x)  # the plain path: every op on three channels
    plain = two_view_batch(rgb, idx, ops, seed=3, epoch=2, phase=1)
    for a, b, c in zip(fast_1, fast_3, plain):
        assert a.shape == c.shape == (48, 3, size, size)
        assert torch.equal(a, c) and torch.equal(b, c)


def test_one_channel_only_for_equal_channels():
    colour = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    assert A.one_channel(colour) is colour
    almost = colour[:, :1].expand(-1, 3, -1, -1).clone()
    almost[3, 2, 4, 4] += 0.5  # one pixel of one image differs: the batch keeps its three channels
    assert A.one_channel(almost).shape[1] == 3
    assert A.one_channel(almost[:3]).shape[1] == 1


def _reference_jitter(x: torch.Tensor, op: A.Jitter, seed: int) -> torch.Tensor:
    """Row by row with torchvision, from the same draws as ``_jitter`` (coin, order, then four factors)."""
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    on = torch.rand(n, generator=gen) < op.p
    order = torch.argsort(torch.rand(n, 4, generator=gen), dim=1)
    factors = [(torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo) + lo).float() for lo, hi in op.ranges()]
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    strengths = (op.brightness, op.contrast, op.saturation, op.hue)
    rows = []
    for i in range(n):
        img = x[i]
        if on[i]:
            for j in order[i].tolist():
                if strengths[j] > 0:
                    img = fns[j](img, float(factors[j][i]))
        rows.append(img)
    return torch.stack(rows)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("jitter", [(0.4, 0.4, 0.2, 0.1), (0.8, 0.8, 0.8, 0.2), (0.4, 0.0, 0.3, 0.0)])
def test_jitter_matches_torchvision_row_by_row(channels, jitter):
    g = torch.Generator().manual_seed(channels)
    x = torch.rand(40, channels, 9, 7, generator=g)
    op = A.Jitter(*jitter, p=0.8)
    ours = A._jitter(x.clone(), op, A._Draw(torch.Generator().manual_seed(11), 40, x.device))
    expected = _reference_jitter(x.expand(-1, 3, -1, -1), op, seed=11)
    torch.testing.assert_close(ours.expand(-1, 3, -1, -1), expected, atol=2e-5, rtol=0)
    assert not torch.equal(ours, x)  # it did something


def test_blur_on_every_row_matches_torchvision():
    x = torch.rand(6, 3, 11, 11, generator=torch.Generator().manual_seed(4))
    op = A.Blur(kernel=7, sigma=(0.1, 2.0), p=1.0)
    gen = torch.Generator().manual_seed(5)
    ours = A._photometric(x, op, A._Draw(gen, 6, x.device))
    ref_gen = torch.Generator().manual_seed(5)
    torch.rand(6, generator=ref_gen)  # the coin (always on at p = 1)
    sigma = (torch.rand(6, generator=ref_gen, dtype=torch.float64) * 1.9 + 0.1).float()
    expected = torch.stack([TF.gaussian_blur(x[i], [7, 7], [float(sigma[i])] * 2) for i in range(6)])
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
