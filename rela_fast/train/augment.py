"""Augmentations as data: one :class:`ViewSpec` per view, built into torchvision, batched-torch or DALI ops.

A two-view augmentation is a pair of :class:`ViewSpec`; every backend applies the same recipe:

* the fast path (default): per-sample geometry on the loader workers (:func:`crop_flip`: torchvision's
  RandomResizedCrop parameters and ``resized_crop``, flip; uint8 out), then the photometric ops batched
  on the training device (:class:`BatchPhotometric`: colour jitter in a random order per sample, as
  torchvision, grayscale, blur, solarize, normalise; each op equals torchvision's functional op);
* :func:`build_torchvision`: the whole torchvision transforms-v2 pipeline per sample;
* the DALI loader (:mod:`rela_fast.train.loader`): the same ops as DALI operators on the GPU.

Recipes:

* ``rela``: the milder ReLA phase-1 augmentation (ALGORITHM.md): RandomResizedCrop(0.5-1), flip, colour
  jitter (0.8, 0.8, 0.8, 0.2) with p = 0.8, grayscale p = 0.2, ImageNet normalisation; same for both views.
* ``byol``: BYOL's asymmetric pair: RandomResizedCrop(0.08-1), flip, jitter (0.4, 0.4, 0.2, 0.1) p = 0.8,
  grayscale 0.2; view 1 blur p = 1.0, no solarize; view 2 blur p = 0.1, solarize p = 0.2.
* ``simclr``: RandomResizedCrop(0.08-1), flip, jitter (0.8, 0.8, 0.8, 0.2) p = 0.8, grayscale 0.2, blur p = 0.5.
* ``dino``: DINO's two *global* crops only (no local multi-crop): RandomResizedCrop(0.4-1), flip, jitter
  (0.4, 0.4, 0.2, 0.1) p = 0.8, grayscale 0.2; view 1 blur 1.0; view 2 blur 0.1 and solarize 0.2.
* ``supervised``: RandomResizedCrop(0.08-1) and flip.

The blur kernel is about 10 % of the image side (23 px at 224, as BYOL), odd, at least 3; sigma 0.1-2.0.
Solarize inverts pixels >= 128 (0.5 of the range), as BYOL does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViewSpec:
    """How one view is made from a decoded RGB image."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def blur_kernel(self) -> int:
        k = max(3, int(round(0.1 * self.size)))
        return k if k % 2 == 1 else k + 1


def two_views(recipe: str, size: int) -> tuple[ViewSpec, ViewSpec]:
    """The named recipe's pair of view specs at image side ``size``."""
    if recipe == "rela":
        v = ViewSpec(size, scale=(0.5, 1.0), jitter=(0.8, 0.8, 0.8, 0.2))
        return v, v
    if recipe == "byol":
        return (ViewSpec(size, blur_p=1.0), ViewSpec(size, blur_p=0.1, solarize_p=0.2))
    if recipe == "simclr":
        v = ViewSpec(size, jitter=(0.8, 0.8, 0.8, 0.2), blur_p=0.5)
        return v, v
    if recipe == "dino":
        return (ViewSpec(size, scale=(0.4, 1.0), blur_p=1.0),
                ViewSpec(size, scale=(0.4, 1.0), blur_p=0.1, solarize_p=0.2))
    if recipe == "supervised":
        v = ViewSpec(size, jitter=(0.0, 0.0, 0.0, 0.0), jitter_p=0.0, gray_p=0.0)
        return v, v
    raise ValueError(f"unknown augmentation recipe {recipe!r}")


def build_torchvision(spec: ViewSpec):
    """A torchvision transforms-v2 pipeline for ``spec``: PIL image / HWC uint8 array -> normalised float CHW."""
    from torchvision.transforms import v2

    ops: list = [v2.ToImage(), v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio, antialias=True)]
    if spec.flip_p > 0:
        ops.append(v2.RandomHorizontalFlip(spec.flip_p))
    if spec.jitter_p > 0 and any(spec.jitter):
        b, c, s, h = spec.jitter
        ops.append(v2.RandomApply([v2.ColorJitter(b, c, s, h)], p=spec.jitter_p))
    if spec.gray_p > 0:
        ops.append(v2.RandomGrayscale(spec.gray_p))
    if spec.blur_p > 0:
        blur = v2.GaussianBlur(spec.blur_kernel, sigma=spec.blur_sigma)
        ops.append(blur if spec.blur_p >= 1 else v2.RandomApply([blur], p=spec.blur_p))
    if spec.solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=spec.solarize_p))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)]
    return v2.Compose(ops)


def eval_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The deterministic transform (probe, feature extraction): shorter side to ``size``, centre crop, normalise."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.ToImage(),
        v2.Resize(size, antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


# ----------------------------------------------------------------------------------------------------
# The fast path: per-sample geometry on the loader workers, batched photometric ops on the device
# ----------------------------------------------------------------------------------------------------
def sample_crop(rng, height: int, width: int, scale: tuple[float, float],
                ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """RandomResizedCrop's parameters ``(top, left, h, w)`` (torchvision's algorithm) from ``random.Random``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_flip(img: torch.Tensor, spec: ViewSpec, rng) -> torch.Tensor:
    """The geometric part of a view: random resized crop to ``spec.size`` and a random horizontal flip.

    ``img``: uint8 (3, H, W) tensor; returns uint8 (3, S, S). ``rng`` is a ``random.Random``.
    """
    from torchvision.transforms.v2 import functional as TF

    top, left, h, w = sample_crop(rng, img.shape[-2], img.shape[-1], spec.scale, spec.ratio)
    out = TF.resized_crop(img, top, left, h, w, [spec.size, spec.size], antialias=True)
    if rng.random() < spec.flip_p:
        out = out.flip(-1)
    return out


_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma, as torchvision."""
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _per(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def adjust_brightness(x, f):
    return (x * _per(f)).clamp_(0, 1)


def adjust_contrast(x, f):
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return (_per(f) * x + (1 - _per(f)) * mean).clamp_(0, 1)


def adjust_saturation(x, f):
    return (_per(f) * x + (1 - _per(f)) * grayscale(x)).clamp_(0, 1)


def _rgb2hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv2rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int32) % 6
    p = (v * (1.0 - s)).clamp_(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp_(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp_(0.0, 1.0)
    mask = (i.unsqueeze(1) == torch.arange(6, device=i.device).view(-1, 1, 1)).to(x.dtype)  # (B, 6, H, W)
    a1 = torch.stack((v, q, p, p, t, v), dim=1)
    a2 = torch.stack((t, v, v, q, p, p), dim=1)
    a3 = torch.stack((p, p, t, v, v, q), dim=1)
    return torch.stack([(mask * a).sum(1) for a in (a1, a2, a3)], dim=1)


def adjust_hue(x, f):
    hsv = _rgb2hsv(x)
    hsv[:, 0] = torch.remainder(hsv[:, 0] + f.view(-1, 1, 1), 1.0)
    return _hsv2rgb(hsv)


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample sigma, reflect padding, as torchvision's ``gaussian_blur`` (separable)."""
    b, c, h, w = x.shape
    lim = (kernel - 1) / (2.0 * math.sqrt(2.0))
    pos = torch.linspace(-lim, lim, kernel, device=x.device, dtype=x.dtype)
    k1 = torch.softmax(-(pos.view(1, -1) / sigma.view(-1, 1).to(x.dtype)).pow(2), dim=1)  # (B, k)
    k1 = k1.repeat_interleave(c, dim=0)  # (B*C, k)
    pad = kernel // 2
    y = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, k1.view(b * c, 1, 1, kernel), groups=b * c)
    y = F.conv2d(y, k1.view(b * c, 1, kernel, 1), groups=b * c)
    return y.view(b, c, h, w)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


class BatchPhotometric:
    """The photometric part of a view, batched on the batch's device: colour jitter (random order per
    sample, as torchvision), grayscale, blur, solarize, normalise. uint8 (B, 3, S, S) -> float32.

    Random parameters come from a CPU ``torch.Generator`` (so they do not depend on the device).
    """

    def __init__(self, spec: ViewSpec) -> None:
        self.spec = spec

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        spec, b, dev = self.spec, x.shape[0], x.device
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

        def uniform(lo, hi, n):
            return (torch.rand(n, generator=generator, dtype=torch.float64) * (hi - lo) + lo).float().to(dev)

        def coin(p):
            return torch.rand(b, generator=generator) < p

        if spec.jitter_p > 0 and any(spec.jitter):
            on = coin(spec.jitter_p)
            order = torch.argsort(torch.rand(b, 4, generator=generator), dim=1)
            bj, cj, sj, hj = spec.jitter
            factors = (uniform(max(0.0, 1 - bj), 1 + bj, b), uniform(max(0.0, 1 - cj), 1 + cj, b),
                       uniform(max(0.0, 1 - sj), 1 + sj, b), uniform(-hj, hj, b))
            active = [j for j, v in enumerate(spec.jitter) if v > 0]
            if bool(on.any()):
                sel = on.nonzero().view(-1).to(dev)
                y = x.index_select(0, sel)
                for slot in range(4):
                    for op in active:
                        m = (order[on, slot] == op).to(dev)
                        if bool(m.any()):
                            rows = m.nonzero().view(-1)
                            y[rows] = _JITTER_OPS[op](y[rows], factors[op].index_select(0, sel[rows]))
                x = x.index_copy(0, sel, y)
        if spec.gray_p > 0:
            m = coin(spec.gray_p).to(dev).view(-1, 1, 1, 1)
            x = torch.where(m, grayscale(x).expand_as(x), x)
        if spec.blur_p > 0:
            m = coin(spec.blur_p)
            sigma = uniform(spec.blur_sigma[0], spec.blur_sigma[1], b)
            if bool(m.any()):
                sel = m.nonzero().view(-1).to(dev)
                x = x.index_copy(0, sel, gaussian_blur(x.index_select(0, sel), spec.blur_kernel, sigma[sel]))
        if spec.solarize_p > 0:
            m = coin(spec.solarize_p).to(dev).view(-1, 1, 1, 1)
            x = torch.where(m & (x >= 128.0 / 255.0), 1.0 - x, x)
        mean = torch.tensor(spec.mean, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(spec.std, device=dev).view(1, 3, 1, 1)
        return (x - mean) / std
