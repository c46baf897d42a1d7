"""ReLA-F: the accelerated trainer (ALGORITHM.md, "ReLA-F" and "Dynamic subset").

``ReLATrainer(backbone, method, targets, budget, epochs).fit(data)`` trains ``epochs`` epochs, each over a
subset of ``budget x N`` samples drawn by :class:`rela_fast.EpochSubset` (reference: uniform without
replacement, redrawn every epoch), so ``budget`` is the fraction of a full run's optimisation steps.

* Phase 1: the ReLA loss ``mean(1 - cos(T(g(v)), y))`` (fused :func:`rela_fast.transfer_loss`, transfer
  head ``T = Linear(F, d)`` trained jointly) on the mild ReLA augmentation; its per-sample losses feed the
  ScoreBook; the method's per-step hook still runs (BYOL's target momentum update).
* The hand-over rule (:class:`HandOver`) sees the batch ReLA loss, averaged over accumulation steps and
  ranks, once per optimiser step; when it fires, phase 2 starts at the next step: the method's own loss on
  its own augmentation (the loader is rebuilt from the same position in the epoch with the new views).
* Always (when labels exist): an online linear classifier on detached features, for monitoring.

Engineering: AMP (``bf16``; ``fp16`` with a GradScaler), gradient accumulation, ``compile=True``
(``torch.compile`` of the backbone), DDP under ``torchrun`` (every rank a disjoint shard of the same global
subset; per-sample losses are all-gathered so every rank's ScoreBook, hence the next subset, agrees),
atomic checkpoints (every ``checkpoint_every`` steps and at each epoch end) that resume to the same
subsets, hand-over state and augmentations, JSONL metrics and a PNG plot.
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

import numpy as np
import torch
from torch import nn

from rela_fast.distributed import init_from_env, rank_and_world
from rela_fast.errors import UserError
from rela_fast.train.augment import two_views
from rela_fast.train.backbones import create_backbone, feature_dim
from rela_fast.train.checkpoint import load_checkpoint, save_checkpoint
from rela_fast.train.guards import check_inputs, check_loss, check_settings, claim_run_dir
from rela_fast.train.handover import HandOver
from rela_fast.train.loader import DaliTwoViewLoader, TwoViewDataset, auto_image_size, dali_available, make_loader
from rela_fast.train.methods import Method, create_method
from rela_fast.train.metrics import MetricsLog, plot_metrics
from rela_fast.train.optim import build_optimizer, lr_at
from rela_fast.train.student import Student

__all__ = ["ReLATrainer", "Student", "TrainResult", "build_optimizer", "lr_at"]

CHECKPOINT_FORMAT = "rela_fast.train/1"
# Test hook: SIGKILL this process right after optimiser step N (resume tests).
KILL_AFTER_STEP_ENV = "RELA_FAST_TRAIN_KILL_AFTER_STEP"
POLICIES = ("random", "topk", "bottomk", "weighted", "infobatch")


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


# ----------------------------------------------------------------------------------------------------
# pieces
# ----------------------------------------------------------------------------------------------------
def _digest(indices: torch.Tensor) -> str:
    return hashlib.sha1(indices.to(torch.int64).cpu().numpy().tobytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------------
class ReLATrainer:
    """ReLA-F around a backbone and a method; see the module docstring.

    Args:
        backbone: an ``nn.Module`` returning pooled (B, F) features, or an architecture name for
            :func:`create_backbone` (``"convnet"``, any timm name).
        method: a :class:`Method` or a built-in name (``byol``, ``simclr``, ``dino``, ``supervised``).
        targets: a target store (``load_targets``), its directory, an N x d tensor, or None (no ReLA:
            the plain method on the same dynamic subset, i.e. the baseline).
        budget: fraction in (0, 1] of the full run's optimisation steps = each epoch's subset ratio.
        epochs: epochs of the run (each over ``budget x N`` samples).
        subset_policy: ``random`` (reference), ``topk``, ``bottomk``, ``weighted``, ``infobatch``.
        batch_size: per process and micro-step; the global batch is ``batch_size x accumulate x world``.
        handover: ``"adaptive"`` (reference), ``"constant"`` (with ``lambda_const``), or a HandOver.
        soft_steps: > 0 blends the two losses linearly over that many steps after the switch (opt-in).
        amp: None/"off", "bf16", "fp16" or "auto" (bf16 on CUDA when supported, else fp16; off on CPU).
        compile: True compiles the backbone with ``torch.compile`` (inductor); a string names the backend.
        out: run directory for ``checkpoint.pt``, ``metrics.jsonl``, ``metrics.png``, ``summary.json``.
        checkpoint_every: also checkpoint every this many optimiser steps (always at epoch ends).
        max_steps: stop after this many optimiser steps (schedules then span ``max_steps``).
        batched_augment: photometric augmentation batched on the device (default) instead of per sample
            with torchvision on the loader workers.
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
        batch_size: int = 256,
        lr: float = 1e-3,
        optimizer: str = "adamw",
        weight_decay: float = 1e-6,
        momentum: float = 0.9,
        warmup: float = 0.0,
        handover: HandOver | str = "adaptive",
        lambda_const: float | None = None,
        soft_steps: int = 0,
        image_size: int | None = None,
        accumulate: int = 1,
        amp: str | None = None,
        compile: bool | str = False,
        device: str | torch.device | None = None,
        num_workers: int = 0,
        loader: str = "auto",
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
        if not isinstance(budget, int | float) or not 0.0 < float(budget) <= 1.0:
            raise UserError(f"budget={budget!r}: must lie in (0, 1] (the fraction of a full run's steps)")
        if int(epochs) < 1:
            raise UserError(f"epochs={epochs}: must be at least 1")
        if subset_policy not in POLICIES:
            raise UserError(f"subset_policy={subset_policy!r}: unknown; use one of {', '.join(POLICIES)}")
        if batch_size < 1 or accumulate < 1:
            raise UserError(f"batch_size={batch_size}, accumulate={accumulate}: both must be at least 1")
        if optimizer not in ("adamw", "sgd", "lars"):
            raise UserError(f"optimizer {optimizer!r}: unknown; use adamw, sgd or lars")
        if loader not in ("auto", "torch", "dali"):
            raise UserError(f"loader={loader!r}: use auto, torch or dali")
        if amp not in (None, "off", "bf16", "fp16", "auto"):
            raise UserError(f"amp={amp!r}: use off, bf16, fp16 or auto")
        if isinstance(method, str):
            from rela_fast.train.methods import METHODS

            if method.lower() not in METHODS:
                raise UserError(f"method {method!r}: unknown; use one of {', '.join(METHODS)} or pass a Method")
        elif not isinstance(method, Method):
            raise UserError(f"method: expected a name or a rela_fast.train.Method, got {type(method).__name__}")
        check_settings(lr=lr, warmup=warmup, weight_decay=weight_decay, momentum=momentum, image_size=image_size,
                       num_workers=num_workers, max_steps=max_steps, checkpoint_every=checkpoint_every,
                       soft_steps=soft_steps, lambda_const=lambda_const, device=device)
        self.backbone = backbone
        self.method = method
        self.targets = targets
        self.budget = float(budget)
        self.epochs = int(epochs)
        self.policy = subset_policy
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.optimizer_name = optimizer
        self.weight_decay = float(weight_decay)
        self.momentum = float(momentum)
        self.warmup = float(warmup)
        self.handover_arg = handover
        self.lambda_const = lambda_const
        self.soft_steps = int(soft_steps)
        self.image_size = image_size
        self.accumulate = int(accumulate)
        self.amp = None if amp == "off" else amp
        self.compile = compile
        self.device_arg = device
        self.num_workers = int(num_workers)
        self.loader_kind = loader
        self.seed = int(seed)
        self.out = Path(out) if out is not None else None
        self.checkpoint_every = checkpoint_every
        self.log_every = max(1, int(log_every))
        self.max_steps = max_steps
        self.method_kwargs = dict(method_kwargs or {})
        self.subset_kwargs = dict(subset_kwargs or {})
        self.score_momentum = score_momentum
        self.stratify = stratify
        self.online_classifier = online_classifier
        self.sync_bn = sync_bn
        self.backbone_config = backbone_config
        self.progress = progress
        self.batched_augment = batched_augment
        if subset_policy != "random" and targets is None:
            raise UserError(f"subset_policy={subset_policy!r}: scores come from the per-sample ReLA losses, so it "
                            "needs targets; without targets use 'random'")
        if isinstance(handover, str) and handover not in ("adaptive", "constant", "off"):
            raise UserError(f"handover={handover!r}: use adaptive, constant or off")
        if handover == "constant" and lambda_const is None:
            raise UserError("handover='constant': needs lambda_const (phase 1 for lambda_const x epochs epochs)")

    # -- set-up -----------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        if self.device_arg is not None:
            dev = torch.device(self.device_arg)
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise UserError("device='cuda': no CUDA device is available here; use device='cpu'")
        else:
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if self.world > 1 else 0)
        return dev

    def _amp_dtype(self) -> torch.dtype | None:
        if self.amp is None:
            return None
        if self.amp == "auto":
            if self.device.type != "cuda":
                return None
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if self.amp == "bf16" else torch.float16

    def _open_data(self, data: Any):
        from rela_fast.data import open_source

        source = data if hasattr(data, "read") and hasattr(data, "fingerprint") else open_source(data)
        targets, rows, labels = None, None, None
        t = self.targets
        if isinstance(t, str | os.PathLike):
            from rela_fast.targets import load_targets

            t = load_targets(t)
        if t is None:
            pass
        elif isinstance(t, torch.Tensor | np.ndarray):
            targets = torch.as_tensor(t).float()
            if targets.ndim != 2 or targets.shape[0] != len(source):
                raise UserError(f"targets: {tuple(targets.shape)} rows for {len(source)} images in the data; "
                                "they must be N x d with one row per image (convert this data again)")
        elif hasattr(t, "targets"):
            if hasattr(t, "check_matches"):
                t.check_matches(source)
            targets = t.targets
            rows = getattr(t, "rows", None)
            if rows is not None:
                rows = torch.as_tensor(rows).long()
                if len(rows) != len(targets) or (len(rows) and int(rows.max()) >= len(source)):
                    raise UserError(f"targets: {len(targets)} rows do not map into the {len(source)} images "
                                    "of the data; convert this data again")
            elif len(targets) != len(source):
                raise UserError(f"targets: {len(targets)} rows for {len(source)} images; convert this data again")
            if getattr(t, "labels", None) is not None:
                labels = torch.as_tensor(t.labels).long()
        else:
            raise UserError(f"targets: expected a target store, its directory, an N x d tensor or None, "
                            f"got {type(t).__name__}")
        if labels is None and getattr(source, "labels", None) is not None:
            labels = torch.as_tensor(source.labels).long()
            if rows is not None:
                labels = labels[rows]
        n = len(targets) if targets is not None else len(source)
        check_inputs(targets, labels, self.stratify)
        return source, targets, rows, labels, n

    def _config(self) -> dict[str, Any]:
        method_name = self.method if isinstance(self.method, str) else type(self.method).__name__.lower()
        return {
            "budget": self.budget, "epochs": self.epochs, "policy": self.policy, "batch_size": self.batch_size,
            "accumulate": self.accumulate, "lr": self.lr, "optimizer": self.optimizer_name,
            "weight_decay": self.weight_decay, "warmup": self.warmup, "seed": self.seed, "method": method_name,
            "method_kwargs": {k: v for k, v in self.method_kwargs.items() if isinstance(v, int | float | str | bool)},
            "image_size": self.image_size, "world": self.world, "n": self.n, "relatargets": self.rela,
            "handover": self.handover.mode, "lambda_const": self.lambda_const, "soft_steps": self.soft_steps,
            "max_steps": self.max_steps, "backbone": self.backbone_config, "feature_dim": self.feature_dim,
            "target_dim": self.target_dim, "num_classes": self.num_classes, "amp": self.amp,
        }

    def _build(self, data: Any) -> None:
        init_from_env(None if self.device_arg is None else str(self.device_arg))
        self.rank, self.world = rank_and_world()
        self.device = self._device()
        self.source, targets, self.rows, self.labels, self.n = self._open_data(data)
        self.rela = targets is not None
        if self.image_size is None:
            self.image_size = auto_image_size(self.source, self.rows)
        torch.manual_seed(self.seed)
        backbone = self.backbone
        if isinstance(backbone, str):
            backbone, _, self.backbone_config = create_backbone(backbone, self.image_size)
        if self.sync_bn and self.world > 1:
            backbone = nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
        backbone = backbone.to(self.device)
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
        head = None
        self.target_dim = None
        if self.rela:
            from rela_fast.ops.transfer_loss import TransferHead

            self.target_dim = int(targets.shape[1])
            head = TransferHead(self.feature_dim, self.target_dim).to(self.device)
            small = targets.numel() * 4 <= 1 << 30
            self.targets_t = targets.to(self.device) if small else targets
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
        self.optimizer = build_optimizer(self.optimizer_name, self.student, self.lr, self.weight_decay, self.momentum)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        if isinstance(self.handover_arg, HandOver):
            self.handover = self.handover_arg
        elif not self.rela:
            self.handover = HandOver("off")
        else:
            self.handover = HandOver(self.handover_arg, epochs=self.epochs, lambda_const=self.lambda_const,
                                     soft_steps=self.soft_steps)
        self._build_subset()
        self.dataset = TwoViewDataset(self.source, two_views("rela", self.image_size), rows=self.rows,
                                      labels=self.labels, seed=self.seed, batched=self.batched_augment)
        per_rank = self.sampler_len
        self.steps_per_epoch = per_rank // (self.batch_size * self.accumulate)
        if self.steps_per_epoch == 0:
            raise UserError(
                f"batch_size={self.batch_size} x accumulate={self.accumulate}: larger than the {per_rank} samples "
                f"each process gets per epoch (budget {self.budget} of {self.n}); use a smaller batch")
        total = self.steps_per_epoch * self.epochs
        self.total_steps = min(total, self.max_steps) if self.max_steps else total
        self.warmup_steps = int(round(self.warmup * self.total_steps))

    def _build_subset(self) -> None:
        from rela_fast.subset import EpochSubset, ScoreBook

        book_kw = {} if self.score_momentum is None else {"momentum": self.score_momentum}
        self.scores = ScoreBook(self.n, self.device, **book_kw)
        kw = dict(self.subset_kwargs)
        if self.stratify and self.labels is not None:
            kw.setdefault("labels", self.labels.to(self.device))
        self.sampler = EpochSubset(self.scores, ratio=self.budget, policy=self.policy, seed=self.seed, **kw)
        self.sampler.set_epoch(0)
        self.sampler_len = len(self.sampler)

    # -- checkpoints ------------------------------------------------------------------------------
    def _checkpoint_path(self) -> Path | None:
        return self.out / "checkpoint.pt" if self.out is not None else None

    def _save(self, epoch: int, pos: int) -> None:
        """Checkpoint (collective under DDP: the ScoreBooks are merged first). ``pos`` > 0: mid-epoch."""
        if self.world > 1:
            self.scores.sync()
        if self.rank != 0 or self.out is None:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self._config(),
            "backbone": self.backbone_module.state_dict(),
            "head": self.student.head.state_dict() if self.student.head is not None else None,
            "method": self.method_module.state_dict(),
            "classifier": self.student.classifier.state_dict() if self.student.classifier is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "handover": self.handover.state_dict(),
            "scores": self.scores.state_dict(),
            "progress": {"epoch": epoch, "pos": pos, "step": self.step, "wall_time": self._elapsed(),
                         "images_seen": self.images_seen, "correct": self.correct, "seen": self.seen},
            "sampler": self.sampler.state_dict(position=pos) if pos > 0 else None,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None},
        }
        save_checkpoint(state, self.out / "checkpoint.pt")

    def _resume(self) -> dict[str, Any] | None:
        path = self._checkpoint_path()
        if path is None or not path.is_file():
            return None
        state = load_checkpoint(path, map_location="cpu")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{path}: not a rela_fast training checkpoint; use another --out")
        old, new = state["config"], self._config()
        keys = ("budget", "epochs", "policy", "batch_size", "accumulate", "seed", "method", "n", "relatargets",
                "handover", "max_steps", "feature_dim", "target_dim")
        changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
        if changed:
            raise UserError(f"{path}: the run in this directory has other settings ({'; '.join(changed)}); "
                            "use another --out, or the same settings to resume")
        if state["progress"]["pos"] > 0 and old.get("world") != self.world:
            raise UserError(f"{path}: saved mid-epoch by {old.get('world')} processes, resumed with {self.world}; "
                            "resume with the same number of processes")
        self.backbone_module.load_state_dict(state["backbone"])
        if self.student.head is not None:
            self.student.head.load_state_dict(state["head"])
        self.method_module.load_state_dict(state["method"])
        if self.student.classifier is not None:
            self.student.classifier.load_state_dict(state["classifier"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.handover.load_state_dict(state["handover"])
        self.scores.load_state_dict(state["scores"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        return state

    # -- the loop ---------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        return self._wall0 + (time.perf_counter() - self._t0)

    def _epoch_shard(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's shard of the epoch's subset (drawn now from the ScoreBook) and InfoBatch weights."""
        self.sampler.set_epoch(epoch)
        return self._current_shard()

    def _current_shard(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        shard = self.sampler.shard()
        weights = self.sampler.weights_for(shard).cpu() if self.policy == "infobatch" else None
        return shard, weights

    def _loader(self, epoch: int, shard: torch.Tensor, start: int, stop: int):
        phase_views = self.handover.rela_weight == 1.0
        views = two_views("rela", self.image_size) if phase_views else self.method_module.augmentation(self.image_size)
        aug_phase = 1 if phase_views else 2
        use_dali = self.loader_kind == "dali" or (self.loader_kind == "auto" and dali_available()
                                                  and self.device.type == "cuda")
        idx = shard[start:stop]
        if use_dali:
            return aug_phase, DaliTwoViewLoader(
                self.source, views, idx.tolist(), self.batch_size, rows=self.rows, labels=self.labels,
                device="gpu" if self.device.type == "cuda" else "cpu",
                seed=(self.seed * 1009 + epoch * 31 + aug_phase) % (2**31), num_threads=max(1, self.num_workers))
        self.dataset.set_views(views)
        self.dataset.set_epoch(epoch, aug_phase)
        return aug_phase, make_loader(self.dataset, idx.tolist(), self.batch_size, num_workers=self.num_workers,
                                      pin_memory=self.device.type == "cuda")

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
        self.step, self.images_seen, self.correct, self.seen = 0, 0, 0, 0
        self._wall0, self._t0 = 0.0, time.perf_counter()
        start_epoch, start_pos = 0, 0
        state = self._resume() if resume else None
        if state is None and self.out is not None and main and (self.out / "metrics.jsonl").exists():
            (self.out / "metrics.jsonl").unlink()
        if state is not None:
            prog = state["progress"]
            start_epoch, start_pos, self.step = prog["epoch"], prog["pos"], prog["step"]
            self._wall0, self.images_seen = prog["wall_time"], prog["images_seen"]
            self.correct, self.seen = prog["correct"], prog["seen"]
            if start_pos > 0:
                self.sampler.load_state_dict(state["sampler"])
            log.truncate_after(self.step)
        kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "0") or 0)
        self.student.train()
        needed = self.steps_per_epoch * self.accumulate * self.batch_size
        bar = None
        if self.progress and main:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True)
        epoch = start_epoch
        try:
            for epoch in range(start_epoch, self.epochs):
                if self.step >= self.total_steps:
                    break
                self.handover.start_epoch(epoch)
                if epoch == start_epoch and start_pos > 0:
                    shard, weights = self._current_shard()
                    pos = start_pos
                else:
                    shard, weights = self._epoch_shard(epoch)
                    pos = 0
                    self.correct = self.seen = 0
                epoch_digest = _digest(self.sampler.indices())
                pos = self._run_epoch(epoch, shard, weights, pos, needed, log, bar, kill_after)
                if self.step >= self.total_steps and pos < needed:
                    epoch_done = False
                else:
                    epoch_done = True
                acc = self._epoch_accuracy()
                if main:
                    log.log({"event": "epoch", "epoch": epoch, "step": self.step, "phase": self.handover.phase,
                             "online_acc": acc, "subset_size": int(self.sampler.k),
                             "subset_digest": epoch_digest, "wall_time": self._elapsed(),
                             "complete": epoch_done})
                if epoch_done:
                    self._save(epoch + 1, 0)
                else:
                    self._save(epoch, pos)
        finally:
            if bar is not None:
                bar.close()
        return self._finish(log, epoch)

    def _epoch_accuracy(self) -> float | None:
        if self.student.classifier is None:
            return None
        t = torch.tensor([float(self.correct), float(self.seen)], device=self.device)
        t = self._all_mean(t) * self.world
        return float(t[0] / t[1]) if t[1] > 0 else None

    def _run_epoch(self, epoch, shard, weights, pos, needed, log, bar, kill_after) -> int:
        main = self.rank == 0
        B, acc_steps = self.batch_size, self.accumulate
        while pos < needed and self.step < self.total_steps:
            aug_phase, loader = self._loader(epoch, shard, pos, needed)
            switched = False
            micro = 0
            sums: dict[str, float] = {}
            idx_parts, loss_parts = [], []
            t_step = time.perf_counter()
            for v1, v2, idx, labels in loader:
                lam = self.handover.rela_weight
                v1 = v1.to(self.device, non_blocking=True)
                v2 = v2.to(self.device, non_blocking=True)
                idx = idx.to(torch.int64)
                if v1.dtype == torch.uint8:  # geometry done on the workers: photometric ops here, batched
                    v1, v2 = self.dataset.finish(v1, v2, idx)
                labels = labels.to(self.device, non_blocking=True) if self.labels is not None else None
                y = None
                if lam > 0:
                    y = self.targets_t[idx.to(self.targets_t.device)].to(self.device, non_blocking=True)
                w = None
                if weights is not None:  # InfoBatch: this micro-batch's loss weights
                    lo = pos + micro * B
                    w = weights[lo:lo + B].to(self.device)
                last = micro == acc_steps - 1
                sync = contextlib.nullcontext() if last or self.world == 1 else self.model.no_sync()
                with sync:
                    with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                        enabled=self.amp_dtype is not None):
                        total, stats = self.model(v1, v2, y, labels, w, lam)
                    scaled = total / acc_steps
                    if self.scaler is not None:
                        self.scaler.scale(scaled).backward()
                    else:
                        scaled.backward()
                for k in ("loss", "rela_loss", "method_loss"):
                    if k in stats:
                        sums[k] = sums.get(k, 0.0) + float(stats[k]) / acc_steps
                if "correct" in stats:
                    self.correct += int(stats["correct"])
                    self.seen += int(labels.shape[0])
                if "per_sample" in stats:
                    idx_parts.append(idx.to(self.device))
                    loss_parts.append(stats["per_sample"].float())
                micro += 1
                if micro < acc_steps:
                    continue
                # ---- one optimiser step ----
                pos += B * acc_steps
                lr = lr_at(self.step, self.total_steps, self.lr, self.warmup_steps)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.images_seen += B * acc_steps * self.world
                self.method_module.on_step(self.step, self.total_steps)
                if idx_parts:  # rank-local; EpochSubset merges the ranks' books (ScoreBook.sync) before a draw
                    self.scores.update(torch.cat(idx_parts), torch.cat(loss_parts))
                phase_before = self.handover.phase
                reduced = torch.tensor([sums.get(k, float("nan")) for k in ("loss", "rela_loss", "method_loss")],
                                       device=self.device)
                reduced = self._all_mean(reduced).tolist()
                check_loss(reduced[0], self.step, epoch)
                rho = self.handover.update(reduced[1] if phase_before == 1 else None)
                if self.device.type == "cuda" and (self.step % self.log_every == 0):
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t_step
                if main and (self.step % self.log_every == 0 or self.handover.phase != phase_before
                             or self.step == self.total_steps):
                    log.log({
                        "event": "step", "step": self.step, "epoch": epoch, "phase": phase_before,
                        "rela_weight": lam, "loss": reduced[0], "rela_loss": reduced[1], "method_loss": reduced[2],
                        "rho": rho if self.rela else None, "fast": self.handover.fast if self.rela else None,
                        "slow": self.handover.slow if self.rela else None, "lr": lr,
                        "step_time": dt, "images_per_s": B * acc_steps * self.world / dt if dt > 0 else None,
                        "online_acc": self.correct / self.seen if self.seen else None,
                        "momentum": getattr(self.method_module, "momentum", None),
                        "wall_time": self._elapsed(),
                    })
                if bar is not None:
                    bar.update(1)
                    post = {"loss": f"{reduced[0]:.4f}", "phase": self.handover.phase}
                    if self.rela:
                        post["rho"] = f"{rho:.4f}"
                    if self.seen:
                        post["acc"] = f"{self.correct / self.seen:.3f}"
                    bar.set_postfix(post)
                if self.checkpoint_every and self.step % self.checkpoint_every == 0 and pos < needed:
                    self._save(epoch, pos)
                if kill_after and self.step >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                micro = 0
                sums = {}
                idx_parts, loss_parts = [], []
                t_step = time.perf_counter()
                new_aug = 1 if self.handover.rela_weight == 1.0 else 2
                if new_aug != aug_phase:
                    switched = True
                    break
                if self.step >= self.total_steps:
                    break
            if not switched:
                break
        return pos

    def _finish(self, log: MetricsLog, epoch: int) -> TrainResult:
        main = self.rank == 0
        png = None
        acc = self._epoch_accuracy()
        if main and self.out is not None:
            import json

            png = plot_metrics({self.out.name or "run": log.path}, self.out / "metrics.png")
            summary = {"steps": self.step, "epochs": self.epochs, "wall_time": self._elapsed(),
                       "images_seen": self.images_seen, "handover": self.handover.state_dict(),
                       "online_accuracy": acc, "config": self._config()}
            with open(self.out / "summary.json", "w") as f:
                json.dump(summary, f, indent=1)
        return TrainResult(
            backbone=self.backbone_module, history=log.rows if log.path is None else _all_rows(log),
            steps=self.step, epochs=self.epochs, wall_time=self._elapsed(), images_seen=self.images_seen,
            handover=self.handover.state_dict(), online_accuracy=acc, out=self.out,
            checkpoint=self._checkpoint_path() if self.out is not None else None,
            metrics=log.path, plot=png,
            extra={"total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
                   "image_size": self.image_size, "feature_dim": self.feature_dim},
        )


def _all_rows(log: MetricsLog) -> list[dict[str, Any]]:
    from rela_fast.train.metrics import read_metrics

    return read_metrics(log.path) if log.path is not None and log.path.exists() else log.rows
