"""convert(): settings -> inputs -> reuse / refuse / resume -> shard encoder -> finalizer -> store.

Data flows one way: nothing returns from the store, the PCA or the encoder into an earlier step.
Under ``torchrun`` rank r computes every K-th pending shard; after a barrier rank 0 merges all shards in
order (the same arithmetic as one process), fits the PCA and commits the store; the others open it.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from rela_fast.conversion.compat import decide
from rela_fast.conversion.encode import ShardEncoder, fail_message
from rela_fast.conversion.finalize import Finalizer
from rela_fast.conversion.inputs import ConversionInputs, open_inputs
from rela_fast.conversion.report import Timing, log, summary
from rela_fast.conversion.settings import ConvertSettings
from rela_fast.conversion.shards import OrderedMerge, ShardPlan
from rela_fast.conversion.workdir import claim_message, first_kept_failure, output_lock, prepare_work
from rela_fast.distributed import rank_and_world
from rela_fast.errors import UserError
from rela_fast.ownership import WORK_KIND, remove_if_ours
from rela_fast.targets import TargetStore


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
    verify_content: bool = False,
) -> TargetStore:
    """Convert ``src`` into a ReLA target store at ``out`` (docs/ALGORITHM.md#conversion-rela-d) and return it opened.

    ``src``: image folder, file list, webdataset tars, IDX folder, array/tensor, or a Source object.
    ``prior``: ``"timm:NAME"``, ``"torchscript:FILE"``, ``"run:DIR"`` (a ``rela-fast train`` run's
    backbone), a registered name, or an ``nn.Module``. ``size``: S (default: the prior's input size).
    ``dim``: d (default: the feature width P; pass min(F, P) for a student of width F). ``on_error``:
    ``"skip"`` lists undecodable files in ``store.skipped``; ``"fail"`` stops at the first. ``overwrite``
    replaces a store of ours made from other data or settings (never a folder rela_fast did not make);
    ``keep_features`` keeps ``<out>.work`` so a later change is recomputed incrementally;
    ``verify_content`` identifies files by a hash of their bytes instead of size + mtime. ``cuda_graph``
    (default: on CUDA) captures the encoder with a fixed batch. Under torchrun, call
    :func:`rela_fast.distributed.init_from_env` (or init torch.distributed) first: ranks split the shards.
    """
    timing = Timing()
    settings = ConvertSettings.create(
        out, size=size, dim=dim, batch_size=batch_size, shard_size=shard_size, decoder=decoder,
        device=None if device is None else str(device), on_error=on_error, progress=bool(progress),
        overwrite=bool(overwrite), keep_features=bool(keep_features), precision=precision, compile=bool(compile),
        cuda_graph=cuda_graph, num_threads=num_threads, verify_content=bool(verify_content),
    )
    rank, world = rank_and_world()
    inputs = open_inputs(settings, src, prior, weights, labels, world, timing)
    lock = output_lock(settings.out) if rank == 0 else None
    try:
        broadcast_error(world, lock.try_acquire() if lock is not None else None)
        return _Run(settings, inputs, rank, world, timing).run()
    finally:
        if lock is not None:
            lock.release()


class _Run:
    """The steps of one conversion after its inputs are open (all ranks run them)."""

    def __init__(self, settings: ConvertSettings, inputs: ConversionInputs, rank: int, world: int,
                 timing: Timing) -> None:
        self.settings, self.inputs, self.rank, self.world, self.timing = settings, inputs, rank, world, timing
        self.talk = settings.progress and rank == 0
        self.plan = ShardPlan(settings.work, inputs.n_src, settings.shard_size, inputs.paths, inputs.keys)

    def run(self) -> TargetStore:
        broadcast_error(self.world, self._claims() if self.rank == 0 else None)
        with self.timing.stage("reuse_check_s"):
            decision = decide(self.settings, self.inputs)
        if decision.store is not None:
            log(self.talk, f"{self.settings.out} is up to date ({len(decision.store)} x {decision.store.dim})")
            if self.rank == 0 and not self.settings.keep_features:
                remove_if_ours(self.settings.work)  # left by a run killed right after its commit
            return decision.store
        if decision.stale:
            log(self.talk, f"{self.settings.out} is stale ({decision.stale}); updating it")
        log(self.talk, dim_choice(self.settings.dim, self.inputs.dim, self.inputs.feature_dim))
        with self.timing.stage("prepare_s"):
            self._prepare()
            finished = self.plan.finished()
        reused = len(finished)
        pending = [s for s in self.plan.shards if s.index not in finished]
        if reused:
            log(self.talk, f"resuming, {reused} of {len(self.plan)} shard(s) already done")
        merge = OrderedMerge(self.plan.shards, self.inputs.device) if self.world == 1 else None
        if merge is not None:
            with self.timing.stage("shard_moments_s"):
                merge.advance(finished)
        self.timing.loop = time.perf_counter()
        self.timing.processed = self._encode(pending[self.rank :: self.world], merge, finished)
        self.timing.encoded = time.perf_counter()
        store = self._finish(merge, reused) if self.rank == 0 else None
        barrier(self.world)
        store = store if store is not None else TargetStore(self.settings.out)
        log(self.talk, summary(store, self.settings.out))
        return store

    def _claims(self) -> str | None:
        """Rank 0: the work folder must be ours (or absent/empty) before anything is written."""
        return claim_message(self.settings.work, "rela-fast convert keeps its feature shards there", WORK_KIND)

    def _prepare(self) -> None:
        """Rank 0 drops shards that no longer match; on_error=fail refuses kept failures; all ranks agree."""
        message = None
        if self.rank == 0:
            inputs = self.inputs
            plan_settings = ShardPlan.settings(inputs.prior_id, inputs.size, inputs.feature_dim,
                                               self.settings.shard_size, inputs.decoder.name)
            for note in prepare_work(self.plan, plan_settings, inputs.feature_dim, self.settings.out):
                log(self.talk, note)
            failure = first_kept_failure(self.plan) if self.settings.on_error == "fail" else None
            message = fail_message(self.inputs, *failure) if failure else None
        barrier(self.world)
        broadcast_error(self.world, message)

    def _encode(self, mine, merge, finished) -> int:
        processed = 0
        if mine:
            desc = "convert" if self.world == 1 else f"convert (rank 0 of {self.world})"
            encoder = ShardEncoder(self.inputs, self.settings, self.plan, self.rank, self.timing)
            processed = encoder.run(mine, merge, finished, self.talk, desc)
        barrier(self.world)
        return sum_over_ranks(self.world, processed, self.inputs.device)

    def _finish(self, merge: OrderedMerge | None, reused: int) -> TargetStore:
        missing = [s.index for s in self.plan.shards if not s.exists()]
        if missing:
            raise RuntimeError(f"conversion incomplete: shards {missing[:5]} missing after every rank finished")
        if merge is None:
            merge = OrderedMerge(self.plan.shards, self.inputs.device)
        with self.timing.stage("shard_moments_s"):
            merge.advance({s.index for s in self.plan.shards})
        store = Finalizer(self.inputs, self.settings, self.plan, self.timing, self.world, reused).run(merge.total)
        if not self.settings.keep_features:
            remove_if_ours(self.settings.work)
        return store


# -- collectives (no-ops in one process) ---------------------------------------------------------------
def dim_choice(asked: int | None, dim: int, width: int) -> str:
    """The line that says which target width d this conversion uses, and why."""
    if asked is not None:
        return f"d = {dim} (--dim; the prior's feature width is P = {width})"
    return (f"d = {dim}: the prior's feature width P (no --dim); docs/ALGORITHM.md uses d = min(F, P) for a student of "
            f"width F, and `rela-fast train` keeps the first F columns of a wider store")


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def broadcast_error(world: int, message: str | None) -> None:
    """Rank 0 decides; every rank raises the same UserError (so no rank waits forever at a barrier)."""
    if world > 1:
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message:
        raise UserError(message)


def sum_over_ranks(world: int, value: int, device: torch.device) -> int:
    if world == 1:
        return value
    import torch.distributed as dist

    count = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(count)
    return int(count.item())
