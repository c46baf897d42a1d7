"""ReLA-BYOL in Lightning: lightning_byol.py's module with ReLA added through rela_fast.lightning.ReLACallback.

The callback registers the engine's transfer head on the module (as ``rela_head``) and the engine as
``self.rela``, shards each epoch's subset per rank (its sampler), steps the hand-over after every optimiser
step (the same switch step on every rank) and keeps the engine's state in Lightning's checkpoints. The
module's training step asks the engine for the views of the batch and mixes the two losses.

    python examples/lightning_byol_rela.py --n 2048 --epochs 10 --targets fmnist-targets
"""

from __future__ import annotations

import copy

import lightning as L
import torch
from _common import arguments, backbone, fashion_mnist, lightning_options
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn
from torch.utils.data import DataLoader

from rela_fast import IndexedDataset, ReLACallback, ReLAEngine, convert


class BYOL(L.LightningModule):
    """The online backbone and heads, their momentum copies, and BYOL's training step."""

    def __init__(self, backbone: nn.Module, feature_dim: int, epochs: int, lr: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(feature_dim, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()
        self.epochs, self.lr = epochs, lr

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The online predictions of backbone features ``h``."""
        return self.prediction_head(self.projection_head(h))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        """The target projections of images ``x``."""
        return self.projection_head_momentum(self.backbone_momentum(x)).detach()

    def byol_loss(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Symmetric BYOL loss of the two views stacked in ``x`` (``h``: their online backbone features)."""
        p0, p1 = self(h).chunk(2)
        z0, z1 = self.forward_momentum(x).chunk(2)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        momentum = cosine_schedule(self.current_epoch, self.epochs, 0.996, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m=momentum)
        update_momentum(self.projection_head, self.projection_head_momentum, m=momentum)
        x = torch.cat(self.rela.views(batch[0], batch[2]))
        h = self.backbone(x)
        loss = self.rela.mix(self.rela.loss(h, batch[2]), lambda: self.byol_loss(h, x))
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def main(argv: list[str] | None = None) -> L.Trainer:
    args = arguments(argv, __doc__.splitlines()[0])
    L.seed_everything(args.seed)
    data = fashion_mnist(args.data, args.n)
    net, width = backbone(args.arch)
    model = BYOL(net, width, args.epochs, args.lr)
    store = convert(data, args.targets, prior="timm:resnet18", size=32, dim=64, progress=False)
    engine = ReLAEngine.create(store, data, feature_dim=width, budget=0.5, epochs=args.epochs)
    rela = ReLACallback(engine)
    loader = DataLoader(IndexedDataset(data, rows=engine.rows), args.batch_size, sampler=rela.sampler, drop_last=True)
    trainer = L.Trainer(max_epochs=args.epochs, callbacks=[rela], **lightning_options(args))
    trainer.fit(model, loader)
    return trainer


if __name__ == "__main__":
    main()
