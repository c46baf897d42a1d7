"""Robust decoding of one image to RGB, and the observer transform (shorter side to S, centre crop S x S).

This is the reference path every decoder backend is measured against, and the fallback the fast backends
use for anything they cannot take (non-JPEG files, CMYK, arrays, and files that made a batch fail).

Conventions (documented because users' data is messy):

* Grayscale, palette, CMYK, YCbCr, LAB and 1-bit images are converted to RGB with Pillow's conversions.
* Alpha (RGBA, LA, palette with transparency) is DROPPED, not composited: the colour channels are kept as
  stored. This is what ``torchvision.datasets.ImageFolder`` (``img.convert("RGB")``, the authors' loader)
  and DALI's RGB decoding do, so every backend agrees.
* 16-bit images (``I;16*``, ``I``) are scaled to 8 bits with rounding, ``(v + 128) // 257``; 32-bit
  float images (``F``) are clipped to [0, 255]. (Pillow's own conversion would clip 16-bit values at 255.)
* EXIF orientation is applied (the image comes out upright), as DALI and nvJPEG do with their
  orientation options on.
* Animated files give their first frame.
* A truncated, zero-byte or non-image file raises :class:`ImageDecodeError` with a short reason; this
  relies on Pillow's default ``ImageFile.LOAD_TRUNCATED_IMAGES = False``.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageDecodeError(ValueError):
    """One file or array could not be turned into an image; ``reason`` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def is_image_name(name: str) -> bool:
    """True for the extensions every source accepts: jpg, jpeg, png, webp, bmp (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def observer_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """``(new_w, new_h, left, top)`` of "resize the shorter side to S, centre-crop S x S".

    Exactly torchvision's arithmetic (``Resize(S)``: the long side is ``int(S * long / short)``;
    ``CenterCrop(S)``: the offset is ``int(round((new - S) / 2))``), so the PIL backend reproduces the
    authors' transform bit for bit and the other backends resize to the same sizes and crop the same window.
    """
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    return new_w, new_h, int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))


def load_rgb(item: bytes | bytearray | memoryview | np.ndarray) -> Image.Image:
    """Decode encoded file bytes, or wrap a uint8 HxW / HxWxC array, into an upright RGB Pillow image.

    Raises :class:`ImageDecodeError` for empty, truncated or non-image input (see the module docstring
    for how unusual modes become RGB).
    """
    image = _load_l_or_rgb(item)
    return image if image.mode == "RGB" else image.convert("RGB")


def observe(image: Image.Image, size: int) -> np.ndarray:
    """The observer transform on an image (mode L or RGB): a uint8 array (S, S, 3).

    Bilinear resize with Pillow (antialiased when shrinking, as torchvision's ``Resize`` on PIL images),
    then the centre crop; gray images are resized once and replicated to three channels.
    """
    new_w, new_h, left, top = observer_geometry(image.width, image.height, size)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.BILINEAR)
    out = np.asarray(image.crop((left, top, left + size, top + size)))
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return out


def decode_observed(item: bytes | bytearray | memoryview | np.ndarray, size: int) -> np.ndarray:
    """``observe(load_rgb(item), size)`` without the gray-to-RGB conversion before the resize."""
    return observe(_load_l_or_rgb(item), size)


def peek_jpeg(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` after EXIF orientation if ``data`` is a plain JPEG a hardware/DALI decoder can take.

    "Plain" means: Pillow identifies it as JPEG (not MPO, not a PNG named .jpg), its mode is RGB or L
    (not CMYK), and it ends with the EOI marker, so it is almost certainly not truncated. Anything else
    returns None and goes through :func:`decode_observed`, which handles it or names what is wrong. This
    is the cheap validation that keeps one bad file from aborting a whole DALI / nvJPEG batch.
    """
    if len(data) < 4 or data[:2] != b"\xff\xd8" or data.rstrip(b"\x00\r\n ")[-2:] != b"\xff\xd9":
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return None
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1) if "exif" in image.info else 1
    except Exception:
        return None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return width, height


def _load_l_or_rgb(item: bytes | bytearray | memoryview | np.ndarray) -> Image.Image:
    if isinstance(item, np.ndarray):
        return _array_image(item)
    data = bytes(item) if not isinstance(item, bytes) else item
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format (expected JPEG, PNG, WebP or BMP)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from None
    except Exception as exc:
        what = "truncated image" if _looks_truncated(exc) else "corrupt image header"
        raise ImageDecodeError(f"{what} ({type(exc).__name__}: {exc})") from None
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from None
    except Exception as exc:
        what = "truncated image data" if _looks_truncated(exc) else "corrupt image data"
        raise ImageDecodeError(f"{what} ({type(exc).__name__}: {exc})") from None
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone relaxed Pillow globally: keep our promise anyway
        _check_complete(data, image)
    with contextlib.suppress(Exception):  # an unreadable EXIF block: keep the pixels as stored
        image = ImageOps.exif_transpose(image)
    return _to_l_or_rgb(image)


def _looks_truncated(exc: Exception) -> bool:
    return isinstance(exc, EOFError) or "truncated" in str(exc).lower()


def _check_complete(data: bytes, image: Image.Image) -> None:
    if image.format == "JPEG" and data.rstrip(b"\x00\r\n ")[-2:] != b"\xff\xd9":
        raise ImageDecodeError("truncated image data (no JPEG end-of-image marker)")


def _to_l_or_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("RGB", "L"):
        return image
    if mode in _HIGH_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        return Image.fromarray(((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8), "L")
    if mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).round().astype(np.uint8), "L")
    if mode == "1":
        return image.convert("L")
    if mode in ("LA", "La"):
        return image.convert("L")  # drops alpha
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA") if has_alpha else image.convert("RGB")
    # RGBA / RGBa / RGBX drop alpha; CMYK, YCbCr, LAB, HSV convert with Pillow's colour conversions.
    try:
        return image.convert("RGB")
    except Exception as exc:
        raise ImageDecodeError(f"unsupported image mode {mode!r} ({exc})") from None


def _array_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageDecodeError(f"array of shape {tuple(array.shape)} is not an image (HxW, HxWx1, HxWx3, HxWx4)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageDecodeError(f"array of shape {tuple(array.shape)} is empty")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageDecodeError(f"array dtype {array.dtype} is not supported (uint8 expected)")
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]  # drop alpha, as for files
    return Image.fromarray(np.ascontiguousarray(array), "L" if array.ndim == 2 else "RGB")
