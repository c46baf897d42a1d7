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
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rela_fast.errors import UserError

__all__ = ["SCHEMA_VERSION", "TargetStore", "load_targets", "StoreWriter", "describe_change"]

SCHEMA_VERSION = 1
_REQUIRED = ("meta.json", "targets.npy", "rows.npy", "source.json", "skipped.json")


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    # mmap_mode "c" (copy-on-write) gives a writable view, so torch.from_numpy does not warn, while the
    # file itself is never modified.
    return np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)


class TargetStore:
    """A converted target store (see the module docstring for the layout).

    ``targets`` (N x d float32, memory-mapped), ``rows`` (source row of each target row), ``labels``
    (int64 tensor or None), ``paths`` (source-relative path of each row), ``skipped`` ([(path, reason)]),
    ``meta`` (dict), ``fingerprint`` (the source fingerprint it was made from).
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
        self.meta: dict[str, Any] = _read_json(self.root / "meta.json")
        version = self.meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise UserError(
                f"{self.root}: target store schema {version!r}, this rela_fast reads {SCHEMA_VERSION}; "
                "re-create it with `rela-fast convert --overwrite`"
            )
        array = _load_npy(self.root / "targets.npy", mmap=True)
        n, d = self.meta["count"], self.meta["dim"]
        if array.dtype != np.float32 or array.shape != (n, d):
            raise UserError(
                f"{self.root}/targets.npy: expected float32 {n} x {d}, found {array.dtype} {array.shape}; "
                "the store is damaged, re-create it with `rela-fast convert --overwrite`"
            )
        self.targets: torch.Tensor = torch.from_numpy(array)
        self.rows: torch.Tensor = torch.from_numpy(_load_npy(self.root / "rows.npy"))
        labels = self.root / "labels.npy"
        self.labels: torch.Tensor | None = torch.from_numpy(_load_npy(labels)) if labels.is_file() else None
        self.skipped: list[tuple[str, str]] = [tuple(x) for x in _read_json(self.root / "skipped.json")]
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
            self._source = _read_json(self.root / "source.json")
        return self._source

    def array(self, name: str) -> np.ndarray:
        """One of the projection arrays: pca_mean, pca_components, eigenvalues, target_mean, target_std."""
        return _load_npy(self.root / f"{name}.npy")

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
        change = describe_change(self, source)
        if change:
            raise UserError(
                f"{self.root}: targets were made from a different source ({change}); "
                "re-run `rela-fast convert` on this source (with --overwrite) to refresh them"
            )


def load_targets(root: str | os.PathLike) -> TargetStore:
    """Open a target store directory written by :func:`rela_fast.convert`."""
    return TargetStore(root)


_FINGERPRINT_FIELDS = ("kind", "count", "digest", "labels_digest")


def _examples(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def describe_change(store: TargetStore, source: Any, fingerprint: dict[str, Any] | None = None) -> str | None:
    """None when ``source`` fingerprints like the store's source, else a short description of what changed.

    ``fingerprint`` (``source.fingerprint()``) may be passed when already computed.
    """
    new = source.fingerprint() if fingerprint is None else fingerprint
    old = store.fingerprint
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
    keys = source.entry_keys() if hasattr(source, "entry_keys") else [source.entry_key(i) for i in range(len(source))]
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


class StoreWriter:
    """Builds a store in ``<out>.tmp-<pid>`` and renames it into place with :meth:`commit`."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self.tmp = self.out.with_name(f"{self.out.name}.tmp-{os.getpid()}")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)

    def targets(self, n: int, d: int) -> np.ndarray:
        """A writable N x d float32 memmap of ``targets.npy``."""
        return np.lib.format.open_memmap(self.tmp / "targets.npy", mode="w+", dtype=np.float32, shape=(n, d))

    def array(self, name: str, value: np.ndarray) -> None:
        np.save(self.tmp / f"{name}.npy", np.ascontiguousarray(value), allow_pickle=False)

    def json(self, name: str, value: Any) -> None:
        with open(self.tmp / f"{name}.json", "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1 if name == "meta" else None)

    def commit(self) -> TargetStore:
        """Swap the finished directory into place (the old store, if any, is removed after the swap)."""
        for path in self.tmp.iterdir():
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        old = None
        if self.out.exists():
            old = self.out.with_name(f"{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return TargetStore(self.out)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
