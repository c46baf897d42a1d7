"""rela_fast: ReLA (NeurIPS 2024) converter and training accelerator, kernel-backed.

The public API is imported lazily, so ``import rela_fast`` stays cheap (no triton, no timm):

* ReLA-D: :func:`convert`, :func:`load_targets`, :func:`create_prior`
* ReLA-F: :func:`transfer_loss`, :class:`TransferHead`, :class:`HandOver`, :class:`ReLATrainer`,
  :class:`ReLAEngine` / :class:`ReLAConfig` (your own loop, with :class:`IndexedDataset`), :class:`ReLACallback`
  (PyTorch Lightning; the ``lightning`` extra)
* dynamic subsets: :class:`ScoreBook`, :func:`select_subset`, :class:`EpochSubset`, :func:`prior_scores`
* evaluation: :func:`linear_probe`
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "transfer_loss": "rela_fast.ops.transfer_loss",
    "TransferHead": "rela_fast.ops.transfer_loss",
    "ScoreBook": "rela_fast.subset",
    "select_subset": "rela_fast.subset",
    "EpochSubset": "rela_fast.subset",
    "prior_scores": "rela_fast.subset",
    "convert": "rela_fast.conversion",
    "load_targets": "rela_fast.targets",
    "TargetStore": "rela_fast.targets",
    "create_prior": "rela_fast.encoder",
    "HandOver": "rela_fast.train",
    "ReLATrainer": "rela_fast.train",
    "ReLAEngine": "rela_fast.train",
    "ReLAConfig": "rela_fast.train",
    "IndexedDataset": "rela_fast.data.indexed",
    "ReLACallback": "rela_fast.lightning",  # needs the lightning extra
    "linear_probe": "rela_fast.eval",
    "UserError": "rela_fast.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rela_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
