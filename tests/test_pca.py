"""StreamingPCA against a two-pass numpy reference (subspaces and standardised targets, never raw columns)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rela_fast.errors import UserError
from rela_fast.pca import Moments, StreamingPCA, pca_reference, standardize


def _data(n: int, p: int, seed: int, offset: float = 0.0) -> np.ndarray:
    """Anisotropic features (distinct, decaying spectrum) with a large common offset."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((p, p)))
    scales = np.geomspace(5.0, 0.05, p)
    return (rng.standard_normal((n, p)) * scales) @ basis.T + offset + rng.standard_normal(p)


def _reference(x: np.ndarray, d: int):
    """Two-pass reference: centre, SVD, covariance eigenvalues, project, standardise (population std)."""
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    comps = vt[:d].T
    y = xc @ comps
    y = (y - y.mean(axis=0)) / y.std(axis=0)
    return comps, s[:d] ** 2 / (len(x) - 1), y


def _stream(x: np.ndarray, splits: list[int]) -> StreamingPCA:
    pca = StreamingPCA()
    for chunk in np.split(x, splits):
        pca.update(torch.from_numpy(chunk))
    return pca


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_streaming_matches_two_pass_reference(offset):
    n, p, d = 300, 24, 7
    x = _data(n, p, seed=1, offset=offset).astype(np.float32).astype(np.float64)
    rng = np.random.default_rng(2)
    splits = sorted(rng.choice(np.arange(1, n), size=9, replace=False).tolist())
    pca = _stream(x, splits)
    res = pca.finalize(d)
    comps, evals, y_ref = _reference(x, d)

    np.testing.assert_allclose(res.eigenvalues.numpy(), evals, rtol=1e-9)
    proj = res.components.numpy() @ res.components.numpy().T
    proj_ref = comps @ comps.T
    assert np.linalg.norm(proj - proj_ref) < 1e-9
    cos = np.linalg.svd(res.components.numpy().T @ comps, compute_uv=False)  # principal angles
    np.testing.assert_allclose(cos, 1.0, atol=1e-10)

    y = pca.transform(torch.from_numpy(x))
    y = standardize(y, Moments(scatter=False).update(y)).numpy()
    corr = np.abs((y * y_ref).mean(axis=0))  # both columns standardised: |corr| = 1 up to sign
    np.testing.assert_allclose(corr, 1.0, atol=1e-9)
    signs = np.sign((y * y_ref).sum(axis=0))
    np.testing.assert_allclose(y, y_ref * signs, atol=1e-7)


def test_standardised_targets_have_population_statistics():
    x = torch.from_numpy(_data(101, 16, seed=3)).float()
    y = pca_reference(x, 5).double().numpy()
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(y.std(axis=0), 1.0, atol=1e-5)  # ddof=0: population variance
    assert y.dtype == np.float64 and y.shape == (101, 5)


def test_merge_equals_one_stream_and_is_order_stable():
    x = _data(200, 12, seed=4, offset=50.0)
    full = _stream(x, [])
    parts = [StreamingPCA().update(torch.from_numpy(c)) for c in np.split(x, [30, 31, 140])]
    merged = StreamingPCA()
    for part in parts:
        merged.merge(part)
    assert merged.n == full.n == 200
    torch.testing.assert_close(merged.mean, full.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.m2, full.m2, rtol=1e-10, atol=1e-9)
    again = StreamingPCA()
    for part in parts:
        again.merge(part)
    assert torch.equal(again.m2, merged.m2)  # same partials, same order: bit-identical
    np.testing.assert_allclose(full.covariance().numpy(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)


def test_sign_convention_is_deterministic():
    x = torch.from_numpy(_data(80, 10, seed=5))
    a = StreamingPCA().update(x).finalize(4).components
    b = StreamingPCA().update(-x + 3).finalize(4).components  # same covariance
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    pivot = a.abs().argmax(dim=0)
    assert (a[pivot, torch.arange(4)] > 0).all()


def test_diagonal_moments_match_numpy():
    x = _data(57, 9, seed=6, offset=10.0)
    m = Moments(scatter=False)
    for c in np.split(x, [5, 6, 40]):
        m.update(torch.from_numpy(c))
    np.testing.assert_allclose(m.population_std().numpy(), x.std(axis=0), rtol=1e-10)
    np.testing.assert_allclose(m.mean.numpy(), x.mean(axis=0), rtol=1e-12)


def test_bad_dimensions_and_sizes():
    pca = StreamingPCA().update(torch.randn(10, 6))
    with pytest.raises(UserError, match="feature width 6"):
        pca.finalize(7)
    with pytest.raises(UserError, match="at least 2 samples"):
        StreamingPCA().update(torch.randn(1, 6)).finalize(2)
    with pytest.raises(UserError, match="no image"):
        StreamingPCA().finalize(2)
    with pytest.raises(RuntimeError, match="finalize"):
        StreamingPCA().update(torch.randn(4, 3)).transform(torch.randn(2, 3))
    with pytest.raises(ValueError, match="width changed"):
        StreamingPCA().update(torch.randn(4, 3)).update(torch.randn(4, 5))


def _all_reduce_worker(rank: int, world: int, port: int, x: np.ndarray, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        mine = np.array_split(x, world)[rank]
        pca = StreamingPCA().update(torch.from_numpy(mine)).all_reduce()
        out[rank] = (pca.n, pca.mean.numpy(), pca.m2.numpy())
    finally:
        dist.destroy_process_group()


def test_all_reduce_two_gloo_ranks():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    x = _data(61, 8, seed=7, offset=3.0)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_all_reduce_worker, args=(2, port, x, out), nprocs=2, join=True)
        results = dict(out)
    full = _stream(x, [])
    for n, mean, m2 in results.values():
        assert n == 61
        np.testing.assert_allclose(mean, full.mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(m2, full.m2.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(results[0][2], results[1][2])
