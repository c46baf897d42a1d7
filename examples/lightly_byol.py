"""BYOL in a plain PyTorch loop built from lightly's pieces, on a Fashion-MNIST slice.

lightly's heads, loss, momentum helpers and two-view transform, in the loop of lightly's BYOL example. The
starting point of lightly_byol_rela.py (the same loop with ReLA; README.md shows the difference).

    python examples/lightly_byol.py --n 2048 --epochs 10
"""

from __future__ import annotations

import copy

import torch
from _common import arguments, backbone, fashion_mnist
from lightly.data import LightlyDataset
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform
from lightly.utils.scheduler import cosine_schedule
from torch import nn
from torch.utils.data import DataLoader


class BYOL(nn.Module):
    """The online backbone and heads, and their momentum copies (the target network)."""

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(feature_dim, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The online predictions of backbone features ``h``."""
        return self.prediction_head(self.projection_head(h))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        """The target projections of images ``x``."""
        return self.projection_head_momentum(self.backbone_momentum(x)).detach()


def byol_loss(model: BYOL, criterion: nn.Module, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Symmetric BYOL loss of the two views stacked in ``x`` (``h``: their online backbone features)."""
    p0, p1 = model(h).chunk(2)
    z0, z1 = model.forward_momentum(x).chunk(2)
    return 0.5 * (criterion(p0, z1) + criterion(p1, z0))


def main(argv: list[str] | None = None) -> list[dict]:
    args = arguments(argv, __doc__.splitlines()[0])
    torch.manual_seed(args.seed)
    data = fashion_mnist(args.data, args.n)
    net, width = backbone(args.arch)
    model = BYOL(net, width).to(args.device)
    transform = BYOLTransform(BYOLView1Transform(input_size=28), BYOLView2Transform(input_size=28))
    dataset = LightlyDataset.from_torch_dataset(data, transform)
    loader = DataLoader(dataset, args.batch_size, shuffle=True, drop_last=True)
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    history = []
    for epoch in range(args.epochs):
        momentum = cosine_schedule(epoch, args.epochs, 0.996, 1.0)
        for batch in loader:
            update_momentum(model.backbone, model.backbone_momentum, m=momentum)
            update_momentum(model.projection_head, model.projection_head_momentum, m=momentum)
            x = torch.cat(batch[0]).to(args.device)
            h = model.backbone(x)
            loss = byol_loss(model, criterion, h, x)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            history.append({"epoch": epoch, "loss": loss.item()})
        epoch_loss = sum(row["loss"] for row in history if row["epoch"] == epoch) / len(loader)
        print(f"epoch {epoch:02d}  loss {epoch_loss:.4f}")
    return history


if __name__ == "__main__":
    main()
