"""Kernel families radix_select and score_update: every backend against the reference, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rela_fast.errors import UserError
from rela_fast.ops.backend import dispatch
from rela_fast.ops.select import LARGEST, RANDOM, SMALLEST, WEIGHTED, backend_module, select_k, stream_keys
from rela_fast.ops.select import reference as ref

MODES = (LARGEST, SMALLEST, RANDOM, WEIGHTED)
KEYS = stream_keys(2024, 7)


def _values(n: int, mode: int, gen: torch.Generator) -> torch.Tensor:
    """Awkward inputs: ties, +-inf, -0.0, denormals (weights: zeros and +inf, never negative)."""
    v = torch.randn(n, generator=gen)
    v[torch.randint(n, (n // 5 + 1,), generator=gen)] = 0.5  # a block of ties
    if n >= 8:
        v[:6] = torch.tensor([float("inf"), -float("inf"), -0.0, 0.0, 1e-40, -1e-40])
    if mode == WEIGHTED:
        v = v.abs()
        v[torch.randint(n, (n // 7 + 1,), generator=gen)] = 0.0
    return v


def _ids(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.sort(torch.randperm(3 * n + 5, generator=gen)[:n]).values


def _ks(n: int) -> list[int]:
    return sorted({0, 1, n // 2, n} & set(range(n + 1)))


def _independent_topk(values: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """k largest (smallest) values, ties to the lower index, by numpy's lexsort (not torch.sort)."""
    v = values.double().numpy().copy()
    v[v == 0] = 0.0
    order = np.lexsort((np.arange(v.size), -v if largest else v))
    return torch.from_numpy(np.sort(order[:k]).astype(np.int64))


# -- keys ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_keys_bit_exact(backend, mode, request):
    if backend == "triton":
        request.getfixturevalue("triton_interpret")
    gen = torch.Generator().manual_seed(mode)
    n = 3000 if backend == "cpp" else 700
    values = _values(n, mode, gen)
    module = backend_module(backend)
    for ids in (None, _ids(n, gen)):
        expect = ref.keys(values, ids, n, mode, KEYS, "cpu")
        got = module.keys(values, ids, n, mode, KEYS, "cpu")
        assert torch.equal(got, expect)


def test_order_key_is_monotone():
    x = torch.tensor([-float("inf"), -3.0, -1e-40, -0.0, 0.0, 1e-40, 2.0, float("inf")])
    k = ref.order_key(x)
    assert torch.all(k[1:] >= k[:-1]) and k[3] == k[4] and torch.all(k[1:3] < k[2:4])


def test_exponential_is_accurate_and_positive():
    h = torch.cat([torch.arange(0, 2**32, 65537, dtype=torch.int64), torch.tensor([0, 2**32 - 1])])
    e = ref.exponential(h).double()
    u = ((h >> 9) * 2 + 1).double() / 2**24
    assert torch.all(e > 0)
    assert float((e + torch.log(u)).abs().max()) < 2e-6


def test_hash_is_a_bijection_on_indices():
    h = ref.hash32(torch.arange(1 << 20), KEYS)
    assert torch.unique(h).numel() == 1 << 20 and int(h.min()) >= 0 and int(h.max()) < 2**32
    assert not torch.equal(h, ref.hash32(torch.arange(1 << 20), stream_keys(2024, 8)))


# -- select_k ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [1, 7, 1000, 40_000, 1_000_003])
def test_cpp_matches_reference(n, mode):
    gen = torch.Generator().manual_seed(n + mode)
    values = _values(n, mode, gen)
    ids_options = [None] if n > 50_000 else [None, _ids(n, gen)]
    for ids in ids_options:
        for k in _ks(n):
            expect = select_k(values, k, mode, KEYS, ids=ids, backend="reference")
            got = select_k(values, k, mode, KEYS, ids=ids, backend="cpp")
            assert got.dtype == torch.int64 and got.shape == (k,)
            assert torch.equal(got, expect), (n, mode, k)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_triton_matches_reference(n, mode, triton_interpret):
    gen = torch.Generator().manual_seed(10 * n + mode)
    values = _values(n, mode, gen)
    for ids in (None, _ids(n, gen)):
        for k in _ks(n):
            expect = select_k(values, k, mode, KEYS, ids=ids, backend="reference")
            got = select_k(values, k, mode, KEYS, ids=ids, backend="triton")
            assert torch.equal(got, expect), (n, mode, k)


@pytest.mark.parametrize("n", [1000, 100_003])
def test_reference_topk_is_the_lexicographic_rule(n):
    gen = torch.Generator().manual_seed(n)
    values = torch.randint(0, 5, (n,), generator=gen).float()  # heavy ties
    values[::3] = -values[::3]  # -0.0 among them
    for k in (1, n // 3, n - 1):
        for mode, largest in ((LARGEST, True), (SMALLEST, False)):
            expect = _independent_topk(values, k, largest)
            assert torch.equal(select_k(values, k, mode, backend="reference"), expect)
            assert torch.equal(select_k(values, k, mode, backend="cpp"), expect)


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_all_equal_and_inf_ordering(backend, request):
    if backend == "triton":
        request.getfixturevalue("triton_interpret")
    n = 600
    same = torch.full((n,), 3.0)
    assert torch.equal(select_k(same, 250, LARGEST, backend=backend), torch.arange(250))
    assert torch.equal(select_k(same, 250, SMALLEST, backend=backend), torch.arange(250))
    v = torch.zeros(n)
    v[[5, 400]] = float("inf")
    v[[7, 300]] = -float("inf")
    assert select_k(v, 2, LARGEST, backend=backend).tolist() == [5, 400]
    assert select_k(v, 2, SMALLEST, backend=backend).tolist() == [7, 300]
    assert 5 not in select_k(v, n - 2, SMALLEST, backend=backend).tolist()


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_nan_and_negative_weights_are_rejected(backend, request):
    if backend == "triton":
        request.getfixturevalue("triton_interpret")
    n = 300
    v = torch.rand(n)
    v[17] = float("nan")
    for mode in (LARGEST, SMALLEST, WEIGHTED):
        for k in (0, 5, n):
            with pytest.raises(UserError, match=r"^scores: 1 NaN"):
                select_k(v, k, mode, KEYS, backend=backend)
    assert select_k(v, 5, RANDOM, KEYS, backend=backend).numel() == 5  # random reads no scores
    w = torch.rand(n)
    w[[3, 9]] = -0.5
    with pytest.raises(UserError, match=r"^scores: 2 negative"):
        select_k(w, 5, WEIGHTED, KEYS, backend=backend)
    assert select_k(w, 5, LARGEST, KEYS, backend=backend).numel() == 5


def test_select_k_rejects_bad_k():
    with pytest.raises(UserError, match="^k: "):
        select_k(torch.rand(5), 6, LARGEST)
    with pytest.raises(UserError, match="^k: "):
        select_k(torch.rand(5), -1, LARGEST)


# -- score_update -----------------------------------------------------------------------------------------


def _book(n):
    return (torch.full((n,), float("inf")), torch.zeros(n, dtype=torch.int32),
            torch.full((n,), -1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32))


def _batches(n, gen, sizes):
    out = []
    for b in sizes:
        idx = torch.randint(n, (b,), generator=gen)
        loss = torch.randn(b, generator=gen).abs() * 3
        if b >= 8:
            loss[:4] = torch.tensor([float("nan"), float("inf"), -0.0, 0.0])
        out.append((idx, loss))
    return out


def _apply(backend, n, batches, a, b):
    state = _book(n)
    fn = dispatch("score_update", "cpu", backend)
    for epoch, (idx, loss) in enumerate(batches):
        assert not fn(*state[:3], idx, loss, a, b, epoch, state[3])
    return state


def _python_update(n, batches, a, b):
    """The rule written out per sample with numpy float32 scalars (independent of the torch reference)."""
    score = np.full(n, np.inf, np.float32)
    seen = np.zeros(n, np.int64)
    last = np.full(n, -1, np.int64)
    a32, b32 = np.float32(a), np.float32(b)
    for epoch, (idx, loss) in enumerate(batches):
        groups: dict[int, list[np.float32]] = {}
        for i, x in zip(idx.tolist(), loss.numpy()):
            if np.isfinite(x):
                groups.setdefault(i, []).append(np.float32(x) + np.float32(0.0))
        for i, xs in groups.items():
            top = max(xs)
            score[i] = np.float32(a32 * score[i]) + np.float32(b32 * top) if seen[i] else top
            seen[i] += len(xs)
            last[i] = epoch
    return score, seen, last


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_score_update_matches_rule(backend, request):
    if backend == "triton":
        request.getfixturevalue("triton_interpret")
    n, a, b = 40, 0.8999999761581421, 0.10000000149011612
    batches = _batches(n, torch.Generator().manual_seed(1), [1, 9, 64, 33])
    score, seen, last, _ = _apply(backend, n, batches, a, b)
    e_score, e_seen, e_last = _python_update(n, batches, a, b)
    assert np.array_equal(score.numpy().view(np.int32), e_score.view(np.int32))
    assert seen.tolist() == e_seen.tolist() and last.tolist() == e_last.tolist()


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_score_update_bit_exact_large(backend, request):
    if backend == "triton":
        request.getfixturevalue("triton_interpret")
    n, a, b = 5000, 0.949999988079071, 0.05000000074505806
    batches = _batches(n, torch.Generator().manual_seed(2), [4096, 4096, 1000])
    expect = _apply("reference", n, batches, a, b)
    got = _apply(backend, n, batches, a, b)
    for x, y in zip(expect[:3], got[:3]):
        assert torch.equal(x.view(torch.int32), y.view(torch.int32))


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_score_update_rejects_out_of_range(backend, request):
    if backend == "triton":
        request.getfixturevalue("triton_interpret")
    score, seen, last, bad = _book(10)
    fn = dispatch("score_update", "cpu", backend)
    result = fn(score, seen, last, torch.tensor([1, 10, -1]), torch.ones(3), 0.5, 0.5, 0, bad)
    assert (result or int(bad)) == 2
    assert int(seen.sum()) == 0 and torch.isinf(score).all()


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_score_update_rejects_mismatched_buffers(backend, request):
    """Before the entry checks the C++ kernel sized seen/last_epoch by score and wrote past a shorter one
    (segfault); every backend now refuses such buffers with a UserError naming the argument, writing nothing."""
    if backend == "triton":
        request.getfixturevalue("triton_interpret")
    n = 200_000
    fn = dispatch("score_update", "cpu", backend)
    idx, loss = torch.arange(n - 1000, n), torch.ones(1000)

    def call(name, value, batch=(idx, loss)):
        state = list(_book(n))
        pos = {"score": 0, "seen": 1, "last_epoch": 2}.get(name)
        if pos is not None:
            state[pos] = value
        before = [t.clone() for t in state[:3]]
        with pytest.raises(UserError, match=f"^{name}: "):
            fn(*state[:3], *batch, 0.5, 0.5, 0, state[3])
        assert all(x.is_meta or torch.equal(x, y) for x, y in zip(before, state[:3]))

    call("seen", torch.zeros(3, dtype=torch.int32))
    call("last_epoch", torch.full((n - 1,), -1, dtype=torch.int32))
    call("seen", torch.zeros(n, dtype=torch.int64))
    call("score", torch.full((n,), float("inf"), dtype=torch.float64))
    call("score", torch.full((2 * n,), float("inf"))[::2])
    call("seen", torch.zeros(n, dtype=torch.int32, device="meta"))
    call("losses", None, (idx, torch.ones(999)))
    call("indices", None, (idx.float(), loss))
    call("indices", None, (idx.view(10, 100), loss.view(10, 100)))


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_select_rejects_mismatched_buffers(backend, request):
    if backend == "triton":
        request.getfixturevalue("triton_interpret")
    mod = backend_module(backend)
    n, keys = 100_000, KEYS
    v, ids = torch.rand(n), torch.arange(n, dtype=torch.int64)
    for values, i, k, match in [
        (v[:10], None, 5, "^values: "),  # shorter than n
        (None, ids[:10], 5, "^ids: "),
        (v.double(), None, 5, "^values: "),  # wrong dtype
        (None, ids.int(), 5, "^ids: "),
        (torch.rand(2 * n)[::2], None, 5, "^values: "),  # not contiguous
        (None, torch.empty(n, dtype=torch.int64, device="meta"), 5, "^ids: "),  # another device
        (v, None, n + 1, "^k: "),
    ]:
        mode = RANDOM if values is None else LARGEST
        with pytest.raises(UserError, match=match):
            mod.select(values, i, n, k, mode, keys, "cpu")
        if k <= n:
            with pytest.raises(UserError, match=match):
                mod.keys(values, i, n, mode, keys, "cpu")


def test_cpp_many_chunks_match_reference():
    before = torch.get_num_threads()
    gen = torch.Generator().manual_seed(3)
    n = 300_001
    values = torch.randint(0, 50, (n,), generator=gen).float()  # ties inside every chunk
    cpp = backend_module("cpp")
    try:
        torch.set_num_threads(3)  # the extension shares torch's OpenMP runtime: three uneven chunks
        for mode in MODES:
            v = values if mode != WEIGHTED else values / 7
            for k in (1, 123_457, 300_000):
                got, n_nan, n_neg = cpp.select(v, None, n, k, mode, KEYS, "cpu", min_chunk=50_000)
                assert (n_nan, n_neg) == (0, 0)
                assert torch.equal(got, select_k(v, k, mode, KEYS, backend="reference"))
        v = values.clone()
        v[250_000] = float("nan")  # found in the last chunk's pass
        assert cpp.select(v, None, n, 7, LARGEST, KEYS, "cpu", min_chunk=50_000)[1:] == (1, 0)
    finally:
        torch.set_num_threads(before)


# -- on a GPU ------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1_000_003, 10_000_000])
def test_triton_on_cuda_matches_reference(n):
    gen = torch.Generator().manual_seed(n)
    for mode in MODES:
        values = _values(n, mode, gen)
        for k in (1, n // 5, n // 2, n - 1):
            expect = select_k(values, k, mode, KEYS, backend="reference")
            got = select_k(values.cuda(), k, mode, KEYS, backend="triton")
            assert got.is_cuda and torch.equal(got.cpu(), expect), (mode, k)
    ids = _ids(n, gen)
    expect = select_k(None, n // 3, RANDOM, KEYS, ids=ids, backend="reference")
    assert torch.equal(select_k(None, n // 3, RANDOM, KEYS, ids=ids.cuda(), backend="triton").cpu(), expect)


@pytest.mark.gpu
def test_triton_rejects_nan_on_cuda():
    v = torch.rand(100_000, device="cuda")
    v[77] = float("nan")
    with pytest.raises(UserError, match="^scores: 1 NaN"):
        select_k(v, 500, LARGEST, backend="triton")


@pytest.mark.gpu
def test_scorebook_update_is_one_launch_and_exact_on_cuda():
    from torch.profiler import ProfilerActivity, profile

    from rela_fast import ScoreBook

    n = 1_281_167
    gen = torch.Generator().manual_seed(0)
    book, ref = ScoreBook(n, device="cuda"), ScoreBook(n, backend="reference")
    batches = [(torch.randint(n // 100, (4096,), generator=gen), torch.rand(4096, generator=gen)) for _ in range(3)]
    for idx, loss in batches:
        book.update(idx.cuda(), loss.cuda())
        ref.update(idx, loss)
    assert torch.equal(book.score.cpu().view(torch.int32), ref.score.view(torch.int32))
    assert torch.equal(book.seen.cpu(), ref.seen) and torch.equal(book.last_epoch.cpu(), ref.last_epoch)
    idx, loss = batches[0][0].cuda(), batches[0][1].cuda()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        book.update(idx, loss)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type.name == "CUDA" and "emcpy" not in e.name]
    assert kernels == ["update_kernel"], kernels
