"""Streaming PCA for ReLA-D (docs/ALGORITHM.md#pca and #standardisation), one pass over the features.

Features stream past in batches; :class:`StreamingPCA` keeps, on the features' device and in float64,
the count, the mean and the centred scatter matrix ``M2 = sum (x - mean)(x - mean)^T`` (the Gram
matrix of the centred features). Batches and partial accumulators (shards, DDP ranks) combine with
Chan's pairwise update, which is the numerically stable form of "sum + Gram": it never subtracts
``n mean mean^T`` from a raw Gram matrix, so features with a large mean lose no precision. Merging the
same partial results in the same order gives bit-identical results, which is what makes resumed and
multi-process conversions equal to one uninterrupted run.

At the end, :meth:`StreamingPCA.finalize` does the reference PCA exactly once: covariance
``M2 / (N - 1)``, symmetric eigendecomposition, the eigenvectors of the ``d`` largest eigenvalues.
Projected targets are then standardised per dimension over all N with the population variance
(:class:`Moments` gathers those statistics in a second streaming pass).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from rela_fast.errors import UserError

__all__ = ["StreamingPCA", "PCAResult", "Moments", "standardize", "pca_reference"]


class Moments:
    """Count, mean and centred scatter of a stream of row vectors, in float64 (Chan et al. merge).

    ``scatter=True`` keeps the full ``P x P`` matrix ``sum (x - mean)(x - mean)^T``; ``scatter=False`` only
    its diagonal (per-dimension sums of squares), which is all the standardisation step needs.
    """

    def __init__(self, scatter: bool = True) -> None:
        self.scatter = scatter
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> Moments:
        """Add the rows of ``x`` (n x P, any float dtype, any device)."""
        if x.ndim != 2:
            raise ValueError(f"features must be 2-D (n, P), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return self
        x = x.to(torch.float64)
        mean = x.mean(dim=0)
        xc = x - mean
        m2 = xc.T @ xc if self.scatter else (xc * xc).sum(dim=0)
        return self._combine(x.shape[0], mean, m2)

    def merge(self, other: Moments) -> Moments:
        """Add another accumulator's rows (same P and scatter kind); order matters only at rounding level."""
        if other.n == 0:
            return self
        if other.scatter != self.scatter:
            raise ValueError("cannot merge a full-scatter accumulator with a diagonal one")
        return self._combine(other.n, other.mean, other.m2)

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> Moments:
        if self.n == 0:
            self.n, self.mean, self.m2 = n_b, mean_b.clone(), m2_b.clone()
            return self
        if mean_b.shape != self.mean.shape:
            raise ValueError(f"feature width changed: {self.mean.shape[0]} then {mean_b.shape[0]}")
        mean_b = mean_b.to(self.mean.device)
        m2_b = m2_b.to(self.m2.device)
        n_a, n = self.n, self.n + n_b
        delta = mean_b - self.mean
        w = n_a * n_b / n
        self.m2 = self.m2 + m2_b + (torch.outer(delta, delta) * w if self.scatter else delta * delta * w)
        self.mean = self.mean + delta * (n_b / n)
        self.n = n
        return self

    def all_reduce(self, group=None) -> Moments:
        """Combine the accumulators of every rank (torch.distributed); every rank gets the same result.

        Gathers each rank's (n, mean, m2) and merges them in rank order, so the result does not depend
        on the reduction tree.
        """
        import torch.distributed as dist

        world = dist.get_world_size(group)
        if world == 1:
            return self
        device = self.mean.device if self.mean is not None else torch.device("cpu")
        n_all = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
        dist.all_gather(n_all, torch.tensor([self.n], dtype=torch.int64, device=device), group=group)
        width = torch.tensor([0 if self.mean is None else self.mean.shape[0]], device=device)
        dist.all_reduce(width, op=dist.ReduceOp.MAX, group=group)
        p = int(width)
        mean = self.mean if self.mean is not None else torch.zeros(p, dtype=torch.float64, device=device)
        shape = (p, p) if self.scatter else (p,)
        m2 = self.m2 if self.m2 is not None else torch.zeros(shape, dtype=torch.float64, device=device)
        means = [torch.empty_like(mean) for _ in range(world)]
        m2s = [torch.empty_like(m2) for _ in range(world)]
        dist.all_gather(means, mean.contiguous(), group=group)
        dist.all_gather(m2s, m2.contiguous(), group=group)
        total = Moments(self.scatter)
        for n_r, mean_r, m2_r in zip(n_all, means, m2s):
            if int(n_r):
                total._combine(int(n_r), mean_r, m2_r)
        self.n, self.mean, self.m2 = total.n, total.mean, total.m2
        return self

    def covariance(self) -> torch.Tensor:
        """Sample covariance ``M2 / (N - 1)`` (the reference's normalisation)."""
        if self.n < 2:
            raise UserError(f"PCA needs at least 2 samples, got {self.n}; convert a larger source")
        return self.m2 / (self.n - 1)

    def population_std(self) -> torch.Tensor:
        """Per-dimension standard deviation with the population variance ``M2 / N``."""
        diag = self.m2 if not self.scatter else torch.diagonal(self.m2)
        return torch.sqrt(diag / self.n)


@dataclass
class PCAResult:
    """The fitted projection: ``y = (x - mean) @ components``; components are unit columns, largest first."""

    mean: torch.Tensor  # (P,) float64
    components: torch.Tensor  # (P, d) float64
    eigenvalues: torch.Tensor  # (d,) float64, descending
    total_variance: float  # trace of the covariance (for the explained-variance ratio)
    n: int

    @torch.no_grad()
    def transform(self, feats: torch.Tensor) -> torch.Tensor:
        """Project ``feats`` (n x P) onto the components, in float64 on the components' device."""
        x = feats.to(device=self.mean.device, dtype=torch.float64)
        return (x - self.mean) @ self.components


@contextlib.contextmanager
def _eigh_threads(matrix: torch.Tensor):
    """One CPU thread for eigh up to P = 2048: MKL's threaded syevd is erratic on busy machines (measured
    on 2 shared cores: 512 x 512 took 0.13 s on one thread and up to 12 s on two; 2048: 5 s vs 12 s)."""
    if matrix.device.type != "cpu" or matrix.shape[0] > 2048:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class StreamingPCA(Moments):
    """One-pass PCA: ``update(feats)`` per batch, ``merge``/``all_reduce`` partials, ``finalize(d)`` once."""

    def __init__(self) -> None:
        super().__init__(scatter=True)
        self.result: PCAResult | None = None

    @torch.no_grad()
    def finalize(self, d: int) -> PCAResult:
        """Eigendecomposition of the covariance; keep the ``d`` largest eigenvalues and their vectors.

        Each component's sign is fixed (its largest-magnitude entry positive) so that runs whose
        covariances agree to rounding give the same columns, not flipped ones.
        """
        if self.n == 0:
            raise UserError("PCA got no features: no image could be decoded")
        p = self.mean.shape[0]
        if not 1 <= d <= p:
            raise UserError(f"--dim {d}: must be between 1 and the feature width {p}")
        cov = self.covariance()
        cov = (cov + cov.T) / 2
        with _eigh_threads(cov):
            evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True, stable=True)[:d]
        evals, evecs = evals[order], evecs[:, order]
        pivot = evecs.abs().argmax(dim=0)
        signs = torch.sign(evecs[pivot, torch.arange(d, device=evecs.device)])
        signs[signs == 0] = 1
        self.result = PCAResult(
            mean=self.mean.clone(),
            components=evecs * signs,
            eigenvalues=evals.clamp_min(0),
            total_variance=float(torch.diagonal(cov).sum()),
            n=self.n,
        )
        return self.result

    def transform(self, feats: torch.Tensor) -> torch.Tensor:
        """Project with the result of :meth:`finalize` (float64)."""
        if self.result is None:
            raise RuntimeError("call finalize(d) before transform()")
        return self.result.transform(feats)


def standardize(y: torch.Tensor, moments: Moments) -> torch.Tensor:
    """``(y - mean) / std`` with the population std over all N; zero-variance columns are only centred."""
    std = moments.population_std().to(y.device)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (y.to(torch.float64) - moments.mean.to(y.device)) / std


@torch.no_grad()
def pca_reference(features: torch.Tensor, d: int) -> torch.Tensor:
    """In-memory ReLA-D steps 3-4 for a full N x P matrix (one call; the streaming path is for big N)."""
    pca = StreamingPCA()
    pca.update(features)
    result = pca.finalize(d)
    y = result.transform(features)
    return standardize(y, Moments(scatter=False).update(y)).to(torch.float32)
