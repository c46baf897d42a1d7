"""InfoBatch as published (policy "infobatch") and its fixed-budget variant ("infobatch_budget").

The reference below is written here from InfoBatch's published rule (Qin et al., ICLR 2024, and its public
code): the score is each sample's latest loss; samples at or above the mean score are kept with weight 1;
each below-mean sample is kept with probability 1 - r and weighted 1 / (1 - r); never-seen samples are kept
with weight 1; from anneal x epochs on, every sample with weight 1. The only thing taken from rela_fast is
the documented random stream (which sample's coin comes up), re-implemented here in numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rela_fast import EpochSubset, ScoreBook, UserError, select_subset
from rela_fast.ops.select import stream_keys
from rela_fast.subset import score_momentum
from rela_fast.subset.policies import INFOBATCH_STREAM, budget_split

INF = float("inf")


# -- the reference, from the published rule ----------------------------------------------------------------


def _fmix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def coin(n: int, seed: int, epoch: int) -> np.ndarray:
    """The documented uniform 32-bit word of each sample index for InfoBatch's keep draw."""
    k0, k1, k2 = (np.uint32(k) for k in stream_keys(seed, epoch, INFOBATCH_STREAM))
    with np.errstate(over="ignore"):
        h = _fmix(np.arange(n, dtype=np.uint32) ^ k0)
        h = _fmix(h + k1)
        return _fmix(h ^ k2)


def reference(scores: torch.Tensor, r: float, seed: int, epoch: int, labels=None):
    """InfoBatch's rule on one epoch: (kept indices ascending, their weights)."""
    s = scores.double().numpy()
    groups = np.zeros(s.size, dtype=np.int64) if labels is None else labels.numpy()
    high = s == INF  # never seen: kept, weight 1
    for g in np.unique(groups):
        member = groups == g
        finite = member & np.isfinite(s)
        if finite.any():
            high |= member & (s >= s[finite].mean())
    kept_low = coin(s.size, seed, epoch).astype(np.int64) < int((1 - r) * 2**32)  # probability 1 - r
    keep = high | kept_low
    idx = np.nonzero(keep)[0]
    w = np.where(high[idx], 1.0, 1.0 / (1.0 - r)).astype(np.float32)
    return torch.from_numpy(idx.astype(np.int64)), torch.from_numpy(w)


def _scores(n: int, seed: int) -> torch.Tensor:
    """Losses with +inf (unseen), -inf, ties and values exactly at the mean."""
    gen = torch.Generator().manual_seed(seed)
    s = torch.rand(n, generator=gen).mul(4).round(decimals=1)  # many ties
    if n >= 10:
        s[[2, 5]] = INF
        s[7] = -INF
        s[8] = float(s[torch.isfinite(s)].double().mean())  # one score near the mean
    return s


# -- the rule, exactly -------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("n", [1, 10, 1000])
def test_matches_the_published_rule(n, r):
    s = _scores(n, n)
    for seed, epoch in [(0, 0), (3, 7), (11, 2)]:
        idx, w = select_subset(s, policy="infobatch", prune_ratio=r, seed=seed, epoch=epoch)
        e_idx, e_w = reference(s, r, seed, epoch)
        assert torch.equal(idx, e_idx) and torch.equal(w, e_w)
        assert idx.dtype == torch.int64 and w.dtype == torch.float32


def test_exact_mean_is_kept_and_every_high_sample_has_weight_one():
    s = torch.tensor([1.0, 2.0, 3.0, INF, 2.0, -INF, 1.5, 2.5])  # finite mean = 2.0
    for epoch in range(20):
        idx, w = select_subset(s, policy="infobatch", prune_ratio=0.5, seed=1, epoch=epoch)
        kept = dict(zip(idx.tolist(), w.tolist()))
        assert all(kept.get(i) == 1.0 for i in (1, 2, 3, 4, 7))  # >= mean, and the unseen one
        assert all(kept[i] == 2.0 for i in kept if i in (0, 5, 6))


def test_stratified_compares_each_sample_with_its_group_mean():
    n = 600
    s = _scores(n, 4)
    labels = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(2)) * 7
    s[labels == 7] += 10  # a group far above the others: a global mean would keep all of it
    idx, w = select_subset(s, policy="infobatch", prune_ratio=0.5, seed=2, epoch=1, labels=labels)
    e_idx, e_w = reference(s, 0.5, 2, 1, labels)
    assert torch.equal(idx, e_idx) and torch.equal(w, e_w)
    assert int((w[labels[idx] == 7] > 1).sum()) > 0


@pytest.mark.parametrize("n", [1, 10, 1000])
def test_backends_draw_the_same_subset(n, triton_interpret):
    s = _scores(n, 9)
    labels = torch.arange(n) % 3
    for lab in (None, labels):
        ref = select_subset(s, policy="infobatch", prune_ratio=0.4, seed=5, epoch=3, labels=lab, backend="reference")
        for backend in ("cpp", "triton"):
            got = select_subset(s, policy="infobatch", prune_ratio=0.4, seed=5, epoch=3, labels=lab, backend=backend)
            assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]), backend


def test_same_seed_and_epoch_same_draw_else_another():
    s = _scores(500, 1)
    a = select_subset(s, policy="infobatch", seed=1, epoch=0)[0]
    assert torch.equal(a, select_subset(s, policy="infobatch", seed=1, epoch=0)[0])
    assert not torch.equal(a, select_subset(s, policy="infobatch", seed=1, epoch=1)[0])
    assert not torch.equal(a, select_subset(s, policy="infobatch", seed=2, epoch=0)[0])


# -- statistics ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [0.5, 0.8])
def test_keep_frequencies_are_binomial(r):
    n, epochs = 2000, 200
    s = torch.rand(n, generator=torch.Generator().manual_seed(0)) ** 3  # skewed, like losses
    high = (s.double() >= s.double().mean()).numpy()
    counts = np.zeros(n)
    sizes = []
    for epoch in range(epochs):
        idx, _ = select_subset(s, policy="infobatch", prune_ratio=r, seed=4, epoch=epoch)
        counts[idx.numpy()] += 1
        sizes.append(idx.numel())
    p = 1 - r
    assert (counts[high] == epochs).all()
    low = counts[~high]
    # every below-mean sample: Binomial(epochs, p); the dispersion statistic is chi-square with |L| dof
    stat = float(((low - epochs * p) ** 2 / (epochs * p * (1 - p))).sum())
    dof = low.size
    assert abs(stat - dof) < 5 * math.sqrt(2 * dof)
    assert abs(low.mean() - epochs * p) < 5 * math.sqrt(epochs * p * (1 - p) / dof)
    # the subset size is random: |H| + Binomial(|L|, p)
    mean_size, var_size = high.sum() + dof * p, dof * p * (1 - p)
    assert abs(np.mean(sizes) - mean_size) < 5 * math.sqrt(var_size / epochs)
    assert 0.5 * var_size < np.var(sizes) < 1.6 * var_size
    # the test has power: a keep probability off by 0.03 is rejected
    assert abs(low.mean() - epochs * (p + 0.03)) > 5 * math.sqrt(epochs * p * (1 - p) / dof)


def test_weighted_sum_is_unbiased_for_the_full_sum():
    n, r, rounds = 300, 0.5, 2000
    gen = torch.Generator().manual_seed(3)
    s = torch.rand(n, generator=gen)
    g = torch.rand(n, generator=gen).double()  # any per-sample quantity, e.g. a loss or a gradient entry
    low = s.double() < s.double().mean()
    total = 0.0
    for t in range(rounds):
        idx, w = select_subset(s, policy="infobatch", prune_ratio=r, seed=t % 7, epoch=t)
        total += float((w.double() * g[idx]).sum())
    sd = math.sqrt(float((g[low] ** 2).sum()) * r / (1 - r) / rounds)  # the estimator's standard error
    assert abs(total / rounds - float(g.sum())) < 4.5 * sd
    assert sd < 0.01 * float(g.sum())  # the tolerance is tight: a 1 % bias would fail


# -- ScoreBook: the latest loss ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_scorebook_with_momentum_zero_keeps_the_latest_loss(backend, request):
    if backend == "triton":
        request.getfixturevalue("triton_interpret")
    assert score_momentum("infobatch") == 0.0 and score_momentum("infobatch_budget") == 0.0
    assert score_momentum("topk") == 0.9
    book = ScoreBook(50, momentum=score_momentum("infobatch"), backend=backend)
    gen = torch.Generator().manual_seed(1)
    latest = torch.full((50,), INF)
    for epoch in range(4):
        idx = torch.randperm(50, generator=gen)[:30]
        loss = torch.rand(30, generator=gen) * 3
        book.update(idx, loss, epoch=epoch)
        latest[idx] = loss
    assert torch.equal(book.score, latest)


def test_infobatch_policies_reject_an_ema_book():
    book = ScoreBook(20)  # momentum 0.9
    with pytest.raises(UserError, match="^scores: policy 'infobatch' scores each sample by its latest loss"):
        select_subset(book, policy="infobatch")
    with pytest.raises(UserError, match="^scores: "):
        EpochSubset(book, policy="infobatch", epochs=4)
    with pytest.raises(UserError, match="^scores: "):
        EpochSubset(book, 0.5, policy="infobatch_budget", epochs=4)
    EpochSubset(book, 0.5, policy="topk")  # EMA books stay fine for the other policies


def test_unseen_samples_are_kept_with_weight_one_and_stay_out_of_the_mean():
    book = ScoreBook(100, momentum=0)
    seen = torch.arange(0, 100, 2)
    book.update(seen, torch.linspace(0, 1, 50) ** 2)
    mean = float((torch.linspace(0, 1, 50) ** 2).double().mean())
    for epoch in range(10):
        idx, w = select_subset(book, policy="infobatch", prune_ratio=0.7, seed=0, epoch=epoch)
        kept = dict(zip(idx.tolist(), w.tolist()))
        assert all(kept.get(i) == 1.0 for i in range(1, 100, 2))
        above = [int(i) for i in seen if float(book.score[i]) >= mean]
        assert all(kept.get(i) == 1.0 for i in above)
        assert all(w == pytest.approx(1 / 0.3) for i, w in kept.items() if i % 2 == 0 and i not in above)
    fresh = ScoreBook(30, momentum=0)  # nothing seen yet: the first epoch is the full data
    idx, w = select_subset(fresh, policy="infobatch", seed=0, epoch=0)
    assert idx.tolist() == list(range(30)) and bool((w == 1).all())
    other = ScoreBook(100, momentum=0, initial=3.0)  # InfoBatch's own initial score: still unseen
    other.update(seen, torch.linspace(0, 1, 50) ** 2)
    assert torch.equal(select_subset(other, policy="infobatch", seed=0, epoch=4)[0],
                       select_subset(book, policy="infobatch", seed=0, epoch=4)[0])
    book.reset()  # e.g. at the hand-over, when the scored loss changes: every sample unseen again
    assert torch.isinf(book.score).all() and int(book.seen.sum()) == 0 and bool((book.last_epoch == -1).all())
    idx, w = select_subset(book, policy="infobatch", seed=0, epoch=3)
    assert idx.numel() == 100 and bool((w == 1).all())


# -- EpochSubset: annealing, lengths, shards, resume ---------------------------------------------------------


def _book(n: int = 200) -> ScoreBook:
    book = ScoreBook(n, momentum=0)
    book.update(torch.arange(n), torch.rand(n, generator=torch.Generator().manual_seed(n)) ** 2)
    return book


def test_anneals_to_the_full_data_from_anneal_times_epochs():
    book = _book()
    for epochs, anneal, first_full in [(8, None, 7), (10, None, 9), (10, 0.5, 5), (40, 0.875, 35), (3, 0.3, 1)]:
        sampler = EpochSubset(book, policy="infobatch", epochs=epochs, anneal=anneal, seed=1)
        assert sampler.anneal_epoch == first_full
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            order = list(sampler)
            w = sampler.weights_for(torch.tensor(order))
            if epoch >= first_full:
                assert sampler.current_policy() == "full" and sorted(order) == list(range(200))
                assert bool((w == 1).all()) and len(sampler) == 200
            else:
                assert sampler.current_policy() == "infobatch"
                assert sorted(order) == select_subset(book, policy="infobatch", seed=1, epoch=epoch)[0].tolist()
                assert len(order) == len(sampler) < 200 and bool((w > 1).any())
    never = EpochSubset(book, policy="infobatch", anneal=False)
    never.set_epoch(10**6)
    assert never.current_policy() == "infobatch"
    with pytest.raises(UserError, match="^epochs: "):
        EpochSubset(book, policy="infobatch")
    with pytest.raises(UserError, match="^anneal: "):
        EpochSubset(book, policy="infobatch", epochs=4, anneal=1.5)


def test_budget_variant_anneals_to_random_at_its_budget():
    book = _book()
    sampler = EpochSubset(book, 0.25, policy="infobatch_budget", epochs=8, seed=3)
    sampler.set_epoch(7)
    order = list(sampler)
    assert sampler.current_policy() == "random" and len(order) == 50
    assert sorted(order) == select_subset(200, 50, "random", seed=3, epoch=7).tolist()
    assert bool((sampler.weights_for(torch.tensor(order)) == 1).all())


def test_epoch_subset_weights_match_select_subset():
    book = _book()
    sampler = EpochSubset(book, policy="infobatch", prune_ratio=0.6, epochs=10, seed=4)
    sampler.set_epoch(2)
    idx, w = select_subset(book, policy="infobatch", prune_ratio=0.6, seed=4, epoch=2)
    assert torch.equal(torch.sort(sampler.indices()).values, idx)
    assert torch.equal(sampler.weights_for(idx), w)
    outside = torch.tensor(sorted(set(range(200)) - set(idx.tolist()))[:3])
    assert bool((sampler.weights_for(outside) == 0).all())


@pytest.mark.parametrize("pad", [False, True])
def test_rank_shards_are_disjoint_and_cover_the_subset(pad):
    book, world = _book(203), 3
    for epoch in range(3):
        shards = []
        for rank in range(world):
            s = EpochSubset(book, policy="infobatch", epochs=10, seed=6, rank=rank, world_size=world, pad=pad)
            s.set_epoch(epoch)
            shards.append(list(s))
            assert len(s) == len(shards[-1])
        order = s.indices().tolist()
        m = len(order)
        assert [len(sh) for sh in shards] == [math.ceil(m / world) if pad else m // world] * world
        flat = [i for sh in shards for i in sh]
        if pad:
            assert set(flat) == set(order)
        else:
            assert len(set(flat)) == len(flat) == world * (m // world) and set(flat) <= set(order)
            assert len(set(order) - set(flat)) == m % world


def test_resume_mid_epoch_continues_the_same_subset():
    book = _book()
    sampler = EpochSubset(book, policy="infobatch", epochs=10, seed=2)
    sampler.set_epoch(3)
    it = iter(sampler)
    head = [next(it) for _ in range(25)]
    state = sampler.state_dict()
    book.update(torch.arange(200), torch.rand(200))  # the book moves on; the resumed epoch must not redraw
    other = EpochSubset(book, policy="infobatch", epochs=10, seed=2)
    other.load_state_dict(state)
    assert head + list(other) == list(sampler)
    assert torch.equal(other.weights_for(torch.tensor(head)), sampler.weights_for(torch.tensor(head)))
    with pytest.raises(UserError, match="^state_dict: "):
        EpochSubset(book, policy="infobatch", prune_ratio=0.3, epochs=10, seed=2).load_state_dict(state)


def test_arguments():
    s = torch.rand(10)
    with pytest.raises(UserError, match="^k: policy 'infobatch' keeps a random number"):
        select_subset(s, 5, "infobatch")
    with pytest.raises(UserError, match="^k: policy 'topk' needs"):
        select_subset(s, policy="topk")
    with pytest.raises(UserError, match="^prune_ratio: "):
        select_subset(s, policy="infobatch", prune_ratio=1.0)
    with pytest.raises(UserError, match="^prune_ratio: "):
        select_subset(s, policy="infobatch", prune_ratio=-0.1)
    with pytest.raises(UserError, match="^ratio, k: policy 'infobatch'"):
        EpochSubset(_book(10), 0.5, policy="infobatch", epochs=3)
    with pytest.raises(UserError, match="^ratio, k: give exactly one"):
        EpochSubset(_book(10), policy="infobatch_budget", epochs=3)


# -- infobatch_budget ---------------------------------------------------------------------------------------


def _split(n_high: int, n_low: int, k: int, r: float) -> int:
    """The budget split written out: k shared as |H| : (1 - r)|L|, each class at least 1 (k >= 2), at most all."""
    if n_low == 0:
        return k
    if n_high == 0:
        return 0
    want = math.floor(k * n_high / (n_high + (1 - r) * n_low) + 0.5)
    lo, hi = max(k - n_low, 1 if k >= 2 else 0), min(n_high, k - 1 if k >= 2 else k)
    return min(max(want, lo), hi)


def test_budget_split_rule():
    for n_high, n_low, k, r in [(30, 70, 20, 0.5), (30, 70, 65, 0.5), (30, 70, 100, 0.5), (99, 1, 10, 0.5),
                                (1, 99, 10, 0.9), (40, 60, 2, 0.5), (40, 60, 1, 0.5), (0, 5, 3, 0.5), (5, 0, 3, 0.5)]:
        assert budget_split(n_high, n_low, k, r) == _split(n_high, n_low, k, r)
    assert budget_split(30, 70, 65, 0.5) == 30  # InfoBatch's expected size: all of H, (1 - r) of L


@pytest.mark.parametrize("k", [6, 20, 45])
def test_budget_variant_is_unbiased_and_below_mean_keeps_a_share(k):
    """The old k < |H| case drew from H only (65 % of the full sum in the issue); now both classes share k."""
    n, rounds = 60, 3000
    gen = torch.Generator().manual_seed(8)
    s = torch.rand(n, generator=gen) ** 0.3  # most samples above the mean: |H| > k for small k
    g = torch.rand(n, generator=gen).double() + 0.5
    high = (s.double() >= s.double().mean())
    n_high, n_low = int(high.sum()), int((~high).sum())
    k_high = _split(n_high, n_low, k, 0.5)
    assert k - k_high >= 1
    sums = []
    for t in range(rounds):
        idx, w = select_subset(s, k, "infobatch_budget", seed=t % 5, epoch=t)
        assert idx.numel() == k and int(high[idx].sum()) == k_high
        assert torch.allclose(w[high[idx]], torch.tensor(n_high / k_high)) if k_high else True
        assert torch.allclose(w[~high[idx]], torch.tensor(n_low / (k - k_high)))
        sums.append(float((w.double() * g[idx]).sum()))
    sd = float(np.std(sums)) / math.sqrt(rounds)
    assert abs(float(np.mean(sums)) - float(g.sum())) < 4.5 * sd
    assert sd < 0.01 * float(g.sum())


@pytest.mark.gpu
def test_cuda_draws_what_the_cpu_draws():
    n = 1_000_003
    s = _scores(n, 8)
    labels = torch.arange(n) % 7
    for lab in (None, labels):
        cpu = select_subset(s, policy="infobatch", seed=2, epoch=5, labels=lab, backend="cpp")
        gpu = select_subset(s.cuda(), policy="infobatch", seed=2, epoch=5, labels=None if lab is None else lab.cuda())
        assert gpu[0].is_cuda and torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])
