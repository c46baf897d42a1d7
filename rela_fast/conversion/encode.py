"""ShardEncoder: this rank's shards through decoder and fused prior, each shard written when complete.

The decoder always skips undecodable rows (``on_error="fail"`` is enforced here, so the message is the
same everywhere) and yields the chunks ``indices[k*B:(k+1)*B]`` in order, minus failures: the rows are
known on the host without reading ``batch.indices`` back from the GPU (a sync per batch); on CUDA they are
checked lazily, per shard. Features must be finite: checked per batch on the CPU, per shard on CUDA (no
sync per batch); the first non-finite row stops the run with a one-line error naming its file.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from rela_fast.conversion.inputs import ConversionInputs
from rela_fast.conversion.report import Timing
from rela_fast.conversion.settings import ConvertSettings
from rela_fast.conversion.shards import OrderedMerge, Shard, ShardPlan, shard_moments
from rela_fast.encoder.engine import release_free_heap
from rela_fast.errors import UserError

# Test hook: SIGKILL this process once it has processed at least this many rows (resume tests).
KILL_AFTER_ROWS_ENV = "RELA_FAST_CONVERT_KILL_AFTER_ROWS"
CPU_CHUNK = 32  # images per encoder call on the CPU: activations of 32, not 128, images (see encoder_chunk)


def encoder_chunk(device: torch.device, batch_size: int) -> int:
    """Images per forward pass. On the CPU, resnet18's activations at 224 px take ~6 MB per image per
    layer, so batch 128 needs ~1 GB of activations for no speed gain over 32 (oneDNN is as fast per
    image at 32); on CUDA the whole batch (one CUDA-graph replay)."""
    return min(batch_size, CPU_CHUNK) if device.type == "cpu" else batch_size


def fail_message(inputs: ConversionInputs, row: int, reason: str) -> str:
    return f"{inputs.name(row)}: cannot decode ({reason}); fix or remove it, or use --on-error skip"


@dataclass
class _Buffer:
    """A shard being filled: (rows, features) parts as batches arrive, plus the rows that failed."""

    shard: Shard
    parts: list[tuple[np.ndarray, torch.Tensor]] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    filled: int = 0

    @property
    def complete(self) -> bool:
        return self.filled == self.shard.size

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


class ShardAssembler:
    """Collects each batch's features (and failures) into the shards they belong to; writes a shard
    atomically as soon as it is complete and, in one process, feeds its moments to the ordered merge."""

    def __init__(self, inputs: ConversionInputs, plan: ShardPlan, mine: list[Shard], rank: int,
                 merge: OrderedMerge | None, finished: set[int], timing: Timing | None = None) -> None:
        self.inputs, self.plan, self.rank, self.merge, self.finished = inputs, plan, rank, merge, finished
        self.timing = timing if timing is not None else Timing()
        self.device = inputs.device
        self.by_index = {s.index: s for s in mine}
        self.buffers: dict[int, _Buffer] = {}
        self.lazy_bad = torch.zeros((), dtype=torch.bool, device=self.device)  # CUDA: row order, per shard

    def add_features(self, rows: np.ndarray, feats: torch.Tensor) -> None:
        width = self.inputs.feature_dim
        if tuple(feats.shape) != (len(rows), width):
            raise RuntimeError(f"encoder returned {tuple(feats.shape)}, expected ({len(rows)}, {width})")
        feats = feats.to(device=self.device, dtype=torch.float32)
        if feats.device.type == "cpu":
            self._check_finite(rows, feats)
        keys = rows // self.plan.shard_size
        for k in np.unique(keys):  # one shard per batch unless shards are not batch-aligned
            sel = np.flatnonzero(keys == k)
            buf = self._buffer(int(k))
            buf.parts.append((rows[sel], feats[int(sel[0]) : int(sel[-1]) + 1]))  # rows ascend: a slice
            buf.filled += len(sel)

    def add_failures(self, failures: list[tuple[int, str]]) -> None:
        for row, reason in failures:
            buf = self._buffer(int(row) // self.plan.shard_size)
            buf.failures.append((int(row), str(reason)))
            buf.filled += 1

    def flush_complete(self) -> None:
        for buf in [b for b in self.buffers.values() if b.complete]:
            self._flush(buf)

    def missing(self) -> dict[int, int]:
        """Rows still missing per unfinished shard (empty when every shard was written)."""
        return {k: b.shard.size - b.filled for k, b in self.buffers.items()}

    def _buffer(self, index: int) -> _Buffer:
        if index not in self.buffers:
            self.buffers[index] = _Buffer(self.by_index[index])
        return self.buffers[index]

    def _check_finite(self, rows: np.ndarray, feats: torch.Tensor) -> None:
        bad = ~torch.isfinite(feats).all(dim=1)
        if bool(bad.any()):
            j = int(torch.nonzero(bad)[0])
            raise UserError(
                f"{self.inputs.name(int(rows[j]))}: the prior gave non-finite features (NaN or inf) for this image "
                f"(batch of source rows {int(rows[0])}..{int(rows[-1])}); nothing was written. Check the prior and "
                "its --weights"
            )

    def _flush(self, buf: _Buffer) -> None:
        rows, feats = buf.gather(self.inputs.feature_dim, self.device)
        if feats.device.type != "cpu":
            if bool(self.lazy_bad):
                raise RuntimeError("the decoder returned rows in an unexpected order; cannot place features")
            self._check_finite(rows, feats)
        shard = buf.shard
        with self.timing.stage("shard_write_s"):
            shard.write(feats.cpu().numpy(), rows, sorted(buf.failures), self.plan.digest(shard), self.rank)
        if self.merge is not None:
            with self.timing.stage("shard_moments_s"):
                self.merge.offer(shard.index, shard_moments(feats, self.device))
                self.finished.add(shard.index)
                self.merge.advance(self.finished)
        del self.buffers[shard.index], buf, feats
        if self.device.type == "cpu":
            release_free_heap()  # flat memory over long runs (see its docstring)


class ShardEncoder:
    """Runs once per rank: ``run(mine, merge, finished)`` decodes and encodes this rank's shards and
    returns the number of rows it processed."""

    def __init__(self, inputs: ConversionInputs, settings: ConvertSettings, plan: ShardPlan, rank: int,
                 timing: Timing) -> None:
        self.inputs, self.settings, self.plan, self.rank, self.timing = inputs, settings, plan, rank, timing

    def build(self):
        from rela_fast.encoder import build_encoder

        s, device, t0 = self.settings, self.inputs.device, time.perf_counter()
        encoder = build_encoder(
            self.inputs.model, self.inputs.cfg, device=device, size=self.inputs.size, precision=s.precision,
            compile=s.compile, cuda_graph=device.type == "cuda" if s.cuda_graph is None else bool(s.cuda_graph),
            batch_size=encoder_chunk(device, s.batch_size),
        )
        self.timing.add("encoder_build_s", time.perf_counter() - t0)
        return encoder

    def run(self, mine: list[Shard], merge: OrderedMerge | None, finished: set[int], progress: bool, desc: str) -> int:
        from rela_fast.progress import progress_bar

        shards = ShardAssembler(self.inputs, self.plan, mine, self.rank, merge, finished, self.timing)
        encoder = self.build()
        kill_after = int(os.environ.get(KILL_AFTER_ROWS_ENV, "0") or 0)
        indices = np.concatenate([np.arange(s.start, s.stop, dtype=np.int64) for s in mine])
        bsz = self.settings.batch_size
        batches = iter(self.inputs.decoder.iterate(self.inputs.source, indices, bsz, on_error="skip"))
        processed = 0
        with progress_bar(len(indices), desc, unit="img", enabled=progress) as bar:
            while True:
                t0 = time.perf_counter()
                batch = next(batches, None)
                self.timing.add("decode_wait_s", time.perf_counter() - t0)
                if batch is None:
                    break
                chunk = indices[processed : processed + bsz]
                rows = self._rows(chunk, batch, shards)
                if len(rows):
                    t1 = time.perf_counter()
                    shards.add_features(rows, encoder(batch.images))
                    self.timing.add("encode_call_s", time.perf_counter() - t1)
                shards.add_failures(batch.failures)
                shards.flush_complete()
                processed += len(chunk)
                bar.update(len(chunk))
                if kill_after and processed >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
        if shards.missing() or processed < len(indices):
            raise RuntimeError(f"the decoder did not return every row: rows missing per shard {shards.missing()}")
        return processed

    def _rows(self, chunk: np.ndarray, batch, shards: ShardAssembler) -> np.ndarray:
        """The source rows of this batch's images (the chunk minus failures), checked against the decoder."""
        if self.settings.on_error == "fail" and batch.failures:
            raise UserError(fail_message(self.inputs, *batch.failures[0]))
        failed = {int(r) for r, _ in batch.failures}
        rows = chunk[[int(r) not in failed for r in chunk]] if failed else chunk
        got = batch.indices
        if got.device.type == "cpu":
            if not np.array_equal(got.numpy(), rows):
                raise RuntimeError("the decoder returned rows in an unexpected order; cannot place features")
        elif len(rows):
            expected = torch.from_numpy(rows).pin_memory().to(got.device, non_blocking=True)
            shards.lazy_bad |= (got.reshape(-1) != expected).any()
        return rows
