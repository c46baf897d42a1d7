"""Priors for ReLA-D: construction (:func:`create_prior`), named pretrained priors (:func:`list_priors`),
fusion passes (:mod:`rela_fast.encoder.fusion`) and the inference encoder (:func:`build_encoder`)."""

from __future__ import annotations

from rela_fast.encoder.config import PriorConfig, hash_state_dict
from rela_fast.encoder.engine import InferenceEncoder, build_encoder
from rela_fast.encoder.factory import create_prior
from rela_fast.encoder.registry import REGISTRY, list_priors

__all__ = [
    "REGISTRY",
    "InferenceEncoder",
    "PriorConfig",
    "build_encoder",
    "create_prior",
    "hash_state_dict",
    "list_priors",
]
