"""One ownership rule for every folder rela_fast writes: a store, a training run, eval / demo / bench outputs.

rela_fast writes into a folder only when one of these holds:

* the folder is new (it is created, with the user's umask);
* it is empty;
* it is a folder rela_fast made for the *same kind* of output, proven by its manifest,
  :data:`MANIFEST` (``.rela_fast.manifest.json``): the kind, and every file rela_fast wrote there with its
  size and sha256. The manifest proves ownership only while **every** file it lists still has that size and
  hash, and **every** other entry of the folder is rela_fast's own temporary (or accepted by the caller's
  ``also_ours`` rule, e.g. the converter's feature shards). A copied or forged manifest therefore proves
  nothing about a user's files: their sizes and hashes do not match, or they are not listed.

Anything else stops the command with a :class:`~rela_fast.errors.UserError` (one line, exit 2) that names
the first file rela_fast did not write, and nothing in the folder is touched.

Writing (:class:`OutputDir`, from :func:`claim`):

* every write goes to a fresh temporary file in the same folder, is flushed and fsynced, and is renamed
  with ``os.replace`` onto the name itself (atomic; a link of that name is refused, never written through);
* the manifest is updated after each write (itself written atomically); a temporary is listed as pending
  before it is created, so one left by a killed process is removed by the next claim, and a kill between
  the rename and the manifest update is recognised (the pending entry carries the new size and hash);
* only files listed in the manifest are replaced or removed (:meth:`OutputDir.remove`);
* an append-only log (``metrics.jsonl``, :meth:`OutputDir.append`) is listed with the size and hash of the
  bytes written so far; a later claim requires that prefix to be unchanged and accepts bytes after it (a
  kill between an append and the manifest update);
* :meth:`OutputDir.record` adopts a file the caller itself just created by other means (a lock file).

Reading (:func:`inside`, :func:`read_bounded`): readers of a folder (``benchmarks/results/``) refuse an
entry that resolves outside it (a link to ``/etc/passwd``) and any file larger than a stated bound.

API::

    claim(path, kind, *, also_ours=None, legacy=None) -> OutputDir    # also a context manager (close())
    claimed_for(file_path) -> OutputDir | None                        # the open claim a file lies in
    check_claim(path, kind, *, also_ours=None, legacy=None) -> str | None   # the refusal, touching nothing
    is_ours(path, kind, ...) -> bool
    remove_tree(path, kind, ...) -> bool                                     # rmtree only a claimable folder
    OutputDir: .path .kind .files
        write_bytes(name, data) / write_text(name, text) / write_json(name, obj, indent=1) -> Path
        atomic(name) -> context manager yielding a temporary Path to write; renamed onto ``name`` on exit
        append(name, text) -> None        # an append-only log
        remove(name) -> bool              # only a listed file
        record(name) -> None              # adopt a file this process created
    inside(path, root) -> Path            # refuses links out of root
    read_bounded(path, limit, what) -> bytes
    no_space(exc, path) -> UserError | None  # ENOSPC / EDQUOT as one line naming the path

Sizes and hashes are checked whenever a claim meets an existing, non-empty folder (a resume, ``--overwrite``,
``rela-fast eval`` beside a run): one read of the files, never more than that.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rela_fast.errors import UserError

__all__ = [
    "MANIFEST", "OutputDir", "check_claim", "claim", "claimed_for", "inside", "is_ours", "no_space", "read_bounded",
    "remove_tree", "normalize_out",
]

MANIFEST = ".rela_fast.manifest.json"
FORMAT = "rela_fast.outputs/1"
MAX_MANIFEST_BYTES = 16 << 20  # a manifest lists file names and hashes: 16 MB is ~100 000 files
TMP_INFIX = ".rela-tmp-"
_MANIFEST_TMP = re.compile(re.escape(MANIFEST) + r"\.tmp-\d+-[0-9a-f]{8}")
_KIND = re.compile(r"[a-z][a-z0-9-]{0,40}")
_CHUNK = 1 << 20
SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's message for a write the disk cut short

AlsoOurs = Callable[[str, Path], bool]
Legacy = Callable[[Path], bool]
MOVE_AWAY = "nothing was changed. Move it away or choose another output folder"


# -- hashing -----------------------------------------------------------------------------------------------
def _hash_file(path: Path, limit: int | None = None) -> tuple[int, str, Any]:
    """``(bytes read, sha256 hex, hasher)`` of ``path`` (its first ``limit`` bytes when given)."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb", buffering=0) as f:
        while limit is None or n < limit:
            block = f.read(_CHUNK if limit is None else min(_CHUNK, limit - n))
            if not block:
                break
            h.update(block)
            n += len(block)
    return n, h.hexdigest(), h


def _entry_matches(path: Path, entry: dict[str, Any]) -> bool:
    """Whether regular file ``path`` has the listed size and hash (a log: whether it starts with them)."""
    try:
        st = path.lstat()
        if not _regular(st):
            return False
        size, digest = entry.get("size"), entry.get("sha256")
        if type(size) is not int or not isinstance(digest, str):
            return False
        if st.st_size != size and not (entry.get("log") and st.st_size > size):
            return False
        return _hash_file(path, size if entry.get("log") else None)[:2] == (size, digest)
    except OSError:
        return False


def _regular(st: os.stat_result) -> bool:
    import stat

    return stat.S_ISREG(st.st_mode)


# -- the manifest ------------------------------------------------------------------------------------------
def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest when it is a regular file holding one this module wrote, else None."""
    path = folder / MANIFEST
    try:
        st = path.lstat()
        if not _regular(st) or st.st_size > MAX_MANIFEST_BYTES:
            return None
        with open(path, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    ok = (isinstance(doc, dict) and doc.get("format") == FORMAT and isinstance(doc.get("kind"), str)
          and isinstance(doc.get("files"), dict) and isinstance(doc.get("pending", {}), dict)
          and all(isinstance(v, dict) for v in doc["files"].values())
          and all(isinstance(v, dict) for v in doc.get("pending", {}).values()))
    return doc if ok else None


def process_alive(pid: Any, host: Any) -> bool:
    """Whether the process that listed a temporary may still run (another host or no answer: assume so)."""
    if host != socket.gethostname() or type(pid) is not int:
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


class _Verdict:
    """What a claim found: the refusal (or None), the manifest to continue, temporaries to remove."""

    def __init__(self, refusal: str | None, manifest: dict[str, Any] | None = None,
                 stale: list[str] | None = None) -> None:
        self.refusal, self.manifest, self.stale = refusal, manifest, stale or []


def _refuse(folder: Path, name: str, why: str) -> _Verdict:
    return _Verdict(f"{folder}: holds other files: {why.format(repr(name))}; {MOVE_AWAY}")


def _judge(folder: Path, kind: str, also_ours: AlsoOurs | None, legacy: Legacy | None) -> _Verdict:
    """Read-only: may ``folder`` be written as ``kind``? (See the module docstring for the rule.)"""
    if folder.is_symlink():
        return _Verdict(f"{folder}: is a link; rela_fast never writes through links; {MOVE_AWAY}")
    if not folder.exists():
        return _Verdict(None, _new_manifest(kind))
    if not folder.is_dir():
        return _Verdict(f"{folder}: a file of that name exists, not a folder; {MOVE_AWAY}")
    try:
        names = sorted(os.listdir(folder), key=lambda n: (n.startswith(".rela_fast"), n))  # the user's files first
    except OSError as exc:
        return _Verdict(f"{folder}: cannot be listed ({exc.strerror or exc}); check its permissions")
    if not names:
        return _Verdict(None, _new_manifest(kind))
    manifest = read_manifest(folder)
    if manifest is None:
        if legacy is not None and legacy(folder):
            return _Verdict(None, _adopt_legacy(folder, names, kind))
        first = next((n for n in names if not (also_ours and also_ours(n, folder / n))), None)
        if first is None:  # nothing but entries the caller recognises by their structure
            return _Verdict(None, _new_manifest(kind))
        return _refuse(folder, first, "rela_fast did not make {} (the folder has no " + MANIFEST + ")")
    if manifest["kind"] != kind:
        return _Verdict(f"{folder}: holds rela_fast's {manifest['kind']!r} output, and this command writes "
                        f"{kind!r} output; {MOVE_AWAY}")
    return _check_entries(folder, names, manifest, also_ours)


def _check_entries(folder: Path, names: list[str], manifest: dict[str, Any],
                   also_ours: AlsoOurs | None) -> _Verdict:
    files, pending = manifest["files"], manifest.get("pending", {})
    stale = []
    for name in names:
        path = folder / name
        if name == MANIFEST:
            continue
        if _MANIFEST_TMP.fullmatch(name):  # a manifest write cut short by a kill
            if not process_alive(int(name.split("-")[-2]), socket.gethostname()):
                stale.append(name)
            continue
        if name in pending:
            if not process_alive(pending[name].get("pid"), pending[name].get("host")):
                stale.append(name)
            continue
        if name in files:
            if _entry_matches(path, files[name]):
                continue
            late = [p for p in pending.values() if p.get("name") == name and "sha256" in p]
            if any(_entry_matches(path, p) for p in late):  # killed between the rename and the manifest
                continue
            return _refuse(folder, name, "{} changed since rela_fast made it (its size or hash differs from "
                                         "the folder's " + MANIFEST + "), so it is not rela_fast's any more")
        if also_ours is not None and also_ours(name, path):
            continue
        return _refuse(folder, name, "rela_fast did not make {} (" + MANIFEST + " does not list it)")
    return _Verdict(None, manifest, stale)


def _new_manifest(kind: str) -> dict[str, Any]:
    return {"format": FORMAT, "kind": kind, "files": {}, "pending": {}}


def _adopt_legacy(folder: Path, names: list[str], kind: str) -> dict[str, Any]:
    """A folder the caller recognises as an older rela_fast's own layout: list its regular files as ours."""
    manifest = _new_manifest(kind)
    for name in names:
        path = folder / name
        if _regular(path.lstat()):
            size, digest, _ = _hash_file(path)
            manifest["files"][name] = {"size": size, "sha256": digest}
    return manifest


# -- claiming ------------------------------------------------------------------------------------------------
def _check_kind(kind: str) -> None:
    if not _KIND.fullmatch(kind):
        raise ValueError(f"output kind {kind!r}: lowercase letters, digits and '-'")


def normalize_out(path: str | os.PathLike) -> Path:
    """``path`` with ``..`` resolved lexically where the folder does not exist yet, so that ``newdir/..``
    names the existing parent and never leaves an empty ``newdir/`` behind."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        return path
    return Path(os.path.normpath(os.path.abspath(path)))


def check_claim(path: str | os.PathLike, kind: str, *, also_ours: AlsoOurs | None = None,
                legacy: Legacy | None = None) -> str | None:
    """Why ``path`` may not be written as ``kind`` (one line), or None when it may; touches nothing."""
    _check_kind(kind)
    return _judge(normalize_out(path), kind, also_ours, legacy).refusal


def is_ours(path: str | os.PathLike, kind: str, *, also_ours: AlsoOurs | None = None,
            legacy: Legacy | None = None) -> bool:
    """True when ``path`` is an existing, non-empty folder that rela_fast made for ``kind`` (manifest proven)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink() or not any(path.iterdir()):
        return False
    return check_claim(path, kind, also_ours=also_ours, legacy=legacy) is None


def claim(path: str | os.PathLike, kind: str, *, also_ours: AlsoOurs | None = None,
          legacy: Legacy | None = None) -> OutputDir:
    """The folder ``path`` as an :class:`OutputDir` of ``kind``: created when new (parents too, umask
    respected), used when empty or rela_fast's own for ``kind``; else a UserError naming the first file
    rela_fast did not write (nothing touched). Temporaries of dead processes listed as pending are removed.

    ``also_ours(name, path)`` accepts further entries by their structure (the converter's shard folders);
    ``legacy(folder)`` recognises an older rela_fast's layout that has no manifest (its files are adopted).
    """
    _check_kind(kind)
    folder = normalize_out(path)
    verdict = _judge(folder, kind, also_ours, legacy)
    if verdict.refusal:
        raise UserError(verdict.refusal)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise no_space(exc, folder) or UserError(
            f"{folder}: cannot create the folder ({exc.strerror or exc}); choose another output folder") from None
    out = OutputDir(folder, kind, verdict.manifest)
    _OPEN[folder.resolve()] = out
    for name in verdict.stale:
        out._drop_pending(name)
    if verdict.stale or not (folder / MANIFEST).exists():
        out._save()
    return out


def remove_tree(path: str | os.PathLike, kind: str, *, also_ours: AlsoOurs | None = None,
                legacy: Legacy | None = None) -> bool:
    """``rmtree(path)`` only when it is a non-empty folder rela_fast made for ``kind`` (manifest proven) or an
    empty folder; True when removed. Anything else is left alone (False)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    if any(path.iterdir()) and not is_ours(path, kind, also_ours=also_ours, legacy=legacy):
        return False
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)
    return True


# -- writing ---------------------------------------------------------------------------------------------------
_OPEN: dict[Path, OutputDir] = {}  # folders this process claimed and has not closed


def claimed_for(path: str | os.PathLike) -> OutputDir | None:
    """The open :class:`OutputDir` (claimed by this process, not yet closed) that file ``path`` lies in.

    Lets a writer that is handed a plain path (``save_checkpoint(state, run / "checkpoint.pt")``) write it
    through the folder's manifest when the folder was claimed, and as a plain atomic write otherwise."""
    return _OPEN.get(Path(path).parent.resolve())


class OutputDir:
    """A claimed output folder: every write is atomic and recorded in the manifest (see the module docstring)."""

    def __init__(self, path: Path, kind: str, manifest: dict[str, Any]) -> None:
        self.path, self.kind = Path(path), kind
        self._manifest = manifest
        self._manifest.setdefault("pending", {})
        for name in [n for n in self._manifest["files"] if not (self.path / n).exists()]:
            del self._manifest["files"][name]  # listed, then deleted by the user: nothing to protect
        self._logs: dict[str, Any] = {}  # running hashers of logs appended by this process

    def __repr__(self) -> str:
        return f"OutputDir({str(self.path)!r}, kind={self.kind!r}, files={sorted(self.files)})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def close(self) -> None:
        """Stop offering this folder to :func:`claimed_for` (the claim ends; files written stay listed)."""
        if _OPEN.get(self.path.resolve()) is self:
            del _OPEN[self.path.resolve()]

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """The files rela_fast wrote here: ``{name: {"size", "sha256"[, "log"]}}`` (a copy)."""
        return {k: dict(v) for k, v in self._manifest["files"].items()}

    # -- the manifest itself
    def _save(self) -> None:
        """Write the manifest atomically (a unique temporary, then ``os.replace``)."""
        tmp = self.path / f"{MANIFEST}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        self._manifest.update(pid=os.getpid(), host=socket.gethostname())  # the last writer (stale temporaries)
        data = json.dumps(self._manifest, indent=0, sort_keys=True).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path / MANIFEST)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            _raise_no_space(exc, self.path / MANIFEST)
            raise

    def _drop_pending(self, tmp_name: str) -> None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            (self.path / tmp_name).unlink()
        self._manifest["pending"].pop(tmp_name, None)

    # -- names
    def _target(self, name: str) -> Path:
        """``self.path / name`` for a plain file name that is ours to replace or new; else a UserError."""
        if (not isinstance(name, str) or not name or "/" in name or os.sep in name or name in (".", "..")
                or name == MANIFEST or name.startswith(MANIFEST) or TMP_INFIX in name):
            raise ValueError(f"output file name {name!r}: a plain file name")
        path = self.path / name
        if path.is_symlink():
            raise UserError(f"{path}: is a link; rela_fast never writes through links; {MOVE_AWAY}")
        if path.exists() and name not in self._manifest["files"]:
            kind = "folder" if path.is_dir() else "file"
            raise UserError(f"{path}: a {kind} rela_fast did not write is in the way; {MOVE_AWAY}")
        if path.is_dir():
            raise UserError(f"{path}: is a folder; {MOVE_AWAY}")
        return path

    # -- atomic writes
    @contextlib.contextmanager
    def atomic(self, name: str) -> Iterator[Path]:
        """Yield a new temporary path in this folder; when the block ends without an exception, the file is
        fsynced, hashed, and renamed onto ``name`` (replacing only a file listed in the manifest)."""
        target = self._target(name)
        tmp_name = f".{name}{TMP_INFIX}{os.getpid()}-{secrets.token_hex(4)}"
        tmp = self.path / tmp_name
        self._manifest["pending"][tmp_name] = {"name": name, "pid": os.getpid(), "host": socket.gethostname()}
        self._save()
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))
            yield tmp
            self._commit(tmp, tmp_name, name, target)
        except BaseException as exc:
            self._drop_pending(tmp_name)
            with contextlib.suppress(OSError):
                self._save()
            _raise_no_space(exc, target)
            raise

    def _commit(self, tmp: Path, tmp_name: str, name: str, target: Path) -> None:
        st = tmp.lstat()
        if not _regular(st):
            raise RuntimeError(f"{tmp}: the writer left no regular file")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        size, digest, _ = _hash_file(tmp)
        entry = {"size": size, "sha256": digest}
        self._manifest["pending"][tmp_name].update(entry)
        self._save()
        self._target(name)  # nothing unlisted or linked appeared there meanwhile
        os.replace(tmp, target)
        _fsync_dir(self.path)
        self._manifest["files"][name] = entry
        self._manifest["pending"].pop(tmp_name, None)
        self._logs.pop(name, None)
        self._save()

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write ``data`` to ``name`` atomically; returns the path."""
        with self.atomic(name) as tmp, open(tmp, "wb") as f:
            f.write(data)
        return self.path / name

    def write_text(self, name: str, text: str, encoding: str = "utf-8") -> Path:
        """Write ``text`` to ``name`` atomically (newlines as given: no translation)."""
        return self.write_bytes(name, text.encode(encoding))

    def write_json(self, name: str, obj: Any, indent: int | None = 1) -> Path:
        """Write ``obj`` as JSON (plus a final newline) to ``name`` atomically."""
        return self.write_text(name, json.dumps(obj, indent=indent) + "\n")

    # -- logs
    def append(self, name: str, text: str) -> None:
        """Append ``text`` to the log ``name`` (created when absent) and record its new size and hash."""
        path = self._target(name)
        entry = self._manifest["files"].get(name)
        if entry is not None and not entry.get("log"):
            raise ValueError(f"{path}: written as a whole file, not a log")
        hasher = self._logs.get(name)
        flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        try:
            if entry is None or not path.exists():  # a new log (or a listed one deleted meanwhile)
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
                hasher = hashlib.sha256()
            else:
                fd = os.open(path, flags)
                if hasher is None:  # the first append of this process: the bytes so far (a tail from a kill too)
                    hasher = _hash_file(path)[2]
            with os.fdopen(fd, "ab") as f:
                data = text.encode("utf-8")
                f.write(data)
        except OSError as exc:
            _raise_no_space(exc, path)
            raise
        hasher.update(data)
        self._logs[name] = hasher
        self._manifest["files"][name] = {"size": path.stat().st_size, "sha256": hasher.hexdigest(), "log": True}
        self._save()

    def rewrite_log(self, name: str, text: str) -> Path:
        """Replace the log ``name`` atomically with ``text`` (a resume dropping rows); it stays a log."""
        self.write_text(name, text)
        self._manifest["files"][name]["log"] = True
        self._save()
        return self.path / name

    # -- removing and adopting
    def remove(self, name: str) -> bool:
        """Delete ``name`` when the manifest lists it (and it still matches); True when removed."""
        entry = self._manifest["files"].get(name)
        path = self.path / name
        if entry is None:
            return False
        if path.exists() and not path.is_symlink() and not _entry_matches(path, entry):
            raise UserError(f"{path}: changed since rela_fast wrote it, so it is not removed; {MOVE_AWAY}")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        del self._manifest["files"][name]
        self._logs.pop(name, None)
        self._save()
        return True

    def record(self, name: str) -> None:
        """List ``name``, a regular file this process has just created by other means, as rela_fast's own."""
        path = self.path / name
        if not _regular(path.lstat()):
            raise ValueError(f"{path}: not a regular file")
        size, digest, _ = _hash_file(path)
        self._manifest["files"][name] = {"size": size, "sha256": digest}
        self._save()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- errors --------------------------------------------------------------------------------------------------
def no_space(exc: BaseException, path: str | os.PathLike) -> UserError | None:
    """A one-line UserError for a full disk or quota (ENOSPC, EDQUOT) while writing ``path``; else None."""
    codes = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    short = isinstance(exc, OSError) and exc.errno is None and SHORT_WRITE.search(str(exc))  # numpy's tofile
    if isinstance(exc, OSError) and (exc.errno in codes or short):
        return UserError(f"{path}: no space left on the device (or over quota) while writing it; free some space "
                         "or choose another output folder")
    return None


def _raise_no_space(exc: BaseException, path: str | os.PathLike) -> None:
    error = no_space(exc, path)
    if error is not None:
        raise error from None


# -- reading ---------------------------------------------------------------------------------------------------
def inside(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """``path`` when it resolves (links followed) to a place inside ``root``; else a UserError.

    Readers of a folder of results use it so that a link committed there cannot make them read (and publish)
    a file from elsewhere, such as ``/etc/passwd``."""
    path, root = Path(path), Path(root)
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        raise UserError(f"{path}: a link pointing out of {root} ({path.resolve()}); only files inside it are read; "
                        "replace the link with the file itself") from None
    return path


def read_bounded(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The bytes of regular file ``path``, refusing before reading when it holds more than ``limit`` bytes."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not _regular(st):
                raise UserError(f"{path}: not a regular file; {what}")
            if st.st_size > limit:
                raise UserError(f"{path}: {st.st_size} bytes, more than the {limit} this reader accepts; {what}")
            return f.read(limit + 1)[:limit]
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc}); {what}") from None
