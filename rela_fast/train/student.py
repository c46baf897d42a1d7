"""What one training step optimises: the student (backbone, transfer head, method heads, online classifier).

:class:`Student` is one module so that DDP synchronises every trainable piece and one forward computes
the whole loss: ``lam x`` the ReLA loss (fused :func:`rela_fast.transfer_loss`; per-sample weighted for
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

    Wrapped in DDP as a whole, so every trainable piece is synchronised; ``forward`` takes ``lam`` (the
    ReLA weight from the hand-over rule) and returns ``(total_loss, stats)``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module | None, method: Method,
                 classifier: nn.Module | None, compiled: Any = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.method = method
        self.classifier = classifier
        self.__dict__["encode"] = compiled if compiled is not None else backbone

    def forward(self, v1, v2, y, labels, weights, lam: float):
        from rela_fast.ops.transfer_loss import transfer_loss

        b = v1.shape[0]
        h = self.encode(torch.cat([v1, v2]))
        total = h.new_zeros((), dtype=torch.float32)
        stats: dict[str, Any] = {}
        if lam > 0:
            w, bias = self.head.weight, self.head.bias
            w = w.to(h.dtype)
            bias = bias.to(h.dtype) if bias is not None else None
            rela, per = transfer_loss(h, w, bias, y, sample_weights=weights)
            total = total + lam * rela.float()
            stats["rela_loss"], stats["per_sample"] = rela.detach().float(), per
        if lam < 1:
            m, per_m = loss_terms(self.method, h[:b], h[b:], v1, v2, labels=labels, weights=weights)
            total = total + (1 - lam) * m.float()
            stats["method_loss"] = m.detach().float()
            if lam == 0 and per_m is not None:  # phase 2: fresh per-sample scores from the method's own loss
                stats["per_sample"] = per_m.detach()
        stats["loss"] = total.detach()  # the training objective (the monitoring classifier's CE is apart)
        if self.classifier is not None and labels is not None:
            logits = self.classifier(h[:b].detach().float())
            total = total + F.cross_entropy(logits, labels)
            stats["correct"] = (logits.argmax(1) == labels).sum().detach()
        return total, stats
