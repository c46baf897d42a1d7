"""Sources: where the images are. One interface over folders, file lists, webdataset tars, IDX files, arrays
and map-style datasets (torch / torchvision / Hugging Face: :mod:`rela_fast.data.mapped`).

A source is a fixed, deterministically ordered list of rows. Row ``i`` has a path relative to ``root``
(``paths[i]``), optional integer label, its raw content (``read(i)``: encoded file bytes, or a uint8
array for IDX/array sources) and a cheap identity (``entry_key(i)``) from which ``fingerprint()`` tells
whether the data changed since targets were computed. Reading is thread-safe (decoders read rows from
several threads at once).

Order: folders sort by class, then by path components; file lists keep the list's order; tar shards sort
by shard name and keep each shard's member order; IDX, arrays and datasets keep row order.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import os
import re
import sys
import tarfile
import threading
import warnings
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from rela_fast.data.images import IMAGE_EXTENSIONS, is_image_name
from rela_fast.data.limits import MAX_CLASSES, max_idx_bytes, max_image_bytes, not_regular, read_regular
from rela_fast.errors import UserError

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_TAR_LABEL_EXTENSIONS = ("cls",)
_IDX_UBYTE = 0x08
_KEY_BLOCK = 4096  # rows per thread-pool task in Source.entry_keys
_DIGEST_LOCK = threading.Lock()  # one hashing pass over an array source's rows


class Source:
    """A fixed, ordered list of image rows: what ``convert``, ``ReLATrainer.fit`` and the probe read.

    The protocol (subclass this class, or give any object these members):

    * ``root`` (str): where the rows live, for messages; a name in ``<...>`` when there is no folder;
    * ``kind`` (str): a short word saying what sort of source this is (stored in the fingerprint);
    * ``paths`` (list of str): one unique name per row, stable across runs (the store keeps them);
    * ``labels`` (list of int or None): class ids ``0, 1, 2, ...`` per row, or None;
    * ``classes`` (list of str or None): class names, ``classes[label]``;
    * ``read(i)``: row ``i``'s image as encoded file bytes or a uint8 HxW / HxWxC array; raise ``OSError``
      for a row that cannot be read (it is skipped and listed); must be safe to call from several threads;
    * ``entry_key(i)``: a cheap identity of row ``i`` that changes when its content changes (size + mtime
      for files); :meth:`fingerprint` hashes all of them, and a target store made from this source is
      refused when the fingerprint changes. Override :meth:`fingerprint` when rows have no cheap identity.

    A source of 8 random images whose rows are a function of their number (so the name is a full identity):

    >>> import numpy as np
    >>> from rela_fast.data import Source
    >>> class Noise(Source):
    ...     kind = "noise"
    ...     def __init__(self, n: int):
    ...         self.root, self.labels, self.classes = "<noise>", [i % 2 for i in range(n)], ["even", "odd"]
    ...         self.paths = [f"noise#{i}" for i in range(n)]
    ...     def read(self, i: int) -> np.ndarray:
    ...         return np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ...     def entry_key(self, i: int) -> str:
    ...         return self.paths[i]
    >>> source = Noise(8)
    >>> len(source), source.read(3).shape, source.fingerprint()["count"]
    (8, (32, 32, 3), 8)

    ``rela_fast.convert(source, "noise-targets", prior="timm:resnet18", size=32, dim=4)`` and
    ``ReLATrainer(...).fit(source)`` then take it like any path.
    """

    root: str
    kind: str
    paths: list[str]
    labels: list[int] | None
    classes: list[str] | None

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        labelled = "labelled" if self.labels is not None else "unlabelled"
        return f"<{type(self).__name__} {self.kind} {len(self)} rows, {labelled}, root={self.root!r}>"

    def read(self, i: int) -> bytes | np.ndarray:
        """Row ``i``'s content: encoded file bytes, or a uint8 HxW / HxWxC array. Raises OSError if unreadable."""
        raise NotImplementedError

    def entry_key(self, i: int) -> str:
        """A cheap identity of row ``i``: it changes whenever the row's content (very likely) changed."""
        raise NotImplementedError

    def entry_keys(self) -> list[str]:
        """``entry_key(i)`` for every row (file stats run on a few threads: helps on network file systems).

        Rows go to the threads in blocks: ``ThreadPoolExecutor.map`` ignores ``chunksize``, and one future
        per row cost ~2 KB of memory that the process kept (2 GB at 10^6 rows) and ~40 us a row
        (benchmarks/bench_scale.py)."""
        n = len(self)
        if n < 2048:
            return [self.entry_key(i) for i in range(n)]
        with ThreadPoolExecutor(8) as pool:
            blocks = pool.map(lambda s: [self.entry_key(i) for i in range(s, min(n, s + _KEY_BLOCK))],
                              range(0, n, _KEY_BLOCK))
            return [key for block in blocks for key in block]

    def fingerprint(self, keys: Sequence[str] | None = None) -> dict[str, Any]:
        """``{"kind", "count", "root", "digest", "labels_digest"}``; ``digest`` is sha256 over all entry keys.

        Pass ``keys`` (from :meth:`entry_keys`) to avoid statting every file twice.
        """
        keys = self.entry_keys() if keys is None else keys
        digest = hashlib.sha256()
        for key in keys:
            digest.update(key.encode("utf-8", "surrogateescape"))
            digest.update(b"\n")
        labels = None
        if self.labels is not None:
            labels = hashlib.sha256(np.asarray(self.labels, dtype=np.int64).tobytes()).hexdigest()
        return {
            "kind": self.kind,
            "count": len(self),
            "root": self.root,
            "digest": digest.hexdigest(),
            "labels_digest": labels,
        }

    def full_path(self, i: int) -> str:
        """A path naming row ``i`` in messages (absolute where there is a file)."""
        path = self.paths[i]
        return path if self.kind == "array" or os.path.isabs(path) else os.path.join(self.root, path)


# ----------------------------------------------------------------------------------------------- files


class _FileSource(Source):
    """Rows that are files on disk: ``paths`` relative to ``root`` (or absolute, for file lists)."""

    def read(self, i: int) -> bytes:
        """The file's bytes; a FIFO, device or socket, or a file over the image cap, raises OSError."""
        return read_regular(os.path.join(self.root, self.paths[i]))

    def entry_key(self, i: int) -> str:
        path = self.paths[i]
        try:
            st = os.stat(os.path.join(self.root, path))
        except OSError as exc:
            return f"{path}|missing:{exc.errno}"
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"


class FolderSource(_FileSource):
    """An image folder: class sub-folders (labels = index in the sorted class names) or flat (unlabelled).

    Images are found recursively (symlinks followed, hidden files and folders skipped). When the top folder
    holds images itself as well as sub-folders with images, the layout is ambiguous: it is read as one flat,
    unlabelled folder (recursively) and a warning says so. Entries that are not regular files (FIFOs,
    devices, sockets, or symlinks to them) are left out without being opened, and a warning names them.
    """

    kind = "folder"

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        special: list[str] = []
        top_files, subdirs = _scan_top(self.root, special)
        root_id = _folder_id(self.root)  # a link back to the root (`loop -> .`) is never walked again
        class_files = {name: _walk_images(os.path.join(self.root, name), name, special, root_id) for name in subdirs}
        if special:
            warnings.warn(f"{self.root}: skipped {len(special)} entr{'y' if len(special) == 1 else 'ies'} that "
                          f"are not regular files, e.g. {special[0]}", stacklevel=3)
        nonempty = sorted(name for name, files in class_files.items() if files)
        if top_files and nonempty:
            warnings.warn(
                f"{self.root}: images both at the top and in sub-folders ({', '.join(nonempty[:3])}...); "
                "reading it as one unlabelled folder",
                stacklevel=3,
            )
        if nonempty and not top_files:
            self.classes = nonempty
            self.paths, self.labels = [], []
            for label, name in enumerate(nonempty):
                files = sorted(class_files[name], key=_path_key)
                self.paths += files
                self.labels += [label] * len(files)
        else:
            files = top_files + [f for name in sorted(class_files) for f in class_files[name]]
            self.paths, self.labels, self.classes = sorted(files, key=_path_key), None, None
        if not self.paths:
            raise UserError(
                f"{self.root}: no images found (looked recursively for {', '.join(IMAGE_EXTENSIONS)}); "
                "point to a folder of images, a file list, .tar shards or IDX files"
            )


def _path_key(path: str) -> list[str]:
    return path.split("/")


def _scan_top(root: str, special: list[str]) -> tuple[list[str], list[str]]:
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        raise UserError(f"{root}: cannot list the folder ({exc.strerror}); check the path and permissions") from None
    files, dirs = [], []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if _is_dir(entry):
            dirs.append(entry.name)
        elif is_image_name(entry.name) and _keep(entry, entry.name, special):
            files.append(entry.name)
    return files, dirs


def _keep(entry: os.DirEntry, rel: str, special: list[str]) -> bool:
    """True for a regular file or a dangling symlink (listed, then skipped at decode time with its reason);
    a FIFO, device or socket (also behind a symlink) goes to ``special`` as ``"rel (what)"``."""
    if _is_file(entry):
        return True
    kind = not_regular(entry.path)
    if kind is None:
        return entry.is_symlink()
    special.append(f"{rel} ({kind})")
    return False


def _folder_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _walk_images(top: str, prefix: str, special: list[str], root_id: tuple[int, int] | None = None) -> list[str]:
    """Relative paths (prefixed) of all image files under ``top``, following symlinks without looping (and
    never into the folder ``root_id``, the source's root: a link back to it would list its images twice)."""
    found: list[str] = []
    seen: set[tuple[int, int]] = {root_id} if root_id is not None else set()
    stack = [(top, prefix)]
    while stack:
        folder, rel = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(folder))
        except OSError as exc:
            warnings.warn(f"{folder}: skipped, cannot list it ({exc.strerror})", stacklevel=4)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if _is_dir(entry):
                stack.append((entry.path, f"{rel}/{entry.name}"))
            elif is_image_name(entry.name) and _keep(entry, f"{rel}/{entry.name}", special):
                # a dangling symlink stays in: it is listed as skipped with its reason, not silently dropped
                found.append(f"{rel}/{entry.name}")
    return found


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


class FileListSource(_FileSource):
    """A text file listing one image per line: ``path`` or ``path label`` (integer label, whitespace-separated).

    Paths are relative to the list file's folder, or absolute; ``paths`` keeps them as written. Empty lines
    and lines starting with ``#`` are ignored. Labels are used only when every line has one. A listed file
    that is missing is not an error here: it is skipped at decode time with its reason.
    """

    kind = "filelist"

    def __init__(self, list_file: str):
        list_file = os.path.abspath(list_file)
        self.root = os.path.dirname(list_file)
        try:
            with open(list_file, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
        except UnicodeDecodeError:
            raise UserError(
                f"{list_file}: not a text file list (not UTF-8); give an image folder, a .tar shard, IDX files, "
                "or a text file with one image path per line"
            ) from None
        except OSError as exc:
            raise UserError(f"{list_file}: cannot read the file list ({exc.strerror})") from None
        lines = [line for line in lines if line and not line.startswith("#")]
        if not lines:
            raise UserError(f"{list_file}: the file list is empty; write one image path per line")
        split = [line.rsplit(None, 1) for line in lines]
        if all(len(parts) == 2 and re.fullmatch(r"[+-]?\d+", parts[1]) for parts in split):
            self.paths = [parts[0] for parts in split]
            self.labels = [int(parts[1]) for parts in split]
            _check_label_range(self.labels, list_file)
        else:
            self.paths, self.labels = lines, None
        self.classes = None
        head = self.paths[:10]
        if not any(os.path.exists(os.path.join(self.root, p)) for p in head):
            raise UserError(
                f"{list_file}: none of the first {len(head)} listed files exist (e.g. {head[0]!r}); relative "
                f"paths are read from the list's folder {self.root}"
            )


# ------------------------------------------------------------------------------------------------- tar


class TarSource(Source):
    """Webdataset shards: uncompressed ``.tar`` files whose members group into samples by key.

    The key is the member name up to the first dot of its base name (``a/b/0001.jpg`` -> ``a/b/0001``),
    the rest is the extension: one image member (jpg, jpeg, png, webp or bmp) per sample, and an optional
    ``.cls`` member holding an integer label (labels are used when every sample has one). Members are read
    in place by offset (``os.pread``), never extracted. ``paths[i]`` is ``"<shard>#<member>"``.
    """

    kind = "tar"

    def __init__(self, shards: list[str], root: str):
        self.root = root
        self._shards = shards
        self._shard_rel = [os.path.relpath(s, root) for s in shards]
        self._shard_stat = []
        self.paths, self._where = [], []
        labels: list[int | None] = []
        no_image = 0
        for shard_index, shard in enumerate(shards):
            samples, missing = self._index(shard)
            no_image += missing
            st = os.stat(shard)
            self._shard_stat.append((st.st_size, st.st_mtime_ns))
            for member, offset, size, label in samples:
                self.paths.append(f"{self._shard_rel[shard_index]}#{member}")
                self._where.append((shard_index, offset, size))
                labels.append(label)
        if not self.paths:
            raise UserError(
                f"{root}: the tar shards hold no images (members ending in {', '.join(IMAGE_EXTENSIONS)})"
            )
        if no_image:
            warnings.warn(f"{root}: {no_image} tar sample(s) without an image member were ignored", stacklevel=3)
        has = [label is not None for label in labels]
        if all(has):
            self.labels = [int(label) for label in labels]  # type: ignore[arg-type]
        else:
            if any(has):
                warnings.warn(f"{root}: only some tar samples have a .cls label; reading them unlabelled", stacklevel=3)
            self.labels = None
        self.classes = None
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def _index(self, shard: str) -> tuple[list[tuple[str, int, int, int | None]], int]:
        """The shard's samples ``(member, offset, size, label)``; a damaged or hostile shard is a UserError."""
        kind = not_regular(shard)
        if kind is not None:
            raise UserError(f"{shard}: {kind}, not a tar file; give regular .tar files")
        try:
            archive = tarfile.open(shard, mode="r:")  # noqa: SIM115 (closed by the `with` below)
        except tarfile.ReadError as exc:
            raise UserError(
                f"{shard}: not an uncompressed tar archive ({exc}); webdataset shards must be plain .tar "
                "files so members can be read in place"
            ) from None
        except OSError as exc:
            raise UserError(f"{shard}: cannot open ({exc.strerror})") from None
        with archive:
            try:
                order, groups = _group_members(archive, shard)
            except (tarfile.TarError, EOFError) as exc:
                raise UserError(f"{shard}: the tar file is damaged ({exc}); rewrite or remove this shard") from None
            samples, missing = [], 0
            for key in order:
                members = groups[key]
                image = next((members[e[1:]] for e in IMAGE_EXTENSIONS if e[1:] in members), None)
                if image is None:
                    missing += 1
                    continue
                label = None
                for ext in _TAR_LABEL_EXTENSIONS:
                    if ext in members:
                        label = _tar_label(archive, members[ext], shard)
                        break
                name = image.name[2:] if image.name.startswith("./") else image.name
                samples.append((name, image.offset_data, image.size, label))
        return samples, missing

    def _fd(self, shard_index: int) -> int:
        fd = self._fds.get(shard_index)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard_index)
                if fd is None:
                    fd = os.open(self._shards[shard_index], os.O_RDONLY)
                    self._fds[shard_index] = fd
        return fd

    def read(self, i: int) -> bytes:
        shard_index, offset, size = self._where[i]
        data = os.pread(self._fd(shard_index), size, offset)
        if len(data) != size:
            raise OSError(f"{self._shards[shard_index]} ended early: member is truncated")
        return data

    def entry_key(self, i: int) -> str:
        shard_index, offset, size = self._where[i]
        shard_size, shard_mtime = self._shard_stat[shard_index]
        return f"{self.paths[i]}|{size}|{offset}|{shard_size}|{shard_mtime}"

    def entry_keys(self) -> list[str]:
        self._shard_stat = [(st.st_size, st.st_mtime_ns) for st in map(os.stat, self._shards)]
        return [self.entry_key(i) for i in range(len(self))]

    def close(self) -> None:
        """Close the shard file descriptors (they reopen on the next read)."""
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fds"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _group_members(archive: tarfile.TarFile, shard: str) -> tuple[list[str], dict[str, dict[str, tarfile.TarInfo]]]:
    """Members grouped by sample key, in shard order; every member must lie inside the file and be
    no larger than the image cap (a truncated shard or an absurd declared size is refused here)."""
    shard_size = os.stat(shard).st_size
    cap = max_image_bytes()
    order: list[str] = []
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    for info in archive:
        if not info.isfile() or info.issparse():
            continue
        name = info.name[2:] if info.name.startswith("./") else info.name
        if info.size < 0 or info.offset_data + info.size > shard_size:
            raise UserError(f"{shard}#{name}: the member claims {info.size} bytes past the end of the file "
                            f"({shard_size} bytes): the shard is truncated or damaged; rewrite it")
        folder, _, base = name.rpartition("/")
        if base.startswith("."):
            continue
        stem, dot, ext = base.partition(".")
        if not dot:
            continue
        if info.size > cap:
            raise UserError(f"{shard}#{name}: {info.size} bytes, over the {cap}-byte image cap "
                            "(RELA_FAST_MAX_IMAGE_BYTES); remove it from the shard or raise the cap")
        key = f"{folder}/{stem}" if folder else stem
        if key not in groups:
            groups[key] = {}
            order.append(key)
        groups[key].setdefault(ext.lower(), info)
    return order, groups


def _tar_label(archive: tarfile.TarFile, member: tarfile.TarInfo, shard: str) -> int:
    """The integer in a ``.cls`` member: a class id ``0 <= label < MAX_CLASSES``."""
    where = f"{shard}#{member.name}"
    if member.size > 64:
        raise UserError(f"{where}: {member.size} bytes is not a class label; a .cls member holds one integer")
    text = archive.extractfile(member).read().decode("utf-8", "replace").strip()
    if not re.fullmatch(r"\d+", text):
        raise UserError(f"{where}: label {text[:40]!r} is not an integer")
    if len(text) > 7 or int(text) >= MAX_CLASSES:
        raise UserError(f"{where}: label {text[:40]} is not a class id below {MAX_CLASSES}; "
                        "labels number the classes 0, 1, 2, ...")
    return int(text)


def _check_label_range(labels: Sequence[int], where: str) -> None:
    """Labels are class ids: ``0 <= label < MAX_CLASSES`` (one classifier row is allocated per class)."""
    if not len(labels):
        return
    low, high = min(labels), max(labels)
    if low < 0:
        raise UserError(f"{where}: negative label {low}; labels must be 0, 1, 2, ...")
    if high >= MAX_CLASSES:
        raise UserError(f"{where}: label {high} is not a class id below {MAX_CLASSES}; labels number the "
                        "classes 0, 1, 2, ...")


# ------------------------------------------------------------------------------------------ in-memory rows


class _ArrayRows(Source):
    """Rows of a uint8 array; entry keys are per-row content digests, computed once and cached."""

    _layout: str  # "NHW", "NHWC" or "NCHW"
    _data: np.ndarray
    _keys: list[str] | None = None

    def array(self) -> np.ndarray:
        """All images as one uint8 array, (N, H, W) or (N, H, W, C); a view of the data where possible
        (the trainer's in-memory tensor path uses it instead of reading images one by one)."""
        return self._data.transpose(0, 2, 3, 1) if self._layout == "NCHW" else self._data

    def read(self, i: int) -> np.ndarray:
        row = self._data[i]
        if self._layout == "NCHW":
            row = row.transpose(1, 2, 0)
        if row.ndim == 3 and row.shape[2] == 1:
            row = row[:, :, 0]
        return np.ascontiguousarray(row)

    def _row_keys(self) -> list[str]:
        """Every row's entry key (``path|content digest``), computed once (under a lock: threads asking at
        once hash the rows once, not once each); the digests themselves are not kept (78 bytes a row)."""
        if self._keys is None:
            with _DIGEST_LOCK:
                if self._keys is None:
                    self._keys = [f"{path}|{hashlib.blake2b(row.tobytes(), digest_size=12).hexdigest()}"
                                  for path, row in zip(self.paths, self._data)]
        return self._keys

    def entry_key(self, i: int) -> str:
        return self._row_keys()[i]

    def entry_keys(self) -> list[str]:
        return list(self._row_keys())


class ArraySource(_ArrayRows):
    """In-memory images: numpy array or torch tensor, uint8, shaped (N,H,W), (N,H,W,C) or (N,C,H,W).

    The layout is (N,H,W,C) when the last axis has 1, 3 or 4 entries, else (N,C,H,W) when axis 1 does;
    when both could be channels (e.g. (N,3,5,3)), a torch tensor is read as (N,C,H,W) and a numpy array as
    (N,H,W,C). ``paths[i]`` is ``"array#<i>"``.
    """

    kind = "array"

    def __init__(self, array: Any):
        what, is_torch = type(array).__name__, is_tensor(array)
        if is_torch:
            array = array.detach().cpu().numpy()
        try:
            array = np.asarray(array)
        except (TypeError, ValueError):
            array = np.asarray(None)
        if array.dtype == object:
            raise UserError(
                f"{what}: not a source rela_fast can read; give a path, a uint8 array or tensor, or a map-style "
                "dataset (len() and dataset[i], e.g. torchvision's or a Hugging Face datasets.Dataset)"
            )
        if array.dtype != np.uint8:
            raise UserError(
                f"array: dtype {array.dtype} is not supported; pass uint8 images "
                "(e.g. (x * 255).round().clip(0, 255).astype('uint8'))"
            )
        if array.ndim == 3:
            layout = "NHW"
        elif array.ndim == 4:
            last, second = array.shape[3] in (1, 3, 4), array.shape[1] in (1, 3, 4)
            if last and second:
                layout = "NCHW" if is_torch else "NHWC"
            elif last:
                layout = "NHWC"
            elif second:
                layout = "NCHW"
            else:
                raise UserError(f"array: shape {array.shape} has no channel axis of 1, 3 or 4 entries")
        else:
            raise UserError(f"array: shape {array.shape} is not (N,H,W), (N,H,W,C) or (N,C,H,W)")
        if array.shape[0] == 0:
            raise UserError("array: no images (the first dimension is 0)")
        self._data, self._layout = array, layout
        self.root, self.labels, self.classes = "<array>", None, None
        self.paths = [f"array#{i}" for i in range(len(array))]


class IdxSource(_ArrayRows):
    """MNIST-format IDX files (images ``*-images-idx3-ubyte[.gz]`` and labels ``*-labels-idx1-ubyte[.gz]``).

    ``paths[i]`` is ``"<images file>#<i, zero-padded>"``. Class names are Fashion-MNIST's when the folder
    or file name mentions "fashion", otherwise the label numbers.
    """

    kind = "idx"

    def __init__(self, images_file: str, labels_file: str | None):
        images_file = os.path.abspath(images_file)
        self.root = os.path.dirname(images_file)
        self._data = _read_idx(images_file, ndims=(3, 4))
        self._layout = "NHW" if self._data.ndim == 3 else "NHWC"
        if self._data.ndim == 4 and self._data.shape[3] not in (1, 3, 4):
            raise UserError(f"{images_file}: 4-d IDX images need 1, 3 or 4 channels last, got {self._data.shape}")
        if len(self._data) == 0:
            raise UserError(f"{images_file}: the IDX file holds no images")
        name = os.path.basename(images_file)
        width = len(str(len(self._data) - 1))
        self.paths = [f"{name}#{i:0{width}d}" for i in range(len(self._data))]
        self.labels, self.classes = None, None
        if labels_file is not None:
            labels = _read_idx(labels_file, ndims=(1,))
            if len(labels) != len(self._data):
                raise UserError(
                    f"{labels_file}: {len(labels)} labels for {len(self._data)} images in {images_file}"
                )
            self.labels = labels.astype(np.int64).tolist()
            top = int(labels.max())
            fashion = "fashion" in images_file.lower()
            self.classes = FASHION_MNIST_CLASSES if fashion and top < 10 else [str(k) for k in range(top + 1)]


def _read_idx(path: str, ndims: tuple[int, ...]) -> np.ndarray:
    """The array in an IDX file (optionally gzipped): the header is checked first and exactly the bytes it
    declares are read (at most ``max_idx_bytes()``), so neither a gzip bomb nor an absurd header can
    exhaust memory."""
    kind = not_regular(path)
    if kind is not None:
        raise UserError(f"{path}: {kind}, not an IDX file")
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise UserError(f"{path}: not an IDX file (bad magic number)")
            if head[2] != _IDX_UBYTE:
                raise UserError(f"{path}: IDX element type 0x{head[2]:02x} is not supported (unsigned bytes, "
                                "0x08, expected)")
            ndim = head[3]
            if ndim not in ndims:
                raise UserError(f"{path}: IDX file has {ndim} dimensions, expected {' or '.join(map(str, ndims))}")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise UserError(f"{path}: IDX header is truncated")
            shape = tuple(int.from_bytes(dims[4 * k:4 * k + 4], "big") for k in range(ndim))
            count = 1
            for d in shape:
                count *= d  # Python ints: a header of 2^32-1 x 2^32-1 x ... cannot overflow
            cap = max_idx_bytes()
            if count > cap:
                raise UserError(f"{path}: the IDX header declares {'x'.join(map(str, shape))} = {count} bytes, "
                                f"over the {cap}-byte cap (RELA_FAST_MAX_IDX_BYTES); the file is damaged")
            data = f.read(count + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: cannot read the IDX file ({exc})") from None
    if len(data) != count:
        got = f"{len(data)}" if len(data) <= count else "more"
        raise UserError(f"{path}: IDX data has {got} bytes, the header says {count} (file truncated or damaged?)")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _find_idx(folder: str, split: str) -> tuple[str, str | None] | None:
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(split)
    if prefix is None:
        raise UserError(f"split={split!r}: IDX folders have the splits 'train' and 'test'")
    for sep in ("-", "."):
        for suffix in (".gz", ""):
            images = os.path.join(folder, f"{prefix}-images{sep}idx3-ubyte{suffix}")
            if os.path.isfile(images):
                return images, _labels_for(images)
    return None


def _labels_for(images_file: str) -> str | None:
    base = os.path.basename(images_file)
    for a, b in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1")):
        if a in base:
            folder = os.path.dirname(images_file)
            stem = base.replace(a, b)
            for name in (stem, stem[:-3] if stem.endswith(".gz") else stem + ".gz"):
                if os.path.isfile(os.path.join(folder, name)):
                    return os.path.join(folder, name)
    return None


def _is_idx_name(name: str) -> bool:
    return re.search(r"idx[1-4]-ubyte(\.gz)?$", name) is not None


# ------------------------------------------------------------------------------------------------ open


def is_tensor(obj: Any) -> bool:
    """True for a torch tensor (checked without importing torch: a torchvision dataset is not one)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def open_source(
    path_or_array: Any, labels: Sequence[int] | Any | None = None, *, split: str = "train", kind: str | None = None,
    image_column: str | None = None, label_column: str | None = "label",
) -> Source:
    """Open any supported source (see the module docstring); ``labels`` gives or overrides the row labels.

    * a :class:`Source` (your own, see its docstring) -> itself
    * a map-style dataset -> ``"dataset"`` (:class:`~rela_fast.data.mapped.DatasetSource`): a torch
      ``Dataset`` (torchvision's included) of PIL images, HWC uint8 arrays or CHW tensors, optionally with
      labels, or a Hugging Face ``datasets.Dataset``; ``image_column`` (default ``"image"``) and
      ``label_column`` (default ``"label"``; None: unlabelled) name dict keys / columns
    * a numpy array / torch tensor of uint8 images -> ``"array"``
    * a folder with ``train-images-idx3-ubyte[.gz]`` (``split="test"``: ``t10k-...``), or an IDX images
      file -> ``"idx"``
    * a ``.tar`` file, a folder of ``.tar`` files, a glob (``shards/*.tar``) or brace range
      (``shard-{000..009}.tar``) -> ``"tar"``
    * any other folder -> ``"folder"``; any other file -> ``"filelist"``

    ``kind`` forces one of "folder", "filelist", "tar", "idx". Raises :class:`UserError` for a missing path,
    no images, a malformed IDX or tar file, a dataset without the image column, or labels of the wrong length.
    """
    from rela_fast.data.mapped import DatasetSource, is_map_dataset

    if is_source(path_or_array):
        source = path_or_array
    elif isinstance(path_or_array, (str, os.PathLike)):
        source = _open_path(os.fspath(path_or_array), split, kind)
    elif kind not in (None, "array", "dataset"):
        raise UserError(f"kind={kind!r} needs a path, got {type(path_or_array).__name__}")
    elif type(path_or_array).__name__ in ("DatasetDict", "IterableDatasetDict"):
        raise UserError(f"{type(path_or_array).__name__}: holds several splits; pick one, e.g. dataset['train']")
    elif kind != "array" and is_map_dataset(path_or_array):
        source = DatasetSource(path_or_array, image_column=image_column,
                               label_column=None if labels is not None else label_column)
    else:
        source = ArraySource(path_or_array)
    if labels is not None:
        if is_tensor(labels):
            labels = labels.detach().cpu().numpy()
        values = np.asarray(labels)
        if values.ndim != 1 or len(values) != len(source):
            raise UserError(f"labels: {values.shape} labels for {len(source)} images; give one integer per image")
        if values.dtype.kind not in "iub" or (len(values) and values.min() < 0):
            raise UserError("labels: must be non-negative integers (class ids 0, 1, 2, ...)")
        _check_label_range(values.tolist(), "labels")
        source.labels = values.astype(np.int64).tolist()
        if source.classes is not None and max(source.labels) >= len(source.classes):
            source.classes = None
    return source


def is_source(obj: Any) -> bool:
    """True for a :class:`Source`, or an object that follows its protocol (``read``, ``fingerprint``, ``paths``)."""
    return isinstance(obj, Source) or all(hasattr(obj, a) for a in ("read", "fingerprint", "paths", "labels"))


def _open_path(path: str, split: str, kind: str | None) -> Source:
    valid = (None, "folder", "filelist", "tar", "idx")
    if kind not in valid:
        raise UserError(f"kind={kind!r}: expected one of folder, filelist, tar, idx")
    shards = _expand_shards(path) if kind in (None, "tar") else None
    if shards:
        return TarSource(shards, _shard_root(path, shards))
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file or folder")
    if os.path.isdir(path):
        if kind in (None, "idx"):
            found = _find_idx(path, split)
            if found is not None:
                return IdxSource(*found)
            if kind == "idx":
                raise UserError(f"{path}: no {split} IDX files (e.g. train-images-idx3-ubyte.gz) in this folder")
        if kind == "filelist":
            raise UserError(f"{path}: is a folder, not a file list")
        if kind == "tar":
            raise UserError(f"{path}: no .tar shards in this folder")
        return FolderSource(path)
    special = not_regular(path)
    if special is not None:
        raise UserError(f"{path}: {special}, not a data file; give an image folder, a file list, .tar shards "
                        "or IDX files")
    if kind == "idx" or (kind is None and _is_idx_name(os.path.basename(path))):
        return IdxSource(path, _labels_for(path))
    if kind == "folder":
        raise UserError(f"{path}: is a file, not a folder")
    if kind == "tar":
        raise UserError(f"{path}: not a .tar shard")
    if is_image_name(path):
        raise UserError(f"{path}: is a single image; give its folder, or a file list naming it")
    return FileListSource(path)


def _expand_shards(path: str) -> list[str]:
    """Shard files named by ``path``: one .tar, a folder holding .tar files (and no images), a glob, a brace range."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith(".tar") and not n.startswith("."))
        if names and not any(is_image_name(n) for n in os.listdir(path)):
            return [os.path.join(path, n) for n in names]
        return []
    if os.path.isfile(path):
        return [path] if path.endswith(".tar") else []
    patterns = _expand_braces(path)
    if len(patterns) == 1 and not glob.has_magic(path):
        return []
    found = sorted({f for p in patterns for f in glob.glob(p) if os.path.isfile(f)})
    if not found:
        raise UserError(f"{path}: matches no .tar shards")
    return found


def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if match is None:
        return [pattern]
    lo, hi = match.group(1), match.group(2)
    width = len(lo) if lo.startswith("0") else 0
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [p for k in range(int(lo), int(hi) + 1) for p in _expand_braces(f"{head}{k:0{width}d}{tail}")]


def _shard_root(path: str, shards: list[str]) -> str:
    if os.path.isdir(path):
        return os.path.abspath(path)
    return os.path.abspath(os.path.commonpath([os.path.dirname(os.path.abspath(s)) for s in shards]))
