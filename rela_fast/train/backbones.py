"""Moved to :mod:`rela_fast.models.backbones` (below both the encoder and the trainer)."""

# TODO(lead): remove once trainer.py imports rela_fast.models
from rela_fast.models.backbones import ConvNet, create_backbone, feature_dim

__all__ = ["ConvNet", "create_backbone", "feature_dim"]
