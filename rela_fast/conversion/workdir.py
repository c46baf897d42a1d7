"""The output lock and the ``<out>.work`` folder of feature shards, both only ever rela_fast's own."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rela_fast.conversion.shards import ShardPlan
from rela_fast.outputs import MOVE_AWAY, check_claim
from rela_fast.ownership import (
    STORE_KIND,
    WORK_KIND,
    claim_work,
    legacy_store,
    legacy_work,
    pid_alive,
    read_json_or_none,
    remove_dead_temps,
    remove_if_ours,
    shard_entry,
    store_extras,
)
from rela_fast.runlock import RunLock

LOCK_TEXT = "rela_fast convert lock\n"


def output_lock(out: Path) -> RunLock:
    """``<out>.lock``, held (flock) by rank 0 for the whole run: two conversions never write one store.
    The file is rela_fast's only if it holds :data:`LOCK_TEXT`; only then is it removed at the end."""
    lock_file = out.with_name(out.name + ".lock")
    busy = (f"{out}: another rela-fast convert is writing it (lock file {lock_file}); "
            "wait for it to finish or choose another --out")
    return RunLock(lock_file, busy, owned_text=LOCK_TEXT)


def claim_message(path: Path, what: str, kind: str = STORE_KIND) -> str | None:
    """None when ``path`` may be used as ``kind`` (absent, an empty folder, or rela_fast's own by its
    manifest: see :mod:`rela_fast.outputs`), else why not (one line naming the first file in the way)."""
    if kind == WORK_KIND:
        refusal = check_claim(path, kind, also_ours=shard_entry, legacy=legacy_work)
    else:
        refusal = check_claim(path, kind, legacy=legacy_store)
        extras = store_extras(path) if refusal else []
        if extras:  # an older store with files added: name them, they are why it is not replaced
            refusal = (f"{path}: a target store in rela_fast's older layout that also holds {extras[0]!r}, which "
                       f"rela_fast did not make; {MOVE_AWAY}")
    return None if refusal is None else f"{refusal} ({what})"


def prepare_work(plan: ShardPlan, settings: dict[str, Any], feature_dim: int, out: Path) -> list[str]:
    """Rank 0: clear debris of dead runs, (re)create the work folder (rela_fast's by its manifest), drop
    shards that no longer match (other settings, changed rows), record the settings. Returns notes for
    the log."""
    work, notes = plan.work, []
    remove_dead_temps(out.parent, out.name)
    old = read_json_or_none(work / "plan.json") if work.is_dir() else None
    if work.is_dir() and old != settings and any(work.iterdir()):
        if old is not None:
            notes.append(f"{work} was made with other settings; starting afresh")
        remove_if_ours(work)
    folder = claim_work(work)  # a UserError, touching nothing, when it is not ours
    for path in work.glob("shard-*.tmp-*"):  # shard writes of killed runs (checked shard folders of ours)
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
    folder.write_json("plan.json", settings, indent=None)
    return notes


def first_kept_failure(plan: ShardPlan) -> tuple[int, str] | None:
    """The first undecodable row recorded in a finished shard (for ``on_error="fail"`` on resume)."""
    for shard in plan.shards:
        failures = shard.info()["failures"] if shard.exists() else []
        if failures:
            return int(failures[0][0]), str(failures[0][1])
    return None
