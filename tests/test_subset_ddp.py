"""EpochSubset + ScoreBook under torch.distributed: 2 CPU processes (gloo) draw the same global subset,
take disjoint equal-length shards of it, and merge their score updates like one process would."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rela_fast import EpochSubset, ScoreBook, select_subset

N, RATIO, SEED, EPOCHS, WORLD = 203, 0.3, 5, 3, 2


def _losses(idx: torch.Tensor, epoch: int) -> torch.Tensor:
    return ((idx * 7919 + epoch * 104729) % 1000).float() / 1000


def _worker(rank: int, rdzv: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=WORLD)
    try:
        book = ScoreBook(N, momentum=0.5)
        sampler = EpochSubset(book, RATIO, policy="topk", seed=SEED)
        records = []
        for epoch in range(EPOCHS):
            sampler.set_epoch(epoch)
            shard = torch.tensor(list(sampler), dtype=torch.int64)
            records.append((sampler.indices().clone(), shard))
            for s in range(0, shard.numel(), 8):  # a few steps per epoch, each rank its own batches
                idx = shard[s:s + 8]
                book.update(idx, _losses(idx, epoch))
        book.sync()
        torch.save({"records": records, "score": book.score, "seen": book.seen}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_ranks_share_one_subset_and_split_it(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "rdzv"), str(tmp_path)), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    k = round(RATIO * N)
    book = ScoreBook(N, momentum=0.5)  # one process seeing every rank's batches
    for epoch in range(EPOCHS):
        subsets = [res["records"][epoch][0] for res in results]
        shards = [res["records"][epoch][1] for res in results]
        assert torch.equal(subsets[0], subsets[1])
        assert torch.equal(torch.sort(subsets[0]).values, select_subset(book, k, "topk", seed=SEED, epoch=epoch))
        assert [s.numel() for s in shards] == [k // WORLD] * WORLD
        both = torch.cat(shards)
        assert torch.unique(both).numel() == both.numel()
        assert set(both.tolist()) <= set(subsets[0].tolist())
        for shard in shards:
            for s in range(0, shard.numel(), 8):
                idx = shard[s:s + 8]
                book.update(idx, _losses(idx, epoch))
    for res in results:
        assert torch.equal(res["score"], book.score) and torch.equal(res["seen"], book.seen)
