"""The three augmentation backends agree with the one recipe (ViewSpec -> view_ops): torchvision per sample (the
reference), batched tensors, DALI (CPU pipeline). Drawn parameters are compared by distribution (two-sample
KS tests, binomial rates), outputs by their statistics on fixed images; blur by its spread in pixels."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from rela_fast.environment import dali_available
from rela_fast.train import augment as A
from rela_fast.train.augment import BatchViews, ViewSpec, build_torchvision, two_views

pytestmark = pytest.mark.usefixtures("one_thread")


def _box_stats(boxes):
    boxes = np.asarray(boxes, dtype=np.float64)
    return boxes[:, 2] * boxes[:, 3], boxes[:, 3] / boxes[:, 2], boxes[:, 0], boxes[:, 1]


@pytest.mark.parametrize("hw,scale", [((28, 28), (0.08, 1.0)), ((28, 28), (0.5, 1.0)), ((40, 30), (0.4, 1.0))])
def test_crop_boxes_follow_torchvision_distribution(hw, scale):
    h, w = hw
    ratio = (3 / 4, 4 / 3)
    n = 4000
    torch.manual_seed(0)
    ref = [v2.RandomResizedCrop.get_params(torch.empty(1, h, w), list(scale), list(ratio)) for _ in range(n)]
    batched = A.batch_boxes(torch.Generator().manual_seed(1), n, h, w, scale, ratio).tolist()
    rng = random.Random(2)
    per_sample = [A.sample_crop(rng, h, w, scale, ratio) for _ in range(n)]
    for ours in (batched, per_sample):
        for a, b in zip(_box_stats(ref), _box_stats(ours)):
            assert stats.ks_2samp(a, b).pvalue > 1e-3
    boxes = np.asarray(batched)
    assert (boxes[:, 0] + boxes[:, 2] <= h).all() and (boxes[:, 1] + boxes[:, 3] <= w).all() and (boxes >= 0).all()


def test_batched_crop_equals_resized_crop_for_a_given_box():
    """The affine sampling grid reproduces torchvision's resized_crop (bilinear; crops no larger than S)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 20, 20, generator=g)
    crop = A.Crop(28, (0.3, 0.3), (1.0, 1.0))
    gen = torch.Generator().manual_seed(5)
    top, left, hh, ww = A.batch_boxes(torch.Generator().manual_seed(5), 1, 20, 20, crop.scale, crop.ratio)[0].tolist()
    ours = A.batch_crop_flip(x, crop, 0.0, gen)
    ref = TF.resized_crop(x[0], top, left, hh, ww, [28, 28], antialias=False)
    torch.testing.assert_close(ours[0], ref, atol=2e-5, rtol=0)


def _fixed_images(n=6, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g) * 0.6 + 0.2
    texture = torch.rand(n, 1, size, size, generator=g) * 0.4 - 0.2
    return ((base + texture).clamp(0, 1) * 255).round().to(torch.uint8)


def _torchvision_views(spec, images, reps):
    t = build_torchvision(spec)
    torch.manual_seed(0)
    return torch.stack([t(img) for _ in range(reps) for img in images])


def _batched_views(spec, images, reps):
    op = BatchViews(spec)
    gen = torch.Generator().manual_seed(1)
    return torch.cat([op(images, gen) for _ in range(reps)])


def _dali_views(spec, images, reps):
    from rela_fast.data import open_source
    from rela_fast.train.loader import DaliTwoViewLoader

    src = open_source(images.permute(0, 2, 3, 1).numpy())
    idx = list(range(len(images))) * reps
    out = [b[0] for b in DaliTwoViewLoader(src, (spec, spec), idx, len(images), device="cpu", num_threads=1, seed=3)]
    return torch.cat(out)


def _summary(x):
    """Per-image statistics of the views: mean and std over pixels, per channel (normalised units)."""
    return x.mean(dim=(2, 3)), x.std(dim=(2, 3))


BACKENDS = {"batched": (_batched_views, 0.08), "dali": (_dali_views, 0.2)}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("recipe", ["rela", "byol"])
def test_output_statistics_agree_with_torchvision(recipe, backend):
    if backend == "dali" and not dali_available():
        pytest.skip("DALI not installed")
    images = _fixed_images()
    make, tol = BACKENDS[backend]
    for spec in two_views(recipe, 28):
        ref_mean, ref_std = _summary(_torchvision_views(spec, images, 150))
        got_mean, got_std = _summary(make(spec, images, 150))
        # mean over draws of the per-image statistics: same recipe -> same expectation
        assert (ref_mean.mean(0) - got_mean.mean(0)).abs().max() < tol, (ref_mean.mean(0), got_mean.mean(0))
        assert (ref_std.mean(0) - got_std.mean(0)).abs().max() < tol, (ref_std.mean(0), got_std.mean(0))
        # and the spread over draws (how strong the jitter is)
        assert (ref_mean.std(0) - got_mean.std(0)).abs().max() < 1.5 * tol


def test_grayscale_solarize_and_flip_rates_match_the_spec():
    """Binomial rates of the coin-flip ops in the batched backend, one op at a time, against the spec."""
    n = 3000
    img = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    img[:, 0], img[:, 1], img[:, 2] = 200, 50, 120  # coloured (grayscale is visible), bright red (solarize is)
    img[..., :4] = 0  # left half black: a flip is visible
    still = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0, gray_p=0.0, flip_p=0.0)

    def views(**kw):
        spec = ViewSpec(8, **{**still, **kw})
        x = BatchViews(spec)(img, torch.Generator().manual_seed(0))
        return x * torch.tensor(spec.std).view(1, 3, 1, 1) + torch.tensor(spec.mean).view(1, 3, 1, 1)

    x = views(gray_p=0.2)
    gray = ((x[:, 0] - x[:, 1]).abs() < 1e-4).all(dim=(1, 2))
    x = views(flip_p=0.5)
    flipped = x[:, 0, :, 0].sum(1) > x[:, 0, :, -1].sum(1)
    x = views(solarize_p=0.3)
    solarized = x[:, 0, :, -1].mean(1) < 0.5  # red 200 -> 55 where solarized
    for observed, p in ((gray, 0.2), (flipped, 0.5), (solarized, 0.3)):
        assert stats.binomtest(int(observed.sum()), n, p).pvalue > 1e-3


@pytest.mark.parametrize("size", [16, 28, 32, 96, 224])
def test_blur_sigma_is_in_pixels_at_every_size(size):
    """A delta blurred with sigma s spreads s pixels (variance s^2), as PIL / torchvision, whatever the size."""
    spec = two_views("byol", size)[0]
    for sigma in (0.5, 1.0, 2.0):
        x = torch.zeros(1, 1, size, size)
        x[0, 0, size // 2, size // 2] = 1.0
        y = A.gaussian_blur(x, spec.blur_kernel, torch.tensor([sigma]))[0, 0]
        pos = torch.arange(size, dtype=torch.float64) - size // 2
        prof = y.double().sum(0)
        var = float((prof * pos**2).sum() / prof.sum())
        if sigma >= 1.0:  # a sampled Gaussian narrower than a pixel has a smaller variance, in torchvision too
            assert math.sqrt(var) == pytest.approx(sigma, rel=0.03), (size, sigma, math.sqrt(var))
        ref = TF.gaussian_blur(x[0], [spec.blur_kernel] * 2, [sigma, sigma])[0]
        torch.testing.assert_close(y, ref, atol=1e-6, rtol=0)


def test_one_recipe_drives_every_backend():
    """view_ops is the single ViewSpec -> ops translation; each backend's pipeline has exactly its ops."""
    for recipe in ("rela", "byol", "simclr", "dino", "supervised"):
        for spec in two_views(recipe, 32):
            ops = A.view_ops(spec)
            names = [type(o).__name__ for o in ops]
            assert names[0] == "Crop" and names[-1] == "Normalize"
            tv = build_torchvision(spec).transforms[1:]  # after ToImage
            assert len(tv) == len(ops)
            photometric = A.BatchPhotometric(spec).ops
            assert [type(o).__name__ for o in photometric] == [n for n in names if n not in ("Crop", "Flip")]
            sol = [o for o in ops if isinstance(o, A.Solarize)]
            assert all(o.threshold == 128 for o in sol)
