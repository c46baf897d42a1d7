"""Student backbones by name: any timm model (random init), plus a small CPU-friendly ``convnet``.

``create_backbone(arch, image_size)`` returns the module (pooled features, no classifier) and a plain
config dict that rebuilds it (stored in checkpoints, so ``rela-fast eval RUN`` needs nothing else).

* ``convnet`` / ``convnet-W``: four 3x3 conv-BN-ReLU blocks (widths W, 2W, 4W, 8W; W = 32 by default),
  three of them stride 2, global average pooling; 8W features. Trains on 28x28 images on a laptop CPU.
* ``NAME`` or ``timm:NAME``: ``timm.create_model(NAME, pretrained=False, num_classes=0)``. For ResNet-style
  models at ``image_size <= 64`` the stem is adapted as usual for CIFAR-sized inputs (3x3 stride-1 first
  convolution, no max-pool) unless ``small_stem=False``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rela_fast.errors import UserError

MAX_IMAGE_SIZE = 4096
MAX_CONVNET_WIDTH = 512  # convnet-W: widths W..8W; 8 x 512 channels is already a 75 M-parameter last block


class ConvNet(nn.Module):
    """A small VGG-style network for tiny images: fast on CPU, enough to learn Fashion-MNIST features."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.num_features = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def _small_stem(model: nn.Module) -> bool:
    conv1 = getattr(model, "conv1", None)
    if not isinstance(conv1, nn.Conv2d) or not hasattr(model, "maxpool"):
        return False
    model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return True


def create_backbone(arch: str, image_size: int = 224, small_stem: bool | None = None,
                    **config: Any) -> tuple[nn.Module, int, dict[str, Any]]:
    """``(module, feature_dim, config)``; ``create_backbone(**config)`` rebuilds the same architecture.

    ``image_size`` must be a whole number of pixels in [1, 4096] and ``small_stem`` true, false or None."""
    if not isinstance(arch, str):
        raise UserError(f"arch={str(arch)[:60]!r}: an architecture name (a timm model or 'convnet[-W]')")
    if type(image_size) is not int or not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise UserError(f"image_size={repr(image_size)[:40]}: must be a whole number of pixels in "
                        f"[1, {MAX_IMAGE_SIZE}]")
    if small_stem is not None and type(small_stem) is not bool:
        raise UserError(f"small_stem={repr(small_stem)[:40]}: must be true, false or None")
    name = arch.removeprefix("timm:")
    if name == "convnet" or name.startswith("convnet-"):
        text = name.split("-", 1)[1] if "-" in name else "32"
        if not text.isdigit() or not 1 <= int(text) <= MAX_CONVNET_WIDTH:
            raise UserError(f"--arch {arch!r}: the convnet width must be a whole number in [1, {MAX_CONVNET_WIDTH}]")
        width = int(text)
        model = ConvNet(width)
        return model, model.num_features, {"arch": arch, "image_size": image_size, "small_stem": False}
    import timm

    try:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    except Exception as exc:  # timm raises RuntimeError("Unknown model ...")
        raise UserError(f"--arch {arch!r}: not a timm model or 'convnet' ({exc}); see `timm.list_models()`") from exc
    adapted = False
    if small_stem or (small_stem is None and image_size <= 64):
        adapted = _small_stem(model)
        if small_stem and not adapted:
            raise UserError(f"--arch {arch!r}: small_stem needs a ResNet-style model (conv1 + maxpool)")
    return model, int(model.num_features), {"arch": arch, "image_size": image_size, "small_stem": adapted}


def feature_dim(backbone: nn.Module, image_size: int = 224) -> int:
    """The width of ``backbone``'s pooled output (``num_features`` when present, else a dummy forward)."""
    width = getattr(backbone, "num_features", None)
    if isinstance(width, int):
        return width
    param = next(backbone.parameters())
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.zeros(2, 3, image_size, image_size, device=param.device, dtype=param.dtype))
    backbone.train(was_training)
    if out.dim() != 2:
        raise UserError(f"backbone output has shape {tuple(out.shape)}; it must return pooled (B, F) features")
    return int(out.shape[1])
