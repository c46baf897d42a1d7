"""ReLA-F: the accelerated trainer, its hand-over rule, the methods it accelerates, loaders and metrics.

Every piece is usable on its own in a custom loop: :class:`HandOver` (when to switch), the methods
(:class:`BYOL`, :class:`SimCLR`, :class:`DINO`, :class:`Supervised`, or your own :class:`Method`), the
augmentations (:func:`two_views`), the two-view loader (:class:`TwoViewDataset`), atomic checkpoints and
JSONL metrics; :class:`ReLATrainer` puts them together.
"""

from __future__ import annotations

from rela_fast.models import ConvNet, create_backbone, load_backbone, load_checkpoint
from rela_fast.train.augment import (
    BatchPhotometric,
    BatchViews,
    ViewSpec,
    build_torchvision,
    crop_flip,
    eval_transform,
    two_views,
    view_ops,
)
from rela_fast.train.callbacks import Callback, Clock, ProbeCallback, TrainState
from rela_fast.train.checkpoint import save_checkpoint
from rela_fast.train.config import HandoverConfig, OptimConfig, ReLAConfig, RuntimeConfig, SubsetConfig
from rela_fast.train.engine import ReLAEngine
from rela_fast.train.handover import HandOver
from rela_fast.train.loader import DaliTwoViewLoader, TwoViewDataset, make_loader
from rela_fast.train.methods import BYOL, DINO, Method, SimCLR, Supervised, create_method
from rela_fast.train.metrics import MetricsLog, plot_metrics, read_metrics
from rela_fast.train.recipes import RECIPES, Recipe, resolve_recipe
from rela_fast.train.trainer import ReLATrainer, TrainResult
from rela_fast.train.views import DaliViews, LoaderViews, TensorViews, ViewPipeline, create_views

__all__ = [
    "BYOL", "BatchPhotometric", "BatchViews", "Callback", "Clock", "ConvNet", "DINO", "DaliTwoViewLoader",
    "DaliViews", "HandOver", "HandoverConfig", "LoaderViews", "Method", "MetricsLog", "OptimConfig", "ProbeCallback",
    "RECIPES", "ReLAConfig", "ReLAEngine", "ReLATrainer", "Recipe", "RuntimeConfig", "SimCLR", "SubsetConfig",
    "Supervised", "TensorViews", "TrainResult", "TrainState", "TwoViewDataset", "ViewPipeline", "ViewSpec",
    "build_torchvision", "create_backbone", "create_method", "create_views", "crop_flip", "eval_transform",
    "load_backbone", "load_checkpoint", "make_loader", "plot_metrics", "read_metrics", "resolve_recipe",
    "save_checkpoint", "two_views", "view_ops",
]
