"""``select_subset``: this epoch's k sample indices from per-sample scores, by a named policy.

Every policy reduces to exact k-selection (:func:`rela_fast.ops.select.select_k`, radix select on the
scores' device) of per-sample keys; the random keys are a pure function of ``(seed, epoch, sample
index)``, so the answer is the same on every backend and every run. Indices come back sorted ascending.

Policies:

* ``"random"``: uniform without replacement (the reference behaviour; scores are ignored).
* ``"topk"`` / ``"bottomk"``: the k highest / lowest scores, ties to the lower index.
* ``"weighted"``: without replacement, probability proportional to the (non-negative) score; zero-score
  samples are drawn (uniformly) only when k exceeds the number of positive scores; ``+inf`` comes first.
* ``"infobatch"``: InfoBatch-style soft pruning at a fixed budget. H = samples with score >= the mean of the
  finite scores (``+inf``, e.g. never-seen samples, counts as high), L = the rest. If k >= |H|: keep all of H
  (weight 1) and a uniform random ``m = k - |H|`` of L, each weighted ``|L| / m``, so the weighted loss sum is
  an unbiased estimate of the full-data sum. If k < |H|: a uniform random k of H, weighted ``|H| / k``, and
  none of L (the pruning limit: unbiased for H only). Returns ``(indices, weights)``. The mean is taken
  in float64 on the scores' device (so CPU and GPU could only disagree on a score within ~1e-16 of it).
  Annealing to unweighted data at the end of training is :class:`EpochSubset`'s ``anneal_from``.

With ``labels`` (class or cluster ids) every policy is stratified: group g gets the quota
``k * n_g / N`` rounded by largest remainder (ties to the smaller label), and the policy runs inside each
group (InfoBatch with the group's own mean). NaN scores are rejected with a UserError for every policy
but ``"random"``; ``+inf`` ranks highest and ``-inf`` lowest.
"""

from __future__ import annotations

import torch

from rela_fast.errors import UserError
from rela_fast.ops.select import LARGEST, RANDOM, SMALLEST, WEIGHTED, raise_bad, select_k, stream_keys

POLICIES = ("random", "topk", "bottomk", "weighted", "infobatch")
_MODES = {"random": RANDOM, "topk": LARGEST, "bottomk": SMALLEST, "weighted": WEIGHTED}


def largest_remainder(counts: list[int], k: int) -> list[int]:
    """Integer quotas proportional to ``counts`` summing to ``k``: floors, then +1 by largest remainder.

    Remainders compare exactly (integers); ties go to the earlier group. Each quota is the floor or the
    ceiling of ``k * count / total``, so none exceeds its group.
    """
    total = sum(counts)
    if total == 0:
        return [0] * len(counts)
    base = [k * c // total for c in counts]
    rest = [k * c % total for c in counts]
    order = sorted(range(len(counts)), key=lambda g: (-rest[g], g))
    for g in order[: k - sum(base)]:
        base[g] += 1
    return base


def _infobatch(values, ids, k: int, keys, backend, device):
    """(positions, weights) of the InfoBatch rule (module doc) on one group; positions ascending."""
    if k == 0:
        return torch.empty(0, dtype=torch.int64, device=device), torch.empty(0, device=device)
    finite = torch.isfinite(values)
    if bool(finite.any()):
        mean = values[finite].to(torch.float64).mean()
        high = values.to(torch.float64) >= mean
    else:
        high = values == float("inf")
    high_pos = torch.nonzero(high).flatten()
    low_pos = torch.nonzero(~high).flatten()
    n_high, n_low = high_pos.numel(), low_pos.numel()
    def ids_of(pos):
        return pos if ids is None else ids[pos]

    if k < n_high:
        pos = high_pos[select_k(None, k, RANDOM, keys, ids=ids_of(high_pos), backend=backend)]
        return pos, torch.full((k,), n_high / k, dtype=torch.float32, device=device)
    m = k - n_high
    low = low_pos[select_k(None, m, RANDOM, keys, ids=ids_of(low_pos), backend=backend)]
    pos = torch.cat([high_pos, low])
    weights = torch.cat([torch.ones(n_high, device=device), torch.full((m,), n_low / max(m, 1), device=device)])
    pos, order = torch.sort(pos)
    return pos, weights[order]


def _one_group(values, ids, n: int, k: int, policy: str, keys, backend, device):
    """Positions (and InfoBatch weights) within one group of n samples; ``ids``: their global indices or None."""
    if policy == "infobatch":
        return _infobatch(values, ids, k, keys, backend, device)
    return select_k(values, k, _MODES[policy], keys, ids=ids, n=n, device=device, backend=backend), None


def _check_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np

            if isinstance(value, np.integer):
                return int(value)
        except ImportError:  # pragma: no cover
            pass
        raise UserError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    return value


def select_subset(
    scores,
    k: int,
    policy: str = "random",
    seed: int = 0,
    epoch: int = 0,
    labels: torch.Tensor | None = None,
    *,
    backend: str | None = None,
):
    """The k sample indices (int64, ascending, on the scores' device) that ``policy`` keeps this epoch.

    ``scores``: a 1-D tensor of per-sample scores (float; cast to float32), a :class:`ScoreBook`, or, for
    ``"random"`` only, the number of samples N (then the indices are on the CPU). ``labels``: optional
    1-D integer tensor of N group ids for stratified selection. ``backend`` forces a kernel backend.
    Returns a tensor, or ``(indices, weights)`` (float32, aligned) for ``"infobatch"``.
    """
    from rela_fast.subset.scorebook import ScoreBook

    if policy not in POLICIES:
        raise UserError(f"policy: {policy!r} is not one of {', '.join(POLICIES)}")
    k, seed, epoch = _check_int("k", k), _check_int("seed", seed), _check_int("epoch", epoch)
    if isinstance(scores, ScoreBook):
        scores.check()
        scores = scores.score
    if isinstance(scores, int) and not isinstance(scores, bool):
        if policy != "random":
            raise UserError(f"scores: an int (N={scores}) only works with policy 'random'; pass a score tensor")
        if scores < 0:
            raise UserError(f"scores: N={scores} must be >= 0")
        n, device, values = scores, torch.device("cpu"), None
    elif isinstance(scores, torch.Tensor):
        if scores.dim() != 1:
            raise UserError(f"scores: expected a 1-D tensor of per-sample scores, got shape {tuple(scores.shape)}")
        if scores.is_complex() or scores.dtype == torch.bool:
            raise UserError(f"scores: expected real scores, got {scores.dtype}")
        n, device = scores.numel(), scores.device
        values = scores.detach().to(torch.float32).contiguous()
    else:
        raise UserError(f"scores: expected a tensor, a ScoreBook or an int, got {type(scores).__name__}")
    if not 0 <= k <= n:
        raise UserError(f"k: {k} is outside [0, {n}]; ask for at most as many samples as there are")
    if policy == "random":
        values = None
    elif policy == "infobatch":
        raise_bad("scores", LARGEST, int(torch.isnan(values).sum()), 0)
    keys = stream_keys(seed, epoch)

    if labels is None:
        idx, weights = _one_group(values, None, n, k, policy, keys, backend, device)
    else:
        idx, weights = _stratified(values, labels, n, k, policy, keys, backend, device)
    if policy == "infobatch":
        return idx, weights
    return idx


def _stratified(values, labels, n: int, k: int, policy: str, keys, backend, device):
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.numel() != n:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise UserError(f"labels: expected a 1-D tensor of {n} group ids (one per sample), got {shape}")
    if labels.is_floating_point() or labels.is_complex():
        raise UserError(f"labels: expected integer group ids, got {labels.dtype}")
    labels = labels.to(device=device, dtype=torch.int64)
    if policy != "random":
        raise_bad("scores", _MODES.get(policy, LARGEST), *_bad(values, policy))
    groups, counts = torch.unique(labels, return_counts=True)
    quotas = largest_remainder(counts.tolist(), k)
    order = torch.argsort(labels, stable=True)
    chosen, weights, start = [], [], 0
    for count, quota in zip(counts.tolist(), quotas):
        ids = order[start:start + count]
        start += count
        pos, w = _one_group(values[ids] if values is not None else None, ids, count, quota, policy, keys, backend,
                            device)
        chosen.append(ids[pos])
        if w is not None:
            weights.append(w)
    idx, perm = torch.sort(torch.cat(chosen)) if chosen else (torch.empty(0, dtype=torch.int64, device=device), None)
    if policy == "infobatch":
        return idx, torch.cat(weights)[perm] if weights else torch.empty(0, device=device)
    return idx, None


def _bad(values, policy: str) -> tuple[int, int]:
    n_nan = int(torch.isnan(values).sum())
    n_neg = int((values < 0).sum()) if policy == "weighted" else 0
    return n_nan, n_neg
