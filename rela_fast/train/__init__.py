"""ReLA-F: the accelerated trainer, its hand-over rule, the methods it accelerates, loaders and metrics.

Every piece is usable on its own in a custom loop: :class:`HandOver` (when to switch), the methods
(:class:`BYOL`, :class:`SimCLR`, :class:`DINO`, :class:`Supervised`, or your own :class:`Method`), the
augmentations (:func:`two_views`), the two-view loader (:class:`TwoViewDataset`), atomic checkpoints and
JSONL metrics; :class:`ReLATrainer` puts them together.
"""

from __future__ import annotations

from rela_fast.train.augment import BatchPhotometric, ViewSpec, build_torchvision, crop_flip, eval_transform, two_views
from rela_fast.train.backbones import ConvNet, create_backbone
from rela_fast.train.checkpoint import load_backbone, load_checkpoint, save_checkpoint
from rela_fast.train.handover import HandOver
from rela_fast.train.loader import DaliTwoViewLoader, TwoViewDataset, make_loader
from rela_fast.train.methods import BYOL, DINO, Method, SimCLR, Supervised, create_method
from rela_fast.train.metrics import MetricsLog, plot_metrics, read_metrics
from rela_fast.train.trainer import ReLATrainer, TrainResult

__all__ = [
    "BYOL", "BatchPhotometric", "ConvNet", "DINO", "DaliTwoViewLoader", "HandOver", "Method", "MetricsLog",
    "ReLATrainer", "SimCLR", "Supervised", "TrainResult", "TwoViewDataset", "ViewSpec", "build_torchvision",
    "create_backbone", "create_method", "crop_flip", "eval_transform", "load_backbone", "load_checkpoint",
    "make_loader", "plot_metrics", "read_metrics", "save_checkpoint", "two_views",
]
