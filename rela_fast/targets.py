"""TargetStore: the converted targets on disk, memory-mapped, with everything needed to spot staleness.

A store is one directory, written atomically by :class:`StoreWriter` (built under a temporary name,
then renamed into place) and never holding pickles: arrays are ``.npy`` files read with
``allow_pickle=False``, everything else is JSON.

``DIR/``
  ``meta.json``        schema version, prior identity (name, weights hash), S, d, P, eigenvalues,
                       statistics, the source fingerprint, decoder, timing, library versions
  ``targets.npy``      N x d float32, row i = the i-th successfully decoded sample (memory-mapped)
  ``rows.npy``         N int64, the source row of each target row (skipped files leave gaps)
  ``labels.npy``       N int64 class ids (only for labelled sources)
  ``source.json``      every source row's path (relative to the source root) and entry key
                       (size / mtime / content identity), so a changed source is described, not just refused
  ``skipped.json``     ``[[path, reason], ...]`` for files that could not be decoded
  ``pca_mean.npy``, ``pca_components.npy`` (P x d), ``eigenvalues.npy``, ``target_mean.npy``,
  ``target_std.npy``   the fitted projection, so new images can be mapped the same way
  ``.rela_fast.manifest.json``  every file above with its size and sha256 (:mod:`rela_fast.outputs`):
                       ``--overwrite`` replaces only a store whose files all still match it (or a store in
                       the exact older layout, see :func:`rela_fast.ownership.legacy_store`)

Opening a store validates what it reads (:class:`TargetStore`); non-finite targets are refused.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rela_fast.errors import UserError
from rela_fast.outputs import check_claim, claim, no_space, normalize_out
from rela_fast.ownership import STORE_KIND, legacy_store, make_temp_dir

__all__ = [
    "SCHEMA_VERSION", "TargetStore", "load_targets", "StoreWriter", "describe_change", "entry_keys",
    "source_fingerprint",
]

SCHEMA_VERSION = 1
_REQUIRED = ("meta.json", "targets.npy", "rows.npy", "source.json", "skipped.json")


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    # mmap_mode "c" (copy-on-write) gives a writable view, so torch.from_numpy does not warn, while the
    # file itself is never modified.
    return np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)


_FIX = "re-create it with `rela-fast convert --overwrite`"
_ARRAYS = ("pca_mean", "pca_components", "eigenvalues", "target_mean", "target_std")


def _damaged(path: Path, what: str) -> UserError:
    return UserError(f"{path}: {what}; the store is damaged, {_FIX}")


def _read_checked_json(path: Path) -> Any:
    try:
        return _read_json(path)
    except UnicodeDecodeError:
        raise _damaged(path, "is not UTF-8 JSON") from None
    except ValueError as exc:
        raise _damaged(path, f"is not valid JSON ({str(exc).splitlines()[0][:120]})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from None


def _load_checked(path: Path, mmap: bool = False) -> np.ndarray:
    """``np.load`` without pickles; a truncated, object-dtype or otherwise unreadable file is a UserError."""
    try:
        array = _load_npy(path, mmap=mmap)
    except (ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise _damaged(path, f"cannot be read as a plain .npy array ({reason})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc}); check its permissions") from None
    if array.dtype.hasobject or array.dtype.fields is not None:
        raise _damaged(path, f"holds {array.dtype}, not plain numbers")
    return array


def _check_finite(array: np.ndarray, path: Path) -> None:
    """Scan in blocks of ~64 MB (the array may be a memory map larger than RAM)."""
    width = int(np.prod(array.shape[1:])) if array.ndim > 1 else 1
    step = max(1, (1 << 24) // max(width, 1))
    for start in range(0, len(array), step):
        block = np.asarray(array[start : start + step])
        ok = np.isfinite(block)
        if not ok.all():
            row = start + int(np.flatnonzero(~ok.reshape(len(block), -1).all(axis=1))[0])
            raise _damaged(path, f"row {row} holds NaN or inf (targets must be finite numbers)")


def _check_meta(meta: Any, path: Path) -> None:
    """The fields every reader relies on, with their types (one-line error naming the first bad one)."""
    if not isinstance(meta, dict):
        raise _damaged(path, f"holds a JSON {type(meta).__name__}, not an object")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(
            f"{path.parent}: target store schema {version!r}, this rela_fast reads {SCHEMA_VERSION}; {_FIX}"
        )
    checks = {
        "count": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "dim": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "prior": lambda v: isinstance(v, dict) and isinstance(v.get("name"), str),
        "source": lambda v: isinstance(v, dict) and isinstance(v.get("count"), int) and "digest" in v,
    }
    for key, ok in checks.items():
        if key not in meta:
            raise _damaged(path, f"lacks {key!r}")
        if not ok(meta[key]):
            raise _damaged(path, f"has an invalid {key!r} ({str(meta[key])[:60]})")
    if meta["source"]["count"] < meta["count"]:
        raise _damaged(path, f"says {meta['count']} targets from only {meta['source']['count']} source rows")


def _read_rows(root: Path, n: int, source_count: int) -> np.ndarray:
    path = root / "rows.npy"
    rows = _load_checked(path)
    if rows.dtype != np.int64 or rows.shape != (n,):
        raise _damaged(path, f"expected int64 ({n},), found {rows.dtype} {rows.shape}")
    if n and (rows.min() < 0 or rows.max() >= source_count or not (np.diff(rows) > 0).all()):
        raise _damaged(path, f"entries must be distinct, ascending source rows in 0..{source_count - 1}")
    return rows


def _read_labels(root: Path, n: int) -> torch.Tensor | None:
    path = root / "labels.npy"
    if not path.is_file():
        return None
    labels = _load_checked(path)
    if labels.dtype.kind not in "iu" or labels.shape != (n,):
        raise _damaged(path, f"expected {n} integer class ids, found {labels.dtype} {labels.shape}")
    if n and labels.min() < 0:
        raise _damaged(path, "holds a negative class id")
    return torch.from_numpy(labels.astype(np.int64, copy=False))


def _read_skipped(root: Path) -> list[tuple[str, str]]:
    path = root / "skipped.json"
    skipped = _read_checked_json(path)
    if not isinstance(skipped, list) or not all(
        isinstance(x, list) and len(x) == 2 and all(isinstance(v, str) for v in x) for x in skipped
    ):
        raise _damaged(path, "expected a list of [path, reason] pairs")
    return [tuple(x) for x in skipped]


class TargetStore:
    """A converted target store (see the module docstring for the layout).

    ``targets`` (N x d float32, memory-mapped), ``rows`` (source row of each target row), ``labels``
    (int64 tensor or None), ``paths`` (source-relative path of each row), ``skipped`` ([(path, reason)]),
    ``meta`` (dict), ``fingerprint`` (the source fingerprint it was made from).

    Opening validates every file it reads: meta.json's fields and types, dtypes and lengths of the arrays,
    the range and order of ``rows``, non-negative labels and finite targets (a UserError names the file).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"{self.root}: no such target store; create it with `rela-fast convert`")
        missing = [name for name in _REQUIRED if not (self.root / name).is_file()]
        if missing:
            raise UserError(
                f"{self.root}: not a complete rela_fast target store (missing {', '.join(missing)}); "
                "re-create it with `rela-fast convert --overwrite`"
            )
        self.meta: dict[str, Any] = _read_checked_json(self.root / "meta.json")
        _check_meta(self.meta, self.root / "meta.json")
        n, d = self.meta["count"], self.meta["dim"]
        array = _load_checked(self.root / "targets.npy", mmap=True)
        if array.dtype != np.float32 or array.shape != (n, d):
            raise UserError(
                f"{self.root}/targets.npy: expected float32 {n} x {d}, found {array.dtype} {array.shape}; "
                "the store is damaged, re-create it with `rela-fast convert --overwrite`"
            )
        _check_finite(array, self.root / "targets.npy")
        self.targets: torch.Tensor = torch.from_numpy(array)
        self.rows: torch.Tensor = torch.from_numpy(_read_rows(self.root, n, self.meta["source"]["count"]))
        self.labels: torch.Tensor | None = _read_labels(self.root, n)
        self.skipped: list[tuple[str, str]] = _read_skipped(self.root)
        self._source: dict[str, Any] | None = None

    # -- what it holds -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.meta["count"])

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"TargetStore({str(self.root)!r}, N={m['count']}, d={m['dim']}, prior={m['prior']['name']!r}, "
            f"S={m['size']}, skipped={len(self.skipped)})"
        )

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.meta["source"]

    @property
    def key_mode(self) -> str:
        """How the source rows were identified: ``"stat"`` (size + mtime, ...) or ``"content"`` (sha256)."""
        return str(self.fingerprint.get("key_mode", "stat"))

    @property
    def source_paths(self) -> list[str]:
        """Every source row's path (including skipped ones), in source order."""
        return self._source_json()["paths"]

    @property
    def source_keys(self) -> list[str]:
        """Every source row's entry key (cheap identity: size, mtime, ...), in source order."""
        return self._source_json()["keys"]

    @property
    def classes(self) -> list[str] | None:
        return self._source_json().get("classes")

    @functools.cached_property
    def paths(self) -> list[str]:
        """The source-relative path of each target row, in row order (read on first use, then cached)."""
        every = self.source_paths
        return [every[r] for r in self.rows.tolist()]

    def _source_json(self) -> dict[str, Any]:
        if self._source is None:
            path = self.root / "source.json"
            data = _read_checked_json(path)
            count = self.meta["source"]["count"]
            lists = isinstance(data, dict) and all(isinstance(data.get(k), list) for k in ("paths", "keys"))
            if not (lists and len(data["paths"]) == len(data["keys"]) == count):
                raise _damaged(path, f"expected {{'paths': [...], 'keys': [...]}} with {count} entries each")
            self._source = data
        return self._source

    def array(self, name: str) -> np.ndarray:
        """One of the projection arrays: pca_mean, pca_components, eigenvalues, target_mean, target_std."""
        if name not in _ARRAYS:
            raise ValueError(f"array {name!r}: expected one of {', '.join(_ARRAYS)}")
        path = self.root / f"{name}.npy"
        array = _load_checked(path)
        if array.dtype.kind != "f":
            raise _damaged(path, f"holds {array.dtype}, not floating-point numbers")
        _check_finite(array, path)
        return array

    @torch.no_grad()
    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """Map new prior features (n x P) to targets exactly as the stored rows were mapped."""
        mean = torch.from_numpy(self.array("pca_mean"))
        comps = torch.from_numpy(self.array("pca_components"))
        t_mean = torch.from_numpy(self.array("target_mean"))
        t_std = torch.from_numpy(self.array("target_std"))
        y = (features.detach().cpu().double() - mean) @ comps
        return ((y - t_mean) / t_std).float()

    # -- staleness -------------------------------------------------------------------------------------
    def check_matches(self, source: Any) -> None:
        """Raise UserError saying what changed if ``source`` is not the data this store was made from.

        ``source`` is a Source from :func:`rela_fast.data.open_source` or anything it accepts (a path).
        """
        if not hasattr(source, "fingerprint"):
            from rela_fast.data import open_source

            source = open_source(source)
        change = describe_change(self, source)  # keys made the way this store's were
        if change:
            raise UserError(
                f"{self.root}: targets were made from a different source ({change}); "
                "re-run `rela-fast convert` on this source (with --overwrite) to refresh them"
            )


def load_targets(root: str | os.PathLike) -> TargetStore:
    """Open (and validate) a target store directory written by :func:`rela_fast.convert`."""
    return TargetStore(root)


# -- source identity -----------------------------------------------------------------------------------
KEY_MODES = ("stat", "content")


def _content_key(source: Any, i: int) -> str:
    try:
        item = source.read(i)
    except OSError as exc:
        return f"unreadable:{exc.strerror or exc}"
    digest = hashlib.sha256()
    if isinstance(item, np.ndarray):
        digest.update(f"{item.dtype}|{item.shape}|".encode())
        item = np.ascontiguousarray(item).tobytes()
    digest.update(item)
    return "sha256:" + digest.hexdigest()


def entry_keys(source: Any, mode: str = "stat") -> list[str]:
    """One identity string per source row: ``"stat"`` the source's cheap entry keys (size, mtime, ...),
    ``"content"`` the sha256 of each row's bytes (reads every file: a same-size edit that restores the
    mtime is noticed too)."""
    if mode not in KEY_MODES:
        raise ValueError(f"key mode {mode!r}: expected one of {KEY_MODES}")
    if mode == "stat":
        if hasattr(source, "entry_keys"):
            return list(source.entry_keys())
        return [source.entry_key(i) for i in range(len(source))]
    n, step = len(source), 256
    # ThreadPoolExecutor.map ignores chunksize: one future per row cost ~90 us and ~2 KB of peak memory
    # per row (2 GB at 10^6 rows; benchmarks/bench_scale.py), so rows go to the pool in blocks
    with ThreadPoolExecutor(8, thread_name_prefix="rela-content-key") as pool:
        blocks = pool.map(lambda s: [_content_key(source, i) for i in range(s, min(n, s + step))], range(0, n, step))
        return [key for block in blocks for key in block]


def source_fingerprint(source: Any, keys: list[str], mode: str = "stat") -> dict[str, Any]:
    """``source.fingerprint(keys)`` plus how the keys were made (``key_mode``, when not ``"stat"``)."""
    fingerprint = dict(source.fingerprint(keys))
    if mode != "stat":
        fingerprint["key_mode"] = mode
    return fingerprint


_FINGERPRINT_FIELDS = ("kind", "count", "digest", "labels_digest")


def _examples(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def describe_change(
    store: TargetStore, source: Any, fingerprint: dict[str, Any] | None = None, keys: list[str] | None = None
) -> str | None:
    """None when ``source`` fingerprints like the store's source, else a short description of what changed.

    ``keys`` (:func:`entry_keys` in the store's key mode) and ``fingerprint`` may be passed when already
    computed; otherwise they are made the way the store's were (``store.key_mode``).
    """
    mode = store.key_mode
    if keys is None:
        keys = entry_keys(source, mode)
    new = source_fingerprint(source, keys, mode) if fingerprint is None else fingerprint
    old = store.fingerprint
    new_mode = new.get("key_mode", "stat")
    if new_mode != mode:
        return f"the store identifies files by {mode} keys, this run by {new_mode} keys"
    if all(old.get(k) == new.get(k) for k in _FINGERPRINT_FIELDS):
        return None
    parts = []
    if old.get("kind") != new.get("kind"):
        parts.append(f"kind {old.get('kind')} -> {new.get('kind')}")
    if old.get("count") != new.get("count"):
        parts.append(f"{old.get('count')} -> {new.get('count')} images")
    old_paths = store.source_paths
    old_keys = dict(zip(old_paths, store.source_keys))
    new_paths = list(source.paths)
    new_keys = dict(zip(new_paths, keys))
    added = [p for p in new_paths if p not in old_keys]
    removed = [p for p in old_paths if p not in new_keys]
    modified = [p for p in new_paths if p in old_keys and old_keys[p] != new_keys[p]]
    for label, items in (("added", added), ("removed", removed), ("modified", modified)):
        if items:
            parts.append(f"{len(items)} {label}: {_examples(items)}")
    if not (added or removed or modified):
        if new_paths != old_paths:
            parts.append("the order of the images changed")
        elif old.get("labels_digest") != new.get("labels_digest"):
            parts.append("the labels changed")
    if not parts:
        parts.append(f"content digest {str(old.get('digest'))[:12]} -> {str(new.get('digest'))[:12]}")
    return "; ".join(parts)


# -- writing -------------------------------------------------------------------------------------------
class StoreWriter:
    """Builds a store in a fresh temporary folder next to ``out`` (an :class:`~rela_fast.outputs.OutputDir`
    whose manifest lists every file with its size and hash) and swaps it into place with :meth:`commit`.

    Only a store that rela_fast made (manifest proven, or the exact older layout), or an empty folder, is
    replaced; a full disk is a one-line UserError naming the file."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = normalize_out(out)
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = make_temp_dir(self.out.parent, self.out.name, STORE_KIND)
        except OSError as exc:
            error = no_space(exc, self.out.parent)
            if error is None:
                raise
            raise error from None
        self.dir = claim(self.tmp, STORE_KIND)

    def targets(self, n: int, d: int) -> np.ndarray:
        """A writable N x d float32 memmap of ``targets.npy`` (listed in the manifest at :meth:`commit`)."""
        return np.lib.format.open_memmap(self.tmp / "targets.npy", mode="w+", dtype=np.float32, shape=(n, d))

    @contextlib.contextmanager
    def target_rows(self, n: int, d: int):
        """``targets.npy`` written sequentially: yields ``append(block)`` for (k, d) float32 blocks in row order.

        Plain writes, not a memory map, so the process's resident memory does not grow with N (dirty pages
        of a written memmap count towards it until written back)."""
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (n, d)}
        written = 0
        with self.dir.atomic("targets.npy") as tmp, open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)

            def append(block: np.ndarray) -> None:
                nonlocal written
                block = np.ascontiguousarray(block, dtype=np.float32)
                if block.ndim != 2 or block.shape[1] != d or written + len(block) > n:
                    raise ValueError(f"targets block {block.shape} does not fit {n} x {d} after {written} rows")
                f.write(block.tobytes())
                written += len(block)

            yield append
            if written != n:
                raise ValueError(f"targets.npy: {written} of {n} rows written")

    def array(self, name: str, value: np.ndarray) -> None:
        with self.dir.atomic(f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(value), allow_pickle=False)

    def json(self, name: str, value: Any) -> None:
        self.dir.write_text(f"{name}.json", json.dumps(value, indent=1 if name == "meta" else None))

    def commit(self) -> TargetStore:
        """Swap the finished folder into place; the old store, if any, goes to a temporary trash folder that
        is removed after the swap. Refuses to replace anything that is not ours (nothing is touched then)."""
        if (self.tmp / "targets.npy").is_file() and "targets.npy" not in self.dir.files:
            self.dir.record("targets.npy")  # written through the memmap of :meth:`targets`
        trash = None
        if self.out.exists() or self.out.is_symlink():
            refusal = check_claim(self.out, STORE_KIND, legacy=legacy_store)
            if refusal:
                raise UserError(refusal)
            trash = make_temp_dir(self.out.parent, self.out.name, "trash")
            os.replace(self.out, trash / "old")
        os.replace(self.tmp, self.out)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return TargetStore(self.out)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
