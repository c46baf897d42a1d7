"""Checkpoints that a SIGKILL cannot corrupt and that load with ``torch.load(weights_only=True)``.

Write: ``torch.save`` to a temporary file in the same directory, flush + ``fsync``, ``os.replace`` onto
the final name (atomic on POSIX), then ``fsync`` the directory so the rename itself is durable. A kill at
any moment leaves either the previous checkpoint or the new one, never a torn file (a stale ``.tmp``
may remain; it is ignored and overwritten).

Content must be tensors and plain Python values (dict, list, tuple, str, int, float, bool, None): no
pickled objects, so loading never executes code; :func:`check_plain` enforces it at save time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rela_fast.errors import UserError

_PLAIN = (str, int, float, bool, type(None))


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first value that ``weights_only`` loading would reject."""
    if isinstance(obj, (torch.Tensor, *_PLAIN)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, _PLAIN):
                raise TypeError(f"{where}: key {k!r} is not a plain value")
            check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, torch.dtype | torch.device | torch.Size):
        return
    raise TypeError(f"{where}: {type(obj).__name__} is not a tensor or plain value")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Atomically write ``state`` to ``path`` (temp + fsync + rename + directory fsync)."""
    check_plain(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a missing or unreadable file is a UserError."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"checkpoint {path}: not found; pass a run directory or a checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a corrupt file or one with pickled objects
        raise UserError(f"checkpoint {path}: cannot be loaded ({exc}); it is not a rela_fast checkpoint") from exc


def load_backbone(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """``(backbone, config, state)`` from a run directory or a trainer checkpoint: the backbone rebuilt by
    :func:`~rela_fast.train.backbones.create_backbone` from the stored config, with its trained weights."""
    from rela_fast.train.backbones import create_backbone

    state = load_checkpoint(path, map_location="cpu")
    config = state.get("config", {})
    arch = config.get("backbone")
    if not arch:
        raise UserError(
            f"{path}: the run trained a custom backbone module, which cannot be rebuilt from the checkpoint; "
            "load it yourself and call rela_fast.eval.linear_probe(backbone, train, test)")
    backbone, _, _ = create_backbone(**arch)
    backbone.load_state_dict(state["backbone"])
    return backbone.to(device), config, state
