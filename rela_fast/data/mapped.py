"""Map-style datasets as sources: a torch ``Dataset`` (torchvision's included) or a Hugging Face ``datasets.Dataset``.

Items are read with ``dataset[i]`` and turned into what every other source hands to the decoders: a uint8
HxW or HxWx3 array (or encoded file bytes). An item is

* a torch/torchvision item: an image alone, ``(image, label)`` (further tuple entries are ignored), or a
  dict with the image under ``image_column`` and the label under ``label_column``;
* a Hugging Face row: a dict of columns, the image in ``image_column`` (default ``"image"``), the label in
  ``label_column`` (default ``"label"``, optional).

The image may be a PIL image (any mode: converted as files are, see :mod:`rela_fast.data.images`), an HWC or
HW uint8 array, a CHW uint8 tensor, a float array/tensor in [0, 1] (what ``ToTensor()`` makes: scaled back
to uint8 exactly), encoded bytes, a path, or Hugging Face's undecoded ``{"bytes", "path"}`` dict.

Labels come, cheapest first, from the ``labels`` argument, a Hugging Face label column (one column read,
no images decoded), a torchvision-style ``targets`` attribute (when no ``target_transform`` is set; a
``Subset`` of such a dataset included), and otherwise from reading every item once.

Identity (the fingerprint a target store is checked against): a dataset has no files to stat, so the
digest covers its length, every label, and a content hash of a fixed sample of items (see
:meth:`DatasetSource.fingerprint` and docs/DATA.md for what that catches and what it misses).
"""

from __future__ import annotations

import hashlib
import numbers
import os
import warnings
from typing import Any

import numpy as np

from rela_fast.data.limits import read_regular
from rela_fast.data.sources import Source, _check_label_range, is_tensor
from rela_fast.errors import UserError

SAMPLE_ROWS = 64  # items hashed into the fingerprint: half evenly spaced (first and last included), half drawn
_MISSING = object()


def is_hf_dataset(obj: Any) -> bool:
    """True for a Hugging Face ``datasets.Dataset`` (checked without importing ``datasets``)."""
    module = type(obj).__module__ or ""
    return (module == "datasets" or module.startswith("datasets.")) and hasattr(obj, "column_names")


def is_map_dataset(obj: Any) -> bool:
    """True for a map-style dataset: ``len()`` and integer indexing, and not an array, tensor or path.

    A list or tuple counts when its first entry is a PIL image, a dict or an ``(image, label)`` tuple (a list
    of arrays stays an array)."""
    if isinstance(obj, str | bytes | os.PathLike | np.ndarray) or is_tensor(obj):
        return False
    if is_hf_dataset(obj):
        return True
    if isinstance(obj, list | tuple):
        return len(obj) > 0 and (_is_image(obj[0]) or isinstance(obj[0], dict | tuple))
    return hasattr(obj, "__getitem__") and hasattr(obj, "__len__")


class DatasetSource(Source):
    """A map-style dataset as a :class:`~rela_fast.data.Source` (``kind = "dataset"``); see the module docstring.

    ``image_column`` / ``label_column`` name the dict keys (Hugging Face columns) of the image and the label;
    ``label_column=None`` reads the data unlabelled (``open_source(dataset, labels=...)`` then gives labels
    without reading any item for them). ``paths[i]`` is ``"<name>#<i>"``, where the name is the dataset's
    class (or Hugging Face builder) name. ``dataset[i]`` must return the same item every time (no random
    transforms: rela_fast augments itself) and be safe to call from several threads (torchvision's and
    Hugging Face's are).
    """

    kind = "dataset"

    def __init__(self, dataset: Any, *, image_column: str | None = None, label_column: str | None = "label") -> None:
        self.hf = is_hf_dataset(dataset)
        self.name = _dataset_name(dataset)
        self.image_column = image_column if image_column is not None else "image"
        if self.hf:
            dataset, label_column = _hf_columns(dataset, self.name, self.image_column, label_column)
        self.dataset, self.label_column = dataset, label_column
        try:
            n = len(dataset)
        except TypeError:
            raise UserError(f"{self.name}: has no length; give a map-style dataset (len() and dataset[i]), "
                            "not an iterable-style one") from None
        if n == 0:
            raise UserError(f"{self.name}: the dataset is empty")
        self.root = f"<{self.name}>"
        width = len(str(n - 1))
        self.paths = [f"{self.name}#{i:0{width}d}" for i in range(n)]
        first = self.read(0)
        if _content_hash(first) != _content_hash(self.read(0)):
            raise UserError(f"{self.name}: item 0 changed between two reads (a random transform?); give the dataset "
                            "without random transforms, rela_fast makes its own augmentations")
        self.labels, self.classes = self._labels()

    # -- reading ----------------------------------------------------------------------------------------
    def _item(self, i: int) -> Any:
        try:
            return self.dataset[int(i)]
        except (OSError, UserError):  # an unreadable file is skipped and listed; our own message stands
            raise
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise UserError(f"{self.name}[{i}]: reading the item failed ({type(exc).__name__}: {exc})") from None

    def _split(self, item: Any, i: int) -> tuple[Any, Any]:
        """``(image, label or _MISSING)`` of one item."""
        if isinstance(item, dict):
            if self.image_column not in item:
                keys = ", ".join(map(str, list(item)[:8]))
                raise UserError(f"{self.name}[{i}]: no image under {self.image_column!r} (keys: {keys}); pass "
                                "image_column=NAME (e.g. open_source(dataset, image_column='img'))")
            label = item.get(self.label_column, _MISSING) if self.label_column is not None else _MISSING
            return item[self.image_column], label
        if isinstance(item, tuple | list):
            if not item:
                raise UserError(f"{self.name}[{i}]: an empty item; items are an image or (image, label)")
            return item[0], item[1] if len(item) > 1 and self.label_column is not None else _MISSING
        return item, _MISSING

    def read(self, i: int) -> bytes | np.ndarray:
        """Item ``i``'s image as a uint8 HxW / HxWx3 array (a writable copy), or encoded bytes."""
        image, _ = self._split(self._item(i), i)
        return image_content(image, f"{self.name}[{i}]")

    def entry_key(self, i: int) -> str:
        """The row's name: items have no cheap identity (the fingerprint samples their content instead)."""
        return self.paths[i]

    def full_path(self, i: int) -> str:
        return self.paths[i]

    # -- identity ---------------------------------------------------------------------------------------
    def sample_rows(self) -> list[int]:
        """The rows whose content the fingerprint hashes: :data:`SAMPLE_ROWS` of them (all rows when fewer),
        half evenly spaced from the first to the last, half drawn by a generator seeded with the length."""
        n = len(self)
        if n <= SAMPLE_ROWS:
            return list(range(n))
        rows = {int(r) for r in np.linspace(0, n - 1, SAMPLE_ROWS // 2).round()}
        rng = np.random.default_rng(n)
        while len(rows) < SAMPLE_ROWS:
            rows.add(int(rng.integers(n)))
        return sorted(rows)

    def fingerprint(self, keys: list[str] | None = None) -> dict[str, Any]:
        """The base fingerprint (length, labels, the row keys) with the sampled items' content in ``digest``."""
        base = super().fingerprint(keys)
        digest = hashlib.sha256(base["digest"].encode())
        rows = self.sample_rows()
        for row in rows:
            digest.update(f"{row}:{_content_hash(self.read(row))}\n".encode())
        base["digest"] = digest.hexdigest()
        base["sampled_rows"] = len(rows)
        return base

    # -- labels -----------------------------------------------------------------------------------------
    def _labels(self) -> tuple[list[int] | None, list[str] | None]:
        if self.label_column is None:
            return None, None
        if self.hf:
            values = np.asarray(self.dataset[self.label_column])
            names = getattr(self.dataset.features[self.label_column], "names", None)
            return _class_ids(values, f"{self.name}: label column {self.label_column!r}", "label_column=None"), names
        targets = _torch_targets(self.dataset, len(self))
        if targets is None:
            _, first = self._split(self._item(0), 0)
            if first is _MISSING:
                return None, None
            targets = [first] + [self._split(self._item(i), i)[1] for i in range(1, len(self))]
        if not all(_is_class_id(t) for t in targets):
            example = next(t for t in targets if not _is_class_id(t))
            warnings.warn(f"{self.name}: labels such as {type(example).__name__} {str(example)[:40]} are not class "
                          "ids; reading the dataset unlabelled (pass labels= to give them)", stacklevel=4)
            return None, None
        labels = _class_ids(np.asarray([int(t) for t in targets]), f"{self.name}: labels", "labels=")
        classes = getattr(self.dataset, "classes", None)
        if not (isinstance(classes, list | tuple) and len(classes) > max(labels)):
            classes = None
        return labels, None if classes is None else [str(c) for c in classes]


def _dataset_name(dataset: Any) -> str:
    if is_hf_dataset(dataset):
        info = getattr(dataset, "info", None)
        name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
        return f"hf:{name}" if name else "hf:Dataset"
    return type(dataset).__name__


def _hf_columns(dataset: Any, name: str, image: str, label: str | None) -> tuple[Any, str | None]:
    """Check the columns; keep only the image and label columns (other columns are never decoded)."""
    columns = list(dataset.column_names)
    if image not in columns:
        raise UserError(f"{name}: no image column {image!r} (columns: {', '.join(columns) or 'none'}); pass "
                        "image_column=NAME, e.g. open_source(dataset, image_column='img')")
    if label is not None and label not in columns:
        if label != "label":  # asked for by name: it must be there; the default "label" is optional
            raise UserError(f"{name}: no label column {label!r} (columns: {', '.join(columns)}); pass "
                            "label_column=NAME, or label_column=None for unlabelled data")
        label = None
    keep = [image] + ([label] if label is not None else [])
    if len(keep) < len(columns) and hasattr(dataset, "select_columns"):
        dataset = dataset.select_columns(keep)
    return dataset, label


def _torch_targets(dataset: Any, n: int) -> list[Any] | None:
    """A torchvision-style ``targets`` list (Subsets followed) when it is what items carry, else None."""
    if getattr(dataset, "target_transform", None) is not None:
        return None
    indices = getattr(dataset, "indices", None)
    parent = getattr(dataset, "dataset", None)
    if indices is not None and parent is not None and type(dataset).__name__ == "Subset":
        base = _torch_targets(parent, len(parent))
        return None if base is None else [base[int(k)] for k in indices]
    targets = getattr(dataset, "targets", None)
    if targets is None or isinstance(targets, str | bytes):
        return None
    try:
        values = targets.tolist() if hasattr(targets, "tolist") else list(targets)
    except TypeError:
        return None
    return values if len(values) == n else None


def _is_class_id(value: Any) -> bool:
    if is_tensor(value) or isinstance(value, np.ndarray):
        return value.ndim == 0 and not value.dtype.is_floating_point if is_tensor(value) else (
            value.ndim == 0 and value.dtype.kind in "iu")
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _class_ids(values: np.ndarray, where: str, fix: str) -> list[int]:
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise UserError(f"{where}: holds {values.dtype} values, not class ids 0, 1, 2, ...; pass {fix} "
                        "(or labels=...) instead")
    _check_label_range(values.tolist(), where)
    return values.astype(np.int64).tolist()


# -- images ------------------------------------------------------------------------------------------------
def _is_image(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.") and hasattr(value, "mode") and hasattr(value, "size")


def image_content(value: Any, where: str) -> bytes | np.ndarray:
    """One item's image as a source row: a writable uint8 HxW / HxWx3 array, or encoded bytes.

    Raises :class:`UserError` naming ``where`` for anything that is not an image (a normalised tensor, a
    wrong shape, a string that is not a file)."""
    if _is_image(value):
        from rela_fast.data.images import _to_l_or_rgb

        return np.array(_to_l_or_rgb(value))  # a copy: writable, C-contiguous
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict) and ("bytes" in value or "path" in value):  # Hugging Face Image(decode=False)
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path"):
            return read_regular(os.fspath(value["path"]))
        raise UserError(f"{where}: an image dict with neither bytes nor a path")
    if isinstance(value, str | os.PathLike):
        return read_regular(os.fspath(value))
    if is_tensor(value):
        return _array_image(value.detach().cpu().numpy(), where, channels_first=True)
    if isinstance(value, np.ndarray | list):
        return _array_image(np.asarray(value), where, channels_first=False)
    raise UserError(f"{where}: {type(value).__name__} is not an image; items must hold a PIL image, an HWC uint8 "
                    "array or a CHW tensor")


def _array_image(a: np.ndarray, where: str, channels_first: bool) -> np.ndarray:
    """HW / HWC / CHW (C in 1, 3, 4) uint8, or floats in [0, 1] -> a writable uint8 HxW or HxWxC array."""
    if a.ndim == 3:
        first, last = a.shape[0] in (1, 3, 4), a.shape[2] in (1, 3, 4)
        if first and (channels_first or not last):
            a = a.transpose(1, 2, 0)
        elif not last:
            raise UserError(f"{where}: image shape {a.shape} has no channel axis of 1, 3 or 4 entries")
        if a.shape[2] == 1:
            a = a[:, :, 0]
    elif a.ndim != 2:
        raise UserError(f"{where}: image shape {a.shape} is not HxW, HxWxC or CxHxW")
    if a.dtype.kind == "f":
        if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > 1):
            raise UserError(f"{where}: float image values outside [0, 1] (normalised?); give uint8 images or "
                            "ToTensor() output without Normalize")
        a = np.rint(a * 255.0)
    elif a.dtype != np.uint8:
        raise UserError(f"{where}: image dtype {a.dtype} is not supported; give uint8 images")
    return np.array(a, dtype=np.uint8, order="C")  # a copy: never a read-only view of the dataset's memory


def _content_hash(item: bytes | np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    if isinstance(item, np.ndarray):
        digest.update(f"{item.dtype}|{item.shape}|".encode())
        item = np.ascontiguousarray(item).tobytes()
    digest.update(item)
    return digest.hexdigest()
