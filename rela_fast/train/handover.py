"""The ReLA-F hand-over rule: when to stop learning the targets and hand over to the method's own loss.

Reference behaviour (docs/ALGORITHM.md#hand-over-rule), adaptive mode: two running averages of the batch
ReLA loss, ``fast`` (starts at 1.0) and ``slow`` (starts at 2.0). At each optimiser step, *first*
``rho = exp(-max(slow - fast, 0))`` from the old values, *then* ``fast = 0.999 fast + 0.001 loss`` and
``slow = 0.99 slow + 0.01 fast`` (the new ``fast``). When ``rho >= 0.995`` the ReLA loss has plateaued and
training switches, permanently, to phase 2. Constant mode: phase 1 for the epochs ``e`` with
``e < lambda_const * epochs``, then phase 2. Mode ``"off"`` starts in phase 2 (the plain method, no ReLA).

Opt-in soft schedule (``soft_steps > 0``): the paper's ``L = lam L_ReLA + (1 - lam) L_method``. ``lam`` is 1
in phase 1; the k-th step after the switch uses ``lam = 1 - k / (soft_steps + 1)`` (k = 1 .. soft_steps), then 0,
instead of jumping from 1 to 0. Blended steps use the method's augmentation. Opt-in ``floor``: ``lam`` never
falls below it after the switch (a small ReLA term kept for the rest of training). Opt-in ``warm_heads``: the
first ``warm_heads`` steps after the switch leave the backbone as it is and train only the method's heads
(:attr:`backbone_frozen`). BYOL's projector and predictor are untrained at the switch, and their first
gradients erase part of what the targets taught: measured in ``benchmarks/results/headline-fmnist*``.
:attr:`rela_weight` is that ``lam``; the trainer computes the ReLA loss while it is above 0.

What the rule watches: the plain ReLA loss, never a re-weighted one. Subset policies with loss weights
(InfoBatch's ``1 / (1 - r)``) change the training loss, whose mean weight is not 1, while the rule's
constants are tuned for the plain loss; :func:`handover_value` computes the value to pass to
:meth:`HandOver.update` from the unweighted per-sample losses, whatever the policy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from rela_fast.errors import UserError

MODES = ("adaptive", "constant", "off")


def handover_value(per_sample: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The batch ReLA loss the hand-over rule watches for one optimiser step, without any loss weights.

    ``per_sample``: the unweighted per-sample ReLA losses of one micro-batch (B,), or a sequence of them,
    one per gradient-accumulation micro-batch. Returns the mean over micro-batches of each one's plain mean
    (docs/ALGORITHM.md#hand-over-rule: "averaged over gradient-accumulation steps"), a 0-d float64 tensor on the losses'
    device (no host sync). Under DDP average it over ranks before :meth:`HandOver.update`.
    """
    parts = [per_sample] if isinstance(per_sample, torch.Tensor) else list(per_sample)
    if not parts or any(p.numel() == 0 for p in parts):
        raise ValueError("handover_value: needs the per-sample losses of at least one non-empty micro-batch")
    return torch.stack([p.detach().to(torch.float64).mean() for p in parts]).mean()


class HandOver:
    """Phase 1 (learn the targets) -> phase 2 (the method's loss); the switch is permanent.

    Call :meth:`start_epoch` at the start of every epoch and :meth:`update` once per optimiser step
    (with the batch ReLA loss averaged over ranks and gradient-accumulation steps while in phase 1;
    in phase 2 the loss is ignored and may be None).
    """

    def __init__(
        self,
        mode: str = "adaptive",
        *,
        epochs: int | None = None,
        lambda_const: float | None = None,
        threshold: float = 0.995,
        fast_init: float = 1.0,
        slow_init: float = 2.0,
        fast_momentum: float = 0.999,
        slow_momentum: float = 0.99,
        soft_steps: int = 0,
        floor: float = 0.0,
        warm_heads: int = 0,
    ) -> None:
        if mode not in MODES:
            raise UserError(f"handover mode {mode!r}: unknown; use one of {', '.join(MODES)}")
        if mode == "constant":
            if lambda_const is None or epochs is None:
                raise UserError("handover mode 'constant': needs lambda_const and epochs; pass both")
            if not 0.0 <= lambda_const <= 1.0:
                raise UserError(f"lambda_const={lambda_const}: must lie in [0, 1]")
        if soft_steps < 0:
            raise UserError(f"soft_steps={soft_steps}: must be >= 0")
        if warm_heads < 0:
            raise UserError(f"warm_heads={warm_heads}: must be >= 0")
        if not 0.0 <= floor < 1.0:
            raise UserError(f"floor={floor}: the ReLA weight kept after the switch must lie in [0, 1)")
        self.mode = mode
        self.epochs = epochs
        self.lambda_const = lambda_const
        self.threshold = float(threshold)
        self.fast_momentum = float(fast_momentum)
        self.slow_momentum = float(slow_momentum)
        self.soft_steps = int(soft_steps)
        self.floor = float(floor)  # opt-in: keep floor x the ReLA loss after the switch (0 = the reference)
        self.warm_heads = int(warm_heads)  # opt-in: steps after the switch that leave the backbone unchanged
        self.fast = float(fast_init)
        self.slow = float(slow_init)
        self.rho = math.exp(-max(self.slow - self.fast, 0.0))
        self.phase = 2 if mode == "off" else 1
        self.step = 0  # optimiser steps seen by update()
        self.epoch = 0
        self.switch_step: int | None = 0 if mode == "off" else None
        self.switch_epoch: int | None = 0 if mode == "off" else None

    # -- the rule ---------------------------------------------------------------------------------
    def start_epoch(self, epoch: int) -> int:
        """Enter ``epoch`` (0-based); in constant mode this is where the switch happens. Returns the phase."""
        self.epoch = int(epoch)
        if self.mode == "constant" and self.phase == 1 and epoch >= self.lambda_const * self.epochs:
            self._switch()
        return self.phase

    def update(self, batch_loss: float | None) -> float:
        """One optimiser step: returns ``rho`` (computed from the values before this step's update).

        In phase 1 ``fast``/``slow`` move (in every mode, so constant mode still reports rho) and the
        adaptive rule may switch to phase 2, taking effect from the next step. In phase 2 nothing moves but
        the step count (which drives the soft schedule).
        """
        if self.phase == 1:
            if batch_loss is None:
                raise ValueError("HandOver.update: phase 1 needs the batch ReLA loss")
            loss = float(batch_loss)
            self.rho = math.exp(-max(self.slow - self.fast, 0.0))
            self.fast = self.fast_momentum * self.fast + (1.0 - self.fast_momentum) * loss
            self.slow = self.slow_momentum * self.slow + (1.0 - self.slow_momentum) * self.fast
            self.step += 1
            if self.mode == "adaptive" and self.rho >= self.threshold:
                self._switch()
        else:
            self.step += 1
        return self.rho

    def _switch(self) -> None:
        self.phase = 2
        self.switch_step = self.step
        self.switch_epoch = self.epoch

    @property
    def rela_weight(self) -> float:
        """``lam``: the weight of the ReLA loss in the total (1 in phase 1, then 0, or a linear ramp)."""
        if self.phase == 1:
            return 1.0
        if self.mode == "off":
            return 0.0
        if self.soft_steps == 0:
            return self.floor
        return max(self.floor, 1.0 - self._coming_after_switch() / (self.soft_steps + 1))

    def _coming_after_switch(self) -> int:
        """k: the coming optimiser step is the k-th after the switch (phase 2 only)."""
        return self.step - (self.switch_step or 0) + 1

    @property
    def backbone_frozen(self) -> bool:
        """True when the coming step is one of the first ``warm_heads`` after a switch: the trainer then leaves
        the backbone's weights (and their optimiser state) unchanged and updates only the heads."""
        if self.phase == 1 or self.mode == "off" or self.warm_heads == 0:
            return False
        return self._coming_after_switch() <= self.warm_heads

    # -- persistence ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain Python values only (safe for ``torch.load(weights_only=True)`` and JSON)."""
        return {
            "mode": self.mode,
            "epochs": self.epochs,
            "lambda_const": self.lambda_const,
            "threshold": self.threshold,
            "fast_momentum": self.fast_momentum,
            "slow_momentum": self.slow_momentum,
            "soft_steps": self.soft_steps,
            "floor": self.floor,
            "warm_heads": self.warm_heads,
            "fast": self.fast,
            "slow": self.slow,
            "rho": self.rho,
            "phase": self.phase,
            "step": self.step,
            "epoch": self.epoch,
            "switch_step": self.switch_step,
            "switch_epoch": self.switch_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mode") != self.mode:
            raise UserError(f"hand-over state is for mode {state.get('mode')!r}, this run uses {self.mode!r}")
        for key, value in state.items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        return (
            f"HandOver(mode={self.mode!r}, phase={self.phase}, step={self.step}, rho={self.rho:.6f}, "
            f"fast={self.fast:.6f}, slow={self.slow:.6f}, switch_step={self.switch_step})"
        )
