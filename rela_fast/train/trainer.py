"""ReLATrainer: the batteries-included driver of the ReLA engine (docs/ALGORITHM.md, "ReLA-F").

``ReLATrainer(backbone, method, targets, budget, epochs).fit(data)`` trains ``epochs`` epochs, each over the
subset of ``budget x N`` samples the :class:`~rela_fast.train.engine.ReLAEngine` draws. Everything that makes
the run ReLA (subsets, phases and their views, the transfer loss, the hand-over, InfoBatch weights) is the
engine's; this module is the loop around it: devices, AMP, gradient accumulation, ``torch.compile``, DDP under
``torchrun``, callbacks, checkpoints that survive SIGKILL and resume to the same subsets, JSONL metrics.

Configuration is one :class:`~rela_fast.train.config.ReLAConfig` (``config=``); the keyword form
(``budget=0.5, lr=2e-3, ...``) is a thin layer over it (:data:`KEYWORDS`). Extension points, no subclassing:
``callbacks=`` (:mod:`rela_fast.train.callbacks`; ``trainer.untimed()`` keeps evaluation out of the wall time)
and ``views=`` (:mod:`rela_fast.train.views`). All loop state is one :class:`TrainState`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rela_fast.config_files import dump_run
from rela_fast.errors import UserError
from rela_fast.train.callbacks import Callback, CallbackList, Clock, TrainState
from rela_fast.train.config import KEYWORDS, ReLAConfig, config_from_keywords
from rela_fast.train.guards import check_loss
from rela_fast.train.methods import Method
from rela_fast.train.optim import build_optimizer, lr_at
from rela_fast.train.recipes import Recipe
from rela_fast.train.run import RunFiles
from rela_fast.train.student import Student
from rela_fast.train.views import ViewPipeline

__all__ = ["KEYWORDS", "ReLATrainer", "Student", "TrainResult", "TrainState", "build_optimizer", "config_from_keywords",
           "lr_at"]

# Test hook: SIGKILL this process right after optimiser step N (resume tests).
KILL_AFTER_STEP_ENV = "RELA_FAST_TRAIN_KILL_AFTER_STEP"

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
class Plan:
    """What the data and the config fix before the first step (derived once in :meth:`ReLATrainer._build`)."""

    device: torch.device
    rank: int
    world: int
    n: int
    image_size: int
    feature_dim: int
    num_classes: int | None
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    amp_dtype: torch.dtype | None
    recipe: Recipe  # the optimisation recipe with every override resolved (batch size, lr, schedule, ...)
    labelled: bool
    identity: dict[str, Any]


@dataclass
class _Accum:
    """One optimiser step's worth of micro-batches: loss sums."""

    micro: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)
    lam: float = 1.0  # the ReLA weight these micro-batches used


class ReLATrainer:
    """ReLA-F around a backbone and a method; see the module docstring.

    Args:
        backbone: an ``nn.Module`` returning pooled (B, F) features, or an architecture name (``"convnet"``, any
            timm name).
        method: a :class:`Method` or a built-in name (``byol``, ``simclr``, ``dino``, ``supervised``).
        targets: a target store (``load_targets``), its directory, an N x d tensor, or None (no ReLA: the plain
            method on the same dynamic subset, i.e. the baseline).
        budget, epochs, subset_policy and every other setting: keywords of :data:`KEYWORDS`, laid over
            ``config`` (a :class:`ReLAConfig`); ``subset_kwargs={"prune_ratio": r}`` and ``loader=`` are the
            older spellings of ``prune_ratio=`` and ``views=``.
        views: ``"auto"``, ``"tensor"``, ``"torch"``, ``"dali"`` or your own :class:`ViewPipeline`.
        callbacks: :class:`~rela_fast.train.callbacks.Callback` objects called during ``fit``.
        rows: train on these source rows only (a target store brings its own rows instead).
        out: run directory for ``checkpoint.pt``, ``metrics.jsonl``, ``metrics.png``, ``summary.json``.
        backbone_config: how to rebuild a module ``backbone`` (recorded so the run can serve as a ``run:`` prior).
    """

    def __init__(self, backbone: nn.Module | str, method: Method | str = "byol", targets: Any = None,
                 budget: float | None = None, epochs: int | None = None, subset_policy: str | None = None, *,
                 config: ReLAConfig | None = None, views: str | ViewPipeline | None = None, loader: Any = None,
                 callbacks: list[Callback] | None = None, rows: Any = None, out: str | os.PathLike | None = None,
                 backbone_config: dict[str, Any] | None = None, subset_kwargs: dict[str, Any] | None = None,
                 **settings: Any) -> None:
        views = loader if loader is not None else views
        settings.update(budget=budget, epochs=epochs, subset_policy=subset_policy)
        extra = dict(subset_kwargs or {})
        if set(extra) - {"prune_ratio"}:
            raise UserError(f"subset_kwargs: only prune_ratio is a setting, got {', '.join(sorted(extra))}")
        settings.setdefault("prune_ratio", extra.get("prune_ratio"))
        if isinstance(views, str):
            settings["views"] = views
            views = None
        elif views is not None and not isinstance(views, ViewPipeline):
            raise UserError(f"views: {type(views).__name__} has no batches(views, indices, epoch=, phase=, "
                            "batch_size=) method; pass a kind (auto, tensor, torch, dali) or a ViewPipeline")
        kind = settings.pop("views", None)
        self.config = config_from_keywords(config, method, settings)
        if kind is not None:
            self.config = self.config.replace(**{"runtime.views": kind})
        if isinstance(backbone, str) and self.config.arch is None:
            self.config = self.config.replace(arch=backbone)
        self.backbone, self.method, self.targets, self.views_arg = backbone, method, targets, views
        self.callbacks, self.rows_arg = CallbackList(callbacks), rows
        self.out = Path(out) if out is not None else None
        self.backbone_config = backbone_config
        self.state, self.clock = TrainState(), Clock()

    # -- public helpers ---------------------------------------------------------------------------
    def untimed(self):
        """``with trainer.untimed(): ...``: time spent inside does not count as the run's wall time."""
        return self.clock.paused()

    @property
    def n(self) -> int:
        return self.plan.n

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    @property
    def total_steps(self) -> int:
        """Optimiser steps of the whole run (epochs x steps per epoch, or ``max_steps``)."""
        return self.plan.total_steps

    @property
    def epochs(self) -> int:
        return self.config.epochs

    @property
    def device(self) -> torch.device:
        return self.plan.device

    @property
    def world(self) -> int:
        return self.plan.world

    @property
    def feature_dim(self) -> int:
        return self.plan.feature_dim

    @property
    def backbone_module(self) -> nn.Module:
        return self.student.backbone

    @property
    def method_module(self) -> Method:
        return self.student.method

    # -- set-up -----------------------------------------------------------------------------------
    def _build(self, data: Any) -> None:
        from rela_fast.train.build import build_run

        run = build_run(self, data)
        self.plan, self.engine, self.student, self.model = run.plan, run.engine, run.student, run.model
        self.optimizer, self.scaler, self.views, self.backbone_config = (run.optimizer, run.scaler, run.views,
                                                                         run.backbone_config)
        self.files = RunFiles(self.out, self.plan.rank, self.plan.world)

    def _checkpoint(self) -> dict[str, Any]:
        s = self.state
        s.wall_time = self.clock.elapsed()
        part = lambda m: m.state_dict() if m is not None else None  # noqa: E731
        return {
            "config": self.config.to_dict(), "identity": self.plan.identity, "train_state": s.state_dict(),
            "backbone": self.student.backbone.state_dict(), "head": part(self.student.head),
            "method": self.student.method.state_dict(), "classifier": part(self.student.classifier),
            "optimizer": self.optimizer.state_dict(), "scaler": part(self.scaler),
            "engine": self.engine.state_dict(position=s.pos),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None},
        }

    def _save(self) -> None:
        """Checkpoint (collective under DDP: the engine merges the ScoreBooks first)."""
        state = self._checkpoint()
        self.files.save_checkpoint(state)

    def _resume(self, state: dict[str, Any]) -> None:
        self.student.backbone.load_state_dict(state["backbone"])
        for module, key in ((self.student.head, "head"), (self.student.classifier, "classifier"),
                            (self.scaler, "scaler")):
            if module is not None and state.get(key):
                module.load_state_dict(state[key])
        self.student.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.engine.load_state_dict(state["engine"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        self.state = TrainState.from_state_dict(state["train_state"])

    def _inputs(self) -> dict[str, Any]:
        """The run's inputs where they are paths (config.json; ``--continue`` reads them back)."""
        def path(x: Any) -> str | None:
            return str(x) if isinstance(x, str | os.PathLike) else None

        return {"data": path(self.data_arg), "targets": path(getattr(self.targets, "root", self.targets)),
                "out": self.out}

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, data: Any, *, resume: bool = True, extend: bool = False) -> TrainResult:
        """Train on ``data`` (a path, an array, a dataset or a Source); resumes from ``out/checkpoint.pt``.

        ``extend=True`` continues a run that was trained for other ``epochs`` / ``max_steps`` (every other
        setting and the data must match): docs/USAGE.md, "Continue a finished run"."""
        self.data_arg = data
        self._build(data)
        self.files.allow_continue = extend
        with self.files.claim():  # one run per folder; only files this run wrote are replaced
            return self._fit(resume)

    def _fit(self, resume: bool) -> TrainResult:
        self.state = TrainState()
        state = self.files.load_checkpoint(self.config, self.plan) if resume else None
        if state is not None:
            self._resume(state)
        self.files.open_log(resumed_at=self.state.step if state is not None else None)
        self.files.write_config(dump_run(self.config, self._inputs()))
        self.clock = Clock(self.state.wall_time)
        self.kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, "0") or 0)
        self.student.train()
        bar = self.files.progress(self.config.runtime.progress, self.plan.total_steps, self.state.step)
        self.callbacks.on_fit_start(self, self.state)
        try:
            while self.state.epoch < self.config.epochs and self.state.step < self.plan.total_steps:
                self._run_epoch(bar)
        finally:
            if bar is not None:
                bar.close()
        self.state.wall_time = self.clock.elapsed()
        self.callbacks.on_fit_end(self, self.state)
        return self._finish()

    def _run_epoch(self, bar) -> None:
        """One epoch (or the rest of one, on resume): draw the subset, train on it, log, checkpoint."""
        s = self.state
        if self.engine.set_epoch(s.epoch, draw=s.pos == 0):  # a constant hand-over switches at an epoch start
            self._handed_over()
        if s.pos == 0:
            s.correct = s.seen = 0
        shard, weights = self.engine.shard(), self.engine.weights()
        unit = self.plan.recipe.batch_size * self.config.optim.accumulate
        needed = len(shard) // unit * unit  # InfoBatch's subset size changes from epoch to epoch
        if needed == 0 or s.pos > needed:
            raise UserError(f"epoch {s.epoch}: this process's subset holds {len(shard)} samples, fewer than one "
                            f"optimiser step ({unit}); use a smaller batch or a larger budget")
        digest = hashlib.sha1(self.engine.sampler.indices().numpy().tobytes()).hexdigest()[:16]
        self.callbacks.on_epoch_start(self, s)
        while s.pos < needed and s.step < self.plan.total_steps:
            if not self._train_views(shard, weights, needed, bar):
                break
        complete = s.pos >= needed
        s.wall_time = self.clock.elapsed()
        online = self._epoch_accuracy()  # collective under DDP: every rank computes it
        self.files.log({"event": "epoch", "epoch": s.epoch, "step": s.step, "phase": self.engine.phase,
                        "online_acc": online, "subset_size": self.engine.sampler.size(), "subset_digest": digest,
                        "wall_time": s.wall_time, "complete": complete})
        self.callbacks.on_epoch_end(self, s)
        if complete:
            s.epoch, s.pos = s.epoch + 1, 0
        self._save()

    def _train_views(self, shard, weights, needed: int, bar) -> bool:
        """Train from ``state.pos`` with the current phase's views; True when the phase changed (new views)."""
        s, batch_size = self.state, self.plan.recipe.batch_size
        phase = self.engine.view_phase
        acc, steps = _Accum(), 0
        batches = self.views.batches(self.engine.view_specs(self.plan.image_size), shard[s.pos:needed],
                                     epoch=s.epoch, phase=phase, batch_size=batch_size)
        for batch in batches:
            self._micro_step(batch, weights, acc)
            if acc.micro < self.config.optim.accumulate:
                continue
            lr = self._optimizer_step()
            self._bookkeeping(acc, lr, bar)
            acc, steps = _Accum(), steps + 1
            if self.engine.view_phase != phase:
                return True
            if s.step >= self.plan.total_steps:
                return False
        if steps == 0:
            raise UserError(f"views: the view pipeline yielded no full batch for epoch {s.epoch} ({needed - s.pos} "
                            f"samples left at batch {batch_size}); a custom ViewPipeline must yield full batches")
        return False

    def _micro_step(self, batch, weights: torch.Tensor | None, acc: _Accum) -> None:
        """Forward + backward of one micro-batch (gradients accumulate; DDP syncs on the last one)."""
        v1, v2, idx, labels = batch
        if self.config.runtime.channels_last:
            v1, v2 = (v.contiguous(memory_format=torch.channels_last) for v in (v1, v2))
        acc.lam = self.engine.rela_weight
        labels = labels if self.plan.labelled else None
        w = None
        if weights is not None:  # InfoBatch: this micro-batch's loss weights
            b = self.plan.recipe.batch_size
            lo = self.state.pos + acc.micro * b
            w = weights[lo:lo + b].to(self.device)
        last = acc.micro == self.config.optim.accumulate - 1
        sync = contextlib.nullcontext() if last or self.world == 1 else self.model.no_sync()
        dtype = self.plan.amp_dtype
        with sync:
            with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                total, stats = self.model(v1, v2, idx.to(self.device), labels, w)
            scaled = total / self.config.optim.accumulate
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        for k in ("loss", "rela_loss", "method_loss"):
            if k in stats:
                acc.sums[k] = acc.sums.get(k, 0.0) + float(stats[k]) / self.config.optim.accumulate
        if "correct" in stats:
            self.state.correct += int(stats["correct"])
            self.state.seen += int(labels.shape[0])
        acc.micro += 1

    def _optimizer_step(self) -> float:
        """Apply the accumulated gradients at this step's learning rate; advance the counters."""
        s, p = self.state, self.plan
        lr = lr_at(s.step, p.total_steps, p.recipe.lr, p.warmup_steps, p.recipe.schedule)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.engine.before_step(self.student.backbone)  # warm heads: no backbone update, moment or decay
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        unit = p.recipe.batch_size * self.config.optim.accumulate
        s.step, s.pos, s.images_seen = s.step + 1, s.pos + unit, s.images_seen + unit * self.world
        self.student.method.on_step(s.step, p.total_steps)
        return lr

    def _bookkeeping(self, acc: _Accum, lr: float, bar) -> None:
        """The engine's step (scores, hand-over), metrics, progress, checkpoints and callbacks."""
        s = self.state
        phase_before = self.engine.phase
        out = self.engine.step({k: acc.sums.get(k, float("nan")) for k in ("loss", "rela_loss", "method_loss")})
        check_loss(out["loss"], s.step, s.epoch)
        s.wall_time, s.phase, s.rela_weight = self.clock.elapsed(), self.engine.phase, self.engine.rela_weight
        if self.device.type == "cuda" and s.step % self.config.runtime.log_every == 0:
            torch.cuda.synchronize()
        dt = time.perf_counter() - acc.t0
        unit = self.plan.recipe.batch_size * self.config.optim.accumulate * self.world
        s.losses = {"loss": out["loss"], "rela_loss": out["rela_loss"], "method_loss": out["method_loss"], "lr": lr,
                    "rho": out["rho"], "step_time": dt, "rela_weight": acc.lam,
                    "images_per_s": unit / dt if dt > 0 else None}
        self._log_step(bar, phase_before, out)
        every = self.config.runtime.checkpoint_every
        if every and s.step % every == 0:
            self._save()
        if self.kill_after and s.step >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        self.callbacks.on_step_end(self, s)
        if out["switched"]:
            self._handed_over()

    def _handed_over(self) -> None:
        self.state.phase, self.state.rela_weight = self.engine.phase, self.engine.rela_weight
        self.callbacks.on_handover(self, self.state)

    def _log_step(self, bar, phase_before: int, out: dict[str, Any]) -> None:
        s, L = self.state, self.state.losses
        if s.step % self.config.runtime.log_every == 0 or out["switched"] or s.step == self.plan.total_steps:
            self.files.log({
                "event": "step", "step": s.step, "epoch": s.epoch, "phase": phase_before,
                "rela_weight": L["rela_weight"], "loss": L["loss"], "rela_loss": L["rela_loss"],
                "method_loss": L["method_loss"], "rho": L["rho"], "fast": out["fast"], "slow": out["slow"],
                "lr": L["lr"], "step_time": L["step_time"], "images_per_s": L["images_per_s"],
                "online_acc": s.correct / s.seen if s.seen else None, "subset_size": out["subset_size"],
                "momentum": getattr(self.student.method, "momentum", None), "wall_time": s.wall_time,
            })
        if bar is not None:
            bar.update(1)
            post = {"loss": f"{L['loss']:.4f}", "phase": self.engine.phase}
            if L["rho"] is not None:
                post["rho"] = f"{L['rho']:.4f}"
            if s.seen:
                post["acc"] = f"{s.correct / s.seen:.3f}"
            bar.set_postfix(post)

    def _epoch_accuracy(self) -> float | None:
        if self.student.classifier is None:
            return None
        t = torch.tensor([float(self.state.correct), float(self.state.seen)], device=self.device)
        t = self.engine.all_mean(t) * self.world
        return float(t[0] / t[1]) if t[1] > 0 else None

    def _finish(self) -> TrainResult:
        s, acc = self.state, self._epoch_accuracy()
        handover = self.engine.handover.state_dict()
        summary = {"steps": s.step, "epochs": self.config.epochs, "wall_time": s.wall_time,
                   "images_seen": s.images_seen, "handover": handover, "online_accuracy": acc,
                   "config": self.config.to_dict(), "recipe": asdict(self.plan.recipe), "identity": self.plan.identity}
        png = self.files.finish(summary)
        p = self.plan
        return TrainResult(
            backbone=self.student.backbone, history=self.files.history(), steps=s.step, epochs=self.config.epochs,
            wall_time=s.wall_time, images_seen=s.images_seen, handover=handover, online_accuracy=acc, out=self.out,
            checkpoint=self.files.checkpoint_path, metrics=self.files.metrics_path, plot=png,
            extra={"total_steps": p.total_steps, "steps_per_epoch": p.steps_per_epoch, "image_size": p.image_size,
                   "feature_dim": p.feature_dim, "views": getattr(self.views, "name", type(self.views).__name__)},
        )

