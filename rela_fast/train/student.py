"""What one training step optimises: the student (backbone, transfer head, method heads, online classifier).

:class:`Student` is one module so that DDP synchronises every trainable piece and one forward computes
the whole loss: ``lam x`` the ReLA loss (the engine's fused transfer loss; per-sample weighted for
InfoBatch) ``+ (1 - lam) x`` the method's loss, plus the online classifier's cross-entropy on detached
features (monitoring only: no gradient reaches the backbone).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rela_fast.train.methods import Method, loss_terms


class Student(nn.Module):
    """Everything trained: backbone, transfer head, method heads, online classifier; one forward = the loss.

    Wrapped in DDP as a whole, so every trainable piece is synchronised. The ReLA part comes from the
    :class:`~rela_fast.train.engine.ReLAEngine` (its transfer head is registered here as ``head``, so the
    optimiser, DDP and checkpoints see it); ``forward`` returns ``(total_loss, stats)``.
    """

    def __init__(self, backbone: nn.Module, engine: Any, method: Method, classifier: nn.Module | None,
                 compiled: Any = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = engine.head
        self.method = method
        self.classifier = classifier
        self.__dict__["engine"] = engine  # not a module: state lives in the engine's own state_dict
        self.__dict__["encode"] = compiled if compiled is not None else backbone

    def forward(self, v1, v2, idx, labels, weights):
        b = v1.shape[0]
        h = self.encode(torch.cat([v1, v2]))
        stats: dict[str, Any] = {}
        rela = self.engine.loss(h, idx, weights)
        method_loss = None
        if self.engine.rela_weight < 1:
            method_loss, per_m = loss_terms(self.method, h[:b], h[b:], v1, v2, labels=labels, weights=weights)
            stats["method_loss"] = method_loss.detach().float()
            if rela is None and per_m is not None:  # phase 2: fresh per-sample scores from the method's own loss
                self.engine.record(idx, per_m)
            method_loss = method_loss.float()
        if rela is not None:
            stats["rela_loss"] = rela.detach()
        total = self.engine.mix(rela, method_loss)
        stats["loss"] = total.detach()  # the training objective (the monitoring classifier's CE is apart)
        if self.classifier is not None and labels is not None:
            logits = self.classifier(h[:b].detach().float())
            total = total + F.cross_entropy(logits, labels)
            stats["correct"] = (logits.argmax(1) == labels).sum().detach()
        return total, stats
