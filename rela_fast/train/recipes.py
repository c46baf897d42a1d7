"""Training recipes: named groups of defaults, each point of which the caller may override.

* ``default``: rela_fast's choices: AdamW at lr 1e-3, transfer head trained jointly, cosine learning-rate
  decay, weight decay 1e-6 on weights only (not biases and norms), the method's own momentum schedule,
  batch 256 per process.
* ``authors``: the authors' code (docs/ALGORITHM.md#recipes): AdamW at lr 1e-3, a
  frozen random transfer head (the optimiser never receives its parameters), a constant learning rate,
  weight decay 0.01 on every parameter, BYOL's target momentum fixed at 0.99, a global batch of 128.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rela_fast.errors import UserError

RECIPES = ("default", "authors")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class Recipe:
    """The resolved choices of one run."""

    name: str
    batch_size: int
    lr: float
    weight_decay: float
    schedule: str
    freeze_head: bool
    decay_all: bool
    method_kwargs: dict[str, Any] = field(default_factory=dict)


_DEFAULTS = {
    "default": {"batch_size": 256, "lr": 1e-3, "weight_decay": 1e-6, "schedule": "cosine", "freeze_head": False,
                "decay_all": False},
    "authors": {"batch_size": 128, "lr": 1e-3, "weight_decay": 0.01, "schedule": "constant", "freeze_head": True,
                "decay_all": True},
}


def _is_byol(method: Any) -> bool:
    name = method if isinstance(method, str) else getattr(method, "name", "")
    return str(name).lower() == "byol"


def resolve_recipe(name: str, *, batch_size: int | None = None, lr: float | None = None,
                   weight_decay: float | None = None,
                   schedule: str | None = None, freeze_head: bool | None = None, decay_all: bool | None = None,
                   method: Any = None, method_kwargs: dict[str, Any] | None = None) -> Recipe:
    """The recipe ``name`` with every explicitly given (non-None) choice taking precedence."""
    if name not in RECIPES:
        raise UserError(f"recipe={name!r}: use one of {', '.join(RECIPES)}")
    base = _DEFAULTS[name]
    given = {"batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "schedule": schedule,
             "freeze_head": freeze_head, "decay_all": decay_all}
    chosen = {k: base[k] if v is None else v for k, v in given.items()}
    if chosen["schedule"] not in SCHEDULES:
        raise UserError(f"schedule={chosen['schedule']!r}: use one of {', '.join(SCHEDULES)}")
    wd = float(chosen["weight_decay"])
    if not wd >= 0.0:  # also refuses NaN
        raise UserError(f"weight_decay={weight_decay!r}: must be a number >= 0")
    mkw = dict(method_kwargs or {})
    if name == "authors" and _is_byol(method):
        mkw.setdefault("base_momentum", 0.99)
        mkw.setdefault("final_momentum", 0.99)
    # lr, like every setting, is typed and ranged by the run's ReLAConfig (train/config.py)
    return Recipe(name, int(chosen["batch_size"]), chosen["lr"], wd, chosen["schedule"], bool(chosen["freeze_head"]),
                  bool(chosen["decay_all"]), mkw)
