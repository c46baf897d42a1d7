"""PyTorch Lightning driver of the ReLA engine: one Callback plugs ReLA into an existing LightningModule.

Needs the ``lightning`` extra (``pip install 'rela_fast[lightning]'``)::

    engine = ReLAEngine.create(store, data, feature_dim=F, budget=0.5, epochs=E)
    rela = ReLACallback(engine)
    loader = DataLoader(IndexedDataset(data, rows=engine.rows), sampler=rela.sampler, batch_size=B, drop_last=True)
    L.Trainer(max_epochs=E, callbacks=[rela]).fit(model, loader)

    # in the module's training_step; a batch is (images, labels, idx) and self.rela is the engine:
    x = torch.cat(self.rela.views(batch[0], batch[2]))        # this step's views, made on the batch
    h = self.backbone(x).flatten(1)
    loss = self.rela.mix(self.rela.loss(h, batch[2]), lambda: self.byol_loss(h, x))

Everything else goes through Lightning's public hooks, so its precision, strategies, loggers and launchers
work as Lightning documents them:

* ``setup``: the engine moves to this process's device and rank (:meth:`ReLAEngine.place`: Lightning starts
  its processes after the user built the engine); its transfer head is registered on the module as
  ``<name>_head``, so ``configure_optimizers``' ``self.parameters()``, DDP and checkpoints include it; the
  engine is reachable as ``pl_module.<name>`` (default ``rela``).
* the sampler: :attr:`ReLACallback.sampler` shards each epoch's subset per rank. It is a ``DistributedSampler``
  to Lightning, which then leaves it alone (no ``use_distributed_sampler=False`` to set), and Lightning's own
  per-epoch ``set_epoch`` call enters the engine's epoch, except that a resumed epoch keeps its subset and
  position. A training DataLoader that does not draw from it is refused with one line saying what to pass.
* the views follow the phase at the step itself: the module makes them with ``self.rela.views`` on the
  batch, in the training process, so no loader worker holds views of the wrong phase after the hand-over.
* ``on_before_optimizer_step``: warm heads (the backbone gets no update for the first steps after the switch).
* ``on_train_batch_end``, after each optimiser step: :meth:`ReLAEngine.step` (scores and the hand-over fed
  the unweighted ReLA loss averaged over ranks, so every rank switches at the same step), then
  ``pl_module.log`` of rho, phase, the ReLA weight and loss and the subset size (under ``rela/``).
* ``state_dict`` / ``load_state_dict``: the engine's state (hand-over, scores, transfer head and, mid-epoch,
  the drawn subset and this rank's position in it) rides in Lightning's checkpoints, so ``fit(ckpt_path=...)``
  continues with the same subsets and the same hand-over.

Phase 2 calls the module's own loss. For a score-driven subset policy (``topk``, ``weighted``, InfoBatch),
also give the engine the method's per-sample losses in phase 2: ``self.rela.record(idx, per_sample)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import DistributedSampler

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("rela_fast.lightning needs Lightning: pip install 'rela_fast[lightning]' (lightning>=2.4)"
                      ) from exc

from rela_fast.errors import UserError
from rela_fast.malloc import keep_memory_for
from rela_fast.train.engine import ReLAEngine

__all__ = ["ReLACallback", "ReLASampler"]

LOGGED = {"phase": "phase", "rela_weight": "rela_weight", "rho": "rho", "handover_loss": "loss",
          "subset_size": "subset_size"}


class ReLASampler(DistributedSampler):
    """This rank's shard of the engine's current subset, as a Lightning DataLoader's sampler.

    A ``DistributedSampler`` subclass on purpose: Lightning replaces any other sampler under DDP (unless told
    ``use_distributed_sampler=False``), and this one already shards per rank. Its ``set_epoch(epoch)``, which
    Lightning calls at the start of every epoch, resumed ones included, enters the engine's epoch (draws the
    subset; a constant hand-over may switch), except for the epoch a checkpoint was saved in: that keeps the
    saved subset and position. Iteration and length are the engine's (:attr:`ReLAEngine.sampler`).
    """

    def __init__(self, callback: ReLACallback) -> None:  # no super().__init__: nothing of it is used
        self.callback = callback
        self.shuffle, self.drop_last, self.seed = True, False, callback.engine.config.seed

    @property
    def num_replicas(self) -> int:
        return self.callback.engine.world

    @property
    def rank(self) -> int:
        return self.callback.engine.rank

    @property
    def epoch(self) -> int:
        return self.callback.engine.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.callback.enter_epoch(int(epoch))

    def __iter__(self):
        return iter(self.callback.engine.sampler)

    def __len__(self) -> int:
        return len(self.callback.engine.sampler)


class ReLACallback(pl.Callback):
    """Drives a :class:`~rela_fast.train.engine.ReLAEngine` from Lightning's hooks; see the module docstring.

    Args:
        engine: the run's engine (``ReLAEngine.create(...)``), shared with nothing else.
        backbone: the module's attribute holding the backbone (warm heads drop its gradients).
        name: the engine is set as ``pl_module.<name>`` and its transfer head registered as ``<name>_head``.
        log: ``pl_module.log`` the engine's metrics after every optimiser step, under ``<name>/``.
    """

    def __init__(self, engine: ReLAEngine, *, backbone: str = "backbone", name: str = "rela", log: bool = True
                 ) -> None:
        if not isinstance(engine, ReLAEngine):
            raise UserError(f"ReLACallback(engine): expected a ReLAEngine, got {type(engine).__name__}")
        if not name.isidentifier():
            raise UserError(f"ReLACallback(name={name!r}): must be a Python identifier (it becomes an attribute)")
        self.engine, self.backbone, self.name, self.log = engine, backbone, name, log
        self.sampler = ReLASampler(self)
        self.position = 0  # this rank's samples trained on in the current epoch (saved in checkpoints)
        self.batch_size: int | None = None
        self.last: dict[str, Any] = {}  # the engine's numbers after the last optimiser step
        self._resumed_epoch: int | None = None  # an epoch restored mid-way: its subset and position stay
        self._step: int | None = None  # trainer.global_step when the engine last stepped
        self._loss = 0.0  # the step's loss, summed over its micro-batches (Lightning divides by accumulation)

    # -- the epoch ------------------------------------------------------------------------------------
    def enter_epoch(self, epoch: int) -> None:
        """Start ``epoch`` (Lightning's ``set_epoch`` through :class:`ReLASampler`); a resumed epoch keeps its
        restored subset and position."""
        if self._resumed_epoch is not None and self._resumed_epoch == epoch:
            self._resumed_epoch = None
            return
        self._resumed_epoch = None
        self.engine.set_epoch(epoch)
        self.position = 0

    # -- set-up ---------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        _check_strategy(trainer)
        self.engine.place(device=trainer.strategy.root_device, rank=trainer.global_rank, world=trainer.world_size)
        keep_memory_for(self.engine.device, self.engine.config.runtime.keep_memory)
        if not isinstance(getattr(pl_module, self.backbone, None), nn.Module):
            raise UserError(f"ReLACallback(backbone={self.backbone!r}): {type(pl_module).__name__} has no such "
                            "module; pass the attribute that holds the backbone")
        head = self.engine.head
        if head is not None and getattr(pl_module, f"{self.name}_head", None) is not head:
            pl_module.add_module(f"{self.name}_head", head)  # before configure_optimizers and checkpoint loading
        setattr(pl_module, self.name, self.engine)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        ours = getattr(loader, "sampler", None) is self.sampler or getattr(
            getattr(loader, "batch_sampler", None), "sampler", None) is self.sampler
        if not ours:
            raise UserError("ReLACallback: the training DataLoader must draw from the callback's sampler, e.g. "
                            "DataLoader(IndexedDataset(data, rows=engine.rows), sampler=callback.sampler, "
                            "batch_size=B, drop_last=True)")
        self.batch_size = getattr(loader, "batch_size", None) or getattr(loader.batch_sampler, "batch_size", None)
        self._step, self._loss = trainer.global_step, 0.0

    # -- the step -------------------------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.engine.before_step(getattr(pl_module, self.backbone))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.batch_size is not None:
            self.position = min((batch_idx + 1) * self.batch_size, len(self.engine.sampler))
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._loss += float(loss.detach())
        if trainer.global_step == self._step:
            return  # within a step's gradient accumulation
        self._step = trainer.global_step
        out = self.engine.step({"loss": self._loss})
        self._loss, self.last = 0.0, out
        if self.log:
            values = {f"{self.name}/{key}": float(out[k]) for k, key in LOGGED.items()
                      if out.get(k) is not None and math.isfinite(float(out[k]))}
            pl_module.log_dict(values, on_step=True, on_epoch=False, batch_size=self.batch_size)

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The engine's state and this epoch's position (collective under DDP: Lightning calls it on every rank)."""
        return {"engine": self.engine.state_dict(position=self.position), "position": self.position}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume: the same hand-over, scores, head and, mid-epoch, the same subset from the same position."""
        self.engine.load_state_dict(state_dict["engine"])
        self.position = int(state_dict.get("position", 0))
        saved = state_dict["engine"].get("sampler")
        self._resumed_epoch = int(saved["epoch"]) if saved is not None else None


def _check_strategy(trainer: pl.Trainer) -> None:
    """DDP must tolerate parameters without gradients: phase 1 leaves the method's heads unused, phase 2 the
    transfer head. Lightning's ``strategy="ddp"`` does not; say what to use instead."""
    from lightning.pytorch.strategies import DDPStrategy

    strategy = trainer.strategy
    if trainer.world_size > 1 and isinstance(strategy, DDPStrategy):
        kwargs = getattr(strategy, "_ddp_kwargs", None)
        if isinstance(kwargs, dict) and not kwargs.get("find_unused_parameters", False):
            raise UserError("ReLACallback: under DDP phase 1 leaves the method's heads without gradients and phase 2 "
                            "the transfer head; use strategy='ddp_find_unused_parameters_true' (or "
                            "DDPStrategy(find_unused_parameters=True))")
