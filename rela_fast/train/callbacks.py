"""Callbacks: the trainer's public extension points, and the training state they see.

A :class:`Callback` gets ``(trainer, state)`` at fixed moments of :meth:`ReLATrainer.fit`:
``on_fit_start``, ``on_epoch_start``, ``on_step_end`` (after every optimiser step), ``on_handover`` (the
step at which phase 2 began), ``on_epoch_end`` and ``on_fit_end``. ``state`` is the run's
:class:`TrainState`; read it, do not change it. Work that is not training (evaluation, plotting) goes
inside ``with trainer.untimed():`` so it stays out of the run's wall time.

:class:`ProbeCallback` is the one shipped: a linear probe (or any ``backbone -> accuracy`` function)
every few epochs, untimed, collected as a curve.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn


@dataclass
class TrainState:
    """All loop state of one run; checkpointed as a whole (``state_dict``)."""

    epoch: int = 0  # the epoch being trained (the next one, after an epoch's end)
    pos: int = 0  # samples of this rank's epoch shard already trained on
    step: int = 0  # optimiser steps done
    wall_time: float = 0.0  # training seconds so far, untimed blocks excluded
    images_seen: int = 0  # over all ranks
    correct: int = 0  # online classifier, this epoch, this rank
    seen: int = 0
    phase: int = 1  # 1 = learning the targets, 2 = the method's own loss
    rela_weight: float = 1.0
    losses: dict[str, Any] = field(default_factory=dict)  # the last optimiser step's loss, rela_loss, lr, rho, ...

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TrainState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in names})


class Clock:
    """Wall time of training: starts at ``start`` seconds; time spent inside :meth:`paused` does not count."""

    def __init__(self, start: float = 0.0) -> None:
        self.start, self.t0 = float(start), time.perf_counter()

    def elapsed(self) -> float:
        return self.start + time.perf_counter() - self.t0

    @contextmanager
    def paused(self) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.t0 += time.perf_counter() - t


class Callback:
    """Override any of these; each receives the trainer and its :class:`TrainState`."""

    def on_fit_start(self, trainer: Any, state: TrainState) -> None: ...

    def on_epoch_start(self, trainer: Any, state: TrainState) -> None: ...

    def on_step_end(self, trainer: Any, state: TrainState) -> None: ...

    def on_handover(self, trainer: Any, state: TrainState) -> None: ...

    def on_epoch_end(self, trainer: Any, state: TrainState) -> None: ...

    def on_fit_end(self, trainer: Any, state: TrainState) -> None: ...


class CallbackList(Callback):
    """Calls each callback in order (what the trainer holds)."""

    def __init__(self, callbacks: Iterable[Callback] | None = None) -> None:
        self.callbacks = list(callbacks or [])

    def _each(self, name: str, trainer: Any, state: TrainState) -> None:
        for cb in self.callbacks:
            getattr(cb, name, lambda *_: None)(trainer, state)

    def on_fit_start(self, trainer, state):
        self._each("on_fit_start", trainer, state)

    def on_epoch_start(self, trainer, state):
        self._each("on_epoch_start", trainer, state)

    def on_step_end(self, trainer, state):
        self._each("on_step_end", trainer, state)

    def on_handover(self, trainer, state):
        self._each("on_handover", trainer, state)

    def on_epoch_end(self, trainer, state):
        self._each("on_epoch_end", trainer, state)

    def on_fit_end(self, trainer, state):
        self._each("on_fit_end", trainer, state)


class ProbeCallback(Callback):
    """``probe(backbone) -> accuracy`` after every ``every`` epochs and after the last one, outside the run's
    wall time and without touching the run's random stream. ``curve``: ``{"epoch", "step", "train_s", "acc",
    "phase"}`` points."""

    def __init__(self, probe: Callable[[nn.Module], float], every: int = 1) -> None:
        self.probe, self.every = probe, max(1, int(every))
        self.curve: list[dict[str, Any]] = []

    def on_epoch_end(self, trainer, state):
        last = state.epoch + 1 >= trainer.epochs or state.step >= trainer.total_steps
        if (state.epoch + 1) % self.every and not last:
            return
        with trainer.untimed(), torch.random.fork_rng(devices=[]):
            acc = self.probe(trainer.backbone_module)
        self.curve.append({"epoch": state.epoch + 1, "step": state.step, "train_s": state.wall_time, "acc": acc,
                           "phase": state.phase})

    @property
    def final(self) -> float | None:
        return self.curve[-1]["acc"] if self.curve else None
