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
# policy -> (ScoreBook momentum, EpochSubset size arguments); infobatch: no budget, the latest loss
SETTINGS = {"topk": (0.5, {"ratio": RATIO}), "infobatch": (0.0, {"epochs": 4})}


def _losses(idx: torch.Tensor, epoch: int) -> torch.Tensor:
    return ((idx * 7919 + epoch * 104729) % 1000).float() / 1000


def _worker(rank: int, rdzv: str, out: str, policy: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rdzv}", rank=rank, world_size=WORLD)
    try:
        momentum, size = SETTINGS[policy]
        book = ScoreBook(N, momentum=momentum)
        sampler = EpochSubset(book, policy=policy, seed=SEED, **size)
        records = []
        for epoch in range(EPOCHS):
            sampler.set_epoch(epoch)
            shard = torch.tensor(list(sampler), dtype=torch.int64)
            records.append((sampler.indices().clone(), shard, len(sampler)))
            for s in range(0, shard.numel(), 8):  # a few steps per epoch, each rank its own batches
                idx = shard[s:s + 8]
                book.update(idx, _losses(idx, epoch))
        book.sync()
        torch.save({"records": records, "score": book.score, "seen": book.seen}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _expected(book: ScoreBook, policy: str, epoch: int) -> torch.Tensor:
    if policy == "infobatch":
        return select_subset(book, policy="infobatch", seed=SEED, epoch=epoch)[0]
    return select_subset(book, round(RATIO * N), policy, seed=SEED, epoch=epoch)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("policy", sorted(SETTINGS))
def test_two_ranks_share_one_subset_and_split_it(tmp_path, policy):
    mp.spawn(_worker, args=(str(tmp_path / "rdzv"), str(tmp_path), policy), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    book = ScoreBook(N, momentum=SETTINGS[policy][0])  # one process seeing every rank's batches
    for epoch in range(EPOCHS):
        subsets = [res["records"][epoch][0] for res in results]
        shards = [res["records"][epoch][1] for res in results]
        assert torch.equal(subsets[0], subsets[1])
        assert torch.equal(torch.sort(subsets[0]).values, _expected(book, policy, epoch))
        m = subsets[0].numel()
        assert [s.numel() for s in shards] == [m // WORLD] * WORLD == [r["records"][epoch][2] for r in results]
        both = torch.cat(shards)
        assert torch.unique(both).numel() == both.numel()
        left_out = set(subsets[0].tolist()) - set(both.tolist())
        assert set(both.tolist()) <= set(subsets[0].tolist()) and len(left_out) == m % WORLD
        for shard in shards:
            for s in range(0, shard.numel(), 8):
                idx = shard[s:s + 8]
                book.update(idx, _losses(idx, epoch))
    for res in results:
        assert torch.equal(res["score"], book.score) and torch.equal(res["seen"], book.seen)
