"""Building a ReLATrainer run: data, student, engine, optimiser and views, in a fixed order.

The order is part of the result: with one seed, the backbone, then the method's heads, then the engine's
transfer head, then the online classifier draw their initial weights from the torch RNG in this order, so a
run is reproducible across versions of the loop around it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rela_fast.errors import UserError
from rela_fast.malloc import keep_memory_for
from rela_fast.models.backbones import create_backbone, feature_dim
from rela_fast.train.engine import ReLAEngine
from rela_fast.train.guards import check_inputs
from rela_fast.train.methods import Method, create_method
from rela_fast.train.optim import build_optimizer
from rela_fast.train.recipes import Recipe, resolve_recipe
from rela_fast.train.student import Student

_FULL_HASH_BYTES = 256 << 20  # targets up to this size are hashed whole; larger ones by a strided sample of rows


@dataclass
class Run:
    """The built pieces of one run."""

    plan: Any
    engine: ReLAEngine
    student: Student
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    views: Any
    backbone_config: dict[str, Any] | None


def build_run(trainer: Any, data: Any) -> Run:
    """Open ``data``, build every piece of ``trainer``'s run and derive its :class:`~rela_fast.train.trainer.Plan`."""
    from rela_fast.distributed import init_from_env, rank_and_world
    from rela_fast.environment import resolve_device
    from rela_fast.train.data import open_train_data
    from rela_fast.train.loader import auto_image_size

    cfg = trainer.config
    init_from_env(cfg.runtime.device)
    rank, world = rank_and_world()
    device = resolve_device(cfg.runtime.device)
    keep_memory_for(device, cfg.runtime.keep_memory)
    td = open_train_data(data, trainer.targets, trainer.rows_arg)
    check_inputs(td.targets, td.labels, cfg.subset.stratify)
    recipe = resolve_recipe(cfg.optim.recipe, batch_size=cfg.optim.batch_size, lr=cfg.optim.lr,
                            weight_decay=cfg.optim.weight_decay, schedule=cfg.optim.schedule,
                            freeze_head=cfg.optim.freeze_head, decay_all=cfg.optim.decay_all, method=cfg.method,
                            method_kwargs=cfg.method_kwargs)
    image_size = cfg.runtime.image_size or auto_image_size(td.source, td.rows)
    torch.manual_seed(cfg.seed)
    backbone, backbone_config = _backbone(trainer.backbone, trainer.backbone_config, image_size, cfg, world, device)
    f = feature_dim(backbone, image_size)
    num_classes = int(td.labels.max()) + 1 if td.labels is not None and len(td.labels) else None
    method = _method(trainer.method, f, num_classes, recipe, td.labels is not None, device)
    method.attach(backbone)
    engine = ReLAEngine(cfg, n=td.n, targets=td.targets, feature_dim=f, labels=td.labels,
                        method_views=method.augmentation(image_size), device=device, rank=rank, world=world)
    classifier = None
    if cfg.runtime.online_classifier and num_classes is not None:
        classifier = nn.Linear(f, num_classes).to(device)
    compiled = None
    if cfg.runtime.compile:
        compiled = torch.compile(backbone, **({"backend": cfg.runtime.compile}
                                              if isinstance(cfg.runtime.compile, str) else {}))
    student = Student(backbone, engine, method, classifier, compiled)
    model: nn.Module = student
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    optimizer = build_optimizer(cfg.optim.optimizer, student, recipe.lr, recipe.weight_decay, cfg.optim.momentum,
                                decay_all=recipe.decay_all)
    amp = _amp_dtype(cfg.runtime.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    views = _views(trainer.views_arg, cfg, td, device)
    plan = _plan(cfg, recipe, engine, td, device, rank, world, image_size, f, num_classes, amp, trainer.targets,
                 backbone_config)
    return Run(plan, engine, student, model, optimizer, scaler, views, backbone_config)


def _backbone(backbone: nn.Module | str, config: dict[str, Any] | None, image_size: int, cfg: Any, world: int,
              device: torch.device) -> tuple[nn.Module, dict[str, Any] | None]:
    if isinstance(backbone, str):
        backbone, _, config = create_backbone(backbone, image_size)
    elif not isinstance(backbone, nn.Module):
        raise UserError(f"backbone: expected an nn.Module or an architecture name, got {type(backbone).__name__}")
    if cfg.runtime.sync_bn and world > 1:
        backbone = nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
    fmt = torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format
    return backbone.to(device, memory_format=fmt), config


def _method(method: Method | str, f: int, num_classes: int | None, recipe: Recipe, labelled: bool,
            device: torch.device) -> Method:
    if isinstance(method, str):
        method = create_method(method, f, num_classes=num_classes, **recipe.method_kwargs)
    if method.needs_labels and not labelled:
        raise UserError(f"method {method.name!r}: needs labels, and the data has none")
    return method.to(device)


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _views(views: Any, cfg: Any, td: Any, device: torch.device) -> Any:
    from rela_fast.train.views import create_views

    return create_views(views if views is not None else cfg.runtime.views, td.source, td.rows, td.labels,
                        device=device, seed=cfg.seed, num_workers=cfg.runtime.workers,
                        batched=cfg.runtime.batched_augment)


def _plan(cfg, recipe, engine, td, device, rank, world, image_size, f, num_classes, amp, targets_arg, backbone_config):
    from rela_fast.train.trainer import Plan

    per_rank = len(engine.sampler)
    unit = recipe.batch_size * cfg.optim.accumulate
    steps_per_epoch = per_rank // unit
    if steps_per_epoch == 0:
        raise UserError(f"batch_size={recipe.batch_size} x accumulate={cfg.optim.accumulate}: larger than the "
                        f"{per_rank} samples each process gets per epoch (budget {cfg.subset.budget} of {td.n}); "
                        "use a smaller batch")
    total = steps_per_epoch * cfg.epochs
    total = min(total, cfg.max_steps) if cfg.max_steps else total
    identity = run_identity(td, targets_arg, image_size, f, engine, world, backbone_config)
    return Plan(device, rank, world, td.n, image_size, f, num_classes, steps_per_epoch, total,
                int(round(cfg.optim.warmup * total)), amp, recipe, td.labels is not None, identity)


def run_identity(td: Any, targets_arg: Any, image_size: int, f: int, engine: ReLAEngine, world: int,
                 backbone_config: dict[str, Any] | None) -> dict[str, Any]:
    """What a resume must find unchanged besides the config: the data, the targets, the sizes, the model."""
    fp = dict(td.source.fingerprint()) if hasattr(td.source, "fingerprint") else {}
    data = {k: fp.get(k) for k in ("kind", "count", "digest", "labels_digest")}
    rows = None if td.rows is None else hashlib.sha256(td.rows.numpy().astype("int64").tobytes()).hexdigest()[:16]
    return {"data": data, "rows": rows, "targets": _targets_digest(td.targets, targets_arg), "n": td.n,
            "image_size": image_size, "feature_dim": f, "world": world, "backbone": backbone_config,
            "target_dim": int(engine.targets.shape[1]) if engine.targets is not None else None}


def _targets_digest(targets: torch.Tensor | None, arg: Any) -> str | None:
    """A digest of the training targets: sha256 of their bytes (a strided sample of rows when very large)."""
    if targets is None:
        return None
    t = targets
    if t.numel() * t.element_size() > _FULL_HASH_BYTES:
        step = max(1, len(t) // 4096)
        t = t[::step]
    h = hashlib.sha256(str(tuple(targets.shape)).encode())
    h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:32]
