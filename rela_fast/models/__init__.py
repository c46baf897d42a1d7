"""Models below both halves of rela_fast: student backbones by name and loading what a training run saved.

The encoder (ReLA-D, a ``run:DIR`` prior) and the trainer (ReLA-F) both import this package; it imports
neither, so ReLA-D stands without ReLA-F.
"""

from __future__ import annotations

from rela_fast.models.backbones import ConvNet, create_backbone, feature_dim
from rela_fast.models.checkpoint import (
    MAX_CONVNET_WIDTH,
    MAX_IMAGE_SIZE,
    MODEL_KEYS,
    check_backbone_config,
    check_plain,
    load_backbone,
    load_checkpoint,
    load_weights,
)

__all__ = [
    "MAX_CONVNET_WIDTH", "MAX_IMAGE_SIZE", "MODEL_KEYS", "ConvNet", "check_backbone_config", "check_plain",
    "create_backbone", "feature_dim", "load_backbone", "load_checkpoint", "load_weights",
]
