"""Loading what a ``rela-fast train`` run saved: checkpoints, bounded backbone configs, checked weights.

Below both halves: the encoder (a ``run:DIR`` prior, ReLA-D) and the trainer (resume, ``rela-fast eval``,
ReLA-F) load runs through this module; writing checkpoints stays with the trainer
(:mod:`rela_fast.train.checkpoint`).

A checkpoint holds tensors and plain Python values only (dict, list, tuple, str, int, float, bool, None) and
is read with ``torch.load(weights_only=True)``, so loading never executes code; :func:`check_plain` is the
save-time check of the same rule. A stored backbone config is bounded (:func:`check_backbone_config`) before
anything is built from it, and weights are checked by name and shape before they are loaded.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from rela_fast.errors import UserError
from rela_fast.models.backbones import MAX_CONVNET_WIDTH, MAX_IMAGE_SIZE

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


MODEL_KEYS = ("backbone", "head", "method", "classifier")  # the trained weights in a trainer checkpoint


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a missing, damaged or foreign file is a one-line UserError.

    The message never suggests ``weights_only=False``: a file that needs it may run code when loaded.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"checkpoint {path}: not found; pass a run directory or a checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickled objects (refused), a truncated or corrupt file, not a torch file
        raise UserError(f"checkpoint {path}: cannot be loaded, {_load_failure(exc)}") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path}: holds a {type(state).__name__}, not a rela_fast checkpoint")
    return state


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load`` failed, in a few words, without torch's advice to load the file unsafely."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in text:
        return ("it holds objects other than tensors and plain values, which are never loaded (they could run "
                "code); it was not written by rela_fast")
    detail = text.partition("WeightsUnpickler error:")[2] if "WeightsUnpickler error:" in text else text
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    reason = lines[0].split(". ")[0][:160] if lines else type(exc).__name__
    return f"damaged or not a checkpoint ({reason})"


def check_backbone_config(arch: Any, path: Path | str) -> dict[str, Any]:
    """The backbone config of a checkpoint, checked before anything is built from it.

    A crafted file could otherwise ask for a network of hundreds of GB (``convnet-100000``, a huge image
    size): only ``arch`` (a name), ``image_size`` (1..4096) and ``small_stem`` (a bool) are accepted.
    """
    if not isinstance(arch, dict) or set(arch) - {"arch", "image_size", "small_stem"}:
        raise UserError(f"{path}: the backbone config {str(arch)[:80]} is not one rela_fast writes")
    name, size, stem = arch.get("arch"), arch.get("image_size", 224), arch.get("small_stem")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", name):
        raise UserError(f"{path}: backbone name {str(name)[:80]!r} is not an architecture name")
    if type(size) is not int or not 1 <= size <= MAX_IMAGE_SIZE:
        raise UserError(f"{path}: image_size {str(size)[:40]} is outside [1, {MAX_IMAGE_SIZE}]")
    if stem is not None and type(stem) is not bool:
        raise UserError(f"{path}: small_stem {str(stem)[:40]} is not true or false")
    bare = name.removeprefix("timm:")
    if bare == "convnet" or bare.startswith("convnet-"):
        width = bare.partition("-")[2] or "32"
        if not width.isdigit() or not 1 <= int(width) <= MAX_CONVNET_WIDTH:
            raise UserError(f"{path}: backbone {name!r}: the convnet width must be in [1, {MAX_CONVNET_WIDTH}]")
    return arch


MAX_BACKBONE_VALUES = 2_000_000_000  # a backstop (8 GB of float32); the real bound is the checkpoint's own weights


def planned_values(arch: dict[str, Any]) -> int | None:
    """How many values (parameters and buffers) ``create_backbone(**arch)`` would hold, counted on the meta
    device: nothing is allocated. None when the architecture cannot be built there."""
    from rela_fast.models.backbones import create_backbone

    try:
        with torch.device("meta"):
            model, _, _ = create_backbone(**arch)
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - a model whose constructor computes with tensors (.item() on meta)
        return None
    return sum(t.numel() for t in model.state_dict().values())


def check_backbone_size(arch: dict[str, Any], weights: Any, path: Path | str) -> None:
    """Refuse, before building it, a backbone config whose model would be much larger than the checkpoint's
    own weights: a small file whose config names a huge model (``vit_huge_patch14_224``: 631 M values,
    2.5 GB) is refused without allocating it.

    Bound: at most twice the stored weights' values plus a million (so a build never costs much more memory
    than the loaded checkpoint already holds), and :data:`MAX_BACKBONE_VALUES`. Within it, a mismatch is
    named weight by weight by :func:`load_weights`. An architecture that cannot be counted on the meta device
    is only checked by :func:`load_weights`, after it is built."""
    if not isinstance(weights, dict):
        raise UserError(f"{path}: backbone weights are a {type(weights).__name__}, not a state dict; it was not "
                        "written by rela-fast train")
    stored = sum(t.numel() for t in weights.values() if isinstance(t, torch.Tensor))
    planned = planned_values(arch)
    if planned is not None and planned > min(2 * stored + 1_000_000, MAX_BACKBONE_VALUES):
        raise UserError(f"{path}: the backbone config names {arch.get('arch')!r} with {planned:,} values, the "
                        f"checkpoint holds {stored:,}; it was written for another model or edited, so nothing is "
                        "built from it")


def load_weights(module: torch.nn.Module, weights: Any, what: str, path: Path | str) -> None:
    """``module.load_state_dict(weights)`` after checking names and shapes: a mismatch is one line."""
    if not isinstance(weights, dict):
        raise UserError(f"{path}: {what} weights are a {type(weights).__name__}, not a state dict")
    expected = module.state_dict()
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]
    if missing or extra:
        names = ", ".join((missing + extra)[:3])
        raise UserError(f"{path}: {what} weights do not fit the architecture ({len(missing)} missing, "
                        f"{len(extra)} unexpected, e.g. {names}); it was written for another model")
    for k, t in expected.items():
        got = weights[k]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(t.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise UserError(f"{path}: {what} weight {k} has shape {shape}, the architecture needs "
                            f"{tuple(t.shape)}; it was written for another model")
    module.load_state_dict(weights)


def load_backbone(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """``(backbone, config, state)`` from a run directory or a trainer checkpoint: the backbone rebuilt by
    :func:`~rela_fast.models.backbones.create_backbone` from the stored config, with its trained weights.

    The stored config is bounded (:func:`check_backbone_config`) before the model is built, and the
    weights' names and shapes are checked against it before they are loaded."""
    from rela_fast.models.backbones import create_backbone

    state = load_checkpoint(path, map_location="cpu")
    config = state.get("config", {})
    if not isinstance(config, dict):
        raise UserError(f"{path}: the checkpoint's config is a {type(config).__name__}, not a rela_fast config")
    identity = state.get("identity")  # format 3 keeps the model's rebuild recipe with the run's identity
    if isinstance(identity, dict):
        config = {**config, "backbone": identity.get("backbone"), "image_size": identity.get("image_size")}
    arch = config.get("backbone")
    if not arch:
        raise UserError(
            f"{path}: the run trained a custom backbone module, which cannot be rebuilt from the checkpoint; "
            "rebuild your module, load its weights (the 'backbone' entry) yourself and pass the module on "
            "(to rela_fast.eval.linear_probe, or as the prior of rela_fast.convert)")
    arch = check_backbone_config(arch, path)
    check_backbone_size(arch, state.get("backbone"), path)  # before anything is allocated
    backbone, _, _ = create_backbone(**arch)
    load_weights(backbone, state.get("backbone"), "backbone", path)
    return backbone.to(device), config, state
