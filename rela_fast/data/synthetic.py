"""Generated image folders with real photographic content, for benchmarks and tests.

``make_jpeg_folder`` writes ImageNet-like JPEGs (about 500 x 375, quality 90, 4:2:0 chroma): random crops
(50-100 % of the largest window of the right aspect), rescaled and randomly flipped, of the sample photos
scikit-image ships (astronaut, coffee, cat, rocket, motorcycle, Hubble field, retina, camera, moon, ...).
Decoding them costs what decoding real photos costs (unlike noise, which JPEG compresses badly).
Needs scikit-image (a test/benchmark dependency).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from PIL import Image

_COLOUR = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
_GRAY = ("camera", "moon", "coins", "clock", "grass", "gravel", "brick")


@functools.lru_cache(maxsize=1)
def sample_photos() -> tuple[np.ndarray, ...]:
    """scikit-image's bundled photos as uint8 RGB arrays (gray ones replicated to three channels)."""
    import skimage.data as data

    photos = [getattr(data, name)() for name in _COLOUR]
    photos.append(data.stereo_motorcycle()[0])
    photos += [np.repeat(getattr(data, name)()[:, :, None], 3, axis=2) for name in _GRAY]
    return tuple(np.ascontiguousarray(p[:, :, :3]).astype(np.uint8) for p in photos)


def photo_crop(rng: np.random.Generator, size: tuple[int, int], photo: int | None = None) -> Image.Image:
    """One random crop of a sample photo, resized to ``size`` = (width, height), randomly flipped."""
    photos = sample_photos()
    src = photos[int(rng.integers(len(photos))) if photo is None else photo % len(photos)]
    h0, w0 = src.shape[:2]
    width, height = size
    max_w = min(w0, h0 * width / height)
    scale = rng.uniform(0.5, 1.0)
    cw, ch = max(1.0, max_w * scale), max(1.0, max_w * scale * height / width)
    left, top = rng.uniform(0, w0 - cw), rng.uniform(0, h0 - ch)
    image = Image.fromarray(src).resize((width, height), Image.BICUBIC, box=(left, top, left + cw, top + ch))
    return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def make_jpeg_folder(dst: str | os.PathLike, n: int, size: tuple[int, int] = (500, 375), quality: int = 90,
                     seed: int = 0, classes: int = 0) -> Path:
    """Write ``n`` JPEGs into ``dst`` (created) and return it; deterministic for a given ``seed``.

    ``classes=0``: a flat folder ``000000.jpg, ...``; ``classes=k``: sub-folders ``class_000 ... class_{k-1}``,
    image i in class ``i % k``, and each class crops its own photo (class c uses photo c mod 15), so
    classes are visually distinct while there are at most 15 of them.
    """
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(int(n)):
        if classes > 0:
            label = i % classes
            folder = dst / f"class_{label:03d}"
            folder.mkdir(exist_ok=True)
            image = photo_crop(rng, size, photo=label)
        else:
            folder = dst
            image = photo_crop(rng, size)
        image.save(folder / f"{i:06d}.jpg", "JPEG", quality=quality)
    return dst
