"""Two-view loaders over a Source: batches ``(view1, view2, idx, label)``.

* CPU (and GPU without DALI): :class:`TwoViewDataset` + a ``DataLoader``. On the worker processes each
  sample gets its geometry (torchvision v2 ``resized_crop`` + flip, uint8); the photometric ops (jitter,
  grayscale, blur, solarize, normalise) then run batched on the training device
  (:meth:`TwoViewDataset.finish`), about 10x cheaper than per-sample torchvision colour jitter on 28x28
  images and free on a GPU. ``batched=False`` runs the whole torchvision pipeline per sample instead.
  Randomness is seeded by ``(seed, epoch, phase, index)`` (never the global RNG), so a run and a resumed
  run see the same views whatever the worker count.
* GPU: :class:`DaliTwoViewLoader`, a DALI pipeline that decodes (``mixed``: nvJPEG on the device) and
  augments on the device, applying the same :class:`~rela_fast.train.augment.ViewSpec` recipe. It also
  runs as a DALI CPU pipeline (``device="cpu"``), which is how it is tested without a GPU. DALI draws its
  own random numbers (per pipeline seed), so it is not bit-reproducible across a resume; colour jitter is
  applied in a fixed order (torchvision permutes it) and grayscale is saturation 0.

Index space: sample ``j`` of the loader is source row ``rows[j]`` (a target store skips undecodable
files, so its rows map to source rows); ``idx`` in a batch is ``j``, the row of the targets and ScoreBook.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rela_fast.environment import dali_available
from rela_fast.train.augment import BatchPhotometric, ViewSpec, build_torchvision, crop_flip, eval_transform, view_ops


def to_rgb(item: Any) -> torch.Tensor:
    """A source item (encoded bytes or a uint8 array) as a uint8 (3, H, W) RGB tensor."""
    if isinstance(item, np.ndarray):
        a = item
        if a.dtype != np.uint8:
            raise TypeError(f"array items must be uint8, got {a.dtype}")
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        elif a.ndim == 3 and a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        elif a.ndim == 3 and a.shape[2] == 4:
            a = a[:, :, :3]
        if not a.flags.writeable or not a.flags.c_contiguous:  # torch refuses to share read-only memory
            a = np.array(a, order="C")
        return torch.from_numpy(a).permute(2, 0, 1)
    if isinstance(item, torch.Tensor):
        return item
    from torchvision.transforms.v2.functional import pil_to_tensor

    from rela_fast.data import load_rgb

    return pil_to_tensor(load_rgb(item))


def item_seed(seed: int, epoch: int, phase: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation (SplitMix64-style mixing of the four numbers)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + phase * 0x94D049BB133111EB + index) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (x ^ (x >> 31)) & (2**63 - 1)


def _label(labels: Any, row: int) -> int:
    if labels is None:
        return -1
    return int(labels[row])


class TwoViewDataset(Dataset):
    """Sample ``j`` -> ``(view1, view2, j, label)``; ``label`` is -1 for unlabelled sources.

    ``batched=True`` (default, the fast path): the dataset does only the per-sample geometry (random resized
    crop + flip, uint8 out) and :meth:`finish` applies the photometric ops to whole batches on the device
    (:class:`~rela_fast.train.augment.BatchPhotometric`). ``batched=False``: the full torchvision v2
    pipeline per sample (float views out; ``finish`` is then the identity). Views given as callables
    (your own transforms) always run per sample.
    """

    def __init__(self, source: Any, views: tuple[ViewSpec | Callable, ViewSpec | Callable],
                 rows: Sequence[int] | None = None, labels: Any = None, seed: int = 0, batched: bool = True) -> None:
        self.source = source
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        # explicit labels (a target store's) are indexed by sample j, the source's own by source row
        self._by_sample = labels is not None
        self.labels = labels if labels is not None else getattr(source, "labels", None)
        if self.labels is not None and not isinstance(self.labels, torch.Tensor):
            self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        self.seed = int(seed)
        self.batched = batched
        self.epoch = 0
        self.phase = 1
        self.set_views(views)

    def set_views(self, views) -> None:
        self.specs = tuple(views)
        self.geometric = self.batched and all(isinstance(v, ViewSpec) for v in views)
        if self.geometric:
            self.views = None
            self.photometric = tuple(BatchPhotometric(v) for v in views)
        else:
            self.views = tuple(build_torchvision(v) if isinstance(v, ViewSpec) else v for v in views)
            self.photometric = None

    def set_epoch(self, epoch: int, phase: int = 1) -> None:
        self.epoch, self.phase = int(epoch), int(phase)

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.source)

    def source_row(self, j: int) -> int:
        return int(self.rows[j]) if self.rows is not None else int(j)

    def __getitem__(self, j: int):
        row = self.source_row(j)
        img = to_rgb(self.source.read(row))
        key = item_seed(self.seed, self.epoch, self.phase, int(j))
        if self.geometric:
            rng = random.Random(key)
            v1, v2 = crop_flip(img, self.specs[0], rng), crop_flip(img, self.specs[1], rng)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(key)
                v1, v2 = self.views[0](img), self.views[1](img)
        return v1, v2, int(j), _label(self.labels, int(j) if self._by_sample else row)

    def finish(self, v1: torch.Tensor, v2: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batched photometric stage on the views' device (identity for per-sample pipelines).

        Random parameters are seeded by ``(seed, epoch, phase, view, first index of the batch)``: a batch
        gets the same augmentation whatever device or worker count.
        """
        if self.photometric is None:
            return v1, v2
        first = int(idx[0]) if len(idx) else 0
        out = []
        for view, (x, op) in enumerate(zip((v1, v2), self.photometric)):
            gen = torch.Generator().manual_seed(item_seed(self.seed + 7919 * (view + 1), self.epoch, self.phase, first))
            out.append(op(x, gen))
        return out[0], out[1]


class EvalDataset(Dataset):
    """Sample ``j`` -> ``(image, label)`` with the deterministic transform (probe, feature extraction)."""

    def __init__(self, source: Any, size: int, rows: Sequence[int] | None = None) -> None:
        self.source = source
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.labels = getattr(source, "labels", None)
        self.transform = eval_transform(size)

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.source)

    def __getitem__(self, j: int):
        row = int(self.rows[j]) if self.rows is not None else int(j)
        return self.transform(to_rgb(self.source.read(row))), _label(self.labels, row)


def auto_image_size(source: Any, rows: Sequence[int] | None = None, cap: int = 224) -> int:
    """The training side for ``source``: its first image's shorter side when small (<= 64, e.g. 28 for
    Fashion-MNIST, 32 for CIFAR), else ``cap`` (224)."""
    img = to_rgb(source.read(int(rows[0]) if rows is not None and len(rows) else 0))
    side = min(img.shape[-2], img.shape[-1])
    return side if side <= 64 else cap


def make_loader(dataset: Dataset, indices: Sequence[int], batch_size: int, *, num_workers: int = 0,
                drop_last: bool = True, pin_memory: bool = False) -> DataLoader:
    """A DataLoader that visits exactly ``indices`` in order (the epoch's shard, from a resume point)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(map(int, indices)),
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )


# ----------------------------------------------------------------------------------------------------
# DALI
# ----------------------------------------------------------------------------------------------------
class DaliTwoViewLoader:
    """DALI decode + augmentation of both views, batches ``(view1, view2, idx, label)`` as torch tensors.

    ``device="gpu"``: encoded images are decoded by nvJPEG (``mixed``) and augmented on the GPU;
    ``device="cpu"``: the same graph on DALI's CPU backend. Items that are uint8 arrays skip decoding.
    Only full batches are produced (drop_last).
    """

    def __init__(self, source: Any, views: tuple[ViewSpec, ViewSpec], indices: Sequence[int], batch_size: int,
                 *, rows: Sequence[int] | None = None, labels: Any = None, device: str = "gpu",
                 device_id: int | None = None, num_threads: int = 4, seed: int = 0) -> None:
        if not dali_available():
            raise RuntimeError("DALI is not installed; `pip install nvidia-dali-cuda130` or use the torch loader")
        self.source = source
        self.views = views
        self.indices = np.asarray(indices, dtype=np.int64)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.labels = labels if labels is not None else getattr(source, "labels", None)
        self._by_sample = labels is not None
        self.batch_size = int(batch_size)
        self.device = device
        if device == "gpu" and device_id is None:
            device_id = torch.cuda.current_device()
        self.device_id = device_id if device == "gpu" else None
        self.num_threads = num_threads
        self.seed = seed
        first = source.read(self._row(int(self.indices[0]))) if len(self.indices) else b""
        self.raw = isinstance(first, np.ndarray)
        self.pipe = self._build()

    def _row(self, j: int) -> int:
        return int(self.rows[j]) if self.rows is not None else j

    def __len__(self) -> int:
        return len(self.indices) // self.batch_size

    def _batches(self) -> Iterator[tuple[list, np.ndarray, np.ndarray]]:
        for b in range(len(self)):
            js = self.indices[b * self.batch_size:(b + 1) * self.batch_size]
            items, labels = [], []
            for j in js:
                row = self._row(int(j))
                item = self.source.read(row)
                if self.raw:
                    item = to_rgb(item).permute(1, 2, 0).contiguous().numpy()
                else:
                    item = np.frombuffer(bytes(item), dtype=np.uint8)
                items.append(item)
                labels.append(_label(self.labels, int(j) if self._by_sample else row))
            yield items, [np.array(j, dtype=np.int64) for j in js], [np.array(v, dtype=np.int64) for v in labels]

    def _view(self, img, spec: ViewSpec):
        """The ops of :func:`~rela_fast.train.augment.view_ops` as DALI operators (flip happens in the final
        ``crop_mirror_normalize``; jitter is one ``color_twist`` in a fixed order, grayscale = saturation 0)."""
        from nvidia.dali import fn, types
        from nvidia.dali import math as dmath

        on_gpu = self.device == "gpu"

        def rnd(node):
            return node.gpu() if on_gpu else node

        def coin(p):  # 0.0 / 1.0 per sample
            return fn.cast(fn.random.coin_flip(probability=p), dtype=types.FLOAT)

        ops = {type(op).__name__: op for op in view_ops(spec)}
        crop, norm = ops["Crop"], ops["Normalize"]
        img = fn.random_resized_crop(img, size=(crop.size, crop.size), random_area=list(crop.scale),
                                     random_aspect_ratio=list(crop.ratio), antialias=True)
        img = fn.cast(img, dtype=types.FLOAT)
        sat = 1.0 - coin(ops["Gray"].p) if "Gray" in ops else None
        if "Jitter" in ops:
            j = ops["Jitter"]
            (b0, b1), (c0, c1), (s0, s1), (h0, h1) = j.ranges()
            on = coin(j.p)
            bright = 1.0 + on * (fn.random.uniform(range=[b0, b1]) - 1.0)
            contrast = 1.0 + on * (fn.random.uniform(range=[c0, c1]) - 1.0)
            jsat = 1.0 + on * (fn.random.uniform(range=[s0, s1]) - 1.0)
            hue = on * fn.random.uniform(range=[h0 * 360.0, h1 * 360.0])
            img = fn.color_twist(img, brightness=bright, contrast=contrast, hue=hue,
                                 saturation=jsat if sat is None else jsat * sat)
            img = dmath.clamp(img, 0.0, 255.0)  # torchvision clamps after each jitter op; DALI does not
        elif sat is not None:
            img = fn.color_twist(img, saturation=sat)
        if "Blur" in ops:
            blur = ops["Blur"]
            blurred = fn.gaussian_blur(img, window_size=blur.kernel, sigma=fn.random.uniform(range=list(blur.sigma)))
            img = blurred if blur.p >= 1 else img + rnd(coin(blur.p)) * (blurred - img)
        if "Solarize" in ops:
            sol = ops["Solarize"]
            above = fn.cast(img >= float(sol.threshold), dtype=types.FLOAT)
            img = img + rnd(coin(sol.p)) * above * (255.0 - 2.0 * img)
        flip_p = ops["Flip"].p if "Flip" in ops else 0.0
        return fn.crop_mirror_normalize(
            img, dtype=types.FLOAT, output_layout="CHW",
            mean=[255.0 * m for m in norm.mean], std=[255.0 * s for s in norm.std],
            mirror=fn.random.coin_flip(probability=flip_p),
        )

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
                      seed=self.seed, exec_dynamic=True)
        def pipeline():
            data, idx, label = fn.external_source(source=self._batches, num_outputs=3, batch=True,
                                                  dtype=[types.UINT8, types.INT64, types.INT64],
                                                  layout=["HWC" if self.raw else "", "", ""])
            if self.raw:
                img = data.gpu() if self.device == "gpu" else data
            else:
                img = fn.decoders.image(data, device="mixed" if self.device == "gpu" else "cpu",
                                        output_type=types.RGB)
            return self._view(img, self.views[0]), self._view(img, self.views[1]), idx, label

        pipe = pipeline()
        pipe.build()
        return pipe

    def __iter__(self):
        for _ in range(len(self)):
            v1, v2, idx, label = self.pipe.run()
            yield _to_torch(v1), _to_torch(v2), _to_torch(idx).view(-1), _to_torch(label).view(-1)


def _to_torch(tl) -> torch.Tensor:
    if hasattr(tl, "as_cpu") and type(tl).__name__.endswith("GPU"):
        from nvidia.dali.plugin.pytorch import feed_ndarray

        t = tl.as_tensor()
        out = torch.empty(t.shape(), dtype=torch.float32 if "FLOAT" in str(t.dtype) else torch.int64, device="cuda")
        feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream())
        return out
    return torch.from_numpy(np.array(tl.as_tensor()))
