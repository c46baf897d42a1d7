"""What the four examples share: the command line, a Fashion-MNIST slice and a small backbone.

Kept apart so that each ReLA example differs from its plain version by the ReLA lines alone (README.md shows
and counts them). Nothing here is ReLA: the plain examples use all of it too, and ``--targets`` is read by the
ReLA examples only.
"""

from __future__ import annotations

import argparse
import gzip
import os
from typing import Any

import numpy as np
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import Dataset


def arguments(argv: list[str] | None, description: str) -> argparse.Namespace:
    """The examples' command line (``--help`` lists it)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist",
                   help="folder with Fashion-MNIST's train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz")
    p.add_argument("--n", type=int, default=2048, help="train on the first N images (default 2048)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.06, help="SGD learning rate (momentum 0.9)")
    p.add_argument("--arch", default="convnet-16", help="convnet-W (small, quick on a CPU) or resnet18 (torchvision)")
    p.add_argument("--targets", default="fmnist-targets",
                   help="ReLA examples: the target store; converted from the slice when missing (random-init "
                        "ResNet-18 prior at 32 px, d = 64)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--devices", type=int, default=1, help="Lightning examples: processes (one per device)")
    p.add_argument("--strategy", default="auto", help="Lightning examples: e.g. ddp_find_unused_parameters_true")
    p.add_argument("--out", default="lightning_logs", help="Lightning examples: logs and checkpoints")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.n < args.batch_size:
        p.error(f"--n {args.n}: at least one batch of --batch-size {args.batch_size} images")
    return args


class FashionMNIST(Dataset):
    """The first ``n`` images of Fashion-MNIST's train split, read from the IDX files in ``folder``: a map-style
    dataset like torchvision's ``FashionMNIST`` (items ``(PIL image, label)``, ``targets``, ``transform``),
    with RGB images so that colour transforms apply."""

    def __init__(self, folder: str, n: int, transform: Any = None) -> None:
        self.images = _idx(folder, "train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)[:n]
        self.targets = _idx(folder, "train-labels-idx1-ubyte.gz", 8)[:n].tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[i]).convert("RGB")
        return (self.transform(image) if self.transform is not None else image), self.targets[i]


def _idx(folder: str, name: str, header: int) -> np.ndarray:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise SystemExit(f"--data {folder}: no {name} (Debian/Ubuntu: apt-get install dataset-fashion-mnist)")
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def fashion_mnist(folder: str, n: int) -> FashionMNIST:
    """The first ``n`` training images of Fashion-MNIST in ``folder`` (see :class:`FashionMNIST`)."""
    return FashionMNIST(folder, n)


def backbone(arch: str) -> tuple[nn.Module, int]:
    """``(module, F)``: a backbone returning pooled (B, F) features."""
    if arch == "resnet18":
        resnet = torchvision.models.resnet18()
        return nn.Sequential(*list(resnet.children())[:-1], nn.Flatten()), 512
    if arch.startswith("convnet-") and arch[8:].isdigit():
        w = int(arch[8:])
        chans, layers = [3, w, 2 * w, 4 * w, 8 * w], []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 8 * w
    raise SystemExit(f"--arch {arch!r}: use convnet-W (e.g. convnet-16) or resnet18")


def lightning_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of ``lightning.Trainer`` from the command line."""
    return {"accelerator": "gpu" if args.device.startswith("cuda") else "cpu", "devices": args.devices,
            "strategy": args.strategy, "default_root_dir": args.out, "log_every_n_steps": 1,
            "enable_model_summary": False}
