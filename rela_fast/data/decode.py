"""Decoder backends: rows of a source -> uint8 (n, 3, S, S) batches with their row indices.

Every backend applies the observer transform (shorter side to S, bilinear with antialias, centre crop
S x S, at exactly torchvision's sizes and offsets: :func:`rela_fast.data.images.observer_geometry`) and
leaves normalisation to the encoder.

* ``pil``: Pillow decode + resize on a thread pool. Bit-identical to the authors' transform
  (``torchvision.transforms.Resize(S) + CenterCrop(S)`` on Pillow images): the reference.
* ``dali-cpu``: DALI ``fn.decoders.image(device="cpu")`` (``device_id=None``), then torch's vectorised
  uint8 antialiased resize (:func:`observe_tensor`) on the thread pool.
* ``torchvision``: ``torchvision.io.decode_jpeg`` on the CPU, then the same resize.
* ``dali``: DALI with ``device="mixed"`` (GPU hardware JPEG decoder); resize and crop in the DALI pipeline.
* ``nvjpeg``: ``torchvision.io.decode_jpeg(device="cuda")``, then :func:`observe_tensor` on the GPU.

How far they may differ from ``pil`` (tests/test_decode.py, scikit-image photos, S = 32 ... 224): mean
|difference| over a set <= 0.5 grey levels, <= 1.0 for any single image, <= 0.5 % of pixels off by more
than 8. Measured on the CPU: DALI and torchvision decode JPEGs bit-identically to Pillow (all use
libjpeg-turbo with fancy upsampling); the torch resize is within 1 level of Pillow's (mean 0.001);
DALI's own resize (used by ``dali``) differs more: mean 0.11-0.29, worst image 0.9 at S = 17.
The GPU backends' bounds are the same, asserted by GPU-marked tests.

Robustness: DALI and nvJPEG abort a whole batch on one bad file, so each file is checked cheaply first
(:func:`~rela_fast.data.images.peek_jpeg`: a plain RGB/gray JPEG ending with its end-of-image marker);
everything else (PNG, WebP, BMP, CMYK, truncated or non-image data) goes through the Pillow path, which
decodes it or names the reason. If a batch still fails, all of its JPEGs are decoded with Pillow instead:
the good ones are kept (with Pillow's pixels), the bad ones reported. Arrays (IDX rows, in-memory images)
never go through a JPEG decoder: every backend resizes them with Pillow, so all backends agree exactly.
Damaged JPEGs that still end with their marker may be accepted by one library and rejected by another
(libjpeg warnings vs errors): which rows are skipped can then differ between backends.

Batches are produced in background threads (``prefetch`` batches ahead, already on the output device)
and come out in submission order; each carries its row indices, so a consumer places rows by index.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rela_fast.data.images import ImageDecodeError, decode_observed, observer_geometry, peek_jpeg
from rela_fast.data.sources import Source
from rela_fast.environment import dali_available, resolve_device
from rela_fast.errors import UserError

DECODER_KINDS = ("auto", "dali", "dali-cpu", "nvjpeg", "torchvision", "pil")


@dataclass
class DecodedBatch:
    """``images`` uint8 (n, 3, S, S) on the decoder's device; ``indices`` int64 (n,) source rows (CPU), aligned.

    ``failures`` lists the ``(row, reason)`` pairs of this batch's rows that could not be decoded (skipped).
    """

    images: torch.Tensor
    indices: torch.Tensor
    failures: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class _Result:
    images: np.ndarray | torch.Tensor  # (len(rows), 3, S, S); rows with failures hold garbage
    rows: np.ndarray
    failed: dict[int, str]  # position in rows -> reason


def default_threads() -> int:
    """The CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class Decoder:
    """Base class: ``iterate`` schedules batches; subclasses implement ``_decode_rows``."""

    name = "base"

    def __init__(self, size: int, device: str | torch.device = "cpu", num_threads: int | None = None,
                 prefetch: int = 2):
        if int(size) < 1:
            raise UserError(f"size={size}: the image size must be a positive integer")
        self.size = int(size)
        self.device = _check_device(device)
        self.num_threads = int(num_threads) if num_threads else default_threads()
        self.prefetch = max(1, int(prefetch))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} size={self.size} device={self.device} threads={self.num_threads}>"

    def iterate(
        self,
        src: Source,
        indices: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        batch_size: int = 256,
        on_error: str = "skip",
    ) -> Iterator[DecodedBatch]:
        """Decode ``indices`` (default: every row) of ``src`` in batches of ``batch_size`` rows, in order.

        ``on_error="skip"`` reports undecodable rows in ``batch.failures`` and leaves them out of the batch;
        ``on_error="fail"`` raises :class:`UserError` naming the first such file and its reason.
        """
        if on_error not in ("skip", "fail"):
            raise UserError(f"on_error={on_error!r}: expected 'skip' or 'fail'")
        if int(batch_size) < 1:
            raise UserError(f"batch_size={batch_size}: must be at least 1")
        rows = _check_rows(indices, len(src))
        chunks = [rows[k : k + int(batch_size)] for k in range(0, len(rows), int(batch_size))]
        pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix=f"rela-{self.name}")
        batches = ThreadPoolExecutor(self.prefetch, thread_name_prefix=f"rela-{self.name}-batch")
        pending: deque[Future] = deque()
        try:
            todo = iter(chunks)
            for chunk in todo:
                pending.append(batches.submit(self._batch, src, chunk, int(batch_size), pool))
                if len(pending) >= self.prefetch:
                    break
            while pending:
                batch = pending.popleft().result()
                if batch.failures and on_error == "fail":
                    row, reason = batch.failures[0]
                    raise UserError(
                        f"{src.full_path(row)}: cannot decode ({reason}); fix or remove it, or use on_error='skip'"
                    )
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(batches.submit(self._batch, src, nxt, int(batch_size), pool))
                yield batch
        finally:
            for fut in pending:
                fut.cancel()
            batches.shutdown(wait=True, cancel_futures=True)
            pool.shutdown(wait=True, cancel_futures=True)
            self._close()

    def _batch(self, src: Source, rows: np.ndarray, batch_size: int, pool: ThreadPoolExecutor) -> DecodedBatch:
        """Decode one batch and deliver it (failed rows dropped, on the output device): runs in a batch thread."""
        result = self._decode_rows(src, rows, batch_size, pool)
        failures = [(int(result.rows[j]), reason) for j, reason in sorted(result.failed.items())]
        images = result.images
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        keep = np.ones(len(result.rows), dtype=bool)
        keep[list(result.failed)] = False
        if not keep.all():
            images = images[torch.from_numpy(keep).to(images.device)]
        if images.device != self.device:
            if self.device.type == "cuda":
                images = images.pin_memory().to(self.device, non_blocking=True)
            else:
                images = images.to(self.device)
        indices = torch.from_numpy(result.rows[keep].astype(np.int64))
        return DecodedBatch(images.contiguous(), indices, failures)

    def _decode_rows(self, src: Source, rows: np.ndarray, batch_size: int, pool: ThreadPoolExecutor) -> _Result:
        raise NotImplementedError

    def _close(self) -> None:
        """Release per-iteration resources (pipelines)."""

    # shared Pillow path: used by `pil` for everything and by the others for what they cannot take
    def _pil_into(self, src: Source, rows: np.ndarray, positions: Sequence[int], out: np.ndarray,
                  items: dict[int, Any] | None, failed: dict[int, str], pool: ThreadPoolExecutor) -> None:
        def one(j: int) -> tuple[int, str | None]:
            try:
                item = items[j] if items is not None and j in items else src.read(int(rows[j]))
                out[j] = decode_observed(item, self.size).transpose(2, 0, 1)
            except ImageDecodeError as exc:
                return j, exc.reason
            except OSError as exc:
                return j, f"cannot read file ({exc.strerror or exc})"
            except Exception as exc:  # anything else one odd file throws must not stop a million-image run
                return j, f"cannot decode ({type(exc).__name__}: {exc})"
            return j, None

        for j, reason in pool.map(one, positions):
            if reason is not None:
                failed[j] = reason

    def _read_all(self, src: Source, rows: np.ndarray, failed: dict[int, str], pool: ThreadPoolExecutor
                  ) -> dict[int, Any]:
        def one(j: int) -> tuple[int, Any]:
            try:
                return j, src.read(int(rows[j]))
            except OSError as exc:
                return j, OSError(exc.strerror or str(exc))

        items = {}
        for j, item in pool.map(one, range(len(rows))):
            if isinstance(item, OSError):
                failed[j] = f"cannot read file ({item})"
            else:
                items[j] = item
        return items


class PilDecoder(Decoder):
    """Pillow on a thread pool (Pillow releases the GIL while decoding and resizing): the reference backend."""

    name = "pil"

    def _decode_rows(self, src: Source, rows: np.ndarray, batch_size: int, pool: ThreadPoolExecutor) -> _Result:
        out = np.empty((len(rows), 3, self.size, self.size), dtype=np.uint8)
        failed: dict[int, str] = {}
        self._pil_into(src, rows, range(len(rows)), out, None, failed, pool)
        return _Result(out, rows, failed)


class _RoutedDecoder(Decoder):
    """Backends with a fast path for plain JPEGs and the Pillow path for everything else."""

    def _decode_rows(self, src: Source, rows: np.ndarray, batch_size: int, pool: ThreadPoolExecutor) -> _Result:
        failed: dict[int, str] = {}
        items = self._read_all(src, rows, failed, pool)
        fast: list[int] = []
        dims: list[tuple[int, int]] = []
        for j, item in items.items():
            if isinstance(item, bytes):
                wh = peek_jpeg(item)
                if wh is not None:
                    fast.append(j)
                    dims.append(wh)
        fast_set = set(fast)
        slow = [j for j in items if j not in fast_set]
        out = self._empty(len(rows))
        if fast:
            try:
                self._fast_into(out, fast, [items[j] for j in fast], dims, batch_size, pool)
            except Exception:  # the batch aborted on a file that passed the cheap check: find it with Pillow
                self._reset()
                slow = sorted(slow + fast)
        if slow:
            if isinstance(out, np.ndarray):
                self._pil_into(src, rows, slow, out, items, failed, pool)
            else:
                cpu = np.empty((len(rows), 3, self.size, self.size), dtype=np.uint8)
                self._pil_into(src, rows, slow, cpu, items, failed, pool)
                self._place(out, cpu, [j for j in slow if j not in failed])
        return _Result(out, rows, failed)

    def _empty(self, n: int) -> np.ndarray | torch.Tensor:
        return np.empty((n, 3, self.size, self.size), dtype=np.uint8)

    def _place(self, out: torch.Tensor, cpu: np.ndarray, positions: list[int]) -> None:
        if positions:
            index = torch.as_tensor(positions, dtype=torch.long, device=out.device)
            out[index] = torch.from_numpy(cpu[positions]).to(out.device)

    def _fast_into(self, out: Any, positions: list[int], data: list[bytes], dims: list[tuple[int, int]],
                   batch_size: int, pool: ThreadPoolExecutor) -> None:
        raise NotImplementedError

    def _reset(self) -> None:
        """Recover after a failed fast batch."""

    def _resize_into(self, out: np.ndarray, positions: list[int], images: list[torch.Tensor],
                     pool: ThreadPoolExecutor) -> None:
        """Observer-resize decoded (H, W, 3) uint8 CPU tensors into ``out[positions]`` on the thread pool."""

        def one(k: int) -> None:
            out[positions[k]] = observe_tensor(images[k].permute(2, 0, 1), self.size).numpy()

        list(pool.map(one, range(len(positions))))


def observe_tensor(image: torch.Tensor, size: int) -> torch.Tensor:
    """The observer transform on a uint8 (3, H, W) tensor (any device): a (3, S, S) view.

    ``torchvision.transforms.v2.functional.resize`` (bilinear, antialias) to the torchvision sizes, then the
    centre window: within one grey level of Pillow (tests/test_decode.py). On the CPU, pass a channels-last
    view (``hwc.permute(2, 0, 1)``): torch's uint8 antialias kernel is then vectorised, ~4x faster.
    """
    from torchvision.transforms.v2.functional import resize

    new_w, new_h, left, top = observer_geometry(image.shape[2], image.shape[1], size)
    if (new_h, new_w) != tuple(image.shape[1:]):
        image = resize(image, [new_h, new_w], antialias=True)
    return image[:, top : top + size, left : left + size]


class DaliDecoder(_RoutedDecoder):
    """DALI ``fn.decoders.image``: "cpu" (``device_id=None``, no GPU needed) or "mixed" (hardware JPEG).

    "mixed" resizes and crops in the DALI pipeline on the GPU. "cpu" decodes in DALI and resizes with
    torch's vectorised uint8 kernel on the thread pool: DALI's own CPU resize measured ~3x slower
    (2.7 vs 0.9 ms for a 500x375 image), and torch's resize is also closer to Pillow's.
    """

    def __init__(self, size: int, device: str | torch.device = "cpu", num_threads: int | None = None,
                 prefetch: int = 2, dali_device: str = "cpu"):
        super().__init__(size, device, num_threads, prefetch)
        self.dali_device = dali_device
        self.name = "dali" if dali_device == "mixed" else "dali-cpu"
        self._pipe: Any = None
        self._pipe_batch = 0
        self._lock = threading.Lock()

    def _empty(self, n: int) -> np.ndarray | torch.Tensor:
        if self.dali_device == "mixed":
            return torch.empty((n, 3, self.size, self.size), dtype=torch.uint8, device=self.device)
        return super()._empty(n)

    def _fast_into(self, out: Any, positions: list[int], data: list[bytes], dims: list[tuple[int, int]],
                   batch_size: int, pool: ThreadPoolExecutor) -> None:
        from rela_fast.data import dali

        mixed = self.dali_device == "mixed"
        with self._lock:  # one pipeline, one batch at a time; the next batch reads its files meanwhile
            if self._pipe is None or self._pipe_batch < batch_size:
                if mixed:
                    device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
                    self._pipe = dali.observer_pipeline(batch_size, self.size, self.num_threads, "mixed", device_id)
                else:
                    self._pipe = dali.decode_pipeline(batch_size, self.num_threads)
                self._pipe_batch = batch_size
            try:
                if mixed:
                    geometry = [observer_geometry(w, h, self.size) for w, h in dims]
                    decoded = dali.run_observer(self._pipe, data, geometry)
                else:
                    decoded = dali.run_decode(self._pipe, data)
            except Exception:
                self._pipe = None  # DALI invalidates a pipeline after an operator error: the next batch builds anew
                raise
        if mixed:
            out[torch.as_tensor(positions, dtype=torch.long, device=out.device)] = decoded
        else:
            self._resize_into(out, positions, [torch.from_numpy(a) for a in decoded], pool)

    def _close(self) -> None:
        with self._lock:
            self._pipe = None


class TorchJpegDecoder(_RoutedDecoder):
    """``torchvision.io.decode_jpeg`` (nvJPEG when ``jpeg_device`` is CUDA), resize on tensors, Pillow fallback.

    CUDA: one batched nvJPEG call, then :func:`observe_tensor` per image on the GPU. CPU (kind
    "torchvision"): libjpeg-turbo per image on the thread pool, then the vectorised uint8 resize.
    """

    def __init__(self, size: int, device: str | torch.device = "cuda", num_threads: int | None = None,
                 prefetch: int = 2, jpeg_device: str | torch.device = "cuda"):
        super().__init__(size, device, num_threads, prefetch)
        self.jpeg_device = _check_device(jpeg_device)
        self.name = "nvjpeg" if self.jpeg_device.type == "cuda" else "torchvision"
        # torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they still work, keep logs clean
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)

    def _empty(self, n: int) -> np.ndarray | torch.Tensor:
        if self.jpeg_device.type == "cuda":
            return torch.empty((n, 3, self.size, self.size), dtype=torch.uint8, device=self.jpeg_device)
        return super()._empty(n)

    def _fast_into(self, out: Any, positions: list[int], data: list[bytes], dims: list[tuple[int, int]],
                   batch_size: int, pool: ThreadPoolExecutor) -> None:
        from torchvision.io import ImageReadMode, decode_jpeg

        def encoded(b: bytes) -> torch.Tensor:
            return torch.frombuffer(bytearray(b), dtype=torch.uint8)

        if self.jpeg_device.type == "cuda":
            images = decode_jpeg([encoded(b) for b in data], mode=ImageReadMode.RGB, device=self.jpeg_device,
                                 apply_exif_orientation=True)
            for j, image in zip(positions, images):
                out[j] = observe_tensor(image, self.size)
            return

        def decode(b: bytes) -> torch.Tensor:
            image = decode_jpeg(encoded(b), mode=ImageReadMode.RGB, apply_exif_orientation=True)
            return image.permute(1, 2, 0).contiguous()  # HWC, for the vectorised resize

        self._resize_into(out, positions, list(pool.map(decode, data)), pool)


def make_decoder(
    kind: str = "auto",
    size: int = 224,
    device: str | torch.device = "cpu",
    num_threads: int | None = None,
    prefetch: int = 2,
) -> Decoder:
    """A decoder by name: "auto", "dali" (GPU, hardware JPEG), "dali-cpu", "nvjpeg" (GPU), "torchvision", "pil".

    ``auto``: on CUDA, DALI "mixed" if DALI is installed, else nvJPEG through torchvision, else Pillow; on
    CPU, DALI's CPU backend if installed, else torchvision's CPU JPEG decoder, else Pillow. An explicit kind
    that cannot run here raises :class:`UserError` saying why. ``device`` is where batches are delivered
    (CUDA: pinned and copied in the background); ``num_threads`` defaults to the usable cores; ``prefetch``
    is how many batches are decoded ahead.
    """
    dev = _check_device(device)
    if kind not in DECODER_KINDS:
        raise UserError(f"decoder={kind!r}: expected one of {', '.join(DECODER_KINDS)}")
    if kind == "auto":
        if dev.type == "cuda":
            kind = "dali" if dali_available() else ("nvjpeg" if _nvjpeg_available() else "pil")
        else:
            kind = "dali-cpu" if dali_available() else ("torchvision" if _torchvision_jpeg_available() else "pil")
    if kind == "pil":
        return PilDecoder(size, dev, num_threads, prefetch)
    if kind == "torchvision":
        if not _torchvision_jpeg_available():
            raise UserError("decoder='torchvision': this torchvision has no torchvision.io.decode_jpeg; use 'pil'")
        return TorchJpegDecoder(size, dev, num_threads, prefetch, jpeg_device="cpu")
    if kind in ("dali", "dali-cpu"):
        if not dali_available():
            raise UserError(
                f"decoder={kind!r}: NVIDIA DALI is not installed (pip install nvidia-dali-cuda120 or -cuda130); "
                "or use decoder='pil'"
            )
        if kind == "dali":
            if dev.type != "cuda":
                raise UserError("decoder='dali' decodes on the GPU: use device='cuda', or decoder='dali-cpu'")
            return DaliDecoder(size, dev, num_threads, prefetch, dali_device="mixed")
        return DaliDecoder(size, dev, num_threads, prefetch, dali_device="cpu")
    # nvjpeg
    if dev.type != "cuda":
        raise UserError("decoder='nvjpeg' decodes on the GPU: use device='cuda', or decoder='pil' / 'dali-cpu'")
    if not _nvjpeg_available():
        raise UserError("decoder='nvjpeg': this torchvision build cannot decode JPEGs on CUDA; use 'pil' or 'dali'")
    return TorchJpegDecoder(size, dev, num_threads, prefetch, jpeg_device=dev)


def _torchvision_jpeg_available() -> bool:
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception:
        return False
    return True


def _nvjpeg_available() -> bool:
    return torch.cuda.is_available() and _torchvision_jpeg_available()


def _check_device(device: str | torch.device) -> torch.device:
    return resolve_device(device)


def _check_rows(indices: Any, n: int) -> np.ndarray:
    if indices is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    rows = np.asarray(indices)
    if rows.size == 0:
        return np.zeros(0, dtype=np.int64)
    if rows.ndim != 1 or rows.dtype.kind not in "iu":
        raise UserError(f"indices: expected a 1-d sequence of integer row numbers, got shape {rows.shape} {rows.dtype}")
    if rows.min() < 0 or rows.max() >= n:
        raise UserError(f"indices: row numbers must lie in [0, {n}), got {rows.min()}..{rows.max()}")
    return rows.astype(np.int64)
