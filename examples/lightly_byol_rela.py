"""ReLA-BYOL: lightly_byol.py's plain loop with ReLA added (README.md shows and counts the added lines).

The engine draws each epoch's subset (its sampler), makes both views of a batch (ReLA's in phase 1, the
method's after the hand-over, from the step after the switch on), computes the transfer loss and decides the
hand-over. The views replace lightly's BYOLTransform: a transform inside the Dataset runs in loader workers
ahead of training and cannot know that the phase changed at the current step.

    python examples/lightly_byol_rela.py --n 2048 --epochs 10 --targets fmnist-targets
"""

from __future__ import annotations

import copy

import torch
from _common import arguments, backbone, fashion_mnist
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn
from torch.utils.data import DataLoader

from rela_fast import IndexedDataset, ReLAEngine, convert


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
    store = convert(data, args.targets, prior="timm:resnet18", size=32, dim=64, progress=False)
    engine = ReLAEngine.create(store, data, feature_dim=width, budget=0.5, epochs=args.epochs, device=args.device)
    loader = DataLoader(IndexedDataset(data, rows=engine.rows), args.batch_size, sampler=engine.sampler, drop_last=True)
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD([*model.parameters(), *engine.head.parameters()], lr=args.lr, momentum=0.9)
    history = []
    for epoch in range(args.epochs):
        engine.set_epoch(epoch)
        momentum = cosine_schedule(epoch, args.epochs, 0.996, 1.0)
        for batch in loader:
            update_momentum(model.backbone, model.backbone_momentum, m=momentum)
            update_momentum(model.projection_head, model.projection_head_momentum, m=momentum)
            x = torch.cat(engine.views(batch[0], batch[2]))
            h = model.backbone(x)
            loss = engine.mix(engine.loss(h, batch[2]), lambda h=h, x=x: byol_loss(model, criterion, h, x))
            loss.backward()
            engine.before_step(model.backbone)
            optimizer.step()
            optimizer.zero_grad()
            history.append({"epoch": epoch, **engine.step({"loss": loss.item()})})
        epoch_loss = sum(row["loss"] for row in history if row["epoch"] == epoch) / len(loader)
        print(f"epoch {epoch:02d}  loss {epoch_loss:.4f}")
    return history


if __name__ == "__main__":
    main()
