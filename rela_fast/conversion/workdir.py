"""The output lock and the ``<out>.work`` folder of feature shards, both only ever rela_fast's own."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from rela_fast.conversion.shards import ShardPlan
from rela_fast.ownership import MARKER, mark, ours, pid_alive, read_json_or_none, remove_dead_temps, remove_if_ours
from rela_fast.runlock import RunLock

LOCK_TEXT = "rela_fast convert lock\n"


def output_lock(out: Path) -> RunLock:
    """``<out>.lock``, held (flock) by rank 0 for the whole run: two conversions never write one store.
    The file is rela_fast's only if it holds :data:`LOCK_TEXT`; only then is it removed at the end."""
    lock_file = out.with_name(out.name + ".lock")
    busy = (f"{out}: another rela-fast convert is writing it (lock file {lock_file}); "
            "wait for it to finish or choose another --out")
    return RunLock(lock_file, busy, owned_text=LOCK_TEXT)


def claim_message(path: Path, what: str) -> str | None:
    """None when ``path`` may be used (absent, an empty folder, or ours), else why not (one line)."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_dir() and not path.is_symlink() and (ours(path) or not any(path.iterdir())):
        return None
    kind = "a file" if path.is_file() else "a link" if path.is_symlink() else "a folder"
    return (
        f"{path}: {what}, but {kind} of that name exists that rela_fast did not make (no {MARKER}); "
        "nothing was changed. Move it away or choose another --out"
    )


def prepare_work(plan: ShardPlan, settings: dict[str, Any], feature_dim: int, out: Path) -> list[str]:
    """Rank 0: clear debris of dead runs, (re)create the marked work folder, drop shards that no longer
    match (other settings, changed rows), record the settings. Returns notes for the log."""
    work, notes = plan.work, []
    remove_dead_temps(out.parent, out.name)
    plan_file = work / "plan.json"
    old = read_json_or_none(plan_file) if work.is_dir() else None
    if work.is_dir() and old != settings and any(work.iterdir()):
        if old is not None:
            notes.append(f"{work} was made with other settings; starting afresh")
        remove_if_ours(work)
    work.mkdir(parents=True, exist_ok=True)
    mark(work, "work")
    for path in work.glob("*.tmp-*"):  # shard writes of killed runs (inside our own folder)
        pid = path.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and pid_alive(int(pid))):
            shutil.rmtree(path, ignore_errors=True)
    by_name = {s.path.name: s for s in plan.shards}
    stale = 0
    for path in work.glob("shard-*"):
        shard = by_name.get(path.name)
        if ".tmp-" in path.name:  # a live process's shard write
            continue
        if shard is None or not shard.intact(plan.digest(shard), feature_dim):
            stale += 1
            shutil.rmtree(path, ignore_errors=True)
    if stale and old is not None:
        notes.append(f"{stale} shard(s) no longer match the source; recomputing them")
    with open(work / "plan.json.tmp", "w", encoding="utf-8") as f:
        json.dump(settings, f)
    os.replace(work / "plan.json.tmp", plan_file)
    return notes


def first_kept_failure(plan: ShardPlan) -> tuple[int, str] | None:
    """The first undecodable row recorded in a finished shard (for ``on_error="fail"`` on resume)."""
    for shard in plan.shards:
        failures = shard.info()["failures"] if shard.exists() else []
        if failures:
            return int(failures[0][0]), str(failures[0][1])
    return None
