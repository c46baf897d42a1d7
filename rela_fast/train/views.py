"""View pipelines: where the trainer's two-view batches come from (a small protocol with three backends).

A :class:`ViewPipeline` turns ``(views, indices, epoch, phase)`` into batches ``(view1, view2, idx, labels)``
of normalised float views on the training device; ``idx`` are sample numbers (rows of the targets and the
ScoreBook), ``labels`` are -1 where the data has none. The trainer asks for one per (epoch, phase, start
position), so a pipeline holds no loop state. Pass your own object with this ``batches`` method as
``ReLATrainer(views=...)``.

* :class:`TensorViews`: the whole dataset as one uint8 tensor in memory, every op batched on whole tensors
  (:class:`~rela_fast.train.augment.BatchViews`). Chosen automatically for in-memory and IDX sources and
  for any source whose decoded images share one shape and fit in ``memory_cap`` bytes. On CPU its batches are
  made ahead in a producer thread while the model trains (:class:`~rela_fast.train.prefetch.PrefetchViews`,
  ``create_views(..., prefetch=N)``; the same views either way).
* :class:`LoaderViews`: a DataLoader over :class:`~rela_fast.train.loader.TwoViewDataset` (geometry per
  sample on the workers, photometric ops batched on the device; or full torchvision per sample).
* :class:`DaliViews`: DALI decoding and augmentation (GPU; CPU pipelines too).

Randomness is keyed by ``(seed, epoch, phase, view, first sample of the batch)``, never the global RNG, so a
resumed run sees the same views as an uninterrupted one (DALI excepted: it draws its own numbers).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from rela_fast.environment import dali_available
from rela_fast.errors import UserError
from rela_fast.train.augment import BatchViews, ViewSpec
from rela_fast.train.loader import DaliTwoViewLoader, TwoViewDataset, item_seed, make_loader, to_rgb

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
DEFAULT_MEMORY_CAP = 4 << 30  # bytes of decoded uint8 images held for the tensor path
DEFAULT_PREFETCH = 2  # batches the tensor path makes ahead on CPU (benchmarks/results/train_e2e/README.md)
KINDS = ("auto", "tensor", "torch", "dali")


@runtime_checkable
class ViewPipeline(Protocol):
    """What the trainer needs from a source of two-view batches."""

    def batches(self, views: tuple[ViewSpec, ViewSpec], indices: torch.Tensor, *, epoch: int, phase: int,
                batch_size: int) -> Iterable[Batch]:
        """Full batches over ``indices`` in order (a trailing partial batch is dropped)."""
        ...


def _labels_tensor(labels: Any, n: int) -> torch.Tensor:
    if labels is None:
        return torch.full((n,), -1, dtype=torch.int64)
    return torch.as_tensor(np.asarray(labels), dtype=torch.int64)


class TensorViews:
    """Every op batched on whole tensors over images held in memory (sample j = ``images[j]``)."""

    name = "tensor"

    def __init__(self, images: torch.Tensor, labels: Any, device: torch.device, seed: int = 0) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("TensorViews: images must be a uint8 (N, C, H, W) tensor")
        self.images, self.labels = images, _labels_tensor(labels, len(images))
        self.device, self.seed = torch.device(device), int(seed)

    def batches(self, views, indices, *, epoch, phase, batch_size) -> Iterator[Batch]:
        ops = tuple(BatchViews(v) for v in views)
        idx_all = torch.as_tensor(indices, dtype=torch.int64).cpu()
        for s in range(0, len(idx_all) // batch_size * batch_size, batch_size):
            idx = idx_all[s:s + batch_size]
            imgs = self.images.index_select(0, idx).to(self.device, non_blocking=True)
            v1, v2 = two_view_batch(imgs, idx, ops, seed=self.seed, epoch=epoch, phase=phase)
            yield v1, v2, idx, self.labels.index_select(0, idx).to(self.device, non_blocking=True)


def two_view_batch(images: torch.Tensor, idx: torch.Tensor, ops: tuple[BatchViews, BatchViews], *, seed: int,
                   epoch: int, phase: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both views of a uint8 batch, each keyed by (seed, view, epoch, phase, first sample): the same views
    whichever loop, loader or resume produced the batch."""
    out = []
    for view, op in enumerate(ops):
        key = item_seed(seed + 7919 * (view + 1), epoch, phase, int(idx[0]))
        out.append(op(images, torch.Generator().manual_seed(key)))
    return out[0], out[1]


class LoaderViews:
    """A DataLoader over :class:`TwoViewDataset` (``batched=True``: photometric ops batched on the device)."""

    name = "torch"

    def __init__(self, source: Any, rows: Sequence[int] | None, labels: Any, device: torch.device, seed: int = 0,
                 num_workers: int = 0, batched: bool = True) -> None:
        self.dataset = TwoViewDataset(source, (ViewSpec(8), ViewSpec(8)), rows=rows, labels=labels, seed=seed,
                                      batched=batched)
        self.device, self.num_workers = torch.device(device), int(num_workers)

    def batches(self, views, indices, *, epoch, phase, batch_size) -> Iterator[Batch]:
        self.dataset.set_views(views)
        self.dataset.set_epoch(epoch, phase)
        loader = make_loader(self.dataset, torch.as_tensor(indices).tolist(), batch_size,
                             num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        for v1, v2, idx, labels in loader:
            v1, v2 = v1.to(self.device, non_blocking=True), v2.to(self.device, non_blocking=True)
            idx = idx.to(torch.int64)
            v1, v2 = self.dataset.finish(v1, v2, idx)
            yield v1, v2, idx, labels.to(self.device, non_blocking=True)


class DaliViews:
    """DALI decode + augmentation (``mixed``/GPU on CUDA, DALI's CPU backend otherwise)."""

    name = "dali"

    def __init__(self, source: Any, rows: Sequence[int] | None, labels: Any, device: torch.device, seed: int = 0,
                 num_threads: int = 1) -> None:
        self.source, self.rows, self.labels = source, rows, labels
        self.device, self.seed, self.num_threads = torch.device(device), int(seed), max(1, int(num_threads))

    def batches(self, views, indices, *, epoch, phase, batch_size) -> Iterator[Batch]:
        loader = DaliTwoViewLoader(
            self.source, views, torch.as_tensor(indices).tolist(), batch_size, rows=self.rows, labels=self.labels,
            device="gpu" if self.device.type == "cuda" else "cpu",
            seed=(self.seed * 1009 + epoch * 31 + phase) % (2**31), num_threads=self.num_threads)
        for v1, v2, idx, labels in loader:
            yield (v1.to(self.device), v2.to(self.device), idx.to(torch.int64), labels.to(self.device))


def images_in_memory(source: Any, rows: Sequence[int] | None = None,
                     memory_cap: int = DEFAULT_MEMORY_CAP) -> torch.Tensor | None:
    """The source's images as one uint8 (N, C, H, W) tensor (sample j = source row ``rows[j]``), or None when
    they do not share one shape or would take more than ``memory_cap`` bytes.

    Array and IDX sources hand over their array (no decoding); other sources are decoded once, stopping at the
    first image whose shape differs.
    """
    n = len(rows) if rows is not None else len(source)
    if n == 0:
        return None
    array = source.array() if hasattr(source, "array") else None
    if array is not None:
        if array.nbytes > memory_cap:
            return None
        with warnings.catch_warnings():  # a read-only (memory-mapped) array: the views only ever read it
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(np.ascontiguousarray(array))
        t = t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()
        return t.index_select(0, torch.as_tensor(np.asarray(rows), dtype=torch.int64)) if rows is not None else t
    row_of = (lambda j: int(rows[j])) if rows is not None else (lambda j: j)
    first = to_rgb(source.read(row_of(0)))
    if first.numel() * n > memory_cap:
        return None
    out = torch.empty((n, *first.shape), dtype=torch.uint8)
    out[0] = first
    for j in range(1, n):
        img = to_rgb(source.read(row_of(j)))
        if img.shape != first.shape:
            return None
        out[j] = img
    return out


def create_views(kind: str | ViewPipeline, source: Any, rows: Sequence[int] | None, labels: Any, *,
                 device: torch.device, seed: int = 0, num_workers: int = 0, batched: bool = True,
                 memory_cap: int = DEFAULT_MEMORY_CAP, prefetch: int | None = None) -> ViewPipeline:
    """The trainer's view pipeline: ``kind`` is a :class:`ViewPipeline` (used as is) or one of :data:`KINDS`.

    ``auto``: DALI on CUDA when installed; else the tensor path when the images fit in memory (IDX, arrays,
    small same-size images); else the DataLoader path.

    ``prefetch``: batches the tensor path makes ahead in a producer thread while the model trains
    (:class:`~rela_fast.train.prefetch.PrefetchViews`; the same views either way); 0 turns it off; None is
    :data:`DEFAULT_PREFETCH` on CPU and off on other devices (unmeasured there). The other paths ignore it.
    """
    if prefetch is not None and (isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0):
        raise UserError(f"prefetch={prefetch!r}: use a whole number of batches >= 0 (0 turns it off)")
    if not isinstance(kind, str):
        if not isinstance(kind, ViewPipeline):
            raise UserError(f"views: {type(kind).__name__} has no batches(views, indices, epoch=, phase=, "
                            "batch_size=) method")
        return kind
    if kind not in KINDS:
        raise UserError(f"views={kind!r}: use one of {', '.join(KINDS)} or pass a ViewPipeline")
    if kind == "dali" or (kind == "auto" and device.type == "cuda" and dali_available()):
        if not dali_available():
            raise UserError("views='dali': DALI is not installed; `pip install nvidia-dali-cuda130` or use 'auto'")
        return DaliViews(source, rows, labels, device, seed, num_threads=num_workers)
    if kind in ("auto", "tensor") and batched:
        images = images_in_memory(source, rows, memory_cap)
        if images is not None:
            return _prefetched(TensorViews(images, labels, device, seed), prefetch, device)
        if kind == "tensor":
            raise UserError("views='tensor': the images do not share one shape or exceed the memory cap; use 'auto'")
    return LoaderViews(source, rows, labels, device, seed, num_workers=num_workers, batched=batched)


def _prefetched(views: TensorViews, prefetch: int | None, device: torch.device) -> ViewPipeline:
    """``views`` wrapped in a producer thread ``prefetch`` batches ahead (None: the device's default)."""
    from rela_fast.train.prefetch import PrefetchViews

    depth = (DEFAULT_PREFETCH if torch.device(device).type == "cpu" else 0) if prefetch is None else prefetch
    return PrefetchViews(views, depth) if depth > 0 else views
