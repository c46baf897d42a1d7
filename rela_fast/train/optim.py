"""Optimisers and the learning-rate schedule of the trainer."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from rela_fast.errors import UserError


class LARS(torch.optim.Optimizer):
    """SGD with momentum and the LARS trust ratio (layer-wise ``eta ||w|| / ||g + wd w||``).

    Parameter groups with ``lars=False`` (biases, norms) get plain SGD with momentum, as in BYOL.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["lars"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm, 1.0)
                    g = g * trust
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = g.clone()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])


def _param_groups(module: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:  # frozen parameters (e.g. the authors' transfer head) never reach the optimiser
            continue
        (no_decay if not decay_all and (p.ndim <= 1 or name.endswith(".bias")) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "lars": False}]


def build_optimizer(name: str, module: nn.Module, lr: float, weight_decay: float, momentum: float = 0.9, *,
                    decay_all: bool = False):
    """``adamw`` | ``sgd`` | ``lars`` over ``module``'s trainable parameters (no decay on biases and norms
    unless ``decay_all``, as the authors' recipe)."""
    groups = [g for g in _param_groups(module, weight_decay, decay_all) if g["params"]]
    if name == "adamw":
        for g in groups:
            g.pop("lars", None)
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        for g in groups:
            g.pop("lars", None)
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise UserError(f"optimizer {name!r}: unknown; use adamw, sgd or lars")


def lr_at(step: int, total: int, base: float, warmup: int, schedule: str = "cosine") -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total`` (or ``base`` throughout when
    ``schedule="constant"``, the authors' recipe)."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    frac = (step - warmup) / max(total - warmup, 1)
    return base * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
