"""The (self-)supervised methods ReLA-F accelerates: a small protocol and four built-ins.

A :class:`Method` is an ``nn.Module`` holding the method's heads (and teacher networks). The trainer, or
a custom loop, calls, in this order:

1. ``method.attach(backbone)`` once: methods with a momentum teacher (BYOL, DINO) copy the backbone here;
2. per micro-batch ``method.per_sample_loss(h1, h2, v1, v2, labels=None)``: each sample's loss ``l_i`` (B,),
   where ``h1``/``h2`` are the online backbone's features of the two views (B x F) and ``v1``/``v2`` the
   view images (for the teacher); or ``method.loss(h1, h2, v1, v2, labels=None, weights=None)``, the
   weighted mean ``mean_i(w_i * l_i)`` of it (``weights``: optional per-sample loss weights, e.g.
   InfoBatch's). :func:`loss_terms` gives both from one forward: the loss to optimise and the per-sample
   losses that keep the ScoreBook's scores fresh after the hand-over;
3. after each optimiser step ``method.on_step(step, total_steps)``: the momentum update of the teacher.

``method.augmentation(size)`` gives the method's own pair of view specs (:mod:`rela_fast.train.augment`).
Bring your own method by subclassing :class:`Method` (implement ``per_sample_loss``; a method that only
overrides ``loss`` still trains, without per-sample scores) and passing the instance to the trainer.

lightly is not a dependency: the heads and losses are written here, short, and tested against the
direct formulas (``tests/test_methods.py``).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rela_fast.errors import UserError
from rela_fast.train.augment import ViewSpec, two_views

MAX_HEAD_WIDTH = 1 << 16  # a head layer of 4096 x 65 536 is already 1 GB of float32


def check_args(method: str, *, widths: dict[str, object] | None = None, fractions: dict[str, object] | None = None,
               positives: dict[str, object] | None = None) -> None:
    """Refuse a method argument of the wrong type or range, naming it (one line): ``widths`` whole numbers in
    [1, :data:`MAX_HEAD_WIDTH`], ``fractions`` (momenta) numbers in [0, 1], ``positives`` (temperatures)
    finite numbers above 0."""
    for name, v in (widths or {}).items():
        if type(v) is not int or not 1 <= v <= MAX_HEAD_WIDTH:
            raise UserError(f"method {method!r}: {name}={v!r} must be a whole number in [1, {MAX_HEAD_WIDTH}]")
    real = (int, float)
    for name, v in (fractions or {}).items():
        if not isinstance(v, real) or isinstance(v, bool) or not 0.0 <= v <= 1.0:
            raise UserError(f"method {method!r}: {name}={v!r} must be a number in [0, 1]")
    for name, v in (positives or {}).items():
        if not isinstance(v, real) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise UserError(f"method {method!r}: {name}={v!r} must be a finite number above 0")


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> BatchNorm -> ReLU -> Linear: BYOL's projector/predictor and SimCLR's projector."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
    )


def weighted_mean(per_sample: Tensor, weights: Tensor | None = None) -> Tensor:
    """``mean_i(w_i * l_i)`` (the plain mean without weights): the batch loss of per-sample losses."""
    if weights is None:
        return per_sample.mean()
    return (per_sample * weights.to(per_sample.dtype)).mean()


def _frozen_copy(module: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = m teacher + (1 - m) student`` for parameters; buffers (BN statistics) are copied."""
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise RuntimeError("teacher and student have different parameter lists")
    torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """BYOL's schedule ``final - (final - base) (cos(pi k / K) + 1) / 2``: ``base`` at k = 0, ``final`` at K."""
    frac = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * frac) + 1.0) / 2.0


class Method(nn.Module):
    """Protocol of a method; subclasses implement :meth:`per_sample_loss` (or, older style, only :meth:`loss`)
    and may override the rest."""

    name = "method"
    recipe = "byol"
    needs_labels = False

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.feature_dim = int(feature_dim)
        self.__dict__["_online"] = None  # the student's backbone, deliberately not a registered submodule

    @property
    def online(self) -> nn.Module | None:
        return self.__dict__["_online"]

    def attach(self, backbone: nn.Module) -> None:
        """Remember the student's backbone (teacher methods copy it here)."""
        self.__dict__["_online"] = backbone

    def per_sample_loss(self, h1: Tensor, h2: Tensor, v1: Tensor | None = None, v2: Tensor | None = None,
                        labels: Tensor | None = None) -> Tensor:
        """Each sample's loss, shape (B,), float32, differentiable (also the method's per-step side effects,
        e.g. DINO's centre update, which happen once per call)."""
        raise NotImplementedError(f"{type(self).__name__} defines no per_sample_loss")

    def loss(self, h1: Tensor, h2: Tensor, v1: Tensor | None = None, v2: Tensor | None = None,
             labels: Tensor | None = None, weights: Tensor | None = None) -> Tensor:
        """The batch loss: ``mean_i(w_i * l_i)`` of :meth:`per_sample_loss` (the plain mean without weights)."""
        return weighted_mean(self.per_sample_loss(h1, h2, v1, v2, labels=labels), weights)

    @property
    def has_per_sample_loss(self) -> bool:
        """Whether this method gives per-sample losses (False for a method that only overrides ``loss``)."""
        return type(self).per_sample_loss is not Method.per_sample_loss

    def on_step(self, step: int, total_steps: int) -> None:
        """Called after every optimiser step (``step`` = steps done so far)."""

    def augmentation(self, size: int) -> tuple[ViewSpec, ViewSpec]:
        """The method's own two-view augmentation (used in phase 2)."""
        return two_views(self.recipe, size)


class BYOL(Method):
    """BYOL: online projector + predictor, momentum target (backbone + projector), loss ``2 - 2 cos``.

    Symmetric: ``l_i = (2 - 2 cos(q(z1_i), z2'_i)) + (2 - 2 cos(q(z2_i), z1'_i))`` with ``z'`` from the
    target network; the target's momentum follows the cosine schedule from ``base_momentum`` to 1.
    """

    name = "byol"
    recipe = "byol"

    def __init__(self, feature_dim: int, proj_dim: int = 256, hidden_dim: int = 4096,
                 base_momentum: float = 0.99, final_momentum: float = 1.0) -> None:
        check_args("byol", widths={"proj_dim": proj_dim, "hidden_dim": hidden_dim},
                   fractions={"base_momentum": base_momentum, "final_momentum": final_momentum})
        super().__init__(feature_dim)
        self.projector = mlp(feature_dim, hidden_dim, proj_dim)
        self.predictor = mlp(proj_dim, hidden_dim, proj_dim)
        self.target_projector = _frozen_copy(self.projector)
        self.target_backbone: nn.Module | None = None
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        self.momentum = base_momentum

    def attach(self, backbone: nn.Module) -> None:
        super().attach(backbone)
        self.target_backbone = _frozen_copy(backbone)

    def per_sample_loss(self, h1, h2, v1=None, v2=None, labels=None):
        if self.target_backbone is None:
            raise RuntimeError("BYOL.attach(backbone) must be called before loss()")
        p1 = self.predictor(self.projector(h1))
        p2 = self.predictor(self.projector(h2))
        with torch.no_grad():
            t = self.target_backbone(torch.cat([v1, v2]))
            b = h1.shape[0]
            z1t = self.target_projector(t[:b])
            z2t = self.target_projector(t[b:])
        return (2 - 2 * F.cosine_similarity(p1.float(), z2t.float(), dim=-1)) + (
            2 - 2 * F.cosine_similarity(p2.float(), z1t.float(), dim=-1))

    def on_step(self, step, total_steps):
        self.momentum = cosine_momentum(step, total_steps, self.base_momentum, self.final_momentum)
        ema_update(self.target_backbone, self.online, self.momentum)
        ema_update(self.target_projector, self.projector, self.momentum)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """Per-sample NT-Xent (SimCLR): the mean over sample i's two anchors of the softmax cross-entropy.

    Anchor ``a`` among the 2B normalised embeddings, its positive the other view of the same sample, the
    other 2B - 2 embeddings negatives; similarity ``cos / temperature``.
    """
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    pos = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    ce = F.cross_entropy(sim, pos, reduction="none")
    return (ce[:b] + ce[b:]) / 2


class SimCLR(Method):
    """SimCLR: MLP projector and the NT-Xent loss (negatives from the local batch)."""

    name = "simclr"
    recipe = "simclr"

    def __init__(self, feature_dim: int, proj_dim: int = 128, hidden_dim: int = 2048, temperature: float = 0.5):
        check_args("simclr", widths={"proj_dim": proj_dim, "hidden_dim": hidden_dim},
                   positives={"temperature": temperature})
        super().__init__(feature_dim)
        self.projector = mlp(feature_dim, hidden_dim, proj_dim)
        self.temperature = temperature

    def per_sample_loss(self, h1, h2, v1=None, v2=None, labels=None):
        return nt_xent(self.projector(h1), self.projector(h2), self.temperature)


class DINOHead(nn.Module):
    """DINO's head: 3-layer MLP (GELU) to a bottleneck, L2-normalise, weight-normalised linear (g = 1)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.last = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.last, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return x @ F.normalize(self.last, dim=-1).T


class DINO(Method):
    """DINO with two global crops (no local multi-crop): EMA teacher, centring, sharpened targets.

    ``l_i = (H(P_t(x2_i), P_s(x1_i)) + H(P_t(x1_i), P_s(x2_i))) / 2`` with
    ``P_t = softmax((t - c) / teacher_temp)``, ``P_s = softmax(s / student_temp)``, ``H(p, q) = -sum p log q``;
    after each loss the centre moves: ``c = m c + (1 - m) mean(t)`` (mean over the global batch).
    """

    name = "dino"
    recipe = "dino"

    def __init__(self, feature_dim: int, out_dim: int = 4096, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 student_temp: float = 0.1, teacher_temp: float = 0.04, center_momentum: float = 0.9,
                 base_momentum: float = 0.996, final_momentum: float = 1.0) -> None:
        check_args("dino", widths={"out_dim": out_dim, "hidden_dim": hidden_dim, "bottleneck_dim": bottleneck_dim},
                   fractions={"center_momentum": center_momentum, "base_momentum": base_momentum,
                              "final_momentum": final_momentum},
                   positives={"student_temp": student_temp, "teacher_temp": teacher_temp})
        super().__init__(feature_dim)
        self.head = DINOHead(feature_dim, out_dim, hidden_dim, bottleneck_dim)
        self.teacher_head = _frozen_copy(self.head)
        self.teacher_backbone: nn.Module | None = None
        self.register_buffer("center", torch.zeros(out_dim))
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        self.momentum = base_momentum

    def attach(self, backbone: nn.Module) -> None:
        super().attach(backbone)
        self.teacher_backbone = _frozen_copy(backbone)

    def per_sample_loss(self, h1, h2, v1=None, v2=None, labels=None):
        if self.teacher_backbone is None:
            raise RuntimeError("DINO.attach(backbone) must be called before loss()")
        b = h1.shape[0]
        s = self.head(torch.cat([h1, h2])).float() / self.student_temp
        log_s1, log_s2 = F.log_softmax(s[:b], dim=-1), F.log_softmax(s[b:], dim=-1)
        with torch.no_grad():
            t = self.teacher_head(self.teacher_backbone(torch.cat([v1, v2]))).float()
            p = F.softmax((t - self.center) / self.teacher_temp, dim=-1)
            p1, p2 = p[:b], p[b:]
        per = (-(p2 * log_s1).sum(-1) - (p1 * log_s2).sum(-1)) / 2
        if self.training:
            self._update_center(t)
        return per

    @torch.no_grad()
    def _update_center(self, t: Tensor) -> None:
        total = t.sum(0)
        count = torch.tensor(float(t.shape[0]), device=t.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
            torch.distributed.all_reduce(count)
        self.center.mul_(self.center_momentum).add_(total / count, alpha=1 - self.center_momentum)

    def on_step(self, step, total_steps):
        self.momentum = cosine_momentum(step, total_steps, self.base_momentum, self.final_momentum)
        ema_update(self.teacher_backbone, self.online, self.momentum)
        ema_update(self.teacher_head, self.head, self.momentum)


class Supervised(Method):
    """Plain supervised training: a linear classifier and cross-entropy averaged over the two views."""

    name = "supervised"
    recipe = "supervised"
    needs_labels = True

    def __init__(self, feature_dim: int, num_classes: int) -> None:
        super().__init__(feature_dim)
        self.classifier = nn.Linear(feature_dim, num_classes)

    def per_sample_loss(self, h1, h2, v1=None, v2=None, labels=None):
        if labels is None:
            raise UserError("method 'supervised': the data has no labels; use a labelled source or an SSL method")
        return (F.cross_entropy(self.classifier(h1).float(), labels, reduction="none")
                + F.cross_entropy(self.classifier(h2).float(), labels, reduction="none")) / 2


def loss_terms(method: Method, h1: Tensor, h2: Tensor, v1: Tensor | None = None, v2: Tensor | None = None,
               labels: Tensor | None = None, weights: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """One forward of ``method``: ``(loss, per_sample)``: the weighted batch loss to optimise and the
    unweighted per-sample losses (B,), detached, for the ScoreBook (None for a method without
    :meth:`Method.per_sample_loss`, whose ``loss`` is used as it is)."""
    if not method.has_per_sample_loss:
        return method.loss(h1, h2, v1, v2, labels=labels, weights=weights), None
    per = method.per_sample_loss(h1, h2, v1, v2, labels=labels)
    return weighted_mean(per, weights), per.detach().float()


METHODS: dict[str, type[Method]] = {"byol": BYOL, "simclr": SimCLR, "dino": DINO, "supervised": Supervised}


def create_method(name: str, feature_dim: int, *, num_classes: int | None = None, **kwargs) -> Method:
    """A built-in method by name (``byol``, ``simclr``, ``dino``, ``supervised``); kwargs go to its constructor."""
    cls = METHODS.get(str(name).lower())
    if cls is None:
        raise UserError(f"method {name!r}: unknown; use one of {', '.join(METHODS)} or pass a Method instance")
    import inspect

    known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "feature_dim", "num_classes")]
    unknown = [k for k in kwargs if k not in known]
    if unknown:
        raise UserError(f"method {name!r}: no argument {unknown[0]!r}; its arguments are {', '.join(known) or 'none'}")
    if cls is Supervised:
        if num_classes is None:
            raise UserError("method 'supervised': needs labels (num_classes); the data has none")
        return cls(feature_dim, num_classes, **kwargs)
    return cls(feature_dim, **kwargs)
