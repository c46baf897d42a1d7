"""The ReLA engine: everything that makes a run ReLA rather than plain SSL, and nothing about the loop.

One :class:`ReLAEngine` owns, for one process of a (possibly distributed) run:

* this epoch's subset as a per-rank sampler (:attr:`sampler`, an :class:`~rela_fast.EpochSubset` over the
  run's :class:`~rela_fast.ScoreBook`), and its InfoBatch loss weights (:meth:`weights`);
* the phase and the views it asks for (:attr:`phase`, :attr:`rela_weight`, :meth:`view_specs`,
  :meth:`views`);
* the phase-1 loss of a batch with its per-sample scores (:meth:`loss`, through :attr:`head`, the transfer
  head ``Linear(F, d)`` that the driver's optimiser trains unless the recipe freezes it);
* the hand-over (:meth:`step`), fed the unweighted loss averaged over micro-batches and ranks, so every
  rank switches at the same step, with soft blending (:meth:`mix`) and warm heads (:meth:`before_step`);
* its whole state (:meth:`state_dict` / :meth:`load_state_dict`) and a dict of metrics to log (:meth:`metrics`).

A driver calls it like this, whatever the loop (ReLATrainer, the Lightning callback, a plain loop)::

    engine.set_epoch(epoch)                       # draws the subset; a constant hand-over may switch here
    for images, idx in batches over engine.sampler:
        v1, v2 = engine.views(images, idx)        # or its own pipeline with engine.view_specs()
        h = backbone(torch.cat([v1, v2]))
        loss = engine.mix(engine.loss(h, idx), method_loss)   # lam x ReLA + (1 - lam) x method
        loss.backward(); engine.before_step(backbone); optimizer.step(); optimizer.zero_grad()
        engine.step()                             # scores, hand-over (collective under DDP)

The engine is configured by a validated :class:`~rela_fast.train.config.ReLAConfig`; it checks nothing again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rela_fast.errors import UserError
from rela_fast.subset.policies import WEIGHTED_POLICIES
from rela_fast.train.augment import BatchViews, ViewSpec, two_views
from rela_fast.train.config import ReLAConfig
from rela_fast.train.handover import HandOver, handover_value

PHASE_VIEWS = {1: "rela"}  # the view recipe of phase 1; phase 2 uses the method's own


@dataclass
class Pending:
    """What the micro-batches of the coming optimiser step recorded: indices and per-sample losses."""

    idx: list[torch.Tensor] = field(default_factory=list)
    rela: list[torch.Tensor] = field(default_factory=list)  # unweighted per-sample ReLA losses: the rule's input
    scores: list[torch.Tensor] = field(default_factory=list)  # per-sample scores for the ScoreBook


class ReLAEngine:
    """ReLA for one process of a run over ``n`` samples; see the module docstring.

    Args:
        config: the run's validated config (subset, hand-over, seed, epochs; the rest is the driver's).
        n: samples in the training data (sample i has target row i and ScoreBook entry i).
        targets: (n, d) target tensor, or None for the plain method on the same dynamic subset (the baseline).
            Targets wider than ``feature_dim`` are truncated to their leading components (d = min(F, P)).
        feature_dim: the backbone's pooled feature width F (the transfer head's input).
        labels: (n,) class ids, for stratified subsets only.
        method_views: the method's own pair of view specs at the training size (phase 2).
        device: where the targets, the head and the scores live.
        rank, world: this process and the process count (default: torch.distributed's, or 0 / 1).
    """

    def __init__(self, config: ReLAConfig, *, n: int, targets: torch.Tensor | None, feature_dim: int,
                 labels: torch.Tensor | None = None, method_views: tuple[ViewSpec, ViewSpec] | None = None,
                 device: str | torch.device = "cpu", rank: int | None = None, world: int | None = None) -> None:
        from rela_fast.distributed import rank_and_world

        if rank is None or world is None:
            rank, world = rank_and_world()
        self.config, self.n, self.rank, self.world = config, int(n), int(rank), int(world)
        self.device, self.feature_dim = torch.device(device), int(feature_dim)
        self.method_views = method_views
        self.targets, self.head = self._build_targets(targets)
        self.handover = self._build_handover()
        self.labels = labels  # class ids of the samples (stratified subsets), or None
        self.book, self.sampler = self._build_subset(labels)
        self.pending = Pending()
        self.last: dict[str, Any] = {}
        self.rows: torch.Tensor | None = None  # engine sample j = data row rows[j] (a store's rows), else j

    @classmethod
    def create(cls, targets: Any, data: Any = None, *, feature_dim: int, config: ReLAConfig | None = None,
               method: Any = None, device: str | torch.device = "cpu", rows: Any = None,
               **settings: Any) -> ReLAEngine:
        """An engine from a target store (or its folder, or an N x d tensor; None = the plain method) and the
        data it was made from (any source ``rela_fast`` reads, a torch or Hugging Face dataset), with the
        settings as keywords (``budget=0.2, epochs=30, ...``: :data:`~rela_fast.train.config.KEYWORDS`).

        With ``data`` the store is checked against it (same images) and its labels are used for stratified
        subsets; :attr:`rows` then maps engine sample j to the data's row (``IndexedDataset(ds, rows=...)``).
        """
        from rela_fast.train.config import config_from_keywords
        from rela_fast.train.data import open_targets_only, open_train_data

        config = config_from_keywords(config, method, settings)
        td = open_train_data(data, targets, rows) if data is not None else open_targets_only(targets)
        engine = cls(config, n=td.n, targets=td.targets, feature_dim=feature_dim, labels=td.labels, device=device)
        engine.rows = td.rows
        return engine

    def place(self, *, device: str | torch.device | None = None, rank: int | None = None,
              world: int | None = None) -> None:
        """Move an engine built before its processes or devices existed onto them (before the first step).

        A Lightning fit launches its processes and picks their devices after the user built the engine; its
        callback calls this in ``setup``. The subsets stay the run's (one seed, one global draw): this rank
        gets its own shard of them, and the targets (unless memory-mapped), the transfer head and the scores
        move to ``device``. :attr:`sampler` is rebuilt: read it after this call.
        """
        device = self.device if device is None else torch.device(device)
        rank = self.rank if rank is None else int(rank)
        world = self.world if world is None else int(world)
        if (device, rank, world) == (self.device, self.rank, self.world):
            return
        if self.handover.step or self.pending.idx:
            raise RuntimeError("ReLAEngine.place: call it before the first step")
        self.device, self.rank, self.world = device, rank, world
        if self.targets is not None and self.targets.numel() * 4 <= 1 << 30:
            self.targets = self.targets.to(device)
        if self.head is not None:
            self.head.to(device)
        self.book, self.sampler = self._build_subset(self.labels)

    # -- set-up ---------------------------------------------------------------------------------------
    def _build_targets(self, targets: torch.Tensor | None) -> tuple[torch.Tensor | None, nn.Module | None]:
        if targets is None:
            return None, None
        from rela_fast.ops.transfer_loss import TransferHead

        if targets.ndim != 2 or len(targets) != self.n:
            raise UserError(f"targets: shape {tuple(targets.shape)}; expected one row per sample ({self.n} x d)")
        targets = targets[:, : self.feature_dim]  # as the authors: d = min(F, P), the leading components
        small = targets.numel() * 4 <= 1 << 30  # a larger store stays memory-mapped; rows are gathered per batch
        targets = torch.as_tensor(targets).to(self.device) if small else targets
        head = TransferHead(self.feature_dim, int(targets.shape[1])).to(self.device)
        head.requires_grad_(not self.frozen_head)
        return targets, head

    @property
    def frozen_head(self) -> bool:
        """The authors' recipe keeps the transfer head a fixed random projection (never given to an optimiser)."""
        from rela_fast.train.recipes import resolve_recipe

        return resolve_recipe(self.config.optim.recipe, freeze_head=self.config.optim.freeze_head).freeze_head

    def _build_handover(self) -> HandOver:
        h = self.config.handover
        if self.targets is None:
            return HandOver("off")
        return HandOver(h.mode, epochs=self.config.epochs, lambda_const=h.lambda_const, soft_steps=h.soft_steps,
                        warm_heads=h.warm_heads, floor=h.floor, threshold=h.threshold)

    def _build_subset(self, labels: torch.Tensor | None):
        from rela_fast.subset import build_subset

        s = self.config.subset
        kw: dict[str, Any] = {"rank": self.rank, "world_size": self.world}
        if s.policy.startswith("infobatch"):
            kw["prune_ratio"] = s.prune_ratio
        if s.stratify:
            if labels is None:
                raise UserError("subset.stratify: needs labelled data; drop --stratify or give labels")
            kw["labels"] = torch.as_tensor(labels).to(self.device)
        book, sampler = build_subset(self.n, s.policy, budget=s.budget, epochs=self.config.epochs,
                                     seed=self.config.seed, device=self.device, momentum=s.score_momentum, **kw)
        sampler.set_epoch(0)
        return book, sampler

    # -- the epoch ------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int, *, draw: bool = True) -> bool:
        """Enter ``epoch``: a constant hand-over may switch here; ``draw=False`` keeps a resumed mid-epoch
        subset. Returns True when the phase changed (the driver then rebuilds its views)."""
        before = self.handover.phase
        self.handover.start_epoch(epoch)
        if draw:
            self.sampler.set_epoch(epoch)
        return self._after_switch(before)

    def shard(self) -> torch.Tensor:
        """This rank's sample indices for this epoch, in order (CPU int64)."""
        return self.sampler.shard()

    def weights(self, indices: torch.Tensor | None = None) -> torch.Tensor | None:
        """Per-sample loss weights for ``indices`` (default: this rank's shard), or None when the policy has none."""
        if self.config.subset.policy not in WEIGHTED_POLICIES:
            return None
        return self.sampler.weights_for(self.shard() if indices is None else indices)

    # -- the phase and its views ----------------------------------------------------------------------
    @property
    def phase(self) -> int:
        """1 while the student learns the targets, 2 after the hand-over (the method's own loss)."""
        return self.handover.phase

    @property
    def rela_weight(self) -> float:
        """``lam`` of ``lam x ReLA + (1 - lam) x method``: 1 in phase 1, then 0 (or the soft ramp / floor)."""
        return self.handover.rela_weight

    @property
    def view_phase(self) -> int:
        """Which views this step wants: 1 = ReLA's mild augmentation (pure phase 1), 2 = the method's."""
        return 1 if self.rela_weight == 1.0 else 2

    def view_specs(self, image_size: int) -> tuple[ViewSpec, ViewSpec]:
        """The current phase's pair of view specs at ``image_size``."""
        if self.view_phase == 1:
            return two_views(PHASE_VIEWS[1], image_size)
        if self.method_views is not None:
            return self.method_views
        return two_views(self.config.method, image_size)

    def views(self, images: torch.Tensor, idx: torch.Tensor, *, epoch: int | None = None,
              image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The current phase's two views of a uint8 (B, C, H, W) batch, on the engine's device.

        Batched on whole tensors and keyed by (seed, epoch, phase, view, first index), so the views do not
        depend on the loop, the loader's workers or a resume. The phase is read now: the batch after the
        hand-over already gets the method's views.
        """
        from rela_fast.train.views import two_view_batch

        size = image_size or int(images.shape[-1])
        ops = tuple(BatchViews(v) for v in self.view_specs(size))
        epoch = self.sampler.epoch if epoch is None else epoch
        return two_view_batch(images.to(self.device, non_blocking=True), torch.as_tensor(idx).cpu(), ops,
                              seed=self.config.seed, epoch=epoch, phase=self.view_phase)

    # -- the loss -------------------------------------------------------------------------------------
    def loss(self, h: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor | None:
        """The ReLA transfer loss ``mean(1 - cos(T(h), y_idx))`` of one micro-batch, or None when lam is 0.

        ``h``: (V*B, F) backbone features, row ``v*B + i`` = view v of sample ``idx[i]``. ``weights``: the
        samples' loss weights (InfoBatch; default: :meth:`weights` of ``idx``). The unweighted per-sample
        losses are recorded for the hand-over rule and the ScoreBook (consumed by :meth:`step`).
        """
        if self.targets is None or self.rela_weight == 0.0:
            return None
        from rela_fast.ops.transfer_loss import transfer_loss

        idx = torch.as_tensor(idx)
        if weights is None and self.config.subset.policy in WEIGHTED_POLICIES:
            weights = self.weights(idx.cpu()).to(h.device)
        y = self.targets[idx.to(self.targets.device)].to(h.device, non_blocking=True)
        w, b = self.head.weight.to(h.dtype), self.head.bias
        loss, per_sample = transfer_loss(h, w, b.to(h.dtype) if b is not None else None, y, sample_weights=weights)
        self.record(idx, per_sample, rela=True)
        return loss.float()

    def record(self, idx: torch.Tensor, per_sample: torch.Tensor, *, rela: bool = False) -> None:
        """Record one micro-batch's per-sample losses for :meth:`step` (``rela``: they are ReLA losses, which
        the hand-over rule watches; phase 2 records the method's own per-sample losses as scores)."""
        per_sample = per_sample.detach().float()
        self.pending.idx.append(torch.as_tensor(idx).to(self.device))
        self.pending.scores.append(per_sample.to(self.device))
        if rela:
            self.pending.rela.append(per_sample)

    def mix(self, rela_loss: torch.Tensor | None, method_loss: torch.Tensor | Callable[[], torch.Tensor] | None
            ) -> torch.Tensor:
        """``lam x rela_loss + (1 - lam) x method_loss``; a callable method loss is only computed when needed."""
        lam = self.rela_weight
        total = None
        if lam > 0:
            if rela_loss is None:
                raise ValueError("ReLAEngine.mix: phase 1 needs the ReLA loss (engine.loss(h, idx))")
            total = lam * rela_loss
        if lam < 1:
            m = method_loss() if callable(method_loss) else method_loss
            if m is None:
                raise ValueError("ReLAEngine.mix: phase 2 needs the method's loss")
            total = (1 - lam) * m if total is None else total + (1 - lam) * m
        return total

    def before_step(self, backbone: nn.Module) -> None:
        """Warm heads: during the first ``warm_heads`` steps after the switch the backbone gets no update (no
        step, no moment, no decay): its gradients are dropped. Call between backward and the optimiser step."""
        if self.handover.backbone_frozen:
            for p in backbone.parameters():
                p.grad = None

    # -- after each optimiser step --------------------------------------------------------------------
    def step(self, values: dict[str, float] | None = None) -> dict[str, Any]:
        """One optimiser step is done: update the ScoreBook and the hand-over rule (collective under DDP).

        ``values``: the driver's own numbers for this step (losses), averaged over ranks in the same
        collective as the rule's input. Returns those averages plus the engine's :meth:`metrics`; the key
        ``"switched"`` is True at the step whose update handed over (the next step is phase 2).
        """
        p, self.pending = self.pending, Pending()
        if p.scores:
            self.book.update(torch.cat(p.idx), torch.cat(p.scores))  # rank-local; merged before a draw
        plain = float("nan") if not p.rela else float(handover_value(p.rela))
        keys = list(values or {})
        reduced = self.all_mean(torch.tensor([float(values[k]) for k in keys] + [plain], dtype=torch.float64,
                                              device=self.device)).tolist()
        out = dict(zip(keys, reduced[:-1]))
        before = self.handover.phase
        rho = self.handover.update(reduced[-1] if before == 1 else None)
        out.update(self.metrics(), rho=rho if self.targets is not None else None, handover_loss=reduced[-1],
                   switched=self._after_switch(before))
        self.last = out
        return out

    def _after_switch(self, before: int) -> bool:
        if self.handover.phase == before:
            return False
        self.book.reset()  # phase 2 scores samples by the method's own loss, on another scale
        return True

    def all_mean(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` averaged over the run's processes (a collective under DDP; ``value`` on :attr:`device`)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value = value / self.world
        return value

    # -- what to log and to keep ----------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """The engine's numbers for a logger: phase, ReLA weight, rho, the rule's averages, subset size."""
        h = self.handover
        rela = self.targets is not None
        return {"phase": h.phase, "rela_weight": h.rela_weight, "rho": h.rho if rela else None,
                "fast": h.fast if rela else None, "slow": h.slow if rela else None, "subset_size": self.sampler.size(),
                "switch_step": h.switch_step}

    def state_dict(self, position: int = 0) -> dict[str, Any]:
        """The hand-over, the ScoreBook and (mid-epoch, ``position`` > 0) the drawn subset and the position in
        this rank's shard; collective under DDP (the books are merged first). Plain tensors and numbers."""
        if self.world > 1:
            self.book.sync()
        return {"handover": self.handover.state_dict(), "scores": self.book.state_dict(),
                "sampler": self.sampler.state_dict(position=position) if position > 0 else None,
                "head": self.head.state_dict() if self.head is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the same hand-over state, scores and (mid-epoch) the same subset at the same position."""
        self.handover.load_state_dict(state["handover"])
        self.handover.epochs = self.config.epochs  # a continued run: the constant rule counts the new length
        self.book.load_state_dict(state["scores"])
        if self.head is not None and state.get("head") is not None:
            self.head.load_state_dict(state["head"])
        if state.get("sampler") is not None:
            self.sampler.load_state_dict(state["sampler"])
