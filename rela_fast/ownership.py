"""Which directories rela_fast made, so that it only ever replaces or deletes its own.

A directory rela_fast creates (a target store, the ``<out>.work`` feature-shard folder, temporary build
and trash folders) holds a marker file, :data:`MARKER`, written by rela_fast: JSON with ``format``
(always ``"rela_fast"``), ``kind``, and the ``pid`` and ``host`` of the process that made it. Rules:

* replace or delete only a directory that carries the marker (or a store / work folder in the previous
  version's layout, recognised by its ``meta.json`` / ``plan.json``: see :func:`legacy_store`);
* temporary folders get fresh, hidden names (``.<out>.rela-tmp-XXXXXXXX``, created with ``mkdtemp`` so
  they can never be a user's existing folder), and the stale ones of dead processes are removed only when
  marked;
* everything inside a marked directory belongs to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = [
    "MARKER", "mark", "marker", "owned", "legacy_store", "legacy_work", "ours", "make_temp_dir",
    "remove_dead_temps", "remove_if_ours",
]

MARKER = ".rela_fast.json"
FORMAT = "rela_fast"
TEMP_INFIX = ".rela-tmp-"


def mark(path: str | os.PathLike, kind: str) -> None:
    """Write the marker into the existing directory ``path`` (atomically: temporary file + rename)."""
    path = Path(path)
    info = {"format": FORMAT, "kind": kind, "pid": os.getpid(), "host": socket.gethostname(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = path / f"{MARKER}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(info), encoding="utf-8")
    os.replace(tmp, path / MARKER)


def marker(path: str | os.PathLike) -> dict[str, Any] | None:
    """The marker of directory ``path``, or None when there is none (or it is not rela_fast's)."""
    try:
        with open(Path(path) / MARKER, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == FORMAT else None


def owned(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory with rela_fast's marker."""
    return Path(path).is_dir() and marker(path) is not None


def read_json_or_none(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable (a probe, not a validation)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def legacy_store(path: str | os.PathLike) -> bool:
    """A target store written by rela_fast 0.1 before markers existed: ``meta.json`` with schema_version 1,
    a prior and a source fingerprint, next to ``targets.npy`` and ``rows.npy``, and nothing but .npy/.json
    files. Treated as rela_fast's own (it is replaced by ``--overwrite``; a new marked store takes its place)."""
    path = Path(path)
    meta = read_json_or_none(path / "meta.json")
    if not (isinstance(meta, dict) and meta.get("schema_version") == 1 and isinstance(meta.get("prior"), dict)
            and isinstance(meta.get("source"), dict)):
        return False
    names = [p.name for p in path.iterdir()]
    return {"targets.npy", "rows.npy"} <= set(names) and all(n.endswith((".npy", ".json")) for n in names)


def legacy_work(path: str | os.PathLike) -> bool:
    """A ``<out>.work`` folder of rela_fast 0.1: ``plan.json`` (with schema_version and prior) and only
    ``plan.json*`` and ``shard-*`` entries."""
    path = Path(path)
    plan = read_json_or_none(path / "plan.json")
    if not (isinstance(plan, dict) and "schema_version" in plan and "prior" in plan):
        return False
    return all(p.name.startswith(("plan.json", "shard-")) for p in path.iterdir())


def ours(path: str | os.PathLike) -> bool:
    """Marked, or a store / work folder in the previous version's layout."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (owned(path) or legacy_store(path) or legacy_work(path))


def make_temp_dir(parent: str | os.PathLike, name: str) -> Path:
    """A new, marked temporary directory ``parent/.<name>.rela-tmp-XXXXXXXX`` (never an existing one)."""
    path = Path(tempfile.mkdtemp(prefix=f".{name}{TEMP_INFIX}", dir=parent))
    mark(path, "temporary")
    return path


def _alive(info: dict[str, Any]) -> bool:
    """Whether the process that wrote the marker may still run (another host: assume it does)."""
    if info.get("host") != socket.gethostname():
        return True
    pid = info.get("pid")
    return not isinstance(pid, int) or pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host may still run (this process: yes; no permission to ask: yes)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temps(parent: str | os.PathLike, name: str) -> list[Path]:
    """Delete marked temporary directories ``parent/.<name>.rela-tmp-*`` whose process is gone; unmarked
    ones with such a name are left alone. Returns what was removed."""
    removed = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for path in parent.glob(f".{name}{TEMP_INFIX}*"):
        info = marker(path) if path.is_dir() and not path.is_symlink() else None
        if info is not None and not _alive(info):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def remove_if_ours(path: str | os.PathLike) -> bool:
    """``rmtree(path)`` only when :func:`ours` says so; True when it was removed."""
    if not ours(path):
        return False
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
    return True
