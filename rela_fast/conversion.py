"""ReLA-D orchestration: source -> decoder -> fused prior encoder -> feature shards -> streaming PCA -> store.

The run is organised around *shards*: fixed row ranges of the source (``shard_size`` rows, a multiple of
the batch size so batches never straddle two shards). Each finished shard is written atomically to
``<out>.work/shard-KKKKKK/`` (temporary directory + rename) with its rows' float32 features, the rows'
source indices, the failures and a digest of the rows' paths and entry keys. Hence:

* **Resume.** A run killed at any moment (SIGKILL included) loses at most the shard in flight; the next
  run with the same command keeps every shard whose digest still matches the source and recomputes
  the rest. PCA statistics are accumulated per shard in float64 and merged in shard order, whether the
  shard was just computed or read back from disk, so the targets equal an uninterrupted run's.
* **Changed sources.** Shards whose rows changed (entry keys: size, mtime, ...) are recomputed; a
  finished store made from a different source, prior, S or d is never silently reused: it is refused
  with a description of what changed unless ``overwrite`` (``--overwrite``) is given, or updated
  incrementally when its feature shards were kept (``keep_features``).
* **Many processes.** Under ``torchrun`` rank r computes every K-th pending shard; after a barrier rank 0
  merges all shards in order (the same arithmetic as one process), fits the PCA, writes the store
  atomically (``<out>.tmp-<pid>`` then rename) and the other ranks open it.

Finalisation: per-shard moments -> PCA (ALGORITHM.md ReLA-D step 3) -> a pass projecting every shard and
gathering the per-dimension moments -> a pass standardising (step 4, population variance) into the
memory-mapped ``targets.npy``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rela_fast.errors import UserError
from rela_fast.pca import Moments, StreamingPCA
from rela_fast.targets import SCHEMA_VERSION, StoreWriter, TargetStore, describe_change

__all__ = ["convert"]

# Test hook: SIGKILL this process once it has processed at least this many rows (resume tests).
KILL_AFTER_ROWS_ENV = "RELA_FAST_CONVERT_KILL_AFTER_ROWS"
_WORK_SUFFIX = ".work"
_ON_ERROR = ("skip", "fail")


# ----------------------------------------------------------------------------------------------------
# distributed helpers
# ----------------------------------------------------------------------------------------------------
def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _broadcast_error(world: int, message: str | None) -> None:
    """Rank 0 decides; every rank raises the same UserError (so no rank waits forever at a barrier)."""
    if world > 1:
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message:
        raise UserError(message)


# ----------------------------------------------------------------------------------------------------
# shards
# ----------------------------------------------------------------------------------------------------
def _keys_digest(keys: list[str], paths: list[str], start: int, stop: int) -> str:
    """Identity of one shard's rows: their paths and entry keys (size, mtime or content digest)."""
    h = hashlib.sha256()
    for i in range(start, stop):
        h.update(f"{paths[i]}\t{keys[i]}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


@dataclass
class _Shard:
    """One shard on disk: its rows' features, the rows, and the failures (written atomically)."""

    index: int
    start: int
    stop: int
    path: Path

    def exists(self) -> bool:
        return (self.path / "info.json").is_file()

    def intact(self, digest: str, feature_dim: int) -> bool:
        """True when the shard on disk is complete, readable and made from these rows (paths + entry keys)."""
        try:
            info = self.info()
            feats = np.load(self.path / "features.npy", mmap_mode="r", allow_pickle=False)
            rows = np.load(self.path / "rows.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return False
        count = info.get("count")
        return (
            (info.get("start"), info.get("stop"), info.get("keys_digest")) == (self.start, self.stop, digest)
            and feats.shape == (count, feature_dim)
            and rows.shape == (count,)
        )

    def info(self) -> dict[str, Any]:
        with open(self.path / "info.json", encoding="utf-8") as f:
            return json.load(f)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        feats = np.load(self.path / "features.npy", allow_pickle=False)
        rows = np.load(self.path / "rows.npy", allow_pickle=False)
        return feats, rows

    def write(
        self, feats: np.ndarray, rows: np.ndarray, failures: list[tuple[int, str]], digest: str, rank: int = 0
    ) -> None:
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        np.save(tmp / "features.npy", np.ascontiguousarray(feats, dtype=np.float32), allow_pickle=False)
        np.save(tmp / "rows.npy", np.ascontiguousarray(rows, dtype=np.int64), allow_pickle=False)
        info = {
            "index": self.index,
            "start": self.start,
            "stop": self.stop,
            "count": int(len(rows)),
            "feature_dim": int(feats.shape[1]),
            "keys_digest": digest,
            "rank": rank,
            "failures": [[int(r), str(reason)] for r, reason in failures],
        }
        with open(tmp / "info.json", "w", encoding="utf-8") as f:
            json.dump(info, f)
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(tmp, self.path)


@dataclass
class _Buffer:
    """A shard being filled: (rows, features) parts as batches arrive, plus the rows that failed."""

    shard: _Shard
    parts: list[tuple[np.ndarray, torch.Tensor]] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    filled: int = 0

    @property
    def complete(self) -> bool:
        return self.filled == self.shard.stop - self.shard.start

    def gather(self, feature_dim: int, device: torch.device) -> tuple[np.ndarray, torch.Tensor]:
        """All decoded rows in ascending order and their features (one device gather at most)."""
        if not self.parts:
            return np.zeros(0, np.int64), torch.zeros((0, feature_dim), dtype=torch.float32, device=device)
        rows = np.concatenate([r for r, _ in self.parts])
        feats = torch.cat([f for _, f in self.parts]) if len(self.parts) > 1 else self.parts[0][1]
        if len(rows) > 1 and not (np.diff(rows) > 0).all():
            order = np.argsort(rows, kind="stable")
            rows, feats = rows[order], feats[torch.from_numpy(order).to(device)]
        return rows, feats


def _shard_moments(feats: torch.Tensor, device: torch.device) -> StreamingPCA:
    """The one way per-shard statistics are computed (fresh or read back), so results are identical."""
    return StreamingPCA().update(feats.to(device=device, dtype=torch.float32))


def _load_ahead(shards: list[_Shard]):
    """Yield ``(shard, (features, rows))`` in order, reading the next shard in a thread meanwhile."""
    from concurrent.futures import ThreadPoolExecutor

    if not shards:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="rela-shard-read") as pool:
        future = pool.submit(shards[0].load)
        for i, shard in enumerate(shards):
            data = future.result()
            if i + 1 < len(shards):
                future = pool.submit(shards[i + 1].load)
            yield shard, data


class _OrderedMerge:
    """Merges per-shard moments strictly in shard order (reading finished shards back when needed)."""

    def __init__(self, shards: list[_Shard], device: torch.device) -> None:
        self.shards, self.device = shards, device
        self.total = StreamingPCA()
        self.cursor = 0
        self.held: dict[int, StreamingPCA] = {}

    def offer(self, index: int, moments: StreamingPCA) -> None:
        self.held[index] = moments

    def advance(self, ready: set[int]) -> None:
        """Merge every consecutive shard that is finished (held in memory or in ``ready`` on disk)."""
        while self.cursor < len(self.shards):
            k = self.cursor
            if k in self.held:
                self.total.merge(self.held.pop(k))
                self.cursor += 1
                continue
            run = []  # consecutive finished shards on disk: read them with read-ahead
            while k < len(self.shards) and k in ready and k not in self.held:
                run.append(self.shards[k])
                k += 1
            if not run:
                return
            for _, (feats, _) in _load_ahead(run):
                self.total.merge(_shard_moments(torch.from_numpy(feats), self.device))
                self.cursor += 1


# ----------------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import importlib.metadata

    import rela_fast

    out = {"rela_fast": rela_fast.__version__, "torch": torch.__version__, "numpy": np.__version__}
    for dist_name in ("timm", "torchvision", "nvidia-dali-cuda130", "pillow"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist_name] = importlib.metadata.version(dist_name)
    return out


def _prior_identity(cfg: Any) -> dict[str, Any]:
    ident = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in ident.items()}


def _store_mismatch(
    store: TargetStore, prior: dict[str, Any], size: int, dim: int, source: Any, fingerprint: dict[str, Any]
) -> list[str]:
    """What differs between an existing store and the requested conversion (empty: reusable)."""
    meta = store.meta
    reasons = []
    old_prior = meta.get("prior", {})
    for key in ("name", "weights_hash"):
        if old_prior.get(key) != prior.get(key):
            reasons.append(f"prior {key} {old_prior.get(key)} (requested {prior.get(key)})")
    if meta.get("size") != size:
        reasons.append(f"size S={meta.get('size')} (requested {size})")
    if meta.get("dim") != dim:
        reasons.append(f"dim d={meta.get('dim')} (requested {dim})")
    change = describe_change(store, source, fingerprint)
    if change:
        reasons.append(f"a different source ({change})")
    return reasons


def _cleanup_stale(out: Path, work: Path) -> None:
    """Remove temporary directories of dead runs (``<out>.tmp-<pid>``, ``shard-*.tmp-<pid>``)."""
    candidates = list(out.parent.glob(f"{out.name}.tmp-*")) + list(out.parent.glob(f"{out.name}.old-*"))
    if work.is_dir():
        candidates += list(work.glob("*.tmp-*"))
    for path in candidates:
        pid = path.name.rsplit("-", 1)[-1]
        alive = False
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                alive = True
            except (ProcessLookupError, PermissionError):
                alive = False
        if not alive:
            shutil.rmtree(path, ignore_errors=True)


class _OutputLock:
    """``<out>.lock`` held (flock) by rank 0 for the whole run: two conversions never write one store."""

    def __init__(self, out: Path) -> None:
        self.path = out.with_name(out.name + ".lock")
        self.file = None

    def acquire(self) -> str | None:
        """None when acquired (or locking is unavailable), else the error message."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            self.file = None
            return (
                f"{self.path.with_suffix('')}: another rela-fast convert is writing it (lock file {self.path}); "
                "wait for it to finish or choose another --out"
            )
        return None

    def release(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.file.close()
            self.file = None


def _fail_message(source: Any, row: int, reason: str) -> str:
    name = source.full_path(row) if hasattr(source, "full_path") else source.paths[row]
    return f"{name}: cannot decode ({reason}); fix or remove it, or use --on-error skip"


def _log(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


def convert(
    src: Any,
    out: str | os.PathLike,
    prior: Any,
    weights: str | os.PathLike | None = None,
    size: int | None = None,
    dim: int | None = None,
    batch_size: int = 128,
    decoder: str = "auto",
    device: str | torch.device | None = None,
    on_error: str = "skip",
    shard_size: int = 4096,
    progress: bool = True,
    *,
    labels: Any = None,
    overwrite: bool = False,
    keep_features: bool = False,
    precision: str = "auto",
    compile: bool = False,
    cuda_graph: bool | None = None,
    num_threads: int | None = None,
) -> TargetStore:
    """Convert ``src`` into a ReLA target store at ``out`` (ALGORITHM.md, ReLA-D) and return it opened.

    ``src``: image folder, file list, webdataset tars, IDX folder, array/tensor, or a Source object.
    ``prior``: ``"timm:NAME"``, ``"torchscript:FILE"``, a registered name, or an ``nn.Module``.
    ``size``: S (default: the prior's input size). ``dim``: d (default: the feature width P; pass
    min(F, P) for a student of width F). ``on_error``: ``"skip"`` lists undecodable files in
    ``store.skipped``; ``"fail"`` stops at the first. ``overwrite`` replaces a store made from other data
    or settings; ``keep_features`` keeps ``<out>.work`` so a later change is recomputed incrementally.
    ``cuda_graph`` (default: on CUDA) captures the encoder with a fixed batch. Under torchrun, call
    :func:`rela_fast.distributed.init_from_env` (or init torch.distributed) first: ranks split the shards.
    """
    job = _Conversion(
        src, out, prior, weights, size, dim, batch_size, decoder, device, on_error, shard_size, progress,
        labels=labels, overwrite=overwrite, keep_features=keep_features, precision=precision, compile=compile,
        cuda_graph=cuda_graph, num_threads=num_threads,
    )
    return job.run()


class _Conversion:
    """One call of :func:`convert`: validated settings, then reuse / resume / encode / finalise."""

    def __init__(
        self, src, out, prior, weights, size, dim, batch_size, decoder, device, on_error, shard_size, progress,
        *, labels, overwrite, keep_features, precision, compile, cuda_graph, num_threads,
    ) -> None:
        from rela_fast.data import make_decoder, open_source
        from rela_fast.encoder import create_prior

        self.t_start = time.perf_counter()
        self.timing = {"encoder_build_s": 0.0, "decode_wait_s": 0.0, "encode_call_s": 0.0}
        self.rank, self.world = _dist()
        self.talk = bool(progress) and self.rank == 0
        if on_error not in _ON_ERROR:
            raise UserError(f"--on-error {on_error!r}: must be one of {', '.join(_ON_ERROR)}")
        if int(batch_size) < 1:
            raise UserError(f"--batch-size {batch_size}: must be at least 1")
        if int(shard_size) < 1:
            raise UserError(f"--shard-size {shard_size}: must be at least 1")
        self.batch_size = int(batch_size)
        self.shard_size = -(-int(shard_size) // self.batch_size) * self.batch_size  # batches never straddle
        self.on_error, self.overwrite, self.keep_features = on_error, overwrite, keep_features
        self.precision, self.compile, self.cuda_graph = precision, compile, cuda_graph
        self.out = Path(out)
        self.work = self.out.with_name(self.out.name + _WORK_SUFFIX)

        is_source = hasattr(src, "fingerprint") and hasattr(src, "read") and hasattr(src, "paths")
        self.source = src if is_source else open_source(src, labels=labels)
        self.n_src = len(self.source)
        if self.n_src == 0:
            raise UserError(f"{src}: no images found; point SRC at a folder, list, tar or IDX file with images")

        self.device = self._device(device)
        self.model, self.cfg = create_prior(prior, weights=weights)
        self.prior_id = _prior_identity(self.cfg)
        self.feature_dim = int(self.cfg.feature_dim)
        self.size = int(size if size is not None else self.cfg.input_size)
        if self.size < 1:
            raise UserError(f"--size {size}: must be a positive number of pixels")
        self.dim = self.feature_dim if dim is None else int(dim)
        if not 1 <= self.dim <= self.feature_dim:
            raise UserError(
                f"--dim {self.dim}: must be between 1 and the feature width P={self.feature_dim} of prior "
                f"{self.cfg.name!r}; use --dim {self.feature_dim} or less"
            )
        if self.dim > self.n_src - 1:
            raise UserError(
                f"--dim {self.dim}: PCA of {self.n_src} images has at most {self.n_src - 1} components; "
                f"use --dim {max(self.n_src - 1, 1)} or less, or convert more images"
            )
        self.decoder = make_decoder(decoder, size=self.size, device=self.device, num_threads=num_threads)
        self.keys = list(self.source.entry_keys()) if hasattr(self.source, "entry_keys") else [
            self.source.entry_key(i) for i in range(self.n_src)
        ]
        self.paths = list(self.source.paths)
        n_shards = -(-self.n_src // self.shard_size)
        self.shards = [
            _Shard(k, k * self.shard_size, min((k + 1) * self.shard_size, self.n_src), self.work / f"shard-{k:06d}")
            for k in range(n_shards)
        ]

    def _device(self, device) -> torch.device:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise UserError(f"--device {device!r}: expected cpu or cuda") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise UserError("--device cuda: no CUDA device is available here; use --device cpu")
            if dev.index is None:
                local = int(os.environ.get("LOCAL_RANK", "0")) if self.world > 1 else torch.cuda.current_device()
                dev = torch.device("cuda", local)
        elif dev.type != "cpu":
            raise UserError(f"--device {device!r}: expected cpu or cuda")
        return dev

    def digest(self, shard: _Shard) -> str:
        return _keys_digest(self.keys, self.paths, shard.start, shard.stop)

    def fingerprint(self) -> dict[str, Any]:
        return self.source.fingerprint(self.keys)

    # ---- the steps ---------------------------------------------------------------------------------
    def run(self) -> TargetStore:
        lock = _OutputLock(self.out) if self.rank == 0 else None
        try:
            _broadcast_error(self.world, lock.acquire() if lock is not None else None)
            return self._run()
        finally:
            if lock is not None:
                lock.release()

    def _run(self) -> TargetStore:
        existing = self.existing_store()
        if existing is not None:
            return existing
        self.prepare_work()
        finished = {s.index for s in self.shards if s.exists()}
        pending = [s for s in self.shards if s.index not in finished]
        mine = pending[self.rank :: self.world]
        self.reused = len(finished)
        if self.reused:
            _log(self.talk, f"rela-fast convert: resuming, {self.reused} of {len(self.shards)} shard(s) already done")

        merge = _OrderedMerge(self.shards, self.device) if self.world == 1 else None
        if merge is not None:
            merge.advance(finished)
        self.t_loop = time.perf_counter()
        processed = self.encode(mine, merge, finished) if mine else 0
        self.t_encoded = time.perf_counter()
        _barrier(self.world)
        if self.world > 1:
            import torch.distributed as dist

            count = torch.tensor([processed], dtype=torch.int64, device=self.device)
            dist.all_reduce(count)
            processed = int(count.item())
        self.processed = processed

        store = None
        if self.rank == 0:
            missing = [s.index for s in self.shards if not s.exists()]
            if missing:
                raise RuntimeError(f"conversion incomplete: shards {missing[:5]} missing after every rank finished")
            if merge is None:
                merge = _OrderedMerge(self.shards, self.device)
            merge.advance({s.index for s in self.shards})
            store = self.finalize(merge.total)
            if not self.keep_features:
                shutil.rmtree(self.work, ignore_errors=True)
        _barrier(self.world)
        if store is None:
            store = TargetStore(self.out)
        if self.talk:
            t = store.meta["timing"]
            _log(
                True,
                f"rela-fast convert: {store.meta['count']} images, {len(store.skipped)} skipped, "
                f"{t['total_s']:.1f} s, {t['images_per_s']:.1f} images/s ({t['processed_this_run']} decoded this "
                f"run) -> {self.out} ({store.meta['count']} x {store.dim})",
            )
        return store

    def existing_store(self) -> TargetStore | None:
        """The store at ``out`` if it is up to date; raise if it is not and may not be replaced."""
        if not self.out.exists():
            return None
        try:
            existing = TargetStore(self.out)
        except UserError as exc:
            if self.overwrite:
                return None
            raise UserError(
                f"{self.out}: exists but is not a usable target store ({exc}); pass --overwrite to replace it"
            ) from None
        reasons = _store_mismatch(existing, self.prior_id, self.size, self.dim, self.source, self.fingerprint())
        if not reasons and not self.overwrite:
            _log(self.talk, f"rela-fast convert: {self.out} is up to date ({len(existing)} x {existing.dim})")
            if self.rank == 0 and not self.keep_features and self.work.is_dir():
                shutil.rmtree(self.work, ignore_errors=True)  # left by a run killed right after its commit
            return existing
        # with kept feature shards, a changed source or d is recomputed incrementally (nothing stale reused)
        incremental = (self.work / "plan.json").is_file() and all(
            r.startswith(("a different source", "dim")) for r in reasons
        )
        if reasons and not self.overwrite and not incremental:
            raise UserError(
                f"{self.out}: holds targets made with {'; '.join(reasons)}; nothing was reused. "
                "Pass --overwrite to recompute them (or choose another --out)"
            )
        if reasons:
            _log(self.talk, f"rela-fast convert: {self.out} is stale ({'; '.join(reasons)}); updating it")
        return None

    def plan(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "prior": {k: self.prior_id.get(k) for k in ("name", "weights_hash")},
            "size": self.size,
            "feature_dim": self.feature_dim,
            "shard_size": self.shard_size,
            "decoder": self.decoder.name,
        }

    def prepare_work(self) -> None:
        """Rank 0 drops shards that no longer match (other settings, changed rows); all ranks then agree."""
        message = None
        if self.rank == 0:
            _cleanup_stale(self.out, self.work)
            plan, plan_file = self.plan(), self.work / "plan.json"
            old = None
            if plan_file.is_file():
                with open(plan_file, encoding="utf-8") as f:
                    old = json.load(f)
            if self.work.is_dir() and old != plan:
                if old is not None:
                    _log(self.talk, f"rela-fast convert: {self.work} was made with other settings; starting afresh")
                shutil.rmtree(self.work)
            self.work.mkdir(parents=True, exist_ok=True)
            by_path = {s.path.name: s for s in self.shards}
            stale = 0
            for path in self.work.glob("shard-*"):
                shard = by_path.get(path.name)
                if shard is None or not shard.intact(self.digest(shard), self.feature_dim):
                    stale += 1
                    shutil.rmtree(path, ignore_errors=True)
            if stale and old is not None:
                _log(self.talk, f"rela-fast convert: {stale} shard(s) no longer match the source; recomputing them")
            with open(self.work / "plan.json.tmp", "w", encoding="utf-8") as f:
                json.dump(plan, f)
            os.replace(self.work / "plan.json.tmp", plan_file)
            if self.on_error == "fail":
                for shard in self.shards:
                    failures = shard.info()["failures"] if shard.exists() else []
                    if failures:
                        message = _fail_message(self.source, *failures[0])
                        break
        _barrier(self.world)
        _broadcast_error(self.world, message)

    def encode(self, mine: list[_Shard], merge: _OrderedMerge | None, finished: set[int]) -> int:
        """Stream this rank's shards through decoder and encoder; write each shard when it is complete."""
        from tqdm.auto import tqdm

        from rela_fast.encoder import build_encoder

        t0 = time.perf_counter()
        encoder = build_encoder(
            self.model, self.cfg, device=self.device, size=self.size, precision=self.precision, compile=self.compile,
            cuda_graph=self.device.type == "cuda" if self.cuda_graph is None else bool(self.cuda_graph),
            batch_size=self.batch_size,
        )
        self.timing["encoder_build_s"] = time.perf_counter() - t0
        kill_after = int(os.environ.get(KILL_AFTER_ROWS_ENV, "0") or 0)
        by_index = {s.index: s for s in mine}
        buffers: dict[int, _Buffer] = {}
        indices = np.concatenate([np.arange(s.start, s.stop, dtype=np.int64) for s in mine])
        dev, step, bsz = self.device, self.shard_size, self.batch_size
        mismatch = torch.zeros((), dtype=torch.bool, device=dev)  # decoder rows vs expected, checked per shard

        def flush(buf: _Buffer) -> None:
            if bool(mismatch):
                raise RuntimeError("the decoder returned rows in an unexpected order; cannot place features")
            shard = buf.shard
            rows, feats = buf.gather(self.feature_dim, dev)
            shard.write(feats.cpu().numpy(), rows, sorted(buf.failures), self.digest(shard), self.rank)
            if merge is not None:
                merge.offer(shard.index, _shard_moments(feats, dev))
                finished.add(shard.index)
                merge.advance(finished)
            del buffers[shard.index]

        processed, position = 0, 0
        desc = "convert" if self.world == 1 else f"convert (rank 0 of {self.world})"
        bar = tqdm(total=len(indices), unit="img", disable=not self.talk, dynamic_ncols=True, desc=desc)
        try:
            # The decoder always skips ("fail" is enforced here, so the message is the same everywhere) and
            # yields the chunks indices[k*B:(k+1)*B] in order, minus failures: the rows are known on the host
            # without reading batch.indices back from the GPU (a sync per batch); they are checked lazily.
            batches = iter(self.decoder.iterate(self.source, indices, bsz, on_error="skip"))
            while True:
                t0 = time.perf_counter()
                batch = next(batches, None)
                t1 = time.perf_counter()
                self.timing["decode_wait_s"] += t1 - t0
                if batch is None:
                    break
                chunk = indices[position : position + bsz]
                position += bsz
                failed = {int(r) for r, _ in batch.failures}
                rows = chunk[[int(r) not in failed for r in chunk]] if failed else chunk
                got = batch.indices
                if got.device.type == "cpu":
                    if not np.array_equal(got.numpy(), rows):
                        raise RuntimeError("the decoder returned rows in an unexpected order; cannot place features")
                else:
                    expected = torch.from_numpy(rows).pin_memory().to(got.device, non_blocking=True)
                    mismatch |= (got.reshape(-1) != expected).any() if len(rows) else False
                if self.on_error == "fail" and batch.failures:
                    raise UserError(_fail_message(self.source, *batch.failures[0]))
                if len(rows):
                    feats = encoder(batch.images)
                    self.timing["encode_call_s"] += time.perf_counter() - t1
                    if tuple(feats.shape) != (len(rows), self.feature_dim):
                        raise RuntimeError(
                            f"encoder returned {tuple(feats.shape)}, expected ({len(rows)}, {self.feature_dim})"
                        )
                    feats = feats.to(device=dev, dtype=torch.float32)
                    keys = rows // step
                    for k in np.unique(keys):  # one shard per batch unless shards are not batch-aligned
                        sel = np.flatnonzero(keys == k)
                        part = feats[int(sel[0]) : int(sel[-1]) + 1]  # rows ascend: a contiguous slice
                        buf = buffers.setdefault(int(k), _Buffer(by_index[int(k)]))
                        buf.parts.append((rows[sel], part))
                        buf.filled += len(sel)
                for row, reason in batch.failures:
                    buf = buffers.setdefault(int(row) // step, _Buffer(by_index[int(row) // step]))
                    buf.failures.append((int(row), str(reason)))
                    buf.filled += 1
                for buf in [b for b in buffers.values() if b.complete]:
                    flush(buf)
                n = len(chunk)
                processed += n
                bar.update(n)
                if kill_after and processed >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
        finally:
            bar.close()
        if buffers or position < len(indices):
            missing = {k: b.shard.stop - b.shard.start - b.filled for k, b in buffers.items()}
            raise RuntimeError(f"the decoder did not return every row: rows missing per shard {missing}")
        return processed

    def finalize(self, moments: StreamingPCA) -> TargetStore:
        """Fit the PCA, project and standardise every shard in order, and write the store atomically."""
        t_pca = time.perf_counter()
        shards, dev, dim = self.shards, self.device, self.dim
        infos = [s.info() for s in shards]
        n = sum(info["count"] for info in infos)
        if n == 0:
            raise UserError(
                f"{self.source.root}: none of the {self.n_src} files could be decoded; see why with --on-error fail"
            )
        if dim > n - 1:
            raise UserError(
                f"--dim {dim}: only {n} images could be decoded, so PCA has at most {n - 1} components; "
                f"use --dim {max(n - 1, 1)} or less"
            )
        result = moments.finalize(dim)
        # pass 1: per-dimension moments of the projections (per shard, merged in order)
        t_moments = Moments(scatter=False)
        for _, (feats, _) in _load_ahead(shards):
            if len(feats):
                t_moments.merge(Moments(scatter=False).update(result.transform(torch.from_numpy(feats).to(dev))))
        t_std = t_moments.population_std()
        degenerate = int((t_std <= 0).sum())
        t_std = torch.where(t_std > 0, t_std, torch.ones_like(t_std))

        # pass 2: standardise into the memory-mapped targets, rows in source order
        writer = StoreWriter(self.out)
        try:
            targets = writer.targets(n, dim)
            rows_all = np.empty(n, dtype=np.int64)
            offset, skipped = 0, []
            for (_, (feats, rows)), info in zip(_load_ahead(shards), infos):
                if len(rows):
                    y = (result.transform(torch.from_numpy(feats).to(dev)) - t_moments.mean) / t_std
                    targets[offset : offset + len(rows)] = y.float().cpu().numpy()
                    rows_all[offset : offset + len(rows)] = rows
                    offset += len(rows)
                skipped += [[self.paths[r], reason] for r, reason in info["failures"]]
            targets.flush()
            del targets
            writer.array("rows", rows_all)
            if self.source.labels is not None:
                writer.array("labels", np.asarray(self.source.labels, dtype=np.int64)[rows_all])
            writer.array("pca_mean", result.mean.cpu().numpy())
            writer.array("pca_components", result.components.cpu().numpy())
            writer.array("eigenvalues", result.eigenvalues.cpu().numpy())
            writer.array("target_mean", t_moments.mean.cpu().numpy())
            writer.array("target_std", t_std.cpu().numpy())
            classes = getattr(self.source, "classes", None)
            classes = list(classes) if classes else None
            writer.json("source", {"paths": self.paths, "keys": self.keys, "classes": classes})
            writer.json("skipped", skipped)
            t_end = time.perf_counter()
            total = t_end - self.t_start
            eig = result.eigenvalues.cpu().numpy()
            meta = {
                "schema_version": SCHEMA_VERSION,
                "count": n,
                "dim": dim,
                "feature_dim": self.feature_dim,
                "size": self.size,
                "prior": self.prior_id,
                "source": self.fingerprint(),
                "source_count": self.n_src,
                "skipped": len(skipped),
                "decoder": self.decoder.name,
                "eigenvalues": eig.tolist(),
                "explained_variance_ratio": float(eig.sum() / result.total_variance) if result.total_variance else 1.0,
                "statistics": {
                    "feature_mean_norm": float(result.mean.norm()),
                    "feature_total_variance": result.total_variance,
                    "target_mean": t_moments.mean.cpu().tolist(),
                    "target_std": t_std.cpu().tolist(),
                    "degenerate_dims": degenerate,
                },
                "settings": {
                    "batch_size": self.batch_size,
                    "shard_size": self.shard_size,
                    "on_error": self.on_error,
                    "precision": self.precision,
                    "device": str(dev),
                    "world_size": self.world,
                    "reused_shards": self.reused,
                    "features_dir": str(self.work) if self.keep_features else None,
                },
                "timing": {
                    "setup_s": round(self.t_loop - self.t_start, 4),
                    "decode_encode_s": round(self.t_encoded - self.t_loop, 4),
                    # rank 0's split of decode_encode_s: building the fused encoder, waiting for decoded
                    # batches (decode slower than encode when large), host time in encoder calls (on CUDA
                    # only launch time: the GPU runs asynchronously)
                    **{k: round(v, 4) for k, v in self.timing.items()},
                    "pca_store_s": round(t_end - t_pca, 4),
                    "total_s": round(total, 4),
                    "processed_this_run": self.processed,
                    "images_per_s": round(self.processed / total, 2) if total > 0 else 0.0,
                },
                "versions": _versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            writer.json("meta", meta)
            return writer.commit()
        except BaseException:
            writer.abort()
            raise
