"""PriorConfig: everything the converter needs to know about a prior besides its module.

The observer transform (input size, interpolation), the normalisation the network was trained with, the
feature width and the identity of the weights (for the target store's fingerprint) travel together, so
a store can say exactly which prior made its targets.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from rela_fast.constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class PriorConfig:
    """Identity and input contract of a prior.

    ``mean``/``std`` are in the [0, 1] pixel scale (as timm writes them): the network expects
    ``(pixel / 255 - mean) / std``. ``weights_hash`` is the sha256 of the loaded tensors
    (:func:`hash_state_dict`), or ``"random-init:<seed>"`` for a deterministic random initialisation.
    """

    name: str
    arch: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    feature_dim: int
    num_params: int
    weights_hash: str
    weights_source: str
    licence: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); :meth:`from_dict` inverts it."""
        out = dataclasses.asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriorConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["mean"] = tuple(float(v) for v in values["mean"])
        values["std"] = tuple(float(v) for v in values["std"])
        return cls(**values)

    def replace(self, **changes: Any) -> PriorConfig:
        return dataclasses.replace(self, **changes)


def hash_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor (sorted by name; name, dtype, shape and raw bytes): the weights' identity."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            continue
        t = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}|{t.dtype}|{tuple(value.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
