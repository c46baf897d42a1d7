"""IndexedDataset: any map-style dataset whose items carry their sample number, for a loop you own.

ReLA keeps one target and one score per *sample*, so a training loop must know which samples a batch holds.
lightly's and torchvision's datasets hand out ``(image, label)`` and nothing else; wrapping one gives

    item j -> (uint8 (3, H, W) RGB image tensor, label or -1, j)

where ``j`` is the engine's sample number (the row of its targets and scores) and ``rows[j]`` the dataset's
row. A target store converted from the dataset knows which rows it holds (``engine.rows``); without rows,
sample j is row j. The images stay uint8 and unaugmented: the engine makes both views of a whole batch in
the training process (``engine.views(images, idx)``), so the views follow the phase at the step itself, and
loader workers, which run ahead of training, never make a stale view.

Reading goes through :func:`rela_fast.data.open_source`, so the wrapper takes whatever a target store can be
made from: a torch / torchvision ``Dataset``, a Hugging Face ``datasets.Dataset``, a :class:`Source`, an
array, or a path (folder, IDX, tars). ``image_size`` resizes the shorter side and centre-crops, as the
converter's observer does (needed when the images differ in size, so that a batch stacks).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rela_fast.errors import UserError


class IndexedDataset(Dataset):
    """``dataset`` with every item's sample number: item j is ``(image, label, j)``; see the module docstring.

    Args:
        dataset: a map-style torch / torchvision / Hugging Face dataset, a rela_fast Source, an array or a path
            (anything :func:`~rela_fast.data.open_source` opens). Items must not be randomly transformed.
        rows: sample j is dataset row ``rows[j]`` (``engine.rows``: the rows a target store holds); None =
            every row, in order.
        image_size: resize the shorter side to this and centre-crop to a square (None: images as stored).
    """

    def __init__(self, dataset: Any, rows: Any = None, image_size: int | None = None) -> None:
        from rela_fast.data.sources import open_source

        self.source = open_source(dataset)
        n = len(self.source)
        if rows is None:
            self.rows = None
        else:
            r = torch.as_tensor(np.asarray(rows)).long().flatten()
            if len(r) == 0 or int(r.min()) < 0 or int(r.max()) >= n:
                raise UserError(f"IndexedDataset(rows=...): expected row numbers in [0, {n}) of the dataset, "
                                f"got {len(r)} rows" + (f" up to {int(r.max())}" if len(r) else ""))
            self.rows = r.tolist()
        if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                       or not 1 <= image_size <= 4096):
            raise UserError(f"IndexedDataset(image_size={image_size!r}): expected a side in pixels, 1..4096, or None")
        self.image_size = image_size
        labels = getattr(self.source, "labels", None)
        self.labels = None if labels is None else [int(v) for v in labels]

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.source)

    def row(self, j: int) -> int:
        """The dataset row of sample ``j``."""
        return self.rows[j] if self.rows is not None else int(j)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int, int]:
        j = int(j)
        if not 0 <= j < len(self):
            raise IndexError(f"IndexedDataset: sample {j} out of range [0, {len(self)})")
        row = self.row(j)
        image = rgb_tensor(self.source.read(row), self.image_size)
        label = self.labels[row] if self.labels is not None else -1
        return image, label, j


def rgb_tensor(item: bytes | np.ndarray, size: int | None = None) -> torch.Tensor:
    """One source row (encoded bytes or a uint8 HxW / HxWxC array) as a uint8 (3, H, W) RGB tensor that owns
    its memory; ``size``: shorter side resized to it and centre-cropped (the converter's observer)."""
    from rela_fast.data.images import decode_observed, load_rgb

    if size is not None:
        a = decode_observed(item, size)
    elif isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim in (2, 3):
        a = item
        if a.ndim == 2:
            a = a[:, :, None]
        if a.shape[2] == 4:
            a = a[:, :, :3]
        if a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        elif a.shape[2] != 3:
            raise UserError(f"image of shape {item.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")
    else:
        a = np.asarray(load_rgb(item))
    # one C-contiguous copy: torch never shares (possibly read-only, memory-mapped) source memory
    return torch.from_numpy(np.array(a.transpose(2, 0, 1), dtype=np.uint8, order="C"))
