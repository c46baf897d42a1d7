"""EpochSubset: a ``torch.utils.data.Sampler`` that iterates this epoch's subset, sharded across ranks.

Each epoch (``set_epoch``) draws a global subset of size ``m`` with :func:`select_subset` from the source's
scores (``m = k`` for the budget policies; random for ``"infobatch"``), shuffles it with a permutation
seeded by ``(seed, epoch)``, and gives rank r the positions ``r, r + W, r + 2W, ...`` of that order (W ranks).
Lengths: with ``pad=False`` (default) every rank gets ``m // W`` indices and the last ``m % W`` of the
shuffled order are dropped, so shards are disjoint; with ``pad=True`` every rank gets ``ceil(m / W)``, the
order being padded with its own first entries (shards then overlap in those few). All ranks draw the same
global subset: under ``torch.distributed`` the ScoreBook is first merged across ranks (:meth:`ScoreBook.sync`,
a collective) so every rank selects from the same scores.

Annealing (InfoBatch's): from epoch ``ceil(anneal x epochs)`` on, ``"infobatch"`` keeps every sample and
every other policy draws ``"random"`` at its budget, all with weight 1. ``anneal`` defaults to 0.875 for the
InfoBatch policies and to never for the others.

The draw happens at the first use after ``set_epoch`` (iteration, ``len()`` for ``"infobatch"``,
``indices()``, ``weights_for()``).
``state_dict()`` stores the drawn order and the iteration position, so a resumed run iterates exactly
the rest of the subset an uninterrupted one would (it does not redraw from a book that has moved on).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from rela_fast.errors import UserError
from rela_fast.ops.select import random_bits, stream_keys
from rela_fast.subset.policies import (
    UNBUDGETED,
    WEIGHTED_POLICIES,
    check_book,
    check_policy,
    check_prune_ratio,
    score_momentum,
    select_subset,
)
from rela_fast.subset.scorebook import ScoreBook

_SHUFFLE_SALT = 0x5348554646  # "SHUFF": the shuffle's stream differs from the selection's


class EpochSubset(Sampler[int]):
    """This epoch's subset of a dataset of N samples, drawn by ``policy``, as this rank's shard.

    ``source``: a :class:`ScoreBook` (scores that training updates; momentum 0 for the InfoBatch policies,
    which score by the latest loss), a 1-D score tensor (fixed scores, e.g. ``prior_scores(...).distance``)
    or an int N (policy ``"random"`` only). Budget policies take the subset size as ``ratio`` (fraction of
    N, rounded to the nearest integer, at least 1) or ``k``; ``"infobatch"`` takes neither (its size is
    random) but ``prune_ratio`` (r). ``epochs`` (the run's length) and ``anneal`` place the annealing (module
    doc); the InfoBatch policies need ``epochs`` unless ``anneal=False``. ``labels`` stratifies by group.
    ``rank``/``world_size`` default to ``torch.distributed``'s (or 0/1).
    """

    def __init__(
        self,
        source: ScoreBook | torch.Tensor | int,
        ratio: float | None = None,
        *,
        k: int | None = None,
        policy: str = "random",
        prune_ratio: float = 0.5,
        epochs: int | None = None,
        anneal: float | bool | None = None,
        seed: int = 0,
        labels: torch.Tensor | None = None,
        shuffle: bool = True,
        pad: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        backend: str | None = None,
    ) -> None:
        check_policy(policy)
        if isinstance(source, ScoreBook):
            check_book(source, policy)
            n = source.n
        elif isinstance(source, torch.Tensor):
            if source.dim() != 1:
                raise UserError(f"source: expected a 1-D score tensor, got shape {tuple(source.shape)}")
            n = source.numel()
        elif isinstance(source, int) and not isinstance(source, bool):
            n = source
            if policy != "random":
                raise UserError(f"source: an int N only works with policy 'random', not {policy!r}; pass a ScoreBook")
        else:
            raise UserError(f"source: expected a ScoreBook, a score tensor or an int, got {type(source).__name__}")
        k = _budget(policy, n, ratio, k)
        if rank is None or world_size is None:
            import torch.distributed as dist

            dist_on = dist.is_available() and dist.is_initialized()
            rank = (dist.get_rank() if dist_on else 0) if rank is None else rank
            world_size = (dist.get_world_size() if dist_on else 1) if world_size is None else world_size
        if not 0 <= rank < world_size:
            raise UserError(f"rank: {rank} is outside [0, world_size={world_size})")
        self.source, self.n, self.k, self.policy, self.seed = source, n, k, policy, int(seed)
        self.prune_ratio = check_prune_ratio(prune_ratio)
        self.anneal_epoch = _anneal_epoch(policy, epochs, anneal)
        self.labels, self.shuffle, self.pad = labels, shuffle, pad
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.epoch = 0
        self._order: torch.Tensor | None = None  # global shuffled order of this epoch's subset (CPU)
        self._weights: torch.Tensor | None = None  # InfoBatch weights aligned with _order (CPU)
        self._dense: torch.Tensor | None = None  # weights of all N samples, on the scores' device
        self._position = 0  # indices of this rank's shard handed out this epoch
        self._resume = 0  # where the next iteration starts (non-zero only after load_state_dict)

    # -- epoch and draw -------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: its subset is drawn at the next use."""
        self.epoch = int(epoch)
        self._order = self._weights = self._dense = None
        self._position = self._resume = 0
        if isinstance(self.source, ScoreBook):
            self.source.set_epoch(self.epoch)

    def current_policy(self) -> str:
        """The policy in force this epoch: from ``anneal_epoch`` on ``"full"`` (every sample, weight 1) for
        ``"infobatch"`` and ``"random"`` for the budget policies; before, ``policy``."""
        if self.anneal_epoch is not None and self.epoch >= self.anneal_epoch:
            return "full" if self.policy in UNBUDGETED else "random"
        return self.policy

    def _draw(self) -> None:
        if self._order is not None:
            return
        source = self.source
        if isinstance(source, ScoreBook):
            if self.world_size > 1:
                source.sync()
            scores = source
        else:
            scores = source
        policy = self.current_policy()
        if policy == "full":
            idx, weights = torch.arange(self.n), None
        else:
            out = select_subset(scores, self.k, policy, seed=self.seed, epoch=self.epoch, labels=self.labels,
                                prune_ratio=self.prune_ratio, backend=self.backend)
            idx, weights = out if policy in WEIGHTED_POLICIES else (out, None)
        perm = self._permutation(idx.numel())  # by position in the ascending subset: the same on every rank
        self._order = idx.cpu()[perm]
        self._weights = weights.cpu()[perm] if weights is not None else None
        self._dense = None

    def _permutation(self, k: int) -> torch.Tensor:
        """The shuffle: sort by a keyed hash of the position (a bijection: no ties, no torch RNG involved).

        The hash comes from the kernel backend (bit-identical to ``reference.hash32``): the reference's ~30
        int64 passes over fresh 40 MB tensors took 2.0 s of a 2.8 s epoch start at 10^7 scores
        (benchmarks/bench_scale.py)."""
        if not self.shuffle:
            return torch.arange(k)
        return torch.argsort(random_bits(k, stream_keys(self.seed, self.epoch, _SHUFFLE_SALT), device="cpu"))

    def indices(self) -> torch.Tensor:
        """This epoch's whole global subset in its shuffled order (CPU int64), the same on every rank."""
        self._draw()
        return self._order

    def shard(self) -> torch.Tensor:
        """This rank's indices for this epoch, in iteration order (CPU int64)."""
        order = self.indices()
        length, w = len(self), self.world_size
        if self.pad and length * w > order.numel():
            reps = math.ceil(length * w / max(order.numel(), 1))
            order = order.repeat(reps)[: length * w]
        return order[self.rank: length * w: w]

    def weights_for(self, indices: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights of this epoch for ``indices`` (global), on ``indices``' device.

        ``"infobatch"``: kept below-mean samples carry ``1 / (1 - r)``, the others 1; ``"infobatch_budget"``:
        ``|H| / k_H`` and ``|L| / k_L``; other policies (and annealed epochs): all 1. A sample outside this
        epoch's subset gets 0.
        """
        self._draw()
        if self._weights is None:
            return torch.ones(indices.shape, dtype=torch.float32, device=indices.device)
        if self._dense is None:
            self._dense = torch.zeros(self.n, dtype=torch.float32)
            self._dense[self._order] = self._weights
            device = self.source.device if isinstance(self.source, (ScoreBook, torch.Tensor)) else "cpu"
            self._dense = self._dense.to(device)
        return self._dense[indices.to(self._dense.device)].to(indices.device)

    # -- Sampler --------------------------------------------------------------------------------------
    def size(self) -> int:
        """This epoch's global subset size (draws it for ``"infobatch"``, whose size is random)."""
        if self.k is not None and self.current_policy() != "full":
            return self.k
        return self.indices().numel()

    def __len__(self) -> int:
        """This rank's number of indices this epoch (``"infobatch"``: drawn now; collective under DDP)."""
        if self.pad:
            return math.ceil(self.size() / self.world_size)
        return self.size() // self.world_size

    def __iter__(self) -> Iterator[int]:
        shard = self.shard().tolist()
        start, self._resume = self._resume, 0
        self._position = start
        for i, index in enumerate(shard[start:], start + 1):
            self._position = i
            yield index

    # -- resume ---------------------------------------------------------------------------------------
    def state_dict(self, position: int | None = None) -> dict:
        """Epoch, drawn order and position (this rank's indices consumed; pass ``position`` when the data
        loader prefetches ahead of training), so :meth:`load_state_dict` resumes exactly."""
        self._draw()
        return {
            "n": self.n,
            "k": self.k,
            "policy": self.policy,
            "prune_ratio": self.prune_ratio,
            "anneal_epoch": self.anneal_epoch,
            "seed": self.seed,
            "epoch": self.epoch,
            "world_size": self.world_size,
            "order": self._order.clone(),
            "weights": None if self._weights is None else self._weights.clone(),
            "position": self._position if position is None else int(position),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`: the same subset, order and position (no redraw)."""
        for key in ("n", "k", "policy", "prune_ratio", "anneal_epoch", "seed", "world_size"):
            if key in ("prune_ratio", "anneal_epoch") and key not in state:
                continue  # saved before these settings existed
            if state.get(key) != getattr(self, key):
                raise UserError(
                    f"state_dict: saved with {key}={state.get(key)!r}, this EpochSubset has {getattr(self, key)!r}; "
                    "build the sampler with the settings of the run you resume"
                )
        self.epoch = int(state["epoch"])
        if isinstance(self.source, ScoreBook):
            self.source.set_epoch(self.epoch)
        self._order = state["order"].clone()
        self._weights = None if state["weights"] is None else state["weights"].clone()
        self._dense = None
        self._position = self._resume = int(state["position"])


def _budget(policy: str, n: int, ratio, k) -> int | None:
    """The budget k from ``ratio`` or ``k`` (exactly one) for budget policies; None for ``"infobatch"``."""
    if policy in UNBUDGETED:
        if ratio is not None or k is not None:
            raise UserError(f"ratio, k: policy {policy!r} keeps a random number of samples (its saving is what it "
                            "prunes; set prune_ratio); drop ratio/k, or use 'infobatch_budget' for a fixed budget")
        return None
    if (ratio is None) == (k is None):
        raise UserError("ratio, k: give exactly one subset size (a fraction of N, or a count)")
    if ratio is not None:
        if not 0.0 < float(ratio) <= 1.0:
            raise UserError(f"ratio: {ratio} is outside (0, 1]")
        k = min(n, max(1, round(float(ratio) * n)))
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise UserError(f"k: {k!r} is not a count in [0, {n}]")
    return k


def _anneal_epoch(policy: str, epochs, anneal) -> int | None:
    """The first annealed epoch, ``ceil(anneal x epochs)``, or None (never).

    ``anneal=None``: 0.875 for the InfoBatch policies, never for the others; ``False``: never.
    """
    if anneal is None:
        anneal = 0.875 if policy in WEIGHTED_POLICIES else False
    if anneal is False:
        return None
    if isinstance(anneal, bool) or not isinstance(anneal, (int, float)) or not 0.0 <= float(anneal) <= 1.0:
        raise UserError(f"anneal: {anneal!r} is not a fraction of the epochs in [0, 1] (or False: never)")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise UserError(f"epochs: {epochs!r}; policy {policy!r} anneals to unweighted data from anneal x epochs "
                        "(InfoBatch's last epochs), so pass the run's epoch count, or anneal=False never to anneal")
    return math.ceil(round(float(anneal) * epochs, 9))


def build_subset(
    n: int,
    policy: str,
    *,
    budget: float,
    epochs: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    prune_ratio: float = 0.5,
    momentum: float | None = None,
    **sampler_kw,
) -> tuple[ScoreBook, EpochSubset]:
    """The ScoreBook and EpochSubset a training run of ``epochs`` epochs over n samples uses for ``policy``.

    The book keeps the score ``policy`` selects on (:func:`score_momentum`: the latest loss for the InfoBatch
    policies, else an EMA; ``momentum`` overrides it). Budget policies draw ``budget x n`` samples per epoch;
    ``"infobatch"`` ignores ``budget`` (its size is random) and prunes with ``prune_ratio``. ``epochs`` places
    the InfoBatch annealing; ``sampler_kw`` go to :class:`EpochSubset` (labels, anneal, pad, rank, ...).
    """
    check_policy(policy)
    book = ScoreBook(n, device, momentum=score_momentum(policy) if momentum is None else momentum)
    size = {} if policy in UNBUDGETED else {"ratio": budget}
    sampler = EpochSubset(book, policy=policy, prune_ratio=prune_ratio, epochs=epochs, seed=seed, **size,
                          **sampler_kw)
    return book, sampler
