"""Prior-geometry scores: k-means in target space, once, on the targets' device.

``prior_scores(targets, n_clusters)`` clusters the N x d targets (k-means++ or random initialisation,
deterministic for a seed; Lloyd iterations until the assignment stops changing or ``iters`` is reached)
and returns, per sample, the Euclidean distance to its cluster's centroid (small: prototypical, large:
atypical) and the cluster id, usable as ``labels`` for stratified selection. Distances are float32;
centroid sums accumulate in float64. An emptied cluster keeps its previous centroid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rela_fast.errors import UserError


@dataclass
class PriorScores:
    """Result of :func:`prior_scores`: ``distance`` (N,) float32, ``labels`` (N,) int64 cluster ids,
    ``centroids`` (C, d) float32, and the number of Lloyd ``iterations`` run."""

    distance: torch.Tensor
    labels: torch.Tensor
    centroids: torch.Tensor
    iterations: int


def _nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int) -> torch.Tensor:
    """Index of the nearest centroid of each row (squared distances expanded, in chunks of rows)."""
    c2 = (centroids * centroids).sum(1)
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for s in range(0, x.shape[0], chunk):
        xs = x[s:s + chunk]
        d = c2[None, :] - 2.0 * (xs @ centroids.T)
        out[s:s + chunk] = d.argmin(1)
    return out


def _sq_dist_to(x: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    diff = x - point[None, :]
    return (diff * diff).sum(1)


def _init(x: torch.Tensor, n_clusters: int, gen: torch.Generator, method: str) -> torch.Tensor:
    n = x.shape[0]
    if method == "random":
        return x[torch.randperm(n, generator=gen)[:n_clusters].to(x.device)].clone()
    # k-means++: each next centre drawn with probability proportional to the squared distance to the chosen
    first = int(torch.randint(n, (1,), generator=gen))
    centres = [x[first]]
    d2 = _sq_dist_to(x, x[first]).double()
    for _ in range(1, n_clusters):
        cum = torch.cumsum(d2, 0)
        total = float(cum[-1])
        if total <= 0:  # fewer distinct points than clusters: take the next unused rows
            pick = len(centres)
        else:
            u = float(torch.rand((), generator=gen, dtype=torch.float64)) * total
            pick = min(int(torch.searchsorted(cum, torch.tensor([u], dtype=torch.float64, device=x.device))), n - 1)
        centres.append(x[pick])
        d2 = torch.minimum(d2, _sq_dist_to(x, x[pick]).double())
    return torch.stack(centres).clone()


def prior_scores(
    targets,
    n_clusters: int,
    iters: int = 50,
    seed: int = 0,
    *,
    init: str = "k-means++",
    device: torch.device | str | None = None,
    chunk: int | None = None,
) -> PriorScores:
    """k-means of ``targets`` (N x d tensor or array; computed on ``device``, default the targets' own).

    Returns a :class:`PriorScores` (distance to the own centroid, cluster ids, centroids). Same inputs,
    seed and device give the same result. ``chunk``: rows per distance block (default: 16 Mi distances).
    """
    if not isinstance(targets, torch.Tensor):
        try:
            targets = torch.as_tensor(targets)
        except Exception as exc:
            raise UserError(f"targets: expected an N x d tensor or array, got {type(targets).__name__}") from exc
    if targets.dim() != 2 or targets.shape[0] == 0:
        raise UserError(f"targets: expected an N x d matrix with N >= 1, got shape {tuple(targets.shape)}")
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or not 1 <= n_clusters <= targets.shape[0]:
        raise UserError(f"n_clusters: {n_clusters!r} is not a count in [1, N={targets.shape[0]}]")
    if init not in ("k-means++", "random"):
        raise UserError(f"init: {init!r} is not 'k-means++' or 'random'")
    if int(iters) < 0:
        raise UserError(f"iters: {iters} must be >= 0")
    x = targets.to(device=device if device is not None else targets.device, dtype=torch.float32).contiguous()
    if not bool(torch.isfinite(x).all()):
        raise UserError("targets: contain NaN or inf; k-means needs finite targets")
    chunk = int(chunk) if chunk else max(256, (1 << 24) // n_clusters)
    gen = torch.Generator().manual_seed(int(seed))
    centroids = _init(x, n_clusters, gen, init)
    labels = _nearest(x, centroids, chunk)
    done = 0
    for _ in range(int(iters)):
        done += 1
        sums = torch.zeros(n_clusters, x.shape[1], dtype=torch.float64, device=x.device)
        sums.index_add_(0, labels, x.double())
        counts = torch.bincount(labels, minlength=n_clusters)
        means = (sums / counts.clamp_min(1)[:, None]).float()
        centroids = torch.where(counts[:, None] > 0, means, centroids)
        new = _nearest(x, centroids, chunk)
        if torch.equal(new, labels):
            break
        labels = new
    distance = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for s in range(0, x.shape[0], chunk):
        distance[s:s + chunk] = (x[s:s + chunk] - centroids[labels[s:s + chunk]]).norm(dim=1)
    return PriorScores(distance=distance, labels=labels, centroids=centroids, iterations=done)
