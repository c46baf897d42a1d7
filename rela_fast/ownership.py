"""Which of the converter's folders are rela_fast's, by the one rule of :mod:`rela_fast.outputs`.

The converter writes three kinds of folder beside ``--out``; each is rela_fast's only when its manifest
(:data:`MARKER`, ``.rela_fast.manifest.json``) proves it, file by file (size + sha256):

* the target store itself (kind ``"target-store"``);
* ``<out>.work``, the feature shards (kind ``"convert-work"``): ``plan.json`` is listed; the shard folders,
  written by several ranks at once, are accepted by their structure (``shard-KKKKKK[.tmp-PID]/`` holding
  only ``features.npy``, ``rows.npy`` and ``info.json``, no links);
* hidden temporaries ``.<out>.rela-tmp-XXXXXXXX`` (a store being built, or the trash of a replaced one),
  with fresh names; those of dead processes are removed when their manifest still proves them.

Folders written before manifests existed are recognised only in their exact layout: a store holding
nothing but the store's own file names (:data:`STORE_FILES`, plus the old ``.rela_fast.json`` marker) with a
``meta.json`` of schema 1, and a work folder holding nothing but ``plan.json`` and shard folders. The old
marker on its own proves nothing (a copy of it in a user's folder used to let ``--overwrite`` delete it).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from rela_fast.outputs import MANIFEST, OutputDir, claim, is_ours, process_alive, read_manifest, remove_tree

__all__ = [
    "MARKER", "LEGACY_MARKER", "STORE_FILES", "legacy_store", "legacy_work", "make_temp_dir", "ours", "pid_alive",
    "remove_dead_temps", "remove_if_ours", "shard_entry", "store_extras", "store_is_ours", "work_is_ours",
]

MARKER = MANIFEST  # what marks a folder as rela_fast's: its manifest
LEGACY_MARKER = ".rela_fast.json"  # the marker of 0.2 before manifests: accepted only inside an exact layout
TEMP_INFIX = ".rela-tmp-"
STORE_KIND, WORK_KIND = "target-store", "convert-work"
STORE_FILES = frozenset({
    "meta.json", "targets.npy", "rows.npy", "labels.npy", "source.json", "skipped.json", "pca_mean.npy",
    "pca_components.npy", "eigenvalues.npy", "target_mean.npy", "target_std.npy",
})
_STORE_REQUIRED = frozenset({"meta.json", "targets.npy", "rows.npy"})
_SHARD = re.compile(r"shard-\d{6}(\.tmp-\d+)?")
_SHARD_FILES = frozenset({"features.npy", "rows.npy", "info.json"})


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host may still run (this process: yes; no permission to ask: yes)."""
    import socket

    return process_alive(pid, socket.gethostname())


def read_json_or_none(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable (a probe, not a validation)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _plain_files(path: Path) -> list[str] | None:
    """The names in folder ``path`` when every entry is a regular file (no links, no folders), else None."""
    names = []
    for entry in os.scandir(path):
        if not entry.is_file(follow_symlinks=False):
            return None
        names.append(entry.name)
    return names


def legacy_store(path: str | os.PathLike) -> bool:
    """A store written before manifests: only store file names (and the old marker), all regular files, the
    required ones present, and a ``meta.json`` of schema 1 naming a prior and a source."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    names = _plain_files(path)
    if names is None or not set(names) >= _STORE_REQUIRED or set(names) - STORE_FILES - {LEGACY_MARKER}:
        return False
    meta = read_json_or_none(path / "meta.json")
    return (isinstance(meta, dict) and meta.get("schema_version") == 1 and isinstance(meta.get("prior"), dict)
            and isinstance(meta.get("source"), dict))


def store_extras(path: str | os.PathLike) -> list[str]:
    """The entries of a folder that holds a store in the older layout (no manifest, a schema-1 ``meta.json``)
    that are not store files: what keeps it from being recognised (and replaced). Empty otherwise."""
    path = Path(path)
    if (path / MARKER).exists() or not (path / "meta.json").is_file():
        return []
    meta = read_json_or_none(path / "meta.json")
    if not (isinstance(meta, dict) and meta.get("schema_version") == 1):
        return []
    return sorted(e.name for e in os.scandir(path)
                  if e.name not in STORE_FILES | {LEGACY_MARKER} or not e.is_file(follow_symlinks=False))


def shard_entry(name: str, path: Path) -> bool:
    """A feature-shard folder of ``<out>.work`` (or one being written): by its name and exact contents."""
    if not _SHARD.fullmatch(name) or path.is_symlink() or not path.is_dir():
        return False
    names = _plain_files(path)
    return names is not None and set(names) <= _SHARD_FILES


def legacy_work(path: str | os.PathLike) -> bool:
    """A ``<out>.work`` folder written before manifests: a ``plan.json`` (schema_version, prior) and nothing
    but shard folders (and the old marker)."""
    path = Path(path)
    plan = read_json_or_none(path / "plan.json")
    if not (isinstance(plan, dict) and "schema_version" in plan and "prior" in plan):
        return False
    return all(e.name in ("plan.json", LEGACY_MARKER) and e.is_file(follow_symlinks=False)
               or shard_entry(e.name, Path(e.path)) for e in os.scandir(path))


def store_is_ours(path: str | os.PathLike) -> bool:
    return is_ours(path, STORE_KIND, legacy=legacy_store)


def work_is_ours(path: str | os.PathLike) -> bool:
    return is_ours(path, WORK_KIND, also_ours=shard_entry, legacy=legacy_work)


def ours(path: str | os.PathLike) -> bool:
    """A non-empty store or work folder that rela_fast made (manifest proven, or an exact older layout)."""
    return store_is_ours(path) or work_is_ours(path)


def claim_work(path: str | os.PathLike) -> OutputDir:
    """``<out>.work`` as an :class:`~rela_fast.outputs.OutputDir` (a UserError when it is not ours)."""
    return claim(path, WORK_KIND, also_ours=shard_entry, legacy=legacy_work)


def make_temp_dir(parent: str | os.PathLike, name: str, kind: str = "temporary") -> Path:
    """A new temporary folder ``parent/.<name>.rela-tmp-XXXXXXXX`` (never an existing one; the user's umask
    applies) holding a manifest of ``kind`` that names this process."""
    for _ in range(100):
        path = Path(parent) / f".{name}{TEMP_INFIX}{secrets.token_hex(4)}"
        try:
            path.mkdir(0o777)
        except FileExistsError:
            continue
        claim(path, kind)._save()
        return path
    raise FileExistsError(f"{parent}: no free temporary name for {name}")


def _trash_entry(name: str, path: Path) -> bool:
    return name == "old" and store_is_ours(path)


def remove_dead_temps(parent: str | os.PathLike, name: str) -> list[Path]:
    """Delete temporaries ``parent/.<name>.rela-tmp-*`` of dead processes when their manifest still proves
    them ours; anything else with such a name is left alone. Returns what was removed."""
    removed: list[Path] = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for path in parent.glob(f".{name}{TEMP_INFIX}*"):
        manifest = read_manifest(path) if path.is_dir() and not path.is_symlink() else None
        if manifest is None or process_alive(manifest.get("pid"), manifest.get("host")):
            continue
        if remove_tree(path, manifest["kind"], also_ours=_trash_entry):
            removed.append(path)
    return removed


def remove_if_ours(path: str | os.PathLike) -> bool:
    """Remove the store or work folder ``path`` only when :func:`ours` proves it; True when removed."""
    path = Path(path)
    if remove_tree(path, WORK_KIND, also_ours=shard_entry, legacy=legacy_work):
        return True
    return remove_tree(path, STORE_KIND, legacy=legacy_store)

