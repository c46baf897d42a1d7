"""``select_subset``: this epoch's sample indices from per-sample scores, by a named policy.

All randomness is a pure function of ``(seed, epoch, sample index)`` (the keyed hash of
:mod:`rela_fast.ops.select.reference`, computed by the scores' backend), so the answer is the same on every
backend and every run. Indices come back sorted ascending.

Policies with a budget k (exact k-selection, :func:`rela_fast.ops.select.select_k`, on the scores' device):

* ``"random"``: uniform without replacement (the reference behaviour; scores are ignored).
* ``"topk"`` / ``"bottomk"``: the k highest / lowest scores, ties to the lower index.
* ``"weighted"``: without replacement, probability proportional to the (non-negative) score; zero-score
  samples are drawn (uniformly) only when k exceeds the number of positive scores; ``+inf`` comes first.
* ``"infobatch_budget"``: InfoBatch's two classes at a fixed budget (our variant, not the published rule).
  H = samples with score >= the mean of the finite scores (``+inf``, never seen, counts as H), L = the rest.
  The budget is split as InfoBatch's expected subset is, ``|H| : (1 - r) |L|`` (rounded; each non-empty class
  keeps at least one sample when k >= 2, and no class more than it has); each class is drawn uniformly
  without replacement, ``k_H`` of H weighted ``|H| / k_H`` and ``k_L`` of L weighted ``|L| / k_L``. So the
  weighted loss sum is an unbiased estimate of the full-data sum (for k >= 2) at every budget, and L keeps
  its share however small k is. Returns ``(indices, weights)``.

Policy without a budget (the subset size is random; its saving is what it prunes):

* ``"infobatch"``: InfoBatch (Qin et al., ICLR 2024) as its public code runs it, with r = ``prune_ratio``:
  every sample with score >= the mean of the finite scores is kept with weight 1; every sample below it is
  kept independently with probability 1 - r and then weighted ``1 / (1 - r)`` (float32); never-seen samples
  (score ``+inf``, or never updated in a :class:`ScoreBook`) are kept with weight 1. Returns
  ``(indices, weights)``. The coin of sample i: kept when
  ``hash32(i, stream_keys(seed, epoch, INFOBATCH_STREAM)) < int((1 - r) 2**32)``. The score is each
  sample's latest loss (a :class:`ScoreBook` with ``momentum=0``, see :func:`score_momentum`); annealing
  to the full data is :class:`EpochSubset`'s (``epochs``, ``anneal``).
  Where the public code differs, on purpose: it keeps exactly ``int((1 - r) |L|)`` of L (a uniform draw
  of that size, slightly biased by the rounding), we flip a coin per sample (exactly unbiased, a pure
  function of the index); it scores unseen samples 3.0 inside the mean, we keep them out of it; it clamps
  1 - r to >= 0.1, we accept any r in [0, 1); it prunes up to epoch ``anneal x epochs`` inclusive, we
  anneal from that epoch on (docs/ALGORITHM.md#infobatch: from epoch ceil(0.875 x epochs) on).

The means are taken in float64 on the scores' device (so CPU and GPU could only disagree on a score within
~1e-16 of the mean). With ``labels`` (class or cluster ids) every policy is stratified: the budget policies
give group g the quota ``k * n_g / N`` rounded by largest remainder (ties to the smaller label) and run
inside each group; the InfoBatch policies compare each sample with its own group's mean. NaN scores are
rejected with a UserError for every policy but ``"random"``; ``+inf`` ranks highest and ``-inf`` lowest.
"""

from __future__ import annotations

import torch

from rela_fast.errors import UserError
from rela_fast.ops.select import LARGEST, RANDOM, SMALLEST, WEIGHTED, raise_bad, random_bits, select_k, stream_keys

POLICIES = ("random", "topk", "bottomk", "weighted", "infobatch", "infobatch_budget")
UNBUDGETED = ("infobatch",)  # no k: the subset size is random
WEIGHTED_POLICIES = ("infobatch", "infobatch_budget")  # return (indices, weights)
LATEST_LOSS = ("infobatch", "infobatch_budget")  # score = the latest loss (ScoreBook momentum 0)
EMA_MOMENTUM = 0.9  # the ScoreBook's default: the other score policies select on an EMA of the loss
_MODES = {"random": RANDOM, "topk": LARGEST, "bottomk": SMALLEST, "weighted": WEIGHTED}
INFOBATCH_STREAM = 0x494E464F  # "INFO": the salt of InfoBatch's keep draw (not the random policy's stream)


def score_momentum(policy: str) -> float:
    """The ScoreBook momentum ``policy`` selects on: 0 (the latest loss) for the InfoBatch policies, else 0.9."""
    check_policy(policy)
    return 0.0 if policy in LATEST_LOSS else EMA_MOMENTUM


def check_policy(policy: str) -> None:
    """Raise a UserError naming ``policy`` unless it is one of :data:`POLICIES`."""
    if policy not in POLICIES:
        raise UserError(f"policy: {policy!r} is not one of {', '.join(POLICIES)}")


def check_book(book, policy: str) -> None:
    """The InfoBatch policies score by the latest loss: reject a ScoreBook that keeps an EMA."""
    if policy in LATEST_LOSS and book.momentum != 0.0:
        raise UserError(
            f"scores: policy {policy!r} scores each sample by its latest loss, but this ScoreBook keeps an EMA "
            f"(momentum={book.momentum}); build it with ScoreBook(n, momentum=score_momentum({policy!r})) = 0"
        )


def check_prune_ratio(prune_ratio) -> float:
    """``prune_ratio`` as a float in [0, 1) (1 would give kept below-mean samples an infinite weight)."""
    try:
        r = float(prune_ratio)
    except (TypeError, ValueError):
        raise UserError(f"prune_ratio: expected a number in [0, 1), got {prune_ratio!r}") from None
    if not 0.0 <= r < 1.0:
        raise UserError(f"prune_ratio: {prune_ratio} is outside [0, 1); InfoBatch's default is 0.5")
    return r


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


def at_or_above_mean(values: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """InfoBatch's "not well learned" mask: ``+inf`` or >= the mean of the finite scores (of its group).

    ``groups``: optional int64 group index per sample in [0, G) (stratified); a group without finite
    scores has no mean, so only its ``+inf`` samples are in the mask.
    """
    finite = torch.isfinite(values)
    v = torch.where(finite, values, 0.0).to(torch.float64)
    if groups is None:
        mean = v.sum() / finite.sum()
    else:
        size = int(groups.max()) + 1 if groups.numel() else 0
        sums = torch.zeros(size, dtype=torch.float64, device=values.device).index_add_(0, groups, v)
        counts = torch.zeros(size, dtype=torch.float64, device=values.device).index_add_(0, groups, finite.double())
        mean = (sums / counts)[groups]
    return (values.to(torch.float64) >= mean) | (values == float("inf"))


def _infobatch(values, groups, prune_ratio: float, keys, backend, device):
    """(indices, weights) of InfoBatch as published (module doc), on all N samples at once."""
    keep_p = 1.0 - prune_ratio
    high = at_or_above_mean(values, groups)
    threshold = min(int(keep_p * 2**32), 2**32)
    kept_low = random_bits(values.numel(), keys, device=device, backend=backend) < threshold
    idx = torch.nonzero(high | kept_low).flatten()
    low_weight = torch.tensor(1.0 / keep_p, dtype=torch.float32, device=device)
    weights = torch.where(high[idx], torch.ones((), device=device), low_weight)
    return idx, weights


def budget_split(n_high: int, n_low: int, k: int, prune_ratio: float) -> int:
    """``k_H`` of ``infobatch_budget``: k split as ``|H| : (1 - r) |L|``, within what each class can give."""
    if n_low == 0:
        return k
    if n_high == 0:
        return 0
    share = n_high / (n_high + (1.0 - prune_ratio) * n_low)
    k_high = int(k * share + 0.5)
    lo = max(k - n_low, 1 if k >= 2 else 0)
    hi = min(n_high, k - 1 if k >= 2 else k)
    return min(max(k_high, lo), hi)


def _infobatch_budget(values, ids, k: int, prune_ratio: float, keys, backend, device):
    """(positions, weights) of ``infobatch_budget`` (module doc) on one group; positions ascending."""
    if k == 0:
        return torch.empty(0, dtype=torch.int64, device=device), torch.empty(0, device=device)
    high = at_or_above_mean(values)
    parts, weights = [], []
    high_pos = torch.nonzero(high).flatten()
    low_pos = torch.nonzero(~high).flatten()
    k_high = budget_split(high_pos.numel(), low_pos.numel(), k, prune_ratio)
    for pos, m in ((high_pos, k_high), (low_pos, k - k_high)):
        if m == 0:
            continue
        chosen = select_k(None, m, RANDOM, keys, ids=pos if ids is None else ids[pos], backend=backend)
        parts.append(pos[chosen])
        weights.append(torch.full((m,), pos.numel() / m, dtype=torch.float32, device=device))
    pos, order = torch.sort(torch.cat(parts))
    return pos, torch.cat(weights)[order]


def _one_group(values, ids, n: int, k: int, policy: str, prune_ratio: float, keys, backend, device):
    """Positions (and weights, or None) within one group of n samples; ``ids``: their global indices or None."""
    if policy == "infobatch_budget":
        return _infobatch_budget(values, ids, k, prune_ratio, keys, backend, device)
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


def _values(scores, policy: str):
    """``(n, device, float32 values or None)`` from a tensor, a ScoreBook or an int N (random only)."""
    from rela_fast.subset.scorebook import ScoreBook

    if isinstance(scores, ScoreBook):
        check_book(scores, policy)
        scores.check()
        if policy in LATEST_LOSS:  # never updated = unseen, whatever the book's initial score
            scores = torch.where(scores.seen > 0, scores.score, float("inf"))
        else:
            scores = scores.score
    if isinstance(scores, int) and not isinstance(scores, bool):
        if policy != "random":
            raise UserError(f"scores: an int (N={scores}) only works with policy 'random'; pass a score tensor")
        if scores < 0:
            raise UserError(f"scores: N={scores} must be >= 0")
        return scores, torch.device("cpu"), None
    if not isinstance(scores, torch.Tensor):
        raise UserError(f"scores: expected a tensor, a ScoreBook or an int, got {type(scores).__name__}")
    if scores.dim() != 1:
        raise UserError(f"scores: expected a 1-D tensor of per-sample scores, got shape {tuple(scores.shape)}")
    if scores.is_complex() or scores.dtype == torch.bool:
        raise UserError(f"scores: expected real scores, got {scores.dtype}")
    values = None if policy == "random" else scores.detach().to(torch.float32).contiguous()
    return scores.numel(), scores.device, values


def select_subset(
    scores,
    k: int | None = None,
    policy: str = "random",
    seed: int = 0,
    epoch: int = 0,
    labels: torch.Tensor | None = None,
    *,
    prune_ratio: float = 0.5,
    backend: str | None = None,
):
    """The sample indices (int64, ascending, on the scores' device) that ``policy`` keeps this epoch.

    ``scores``: a 1-D tensor of per-sample scores (float; cast to float32), a :class:`ScoreBook`, or, for
    ``"random"`` only, the number of samples N (then the indices are on the CPU). ``k``: the budget, required
    by every policy but ``"infobatch"`` (which takes none: its size is random). ``prune_ratio``: r of the
    InfoBatch policies. ``labels``: optional 1-D integer tensor of N group ids (stratified selection).
    ``backend`` forces a kernel backend. Returns a tensor, or ``(indices, weights)`` (float32, aligned) for
    ``"infobatch"`` and ``"infobatch_budget"``.
    """
    check_policy(policy)
    seed, epoch = _check_int("seed", seed), _check_int("epoch", epoch)
    if policy in UNBUDGETED:
        if k is not None:
            raise UserError(f"k: policy {policy!r} keeps a random number of samples (its saving is what it prunes); "
                            "drop k, or use 'infobatch_budget' for a fixed budget")
    elif k is None:
        raise UserError(f"k: policy {policy!r} needs the number of samples to keep")
    else:
        k = _check_int("k", k)
    prune_ratio = check_prune_ratio(prune_ratio)
    n, device, values = _values(scores, policy)
    if k is not None and not 0 <= k <= n:
        raise UserError(f"k: {k} is outside [0, {n}]; ask for at most as many samples as there are")
    if values is not None and policy in WEIGHTED_POLICIES:
        raise_bad("scores", LARGEST, int(torch.isnan(values).sum()), 0)
    labels = _check_labels(labels, n, device)
    if policy == "infobatch":
        groups = None if labels is None else torch.unique(labels, return_inverse=True)[1]
        return _infobatch(values, groups, prune_ratio, stream_keys(seed, epoch, INFOBATCH_STREAM), backend, device)
    keys = stream_keys(seed, epoch)
    if labels is None:
        idx, weights = _one_group(values, None, n, k, policy, prune_ratio, keys, backend, device)
    else:
        idx, weights = _stratified(values, labels, n, k, policy, prune_ratio, keys, backend, device)
    return (idx, weights) if policy in WEIGHTED_POLICIES else idx


def _check_labels(labels, n: int, device) -> torch.Tensor | None:
    if labels is None:
        return None
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.numel() != n:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise UserError(f"labels: expected a 1-D tensor of {n} group ids (one per sample), got {shape}")
    if labels.is_floating_point() or labels.is_complex():
        raise UserError(f"labels: expected integer group ids, got {labels.dtype}")
    return labels.to(device=device, dtype=torch.int64)


def _stratified(values, labels, n: int, k: int, policy: str, prune_ratio: float, keys, backend, device):
    if policy != "random":
        raise_bad("scores", _MODES.get(policy, LARGEST), *_bad(values, policy))
    groups, counts = torch.unique(labels, return_counts=True)
    quotas = largest_remainder(counts.tolist(), k)
    order = torch.argsort(labels, stable=True)
    chosen, weights, start = [], [], 0
    for count, quota in zip(counts.tolist(), quotas):
        ids = order[start:start + count]
        start += count
        pos, w = _one_group(values[ids] if values is not None else None, ids, count, quota, policy, prune_ratio,
                            keys, backend, device)
        chosen.append(ids[pos])
        if w is not None:
            weights.append(w)
    idx, perm = torch.sort(torch.cat(chosen)) if chosen else (torch.empty(0, dtype=torch.int64, device=device), None)
    if policy in WEIGHTED_POLICIES:
        return idx, torch.cat(weights)[perm] if weights else torch.empty(0, device=device)
    return idx, None


def _bad(values, policy: str) -> tuple[int, int]:
    n_nan = int(torch.isnan(values).sum())
    n_neg = int((values < 0).sum()) if policy == "weighted" else 0
    return n_nan, n_neg
