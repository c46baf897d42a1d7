"""ReLA-F: the accelerated trainer (ALGORITHM.md, "ReLA-F" and "Dynamic subset").

``ReLATrainer(backbone, method, targets, budget, epochs).fit(data)`` trains ``epochs`` epochs, each over a
subset of ``budget x N`` samples drawn by :class:`rela_fast.EpochSubset` (reference: uniform without
replacement, redrawn every epoch), so ``budget`` is the fraction of a full run's optimisation steps.

* Phase 1: the ReLA loss ``mean(1 - cos(T(g(v)), y))`` (fused :func:`rela_fast.transfer_loss`, transfer
  head ``T = Linear(F, d)``, trained jointly by default, frozen in the authors' recipe) on the mild ReLA
  augmentation; its per-sample losses feed the ScoreBook; the method's per-step hook still runs (BYOL's
  target momentum update).
* The hand-over rule (:class:`HandOver`) sees the *unweighted* mean ReLA loss, averaged over accumulation
  steps and ranks, once per optimiser step; when it fires, phase 2 starts at the next step: the method's own
  loss on its own augmentation (the views are rebuilt from the same position in the epoch).
* Always (when labels exist): an online linear classifier on detached features, for monitoring.

Extension points, no subclassing: ``callbacks=`` (:mod:`rela_fast.train.callbacks`; ``trainer.untimed()``
keeps evaluation out of the wall time) and ``views=`` (:mod:`rela_fast.train.views`: ``auto`` picks the
batched in-memory tensor path for IDX/array sources and anything that fits in RAM). All loop state is one
:class:`TrainState`, checkpointed as a whole.

Engineering: AMP (``bf16``; ``fp16`` with a GradScaler), gradient accumulation, ``compile=True``, DDP under
``torchrun`` (every rank a disjoint shard of the same global subset; per-sample losses are all-gathered so
every rank's ScoreBook agrees), atomic checkpoints (every ``checkpoint_every`` steps and at each epoch end)
that resume to the same subsets, hand-over state and augmentations, JSONL metrics and a PNG plot.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rela_fast.distributed import init_from_env, rank_and_world
from rela_fast.environment import resolve_device
from rela_fast.errors import UserError
from rela_fast.subset.policies import POLICIES, WEIGHTED_POLICIES
from rela_fast.train.augment import two_views
from rela_fast.train.backbones import create_backbone, feature_dim
from rela_fast.train.callbacks import Callback, CallbackList, Clock, TrainState
from rela_fast.train.checkpoint import load_checkpoint, save_checkpoint
from rela_fast.train.data import open_train_data
from rela_fast.train.guards import check_inputs, check_loss, check_settings, claim_run_dir
from rela_fast.train.handover import HandOver
from rela_fast.train.loader import auto_image_size
from rela_fast.train.methods import Method, create_method
from rela_fast.train.metrics import MetricsLog, plot_metrics
from rela_fast.train.optim import build_optimizer, lr_at
from rela_fast.train.recipes import resolve_recipe
from rela_fast.train.student import Student
from rela_fast.train.views import KINDS as VIEW_KINDS
from rela_fast.train.views import ViewPipeline, create_views

__all__ = ["ReLATrainer", "Student", "TrainResult", "TrainState", "build_optimizer", "lr_at"]

CHECKPOINT_FORMAT = "rela_fast.train/2"
# Test hook: SIGKILL this process right after optimiser step N (resume tests).
KILL_AFTER_STEP_ENV = "RELA_FAST_TRAIN_KILL_AFTER_STEP"
_RESUME_KEYS = ("budget", "epochs", "policy", "batch_size", "accumulate", "seed", "method", "n", "relatargets",
                "handover", "max_steps", "feature_dim", "target_dim")


@dataclass
class TrainResult:
    """What :meth:`ReLATrainer.fit` returns."""

    backbone: nn.Module
    history: list[dict[str, Any]]
    steps: int
    epochs: int
    wall_time: float
    images_seen: int
    handover: dict[str, Any]
    online_accuracy: float | None
    out: Path | None = None
    checkpoint: Path | None = None
    metrics: Path | None = None
    plot: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def switch_step(self) -> int | None:
        return self.handover.get("switch_step")


@dataclass
class _Accum:
    """One optimiser step's worth of micro-batches: loss sums and per-sample losses."""

    micro: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    idx: list[torch.Tensor] = field(default_factory=list)
    per_sample: list[torch.Tensor] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)
    lam: float = 1.0  # the ReLA weight these micro-batches used


def _digest(indices: torch.Tensor) -> str:
    return hashlib.sha1(indices.to(torch.int64).cpu().numpy().tobytes()).hexdigest()[:16]


def _check_args(budget, epochs, policy, batch_size, accumulate, optimizer, views, amp, method, handover,
                lambda_const) -> None:
    if not isinstance(budget, int | float) or not 0.0 < float(budget) <= 1.0:
        raise UserError(f"budget={budget!r}: must lie in (0, 1] (the fraction of a full run's steps)")
    if int(epochs) < 1:
        raise UserError(f"epochs={epochs}: must be at least 1")
    if policy not in POLICIES:
        raise UserError(f"subset_policy={policy!r}: unknown; use one of {', '.join(POLICIES)}")
    if batch_size < 1 or accumulate < 1:
        raise UserError(f"batch_size={batch_size}, accumulate={accumulate}: both must be at least 1")
    if optimizer not in ("adamw", "sgd", "lars"):
        raise UserError(f"optimizer {optimizer!r}: unknown; use adamw, sgd or lars")
    if isinstance(views, str) and views not in VIEW_KINDS:
        raise UserError(f"views={views!r}: use one of {', '.join(VIEW_KINDS)} or pass a ViewPipeline")
    if amp not in (None, "off", "bf16", "fp16", "auto"):
        raise UserError(f"amp={amp!r}: use off, bf16, fp16 or auto")
    if isinstance(method, str):
        from rela_fast.train.methods import METHODS

        if method.lower() not in METHODS:
            raise UserError(f"method {method!r}: unknown; use one of {', '.join(METHODS)} or pass a Method")
    elif not isinstance(method, Method):
        raise UserError(f"method: expected a name or a rela_fast.train.Method, got {type(method).__name__}")
    if isinstance(handover, str) and handover not in ("adaptive", "constant", "off"):
        raise UserError(f"handover={handover!r}: use adaptive, constant or off")
    if handover == "constant" and lambda_const is None:
        raise UserError("handover='constant': needs lambda_const (phase 1 for lambda_const x epochs epochs)")


class ReLATrainer:
    """ReLA-F around a backbone and a method; see the module docstring.

    Args:
        backbone: an ``nn.Module`` returning pooled (B, F) features, or an architecture name for
            :func:`create_backbone` (``"convnet"``, any timm name).
        method: a :class:`Method` or a built-in name (``byol``, ``simclr``, ``dino``, ``supervised``).
        targets: a target store (``load_targets``), its directory, an N x d tensor, or None (no ReLA:
            the plain method on the same dynamic subset, i.e. the baseline). Targets wider than the
            student's F are truncated to their first F columns (the leading principal components).
        budget: fraction in (0, 1] of the full run's optimisation steps = each epoch's subset ratio.
        epochs: epochs of the run (each over ``budget x N`` samples).
        subset_policy: ``random`` (reference), ``topk``, ``bottomk``, ``weighted``, ``infobatch``.
        recipe: ``"default"`` or ``"authors"`` (their code: frozen random transfer head, constant lr,
            weight decay 0.01 on every parameter, BYOL momentum fixed at 0.99, global batch 128); each of
            ``lr``, ``weight_decay``, ``freeze_head``, ``schedule``, ``decay_all`` and ``batch_size`` overrides
            the recipe's choice (both recipes use AdamW at lr 1e-3).
        batch_size: per process and micro-step; the global batch is ``batch_size x accumulate x world``.
        handover: ``"adaptive"`` (reference), ``"constant"`` (with ``lambda_const``), or a HandOver.
        soft_steps: > 0 blends the two losses linearly over that many steps after the switch (opt-in).
        warm_heads: > 0 leaves the backbone unchanged for that many steps after the switch, so the method's new
            heads learn before their gradients reach the features the targets taught (opt-in).
        amp: None/"off", "bf16", "fp16" or "auto" (bf16 on CUDA when supported, else fp16; off on CPU).
        compile: True compiles the backbone with ``torch.compile`` (inductor); a string names the backend.
        channels_last: backbone and views in the channels-last memory format (measured in
            ``benchmarks/bench_train_e2e.py``).
        views: ``"auto"``, ``"tensor"``, ``"torch"``, ``"dali"`` or your own ViewPipeline (``loader`` is
            the same argument's former name).
        callbacks: :class:`~rela_fast.train.callbacks.Callback` objects called during ``fit``.
        rows: train on these source rows only (a target store brings its own rows instead).
        out: run directory for ``checkpoint.pt``, ``metrics.jsonl``, ``metrics.png``, ``summary.json``.
        checkpoint_every: also checkpoint every this many optimiser steps (always at epoch ends).
        max_steps: stop after this many optimiser steps (schedules then span ``max_steps``).
        batched_augment: photometric augmentation batched on the device (default) instead of per sample
            with torchvision on the loader workers.
        progress: a progress bar on a terminal, a line every 10 s elsewhere.
    """

    def __init__(
        self,
        backbone: nn.Module | str,
        method: Method | str = "byol",
        targets: Any = None,
        budget: float = 1.0,
        epochs: int = 100,
        subset_policy: str = "random",
        *,
        recipe: str = "default",
        batch_size: int | None = None,
        lr: float | None = None,
        optimizer: str = "adamw",
        weight_decay: float | None = None,
        momentum: float = 0.9,
        warmup: float = 0.0,
        schedule: str | None = None,
        freeze_head: bool | None = None,
        decay_all: bool | None = None,
        handover: HandOver | str = "adaptive",
        lambda_const: float | None = None,
        soft_steps: int = 0,
        warm_heads: int = 0,
        image_size: int | None = None,
        accumulate: int = 1,
        amp: str | None = None,
        compile: bool | str = False,
        channels_last: bool = False,
        device: str | torch.device | None = None,
        num_workers: int = 0,
        views: str | ViewPipeline = "auto",
        loader: str | None = None,
        callbacks: list[Callback] | None = None,
        rows: Any = None,
        seed: int = 0,
        out: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        log_every: int = 1,
        max_steps: int | None = None,
        method_kwargs: dict[str, Any] | None = None,
        subset_kwargs: dict[str, Any] | None = None,
        score_momentum: float | None = None,
        stratify: bool = False,
        online_classifier: bool = True,
        sync_bn: bool = False,
        backbone_config: dict[str, Any] | None = None,
        batched_augment: bool = True,
        progress: bool = False,
    ) -> None:
        r = resolve_recipe(recipe, batch_size=batch_size, lr=lr, weight_decay=weight_decay, schedule=schedule,
                           freeze_head=freeze_head, decay_all=decay_all, method=method,
                           method_kwargs=method_kwargs)
        views = loader if loader is not None else views
        check_settings(lr=r.lr, warmup=warmup, weight_decay=r.weight_decay, momentum=momentum, image_size=image_size,
                       num_workers=num_workers, max_steps=max_steps, checkpoint_every=checkpoint_every,
                       soft_steps=soft_steps, warm_heads=warm_heads, lambda_const=lambda_const, device=device)
        _check_args(budget, epochs, subset_policy, r.batch_size, accumulate, optimizer, views, amp, method,
                    handover, lambda_const)
        self.recipe = r
        self.backbone, self.method, self.targets = backbone, method, targets
        self.budget, self.epochs, self.policy = float(budget), int(epochs), subset_policy
        self.batch_size, self.lr, self.optimizer_name = r.batch_size, float(r.lr), optimizer
        self.weight_decay, self.momentum, self.warmup = r.weight_decay, float(momentum), float(warmup)
        self.handover_arg, self.lambda_const, self.soft_steps = handover, lambda_const, int(soft_steps)
        self.warm_heads = int(warm_heads)
        self.image_size, self.accumulate = image_size, int(accumulate)
        self.amp = None if amp == "off" else amp
        self.compile, self.device_arg, self.num_workers = compile, device, int(num_workers)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.views_arg, self.callbacks, self.rows_arg = views, CallbackList(callbacks), rows
        self.seed, self.out = int(seed), Path(out) if out is not None else None
        self.checkpoint_every, self.log_every, self.max_steps = checkpoint_every, max(1, int(log_every)), max_steps
        self.method_kwargs, self.subset_kwargs = r.method_kwargs, dict(subset_kwargs or {})
        self.score_momentum, self.stratify = score_momentum, stratify
        self.online_classifier, self.sync_bn = online_classifier, sync_bn
        self.backbone_config, self.batched_augment, self.progress = backbone_config, batched_augment, progress
        self.state = TrainState()
        self.clock = Clock()

    # -- public helpers ---------------------------------------------------------------------------
    def untimed(self):
        """``with trainer.untimed(): ...``: time spent inside does not count as the run's wall time."""
        return self.clock.paused()

    # -- set-up -----------------------------------------------------------------------------------
    def _amp_dtype(self) -> torch.dtype | None:
        if self.amp is None:
            return None
        if self.amp == "auto":
            if self.device.type != "cuda":
                return None
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if self.amp == "bf16" else torch.float16

    def _config(self) -> dict[str, Any]:
        method_name = self.method if isinstance(self.method, str) else type(self.method).__name__.lower()
        return {
            "budget": self.budget, "epochs": self.epochs, "policy": self.policy, "batch_size": self.batch_size,
            "accumulate": self.accumulate, "lr": self.lr, "optimizer": self.optimizer_name,
            "weight_decay": self.weight_decay, "warmup": self.warmup, "seed": self.seed, "method": method_name,
            "method_kwargs": {k: v for k, v in self.method_kwargs.items() if isinstance(v, int | float | str | bool)},
            "image_size": self.image_size, "world": self.world, "n": self.n, "relatargets": self.rela,
            "handover": self.handover.mode, "lambda_const": self.lambda_const, "soft_steps": self.soft_steps,
            "warm_heads": self.handover.warm_heads, "max_steps": self.max_steps, "backbone": self.backbone_config,
            "feature_dim": self.feature_dim,
            "target_dim": self.target_dim, "num_classes": self.num_classes, "amp": self.amp,
            "recipe": self.recipe.name, "schedule": self.recipe.schedule, "freeze_head": self.recipe.freeze_head,
            "decay_all": self.recipe.decay_all, "views": getattr(self.views, "name", type(self.views).__name__),
        }

    def _build(self, data: Any) -> None:
        init_from_env(None if self.device_arg is None else str(self.device_arg))
        self.rank, self.world = rank_and_world()
        self.device = resolve_device(self.device_arg)
        td = open_train_data(data, self.targets, self.rows_arg)
        check_inputs(td.targets, td.labels, self.stratify)
        self.source, self.rows, self.labels, self.n = td.source, td.rows, td.labels, td.n
        self.rela = td.targets is not None
        if self.image_size is None:
            self.image_size = auto_image_size(self.source, self.rows)
        torch.manual_seed(self.seed)
        self._build_student(td.targets)
        self._build_optimisation()
        self._build_subset()
        self.views = create_views(self.views_arg, self.source, self.rows, self.labels, device=self.device,
                                  seed=self.seed, num_workers=self.num_workers, batched=self.batched_augment)
        per_rank = self.sampler_len
        self.steps_per_epoch = per_rank // (self.batch_size * self.accumulate)
        if self.steps_per_epoch == 0:
            raise UserError(
                f"batch_size={self.batch_size} x accumulate={self.accumulate}: larger than the {per_rank} samples "
                f"each process gets per epoch (budget {self.budget} of {self.n}); use a smaller batch")
        total = self.steps_per_epoch * self.epochs
        self.total_steps = min(total, self.max_steps) if self.max_steps else total
        self.warmup_steps = int(round(self.warmup * self.total_steps))
        self.needed = self.steps_per_epoch * self.accumulate * self.batch_size

    def _build_student(self, targets: torch.Tensor | None) -> None:
        backbone = self.backbone
        if isinstance(backbone, str):
            backbone, _, self.backbone_config = create_backbone(backbone, self.image_size)
        if self.sync_bn and self.world > 1:
            backbone = nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
        backbone = backbone.to(self.device, memory_format=self.memory_format)
        self.backbone_module = backbone
        self.feature_dim = feature_dim(backbone, self.image_size)
        self.num_classes = int(self.labels.max()) + 1 if self.labels is not None else None
        method = self.method
        if isinstance(method, str):
            method = create_method(method, self.feature_dim, num_classes=self.num_classes, **self.method_kwargs)
        if method.needs_labels and self.labels is None:
            raise UserError(f"method {method.name!r}: needs labels, and the data has none")
        method = method.to(self.device)
        method.attach(backbone)
        self.method_module = method
        head, self.target_dim = None, None
        if targets is not None:
            from rela_fast.ops.transfer_loss import TransferHead

            if targets.shape[1] > self.feature_dim:  # as the authors: d = min(F, P), the leading components
                targets = targets[:, : self.feature_dim]
            self.target_dim = int(targets.shape[1])
            head = TransferHead(self.feature_dim, self.target_dim).to(self.device)
            head.requires_grad_(not self.recipe.freeze_head)
            small = targets.numel() * 4 <= 1 << 30
            self.targets_t = torch.as_tensor(targets).to(self.device) if small else targets
        classifier = None
        if self.online_classifier and self.labels is not None:
            classifier = nn.Linear(self.feature_dim, self.num_classes).to(self.device)
        compiled = None
        if self.compile:
            kw = {"backend": self.compile} if isinstance(self.compile, str) else {}
            compiled = torch.compile(backbone, **kw)
        self.student = Student(backbone, head, method, classifier, compiled)
        self.model: nn.Module = self.student
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)

    def _build_optimisation(self) -> None:
        self.optimizer = build_optimizer(self.optimizer_name, self.student, self.lr, self.weight_decay, self.momentum,
                                         decay_all=self.recipe.decay_all)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        if isinstance(self.handover_arg, HandOver):
            self.handover = self.handover_arg
        elif not self.rela:
            self.handover = HandOver("off")
        else:
            self.handover = HandOver(self.handover_arg, epochs=self.epochs, lambda_const=self.lambda_const,
                                     soft_steps=self.soft_steps, warm_heads=self.warm_heads)

    def _build_subset(self) -> None:
        from rela_fast.subset import build_subset

        kw = dict(self.subset_kwargs)
        if self.stratify and self.labels is not None:
            kw.setdefault("labels", self.labels.to(self.device))
        self.scores, self.sampler = build_subset(self.n, self.policy, budget=self.budget, epochs=self.epochs,
                                                 seed=self.seed, device=self.device, momentum=self.score_momentum, **kw)
        self.sampler.set_epoch(0)
        self.sampler_len = len(self.sampler)

    # -- checkpoints ------------------------------------------------------------------------------
    def _checkpoint_path(self) -> Path | None:
        return self.out / "checkpoint.pt" if self.out is not None else None

    def _save(self) -> None:
        """Checkpoint (collective under DDP: the ScoreBooks are merged first); mid-epoch when ``state.pos`` > 0."""
        if self.world > 1:
            self.scores.sync()
        if self.rank != 0 or self.out is None:
            return
        s = self.state
        s.wall_time = self.clock.elapsed()
        part = lambda m: m.state_dict() if m is not None else None  # noqa: E731
        state = {
            "format": CHECKPOINT_FORMAT, "config": self._config(), "train_state": s.state_dict(),
            "backbone": self.backbone_module.state_dict(), "head": part(self.student.head),
            "method": self.method_module.state_dict(), "classifier": part(self.student.classifier),
            "optimizer": self.optimizer.state_dict(), "scaler": part(self.scaler),
            "handover": self.handover.state_dict(), "scores": self.scores.state_dict(),
            "sampler": self.sampler.state_dict(position=s.pos) if s.pos > 0 else None,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None},
        }
        save_checkpoint(state, self.out / "checkpoint.pt")

    def _load_checkpoint(self) -> dict[str, Any] | None:
        path = self._checkpoint_path()
        if path is None or not path.is_file():
            return None
        state = load_checkpoint(path, map_location="cpu")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{path}: not a checkpoint of this rela_fast version's trainer; use another --out")
        old, new = state["config"], self._config()
        changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in _RESUME_KEYS if old.get(k) != new.get(k)]
        if changed:
            raise UserError(f"{path}: the run in this directory has other settings ({'; '.join(changed)}); "
                            "use another --out, or the same settings to resume")
        if state["train_state"]["pos"] > 0 and old.get("world") != self.world:
            raise UserError(f"{path}: saved mid-epoch by {old.get('world')} processes, resumed with {self.world}; "
                            "resume with the same number of processes")
        return state

    def _resume(self) -> bool:
        state = self._load_checkpoint()
        if state is None:
            return False
        self.backbone_module.load_state_dict(state["backbone"])
        for module, key in ((self.student.head, "head"), (self.student.classifier, "classifier"),
                            (self.scaler, "scaler")):
            if module is not None and state.get(key):
                module.load_state_dict(state[key])
        self.method_module.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.handover.load_state_dict(state["handover"])
        self.scores.load_state_dict(state["scores"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        self.state = TrainState.from_state_dict(state["train_state"])
        if self.state.pos > 0:
            self.sampler.load_state_dict(state["sampler"])
        return True

    # -- the loop ---------------------------------------------------------------------------------
    def _all_mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(value, op=dist.ReduceOp.SUM)
            value = value / self.world
        return value

    def fit(self, data: Any, *, resume: bool = True) -> TrainResult:
        """Train on ``data`` (a path, an array, or a Source); resumes from ``out/checkpoint.pt`` if present."""
        self._build(data)
        with claim_run_dir(self.out, self.rank, self.world):  # one run per folder; a stale .tmp is removed
            return self._fit(resume)

    def _fit(self, resume: bool) -> TrainResult:
        main = self.rank == 0
        if self.out is not None and main:
            self.out.mkdir(parents=True, exist_ok=True)
        log = MetricsLog(self.out / "metrics.jsonl" if self.out is not None and main else None)
        self.state = TrainState()
        resumed = self._resume() if resume else False
        self.clock = Clock(self.state.wall_time)
        if resumed:
            log.truncate_after(self.state.step)
        elif self.out is not None and main and (self.out / "metrics.jsonl").exists():
            (self.out / "metrics.jsonl").unlink()
        self.kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "0") or 0)
        self.student.train()
        bar = None
        if self.progress and main:
            from rela_fast.progress import progress_bar

            bar = progress_bar(self.total_steps, "train", unit="step", initial=self.state.step)
        self.callbacks.on_fit_start(self, self.state)
        try:
            while self.state.epoch < self.epochs and self.state.step < self.total_steps:
                self._run_epoch(log, bar)
        finally:
            if bar is not None:
                bar.close()
        self.state.wall_time = self.clock.elapsed()
        self.callbacks.on_fit_end(self, self.state)
        return self._finish(log)

    def _current_shard(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        shard = self.sampler.shard()
        weights = self.sampler.weights_for(shard).cpu() if self.policy in WEIGHTED_POLICIES else None
        return shard, weights

    def _run_epoch(self, log: MetricsLog, bar) -> None:
        """One epoch (or the rest of one, on resume): draw the subset, train on it, log, checkpoint."""
        s = self.state
        phase_before = self.handover.phase
        self.handover.start_epoch(s.epoch)
        if self.handover.phase != phase_before:  # a constant hand-over switches at an epoch start
            self._handed_over()
        if s.pos == 0:
            self.sampler.set_epoch(s.epoch)
            s.correct = s.seen = 0
        shard, weights = self._current_shard()
        unit = self.batch_size * self.accumulate
        self.needed = len(shard) // unit * unit  # InfoBatch's subset size changes from epoch to epoch
        digest = _digest(self.sampler.indices())
        self.callbacks.on_epoch_start(self, s)
        while s.pos < self.needed and s.step < self.total_steps:
            if not self._train_views(shard, weights, log, bar):
                break
        complete = s.pos >= self.needed
        s.wall_time = self.clock.elapsed()
        online = self._epoch_accuracy()  # collective under DDP: every rank computes it
        if self.rank == 0:
            log.log({"event": "epoch", "epoch": s.epoch, "step": s.step, "phase": self.handover.phase,
                     "online_acc": online, "subset_size": self.sampler.size(),
                     "subset_digest": digest, "wall_time": s.wall_time, "complete": complete})
        self.callbacks.on_epoch_end(self, s)
        if complete:
            s.epoch, s.pos = s.epoch + 1, 0
        self._save()

    def _views_for_phase(self) -> tuple[int, tuple]:
        if self.handover.rela_weight == 1.0:
            return 1, two_views("rela", self.image_size)
        return 2, self.method_module.augmentation(self.image_size)

    def _train_views(self, shard, weights, log, bar) -> bool:
        """Train from ``state.pos`` with the current phase's views; True when the phase changed (new views)."""
        s = self.state
        aug, views = self._views_for_phase()
        acc = _Accum()
        batches = self.views.batches(views, shard[s.pos:self.needed], epoch=s.epoch, phase=aug,
                                     batch_size=self.batch_size)
        for batch in batches:
            self._micro_step(batch, weights, acc)
            if acc.micro < self.accumulate:
                continue
            lr = self._optimizer_step()
            self._bookkeeping(acc, lr, log, bar)
            acc = _Accum()
            if self._views_for_phase()[0] != aug:
                return True
            if s.step >= self.total_steps:
                return False
        return False

    def _micro_step(self, batch, weights: torch.Tensor | None, acc: _Accum) -> None:
        """Forward + backward of one micro-batch (gradients accumulate; DDP syncs on the last one)."""
        v1, v2, idx, labels = batch
        if self.memory_format is torch.channels_last:
            v1, v2 = v1.contiguous(memory_format=self.memory_format), v2.contiguous(memory_format=self.memory_format)
        lam = acc.lam = self.handover.rela_weight
        labels = labels if self.labels is not None else None
        y = self.targets_t[idx.to(self.targets_t.device)].to(self.device, non_blocking=True) if lam > 0 else None
        w = None
        if weights is not None:  # InfoBatch: this micro-batch's loss weights
            lo = self.state.pos + acc.micro * self.batch_size
            w = weights[lo:lo + self.batch_size].to(self.device)
        last = acc.micro == self.accumulate - 1
        sync = contextlib.nullcontext() if last or self.world == 1 else self.model.no_sync()
        with sync:
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                total, stats = self.model(v1, v2, y, labels, w, lam)
            scaled = total / self.accumulate
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        for k in ("loss", "rela_loss", "method_loss"):
            if k in stats:
                acc.sums[k] = acc.sums.get(k, 0.0) + float(stats[k]) / self.accumulate
        if "correct" in stats:
            self.state.correct += int(stats["correct"])
            self.state.seen += int(labels.shape[0])
        if "per_sample" in stats:
            acc.idx.append(idx.to(self.device))
            acc.per_sample.append(stats["per_sample"].float().detach())
        acc.micro += 1

    def _optimizer_step(self) -> float:
        """Apply the accumulated gradients at this step's learning rate; advance the counters."""
        s = self.state
        lr = lr_at(s.step, self.total_steps, self.lr, self.warmup_steps, self.recipe.schedule)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        if self.handover.backbone_frozen:  # warm-up of the method's heads: no update, no moment, no decay
            for p in self.backbone_module.parameters():
                p.grad = None
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        s.step += 1
        s.pos += self.batch_size * self.accumulate
        s.images_seen += self.batch_size * self.accumulate * self.world
        self.method_module.on_step(s.step, self.total_steps)
        return lr

    def _bookkeeping(self, acc: _Accum, lr: float, log: MetricsLog, bar) -> None:
        """Scores, the hand-over rule, metrics, progress, checkpoints and callbacks after one optimiser step."""
        s = self.state
        per_sample = torch.cat(acc.per_sample) if acc.per_sample else None
        if per_sample is not None:  # rank-local; EpochSubset merges the ranks' books before a draw
            self.scores.update(torch.cat(acc.idx), per_sample)
        plain = float(per_sample.mean()) if per_sample is not None else float("nan")  # unweighted: the rule's input
        reduced = torch.tensor([acc.sums.get(k, float("nan")) for k in ("loss", "rela_loss", "method_loss")] + [plain],
                               device=self.device)
        loss, rela_loss, method_loss, plain = self._all_mean(reduced).tolist()
        check_loss(loss, self.state.step, self.state.epoch)
        phase_before = self.handover.phase
        rho = self.handover.update(plain if phase_before == 1 else None)
        s.wall_time, s.phase, s.rela_weight = self.clock.elapsed(), self.handover.phase, self.handover.rela_weight
        if self.device.type == "cuda" and s.step % self.log_every == 0:
            torch.cuda.synchronize()
        dt = time.perf_counter() - acc.t0
        s.losses = {"loss": loss, "rela_loss": rela_loss, "method_loss": method_loss, "lr": lr,
                    "rho": rho if self.rela else None, "step_time": dt, "rela_weight": acc.lam,
                    "images_per_s": self.batch_size * self.accumulate * self.world / dt if dt > 0 else None}
        self._log_step(log, bar, phase_before)
        if self.checkpoint_every and s.step % self.checkpoint_every == 0 and s.pos < self.needed:
            self._save()
        if self.kill_after and s.step >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        self.callbacks.on_step_end(self, s)
        if self.handover.phase != phase_before:
            self._handed_over()

    def _handed_over(self) -> None:
        self.state.phase, self.state.rela_weight = self.handover.phase, self.handover.rela_weight
        self.scores.reset()  # phase 2 scores samples by the method's own loss, on another scale
        self.callbacks.on_handover(self, self.state)

    def _log_step(self, log: MetricsLog, bar, phase_before: int) -> None:
        s, L = self.state, self.state.losses
        if self.rank == 0 and (s.step % self.log_every == 0 or self.handover.phase != phase_before
                               or s.step == self.total_steps):
            log.log({
                "event": "step", "step": s.step, "epoch": s.epoch, "phase": phase_before,
                "rela_weight": L["rela_weight"], "loss": L["loss"], "rela_loss": L["rela_loss"],
                "method_loss": L["method_loss"], "rho": L["rho"], "fast": self.handover.fast if self.rela else None,
                "slow": self.handover.slow if self.rela else None, "lr": L["lr"], "step_time": L["step_time"],
                "images_per_s": L["images_per_s"],
                "online_acc": s.correct / s.seen if s.seen else None,
                "momentum": getattr(self.method_module, "momentum", None), "wall_time": s.wall_time,
            })
        if bar is not None:
            bar.update(1)
            post = {"loss": f"{L['loss']:.4f}", "phase": self.handover.phase}
            if self.rela:
                post["rho"] = f"{L['rho']:.4f}"
            if s.seen:
                post["acc"] = f"{s.correct / s.seen:.3f}"
            bar.set_postfix(post)

    def _epoch_accuracy(self) -> float | None:
        if self.student.classifier is None:
            return None
        t = torch.tensor([float(self.state.correct), float(self.state.seen)], device=self.device)
        t = self._all_mean(t) * self.world
        return float(t[0] / t[1]) if t[1] > 0 else None

    def _finish(self, log: MetricsLog) -> TrainResult:
        s, png, acc = self.state, None, self._epoch_accuracy()
        if self.rank == 0 and self.out is not None:
            import json

            png = plot_metrics({self.out.name or "run": log.path}, self.out / "metrics.png", missing_ok=True)
            summary = {"steps": s.step, "epochs": self.epochs, "wall_time": s.wall_time,
                       "images_seen": s.images_seen, "handover": self.handover.state_dict(),
                       "online_accuracy": acc, "config": self._config()}
            with open(self.out / "summary.json", "w") as f:
                json.dump(summary, f, indent=1)
        return TrainResult(
            backbone=self.backbone_module, history=log.rows if log.path is None else _all_rows(log),
            steps=s.step, epochs=self.epochs, wall_time=s.wall_time, images_seen=s.images_seen,
            handover=self.handover.state_dict(), online_accuracy=acc, out=self.out,
            checkpoint=self._checkpoint_path() if self.out is not None else None, metrics=log.path, plot=png,
            extra={"total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
                   "image_size": self.image_size, "feature_dim": self.feature_dim,
                   "views": getattr(self.views, "name", type(self.views).__name__)},
        )


def _all_rows(log: MetricsLog) -> list[dict[str, Any]]:
    from rela_fast.train.metrics import read_metrics

    return read_metrics(log.path) if log.path is not None and log.path.exists() else log.rows
