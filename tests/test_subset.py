"""Dynamic subsets: select_subset policies, ScoreBook, EpochSubset and prior_scores."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import rela_fast
from rela_fast import EpochSubset, ScoreBook, UserError, prior_scores, select_subset
from rela_fast.subset import largest_remainder

POLICIES = ("random", "topk", "bottomk", "weighted", "infobatch_budget")  # the budget policies (infobatch:
# tests/test_infobatch.py)


def chi2_critical(df: int, z: float = 3.719) -> float:
    """Upper chi-square quantile at p = 1e-4 (Wilson-Hilferty; z is the normal 1e-4 quantile)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi2(counts: dict, probs: dict, trials: int) -> float:
    return sum((counts.get(c, 0) - trials * p) ** 2 / (trials * p) for c, p in probs.items())


def _scores(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    s = torch.rand(n, generator=gen) * 4
    s[torch.randint(n, (n // 4 + 1,), generator=gen)] = 1.0  # ties
    if n >= 10:
        s[[2, 5]] = float("inf")
        s[7] = 0.0
    return s


def _run(scores, k, policy, labels, backend):
    out = select_subset(scores, k, policy, seed=3, epoch=4, labels=labels, backend=backend)
    return out if policy == "infobatch_budget" else (out, None)


# -- contract and cross-backend equality --------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("n", [1, 7, 1000])
@pytest.mark.parametrize("stratified", [False, True])
def test_backends_agree_and_contract_holds(n, policy, stratified, triton_interpret):
    scores = _scores(n, n)
    labels = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(1)) * 3 if stratified else None
    for k in sorted({0, 1, n // 2, n}):
        idx, w = _run(scores, k, policy, labels, "reference")
        assert idx.dtype == torch.int64 and idx.shape == (k,) and idx.device == scores.device
        assert torch.unique(idx).numel() == k and (k == 0 or (int(idx.min()) >= 0 and int(idx.max()) < n))
        assert torch.equal(idx, torch.sort(idx).values)
        if policy == "infobatch_budget":
            assert w.shape == (k,) and w.dtype == torch.float32 and bool((w >= 1).all())
        for backend in ("cpp", "triton"):
            idx2, w2 = _run(scores, k, policy, labels, backend)
            assert torch.equal(idx2, idx), (backend, k)
            if policy == "infobatch_budget":
                assert torch.equal(w2, w)


@pytest.mark.parametrize("policy", ["infobatch_budget", "topk", "weighted"])
def test_backends_agree_at_a_million(policy):
    n = 1_000_003
    scores = _scores(n, 5)
    labels = torch.arange(n) % 10 if policy == "topk" else None
    ref = _run(scores, n // 2, policy, labels, "reference")
    got = _run(scores, n // 2, policy, labels, "cpp")
    assert torch.equal(ref[0], got[0])
    if policy == "infobatch_budget":
        assert torch.equal(ref[1], got[1])


def test_same_seed_same_draw_other_epoch_other_draw():
    a = select_subset(500, 50, "random", seed=1, epoch=0)
    assert torch.equal(a, select_subset(500, 50, "random", seed=1, epoch=0))
    assert not torch.equal(a, select_subset(500, 50, "random", seed=1, epoch=1))
    assert not torch.equal(a, select_subset(500, 50, "random", seed=2, epoch=0))
    # random ignores the scores: the same draw as from the count alone
    assert torch.equal(a, select_subset(torch.rand(500), 50, "random", seed=1, epoch=0))


def test_topk_bottomk_follow_scores():
    s = torch.tensor([0.5, 3.0, float("inf"), 3.0, -float("inf"), 0.5, -1.0])
    assert select_subset(s, 3, "topk").tolist() == [1, 2, 3]
    assert select_subset(s, 2, "topk").tolist() == [1, 2]  # tie at 3.0 goes to the lower index
    assert select_subset(s, 3, "bottomk").tolist() == [0, 4, 6]


# -- statistics ------------------------------------------------------------------------------------------


def test_random_draws_every_pair_equally_often():
    n, k, trials = 6, 2, 3000
    counts: dict = {}
    for epoch in range(trials):
        pair = tuple(select_subset(n, k, "random", seed=11, epoch=epoch).tolist())
        counts[pair] = counts.get(pair, 0) + 1
    pairs = list(itertools.combinations(range(n), k))
    uniform = {p: 1 / len(pairs) for p in pairs}
    assert set(counts) <= set(pairs)
    assert chi2(counts, uniform, trials) < chi2_critical(len(pairs) - 1)
    # the test has power: a mildly wrong law (one pair twice as likely) is rejected
    skew = {p: (2 if p == (0, 1) else 1) / (len(pairs) + 1) for p in pairs}
    assert chi2(counts, skew, trials) > chi2_critical(len(pairs) - 1)


def test_random_inclusion_is_uniform_over_a_large_population():
    n, k, epochs = 1000, 100, 300
    counts = torch.zeros(n)
    for epoch in range(epochs):
        counts[select_subset(n, k, "random", seed=5, epoch=epoch)] += 1
    expected = epochs * k / n
    stat = float(((counts - expected) ** 2 / expected).sum())
    assert stat < chi2_critical(n - 1)
    # neighbouring indices are not correlated: halves of the index range get equal shares
    assert abs(float(counts[: n // 2].sum() - counts[n // 2:].sum())) < 6 * math.sqrt(epochs * k / 2)


def test_weighted_pairs_follow_successive_sampling():
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 0.0])
    total, trials = float(w.sum()), 4000
    probs = {}
    for i, j in itertools.combinations(range(4), 2):
        wi, wj = float(w[i]), float(w[j])
        probs[(i, j)] = wi / total * wj / (total - wi) + wj / total * wi / (total - wj)
    counts: dict = {}
    for epoch in range(trials):
        pair = tuple(select_subset(w, 2, "weighted", seed=7, epoch=epoch).tolist())
        counts[pair] = counts.get(pair, 0) + 1
    assert set(counts) <= set(probs), "a zero-weight sample was drawn"
    assert chi2(counts, probs, trials) < chi2_critical(len(probs) - 1)
    uniform = {p: 1 / len(probs) for p in probs}
    assert chi2(counts, uniform, trials) > chi2_critical(len(probs) - 1)


def test_weighted_single_draw_is_proportional():
    w = torch.arange(1.0, 11.0)
    trials = 5500
    counts: dict = {}
    for epoch in range(trials):
        i = int(select_subset(w, 1, "weighted", seed=9, epoch=epoch))
        counts[i] = counts.get(i, 0) + 1
    probs = {i: float(w[i] / w.sum()) for i in range(10)}
    assert chi2(counts, probs, trials) < chi2_critical(9)


def test_weighted_zero_weights_only_fill_up():
    w = torch.tensor([0.0, 2.0, 0.0, 1.0, 0.0, 5.0, 0.0, 0.0])
    seen_zero = set()
    for epoch in range(60):
        assert set(select_subset(w, 3, "weighted", seed=1, epoch=epoch).tolist()) == {1, 3, 5}
        idx = set(select_subset(w, 5, "weighted", seed=1, epoch=epoch).tolist())
        assert {1, 3, 5} <= idx
        seen_zero |= idx - {1, 3, 5}
    assert seen_zero == {0, 2, 4, 6, 7}  # the fill-up is random over all zero-weight samples
    w[5] = float("inf")
    assert 5 in select_subset(w, 1, "weighted", seed=1, epoch=0).tolist()


# -- stratified --------------------------------------------------------------------------------------------


def test_largest_remainder():
    assert largest_remainder([500, 300, 150, 45, 5], 100) == [50, 30, 15, 5, 0]
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        counts = (torch.randint(0, 30, (7,), generator=gen)).tolist()
        if sum(counts) == 0:
            continue
        k = int(torch.randint(0, sum(counts) + 1, (1,), generator=gen))
        q = largest_remainder(counts, k)
        assert sum(q) == k
        exact = [k * c / sum(counts) for c in counts]
        assert all(math.floor(e) <= x <= math.ceil(e) for x, e in zip(q, exact))


@pytest.mark.parametrize("policy", ["topk", "random", "weighted", "infobatch_budget"])
def test_stratified_keeps_every_group_share(policy):
    sizes = [500, 300, 150, 45, 5]
    labels = torch.cat([torch.full((c,), g * 10 + 3) for g, c in enumerate(sizes)])
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(1))]
    scores = torch.rand(labels.numel(), generator=torch.Generator().manual_seed(2))
    out = select_subset(scores, 100, policy, seed=4, epoch=1, labels=labels)
    idx = out[0] if policy == "infobatch_budget" else out
    got = [int((labels[idx] == g * 10 + 3).sum()) for g in range(len(sizes))]
    assert got == largest_remainder(sizes, 100)
    if policy == "topk":
        for g in range(len(sizes)):
            members = torch.nonzero(labels == g * 10 + 3).flatten()
            best = members[torch.argsort(scores[members], descending=True)[: got[g]]]
            assert set(best.tolist()) == set(idx[labels[idx] == g * 10 + 3].tolist())


# -- errors --------------------------------------------------------------------------------------------------


def test_errors_name_the_argument():
    s = torch.rand(10)
    with pytest.raises(UserError, match="^policy: "):
        select_subset(s, 3, "hardest")
    with pytest.raises(UserError, match="^k: "):
        select_subset(s, 11, "topk")
    with pytest.raises(UserError, match="^scores: "):
        select_subset(torch.rand(3, 3), 1, "topk")
    with pytest.raises(UserError, match="^scores: "):
        select_subset(10, 3, "topk")
    with pytest.raises(UserError, match="^labels: "):
        select_subset(s, 3, "topk", labels=torch.zeros(9, dtype=torch.int64))
    with pytest.raises(UserError, match="^labels: "):
        select_subset(s, 3, "topk", labels=torch.zeros(10))
    s[4] = float("nan")
    for policy, k in (("topk", 3), ("bottomk", 3), ("weighted", 3), ("infobatch_budget", 3), ("infobatch", None)):
        with pytest.raises(UserError, match="^scores: 1 NaN"):
            select_subset(s, k, policy)
        with pytest.raises(UserError, match="^scores: 1 NaN"):
            select_subset(s, k, policy, labels=torch.arange(10) % 2)
    assert select_subset(s, 3, "random").numel() == 3
    with pytest.raises(UserError, match="^scores: 1 negative"):
        select_subset(torch.tensor([1.0, -1.0, 2.0]), 1, "weighted")


# -- ScoreBook -----------------------------------------------------------------------------------------------


def test_scorebook_update_rule_and_duplicates():
    book = ScoreBook(6, momentum=0.75)
    assert torch.isinf(book.score).all() and len(book) == 6
    book.set_epoch(2)
    book.update(torch.tensor([1, 3, 1, 4]), torch.tensor([2.0, 1.0, 5.0, float("nan")]))
    assert book.score[[1, 3]].tolist() == [5.0, 1.0] and math.isinf(book.score[4])
    assert book.seen.tolist() == [0, 2, 0, 1, 0, 0] and book.last_epoch.tolist() == [-1, 2, -1, 2, -1, -1]
    book.update(torch.tensor([1]), torch.tensor([1.0]), epoch=3)
    expect = torch.tensor(0.75, dtype=torch.float32) * 5.0 + torch.tensor(0.25, dtype=torch.float32) * 1.0
    assert book.score[1] == expect and book.seen[1] == 3 and book.last_epoch[1] == 3
    with pytest.raises(UserError, match="^indices: 1 index"):
        book.update(torch.tensor([0, 6]), torch.ones(2))
    assert book.seen[0] == 0
    with pytest.raises(UserError, match="^indices, losses: "):
        book.update(torch.tensor([0, 1]), torch.ones(3))
    with pytest.raises(UserError, match="^momentum: "):
        ScoreBook(3, momentum=1.0)


def test_scorebook_backends_agree(triton_interpret):
    gen = torch.Generator().manual_seed(0)
    books = {b: ScoreBook(300, momentum=0.9, backend=b) for b in ("reference", "cpp", "triton")}
    for step in range(4):
        idx = torch.randint(300, (128,), generator=gen)
        loss = torch.rand(128, generator=gen)
        for book in books.values():
            book.update(idx, loss, epoch=step)
    ref = books["reference"]
    for book in books.values():
        assert torch.equal(book.score, ref.score) and torch.equal(book.seen, ref.seen)
        assert torch.equal(book.last_epoch, ref.last_epoch)
    books["triton"].update(torch.tensor([5, 300]), torch.ones(2))  # no host sync: reported at check()
    with pytest.raises(UserError, match="^indices: 1 index"):
        books["triton"].check()


def test_scorebook_resume_selects_like_an_uninterrupted_run():
    def losses(idx, epoch):
        return ((idx * 7919 + epoch * 104729) % 1000).float() / 1000

    def train(book, sampler, epochs):
        picked = []
        for epoch in epochs:
            sampler.set_epoch(epoch)
            order = list(sampler)
            picked.append(order)
            for s in range(0, len(order), 16):
                idx = torch.tensor(order[s:s + 16])
                book.update(idx, losses(idx, epoch))
        return picked

    book = ScoreBook(200, momentum=0.5)
    sampler = EpochSubset(book, 0.25, policy="topk", seed=3)
    full = train(book, sampler, range(4))
    book2 = ScoreBook(200, momentum=0.5)
    sampler2 = EpochSubset(book2, 0.25, policy="topk", seed=3)
    first = train(book2, sampler2, range(2))
    saved = (book2.state_dict(), sampler2.state_dict())
    book3 = ScoreBook(200, momentum=0.5)
    book3.load_state_dict(saved[0])
    sampler3 = EpochSubset(book3, 0.25, policy="topk", seed=3)
    sampler3.load_state_dict(saved[1])
    assert first + train(book3, sampler3, range(2, 4)) == full
    with pytest.raises(UserError, match="^state_dict: "):
        ScoreBook(201).load_state_dict(saved[0])


# -- EpochSubset -------------------------------------------------------------------------------------------


def test_epoch_subset_draws_shuffles_and_shards():
    sampler = EpochSubset(1000, 0.1, seed=9)
    assert len(sampler) == 100
    sampler.set_epoch(3)
    order = list(sampler)
    assert sorted(order) == select_subset(1000, 100, "random", seed=9, epoch=3).tolist()
    assert order != sorted(order) and order == list(sampler)
    sampler.set_epoch(4)
    assert sorted(list(sampler)) != sorted(order)
    shards = []
    for rank in range(3):
        s = EpochSubset(1000, k=100, seed=9, rank=rank, world_size=3)
        s.set_epoch(3)
        shards.append(list(s))
        assert len(s) == 33 == len(shards[-1])
    flat = [i for sh in shards for i in sh]
    assert len(set(flat)) == 99 and set(flat) <= set(order)
    padded = []
    for rank in range(3):
        s = EpochSubset(1000, k=100, seed=9, rank=rank, world_size=3, pad=True)
        s.set_epoch(3)
        padded.append(list(s))
    assert [len(p) for p in padded] == [34] * 3 and set(i for p in padded for i in p) == set(order)


def test_epoch_subset_resumes_mid_epoch():
    sampler = EpochSubset(500, 0.2, seed=1)
    sampler.set_epoch(2)
    it = iter(sampler)
    head = [next(it) for _ in range(30)]
    state = sampler.state_dict()
    assert state["position"] == 30
    other = EpochSubset(500, 0.2, seed=1)
    other.load_state_dict(state)
    assert head + list(other) == list(sampler)
    with pytest.raises(UserError, match="^state_dict: "):
        EpochSubset(500, 0.3, seed=1).load_state_dict(state)


def test_epoch_subset_arguments():
    with pytest.raises(UserError, match="^ratio, k: "):
        EpochSubset(10)
    with pytest.raises(UserError, match="^ratio: "):
        EpochSubset(10, 1.5)
    with pytest.raises(UserError, match="^source: "):
        EpochSubset(10, 0.5, policy="topk")
    with pytest.raises(UserError, match="^policy: "):
        EpochSubset(ScoreBook(10), 0.5, policy="nope")


# -- prior_scores ------------------------------------------------------------------------------------------


def test_prior_scores_recovers_clusters_and_distances():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[8.0, 0, 0, 0, 0], [0, 8.0, 0, 0, 0], [0, 0, 8.0, 0, 0], [-8.0, -8.0, 0, 0, 0]])
    truth = torch.randint(0, 4, (400,), generator=gen)
    x = centres[truth] + torch.randn(400, 5, generator=gen)
    res = prior_scores(x, 4, seed=1)
    assert res.labels.dtype == torch.int64 and res.distance.shape == (400,) and res.centroids.shape == (4, 5)
    pairs = set(zip(truth.tolist(), res.labels.tolist()))
    assert len(pairs) == 4  # the partition is the true one, up to renaming
    assert torch.equal(res.labels, torch.cdist(x, res.centroids).argmin(1))
    assert torch.allclose(res.distance, (x - res.centroids[res.labels]).norm(dim=1), atol=1e-5)
    for c in range(4):
        assert torch.allclose(res.centroids[c], x[res.labels == c].mean(0), atol=1e-5)
    again = prior_scores(x, 4, seed=1)
    assert torch.equal(again.labels, res.labels) and torch.equal(again.distance, res.distance)
    rand_init = prior_scores(x.numpy(), 4, seed=1, init="random")
    assert len(set(zip(truth.tolist(), rand_init.labels.tolist()))) in (4, 5, 6)
    idx = select_subset(res.distance, 40, "topk", labels=res.labels)
    assert set(res.labels[idx].tolist()) == {0, 1, 2, 3}


def test_prior_scores_errors():
    with pytest.raises(UserError, match="^n_clusters: "):
        prior_scores(torch.randn(5, 2), 6)
    with pytest.raises(UserError, match="^targets: "):
        prior_scores(torch.randn(5), 2)
    bad = torch.randn(5, 2)
    bad[0, 0] = float("nan")
    with pytest.raises(UserError, match="^targets: "):
        prior_scores(bad, 2)


def test_public_api_exports():
    for name in ("ScoreBook", "select_subset", "EpochSubset", "prior_scores"):
        assert getattr(rela_fast, name) is not None


@pytest.mark.gpu
@pytest.mark.parametrize("policy", POLICIES)
def test_cuda_selects_what_the_cpu_selects(policy):
    n = 1_000_003
    scores = _scores(n, 8)
    labels = torch.arange(n) % 7
    for lab in (None, labels):
        cpu = _run(scores, n // 5, policy, lab, "cpp")
        gpu = _run(scores.cuda(), n // 5, policy, None if lab is None else lab.cuda(), None)
        assert gpu[0].is_cuda and torch.equal(gpu[0].cpu(), cpu[0])
        if policy == "infobatch_budget":
            assert torch.equal(gpu[1].cpu(), cpu[1])
