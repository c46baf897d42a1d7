"""What the trainer trains on: a source, optional targets, the rows and labels that tie them together."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rela_fast.errors import UserError


@dataclass
class TrainData:
    """Sample j is source row ``rows[j]`` (all rows when None), with target ``targets[j]`` and ``labels[j]``."""

    source: Any
    targets: torch.Tensor | None
    rows: torch.Tensor | None
    labels: torch.Tensor | None

    @property
    def n(self) -> int:
        if self.targets is not None:
            return len(self.targets)
        return len(self.rows) if self.rows is not None else len(self.source)


def _open_targets(t: Any, source: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    if isinstance(t, torch.Tensor | np.ndarray):
        targets = torch.as_tensor(t).float()
        if targets.ndim != 2 or targets.shape[0] != len(source):
            raise UserError(f"targets: {tuple(targets.shape)} rows for {len(source)} images in the data; "
                            "they must be N x d with one row per image (convert this data again)")
        return targets, None, None
    if not hasattr(t, "targets"):
        raise UserError(f"targets: expected a target store, its directory, an N x d tensor or None, "
                        f"got {type(t).__name__}")
    if hasattr(t, "check_matches"):
        t.check_matches(source)
    targets, rows = t.targets, getattr(t, "rows", None)
    if rows is not None:
        rows = torch.as_tensor(np.asarray(rows)).long()
        if len(rows) != len(targets) or (len(rows) and (int(rows.max()) >= len(source) or int(rows.min()) < 0)):
            raise UserError(f"targets: {len(targets)} rows do not map into the {len(source)} images "
                            "of the data; convert this data again")
    elif len(targets) != len(source):
        raise UserError(f"targets: {len(targets)} rows for {len(source)} images; convert this data again")
    labels = getattr(t, "labels", None)
    return targets, rows, None if labels is None else torch.as_tensor(np.asarray(labels)).long()


def _subset(td: TrainData, rows: Any) -> TrainData:
    """Restrict to source ``rows``; with a store, to its entries for those rows (all of them must be there)."""
    if rows is None:
        return td
    r = torch.as_tensor(np.asarray(rows)).long()
    if r.ndim != 1 or len(r) == 0 or int(r.min()) < 0 or int(r.max()) >= len(td.source):
        raise UserError(f"rows: expected a non-empty 1-d list of row numbers in [0, {len(td.source)})")
    if td.rows is not None:  # the store's entry j is source row td.rows[j]
        pos = torch.full((len(td.source),), -1, dtype=torch.long)
        pos[td.rows] = torch.arange(len(td.rows))
        take = pos[r]
        if bool((take < 0).any()):
            raise UserError(f"rows: {int((take < 0).sum())} of them have no target in the store; convert them first")
    else:
        take = r
    targets = td.targets[take] if td.targets is not None else None
    labels = td.labels[take] if td.labels is not None else None
    return TrainData(td.source, targets, r, labels)


def open_train_data(data: Any, targets: Any, rows: Any = None) -> TrainData:
    """``data``: a path, an array, a map-style dataset (torch / torchvision / Hugging Face) or a Source;
    ``targets``: a store, its directory, an N x d tensor, or None; ``rows``: train on these source rows only
    (a store brings its own rows)."""
    from rela_fast.data import open_source

    source = open_source(data)  # a Source is returned as it is
    if isinstance(targets, str | os.PathLike):
        from rela_fast.targets import load_targets

        targets = load_targets(targets)
    rows_arg = rows
    t, rows, labels = (None, None, None) if targets is None else _open_targets(targets, source)
    if labels is None and getattr(source, "labels", None) is not None:
        labels = torch.as_tensor(np.asarray(source.labels)).long()
        if rows is not None:
            labels = labels[rows]
    return _subset(TrainData(source, t, rows, labels), rows_arg)


def open_targets_only(targets: Any) -> TrainData:
    """Targets without their data (the engine in a user's own loop): a store, its folder or an N x d tensor.

    The store's rows and labels come along; nothing checks them against images here (pass the data to
    ``ReLAEngine.create`` for that)."""
    if targets is None:
        raise UserError("targets: without data, the engine needs a target store, its folder or an N x d tensor")
    if isinstance(targets, str | os.PathLike):
        from rela_fast.targets import load_targets

        targets = load_targets(targets)
    if isinstance(targets, torch.Tensor | np.ndarray):
        t = torch.as_tensor(targets).float()
        if t.ndim != 2:
            raise UserError(f"targets: shape {tuple(t.shape)}; expected N x d")
        return TrainData(None, t, None, None)
    if not hasattr(targets, "targets"):
        raise UserError(f"targets: expected a target store, its directory or an N x d tensor, got "
                        f"{type(targets).__name__}")
    rows, labels = getattr(targets, "rows", None), getattr(targets, "labels", None)
    return TrainData(None, targets.targets, None if rows is None else torch.as_tensor(np.asarray(rows)).long(),
                     None if labels is None else torch.as_tensor(np.asarray(labels)).long())
