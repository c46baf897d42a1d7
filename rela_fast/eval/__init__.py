"""Evaluation: the linear probe on frozen backbone features (docs/ALGORITHM.md#probe-protocol)."""

from __future__ import annotations

from rela_fast.eval.probe import ProbeResult, extract_features, linear_probe, train_probe

__all__ = ["ProbeResult", "extract_features", "linear_probe", "train_probe"]
