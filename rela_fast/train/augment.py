"""Augmentations as data: one :class:`ViewSpec` per view, turned into ops once, run by three backends.

:func:`view_ops` is the one place where a recipe becomes an ordered list of ops (crop, flip, colour
jitter, grayscale, blur, solarize, normalise) with their parameters. Each backend maps those ops to its
own primitives, so the backends cannot drift apart:

* :func:`build_torchvision`: torchvision transforms-v2, one image at a time (the reference);
* :class:`BatchViews`: whole uint8 batches as tensors (crop + flip through one ``grid_sample`` with
  torchvision's box algorithm, then :class:`BatchPhotometric`); the fast path for data held in memory;
* the DALI loader (:mod:`rela_fast.train.loader`), the same ops as DALI operators.

``tests/test_augment_agreement.py`` checks statistically that the three draw the same parameters and
produce the same output statistics on fixed images.

Recipes (:func:`two_views`):

* ``rela``: the milder ReLA phase-1 augmentation (docs/ALGORITHM.md): RandomResizedCrop(0.5-1), flip, colour
  jitter (0.8, 0.8, 0.8, 0.2) with p = 0.8, grayscale p = 0.2, ImageNet normalisation; same for both views.
* ``byol``: BYOL's asymmetric pair: RandomResizedCrop(0.08-1), flip, jitter (0.4, 0.4, 0.2, 0.1) p = 0.8,
  grayscale 0.2; view 1 blur p = 1.0, no solarize; view 2 blur p = 0.1, solarize p = 0.2.
* ``simclr``: RandomResizedCrop(0.08-1), flip, jitter (0.8, 0.8, 0.8, 0.2) p = 0.8, grayscale 0.2, blur p = 0.5.
* ``dino``: DINO's two *global* crops only (no local multi-crop): RandomResizedCrop(0.4-1), flip, jitter
  (0.4, 0.4, 0.2, 0.1) p = 0.8, grayscale 0.2; view 1 blur 1.0; view 2 blur 0.1 and solarize 0.2.
* ``supervised``: RandomResizedCrop(0.08-1) and flip.

Blur follows the reference semantics (PIL / torchvision ``GaussianBlur``): sigma (0.1-2.0) is in pixels
at every image size, and the kernel spans +-3 sigma_max (13 taps), capped where reflect padding allows.
Solarize inverts pixels >= 128 of 255. Grayscale uses torchvision's weights (0.2989, 0.587, 0.114).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from rela_fast.constants import IMAGENET_MEAN, IMAGENET_STD

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
SOLARIZE_THRESHOLD = 128  # of 255, as BYOL and torchvision's RandomSolarize(128)

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "BatchPhotometric", "BatchViews", "ViewSpec", "build_torchvision", "crop_flip",
    "eval_transform", "sample_crop", "two_views", "view_ops",
]


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
        """Odd kernel covering +-3 sigma_max pixels (sigma is in pixels at every size, as PIL and torchvision),
        at most ``2 size - 1`` so reflect padding stays valid."""
        k = 2 * math.ceil(3 * self.blur_sigma[1]) + 1
        return max(3, min(k, 2 * self.size - 1))


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


# ----------------------------------------------------------------------------------------------------
# the recipe as ops (the one ViewSpec -> ops implementation)
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Crop:
    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]


@dataclass(frozen=True)
class Flip:
    p: float


@dataclass(frozen=True)
class Jitter:
    """Colour jitter: factors drawn from [max(0, 1-b), 1+b] etc., hue from [-h, h], applied in a random order."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    p: float

    def ranges(self) -> tuple[tuple[float, float], ...]:
        b, c, s, h = self.brightness, self.contrast, self.saturation, self.hue
        return (max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s), (-h, h)


@dataclass(frozen=True)
class Gray:
    p: float


@dataclass(frozen=True)
class Blur:
    kernel: int
    sigma: tuple[float, float]
    p: float


@dataclass(frozen=True)
class Solarize:
    threshold: int  # of 255
    p: float


@dataclass(frozen=True)
class Normalize:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def view_ops(spec: ViewSpec) -> tuple:
    """The ordered ops of one view (inactive ones left out). Every backend runs exactly this list."""
    ops: list = [Crop(spec.size, tuple(spec.scale), tuple(spec.ratio))]
    if spec.flip_p > 0:
        ops.append(Flip(spec.flip_p))
    if spec.jitter_p > 0 and any(spec.jitter):
        ops.append(Jitter(*spec.jitter, p=spec.jitter_p))
    if spec.gray_p > 0:
        ops.append(Gray(spec.gray_p))
    if spec.blur_p > 0:
        ops.append(Blur(spec.blur_kernel, tuple(spec.blur_sigma), spec.blur_p))
    if spec.solarize_p > 0:
        ops.append(Solarize(SOLARIZE_THRESHOLD, spec.solarize_p))
    ops.append(Normalize(tuple(spec.mean), tuple(spec.std)))
    return tuple(ops)


# ----------------------------------------------------------------------------------------------------
# backend 1: torchvision, per sample
# ----------------------------------------------------------------------------------------------------
def _torchvision_op(op):
    from torchvision.transforms import v2

    if isinstance(op, Crop):
        return v2.RandomResizedCrop(op.size, scale=op.scale, ratio=op.ratio, antialias=True)
    if isinstance(op, Flip):
        return v2.RandomHorizontalFlip(op.p)
    if isinstance(op, Jitter):
        jitter = v2.ColorJitter(op.brightness, op.contrast, op.saturation, op.hue)
        return jitter if op.p >= 1 else v2.RandomApply([jitter], p=op.p)
    if isinstance(op, Gray):
        return v2.RandomGrayscale(op.p)
    if isinstance(op, Blur):
        blur = v2.GaussianBlur(op.kernel, sigma=op.sigma)
        return blur if op.p >= 1 else v2.RandomApply([blur], p=op.p)
    if isinstance(op, Solarize):
        return v2.RandomSolarize(threshold=op.threshold, p=op.p)
    if isinstance(op, Normalize):
        return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(op.mean, op.std)])
    raise TypeError(f"unknown op {op!r}")


def build_torchvision(spec: ViewSpec):
    """A torchvision transforms-v2 pipeline for ``spec``: PIL image / uint8 CHW tensor -> normalised float CHW."""
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), *(_torchvision_op(op) for op in view_ops(spec))])


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
# geometry per sample (the DataLoader path: crop + flip on the workers, photometric batched afterwards)
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
    return _fallback_box(height, width, ratio)


def _fallback_box(height: int, width: int, ratio) -> tuple[int, int, int, int]:
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


# ----------------------------------------------------------------------------------------------------
# batched tensor ops (each equals torchvision's functional op; tested against it)
# ----------------------------------------------------------------------------------------------------
def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma, as torchvision. A (B, 1, H, W) batch stands for three equal
    channels: the same sum over the same value three times, so it is bit-identical to the 3-channel form."""
    r, g, b = x.unbind(1) if x.shape[1] == 3 else (x[:, 0],) * 3
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


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
    gray = x.shape[1] == 1 or ((x[:, 0] == x[:, 1]).all() and (x[:, 1] == x[:, 2]).all())
    if gray:  # hue is exactly the identity on gray pixels (s = 0): skip the HSV round trip
        return x
    hsv = _rgb2hsv(x)
    hsv[:, 0] = torch.remainder(hsv[:, 0] + f.view(-1, 1, 1), 1.0)
    return _hsv2rgb(hsv)


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample sigma (pixels), reflect padding, as torchvision's ``gaussian_blur`` (separable)."""
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


class _Draw:
    """Random numbers for one batch from a CPU generator (so they do not depend on the device)."""

    def __init__(self, generator: torch.Generator, n: int, device: torch.device) -> None:
        self.gen, self.n, self.device = generator, n, device

    def uniform(self, lo: float, hi: float, n: int | None = None) -> torch.Tensor:
        u = torch.rand(n or self.n, generator=self.gen, dtype=torch.float64)
        return (u * (hi - lo) + lo).float().to(self.device)

    def coin(self, p: float) -> torch.Tensor:
        return (torch.rand(self.n, generator=self.gen) < p).to(self.device)


def _jitter(x: torch.Tensor, op: Jitter, draw: _Draw) -> torch.Tensor:
    """Colour jitter on the rows whose coin came up, each row with its own random order of the four ops."""
    b = x.shape[0]
    on = draw.coin(op.p).cpu()
    order = torch.argsort(torch.rand(b, 4, generator=draw.gen), dim=1)
    factors = [draw.uniform(lo, hi) for lo, hi in op.ranges()]
    active = [j for j, v in enumerate((op.brightness, op.contrast, op.saturation, op.hue)) if v > 0]
    if x.shape[1] == 1:  # one channel stands for three equal ones, where hue is the identity
        active = [j for j in active if _JITTER_OPS[j] is not adjust_hue]
    if not bool(on.any()):
        return x
    rows_on = on.nonzero().view(-1)
    slots = order[rows_on]  # (n, 4): op number per slot of each jittered row
    held = torch.arange(len(rows_on))  # which jittered row each row of y holds
    y = None
    for slot in range(4):
        # hold the rows grouped by this slot's op (stable), so each op runs on one contiguous slice of y
        group = torch.argsort(slots[:, slot], stable=True)
        if y is None:
            y = x.index_select(0, rows_on.index_select(0, group).to(x.device))
        else:
            y = y.index_select(0, torch.argsort(held).index_select(0, group).to(x.device))
        held = group
        ends = torch.bincount(slots[:, slot], minlength=4).cumsum(0).tolist()
        for j in active:
            lo, hi = (ends[j - 1] if j else 0), ends[j]
            if hi > lo:
                f = factors[j].index_select(0, rows_on.index_select(0, held[lo:hi]).to(factors[j].device))
                y[lo:hi] = _JITTER_OPS[j](y[lo:hi], f)
    return x.index_copy(0, rows_on.index_select(0, held).to(x.device), y)


def _photometric(x: torch.Tensor, op, draw: _Draw) -> torch.Tensor:
    if isinstance(op, Jitter):
        return _jitter(x, op, draw)
    if isinstance(op, Gray):  # luma on the chosen rows only (p = 0.2 in every recipe)
        m = draw.coin(op.p)
        if not bool(m.any()):
            return x
        sel = m.nonzero().view(-1)
        return x.index_copy(0, sel, grayscale(x.index_select(0, sel)).expand(-1, x.shape[1], -1, -1))
    if isinstance(op, Blur):
        m = draw.coin(op.p)
        sigma = draw.uniform(op.sigma[0], op.sigma[1])
        if not bool(m.any()):
            return x
        if bool(m.all()):  # p = 1 (BYOL's first view): no gather and scatter of the whole batch
            return gaussian_blur(x, op.kernel, sigma)
        sel = m.nonzero().view(-1)
        return x.index_copy(0, sel, gaussian_blur(x.index_select(0, sel), op.kernel, sigma[sel]))
    if isinstance(op, Solarize):
        m = draw.coin(op.p).view(-1, 1, 1, 1)
        return torch.where(m & (x >= op.threshold / 255.0), 1.0 - x, x)
    if isinstance(op, Normalize):
        mean = torch.tensor(op.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(op.std, device=x.device).view(1, 3, 1, 1)
        return torch.sub(x, mean).div_(std)  # (B, 1, ...) broadcasts to three channels here
    raise TypeError(f"not a photometric op: {op!r}")


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def one_channel(x: torch.Tensor) -> torch.Tensor:
    """A (B, 3, H, W) batch whose three channels are equal as its first channel (B, 1, H, W); else ``x``.

    Gray images (Fashion-MNIST, MNIST, gray photos decoded as RGB) stay gray through every photometric op:
    brightness, contrast and saturation act on each channel alike, hue and grayscale leave them equal, blur
    and solarize are per channel. So the ops run on one channel, a third of the work, and normalisation (per
    channel) broadcasts it back to three: the same numbers, bit for bit, as running on all three.
    """
    if x.shape[1] == 3 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2]):
        return x[:, :1]
    return x


class BatchPhotometric:
    """The photometric ops of a view on a batch of already cropped uint8 (B, C, S, S) -> normalised float32."""

    def __init__(self, spec: ViewSpec) -> None:
        self.spec = spec
        self.ops = tuple(op for op in view_ops(spec) if not isinstance(op, Crop | Flip))

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = one_channel(_as_float(x))
        draw = _Draw(generator, x.shape[0], x.device)
        for op in self.ops:
            x = _photometric(x, op, draw)
        return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def batch_boxes(gen: torch.Generator, n: int, height: int, width: int, scale, ratio) -> torch.Tensor:
    """RandomResizedCrop boxes ``(top, left, h, w)`` for ``n`` samples, torchvision's algorithm vectorised:
    up to 10 tries of (area, log-aspect), integer sides by rounding, else the ratio-clamped centre crop."""
    area = height * width
    target = area * (torch.rand(n, 10, generator=gen, dtype=torch.float64) * (scale[1] - scale[0]) + scale[0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.rand(n, 10, generator=gen, dtype=torch.float64) * (hi - lo) + lo)
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.long().argmax(1), torch.full((n,), -1))
    ft, fl, fh, fw = _fallback_box(height, width, ratio)
    pick = first.clamp(min=0).view(-1, 1)
    hh = torch.where(first >= 0, h.gather(1, pick).view(-1), torch.full((n,), fh))
    ww = torch.where(first >= 0, w.gather(1, pick).view(-1), torch.full((n,), fw))
    u = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    top = torch.where(first >= 0, (u[:, 0] * (height - hh + 1)).floor().long(), torch.full((n,), ft))
    left = torch.where(first >= 0, (u[:, 1] * (width - ww + 1)).floor().long(), torch.full((n,), fl))
    return torch.stack([top, left, hh, ww], 1)


def _source_coords(start: torch.Tensor, length: torch.Tensor, out: int) -> torch.Tensor:
    """Pixel-centre source coordinates of ``out`` samples resizing ``[start, start + length)`` (half-pixel
    convention, clamped to the crop as resizing a cropped image does)."""
    pos = start[:, None] + (torch.arange(out, dtype=torch.float32) + 0.5) * length[:, None] / out - 0.5
    return torch.minimum(torch.maximum(pos, start[:, None]), (start + length - 1)[:, None])


def batch_crop_flip(x: torch.Tensor, crop: Crop, flip_p: float, gen: torch.Generator) -> torch.Tensor:
    """Random resized crop of float (B, C, H, W) to S x S and a random flip, in one ``grid_sample``: bilinear
    on exactly torchvision's ``resized_crop`` sampling grid (no antialiasing: identical for crops no larger
    than S, as for small images)."""
    b, _, height, width = x.shape
    top, left, h, w = batch_boxes(gen, b, height, width, crop.scale, crop.ratio).to(torch.float32).unbind(1)
    flip = torch.rand(b, generator=gen) < flip_p
    xs = _source_coords(left, w, crop.size)
    xs = torch.where(flip[:, None], xs.flip(1), xs)
    ys = _source_coords(top, h, crop.size)
    s = crop.size
    grid = torch.stack([((2 * xs + 1) / width - 1)[:, None, :].expand(b, s, s),
                        ((2 * ys + 1) / height - 1)[:, :, None].expand(b, s, s)], dim=-1)
    return F.grid_sample(x, grid.to(x.device), mode="bilinear", padding_mode="border", align_corners=False)


class BatchViews:
    """One whole view of a uint8 (B, C, H, W) batch, as tensors: crop + flip, then the photometric ops."""

    def __init__(self, spec: ViewSpec) -> None:
        ops = view_ops(spec)
        self.crop = ops[0]
        self.flip_p = next((op.p for op in ops if isinstance(op, Flip)), 0.0)
        self.photometric = BatchPhotometric(spec)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = batch_crop_flip(one_channel(images).float().div_(255.0), self.crop, self.flip_p, generator)
        return self.photometric(x, generator)
