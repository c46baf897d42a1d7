"""Constants shared across the package, each defined here once."""

from __future__ import annotations

# ImageNet per-channel statistics: ReLA-D's observer transform (docs/ALGORITHM.md) and the views' normalisation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
