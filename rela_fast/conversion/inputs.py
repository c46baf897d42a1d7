"""ConversionInputs: the source, the prior and the decoder of one conversion, opened and checked once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rela_fast.conversion.report import Timing
from rela_fast.conversion.settings import ConvertSettings
from rela_fast.environment import resolve_device
from rela_fast.errors import UserError
from rela_fast.targets import entry_keys, source_fingerprint


@dataclass(frozen=True)
class ConversionInputs:
    """Everything the shards are made from: rows (paths + identity keys), prior, resolved S, d, device."""

    source: Any
    model: nn.Module
    cfg: Any  # PriorConfig
    device: torch.device
    size: int
    dim: int
    decoder: Any
    paths: list[str]
    keys: list[str]
    fingerprint: dict[str, Any]

    @property
    def n_src(self) -> int:
        return len(self.paths)

    @property
    def feature_dim(self) -> int:
        return int(self.cfg.feature_dim)

    @property
    def prior_id(self) -> dict[str, Any]:
        ident = self.cfg.to_dict() if hasattr(self.cfg, "to_dict") else dict(vars(self.cfg))
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in ident.items()}

    def name(self, row: int) -> str:
        """The file (or array row) behind source row ``row``, for messages."""
        src = self.source
        return src.full_path(row) if hasattr(src, "full_path") else self.paths[row]


def decode_prefetch(device: torch.device) -> int:
    """Batches decoded ahead. On the CPU decode and encode share the cores, so one batch ahead keeps both
    busy, and each batch in flight holds its full-size decoded images (~150 MB for 128 ImageNet JPEGs);
    on CUDA two, so the GPU never waits."""
    return 1 if device.type == "cpu" else 2


def open_inputs(settings: ConvertSettings, src: Any, prior: Any, weights: Any, labels: Any, world: int,
                timing: Timing | None = None) -> ConversionInputs:
    """Open the source, build the prior, resolve S and d (checked against P and N), make the decoder and
    read every row's identity key (size + mtime, or the content hash with ``verify_content``). ``timing``
    receives the listing, prior and fingerprint stages."""
    from rela_fast.data import make_decoder, open_source
    from rela_fast.encoder import create_prior

    timing = timing if timing is not None else Timing()
    is_source = hasattr(src, "fingerprint") and hasattr(src, "read") and hasattr(src, "paths")
    with timing.stage("listing_s"):
        source = src if is_source else open_source(src, labels=labels)
    n_src = len(source)
    if n_src == 0:
        raise UserError(f"{src}: no images found; point SRC at a folder, list, tar or IDX file with images")
    _check_not_source(settings.out, source)
    device = resolve_device(settings.device, what="--device")
    with timing.stage("prior_s"):
        model, cfg = create_prior(prior, weights=weights)
    size = settings.size if settings.size is not None else int(cfg.input_size)
    dim = int(cfg.feature_dim) if settings.dim is None else settings.dim
    if not 1 <= dim <= cfg.feature_dim:
        raise UserError(
            f"--dim {dim}: must be between 1 and the feature width P={cfg.feature_dim} of prior "
            f"{cfg.name!r}; use --dim {cfg.feature_dim} or less"
        )
    if dim > n_src - 1:
        raise UserError(
            f"--dim {dim}: PCA of {n_src} images has at most {n_src - 1} components; "
            f"use --dim {max(n_src - 1, 1)} or less, or convert more images"
        )
    with timing.stage("prior_s"):
        decoder = make_decoder(settings.decoder, size=size, device=device, num_threads=settings.num_threads,
                               prefetch=decode_prefetch(device))
    with timing.stage("fingerprint_s"):
        keys = entry_keys(source, settings.key_mode)
        fingerprint = source_fingerprint(source, keys, settings.key_mode)
    return ConversionInputs(source, model, cfg, device, size, dim, decoder, list(source.paths), keys, fingerprint)


def _check_not_source(out: Path, source: Any) -> None:
    """The store (and its ``.work`` sibling) may not be the source folder or a folder above it."""
    root = getattr(source, "root", None)
    if not isinstance(root, str) or root.startswith("<"):
        return
    root_path, full = Path(root).resolve(), out.resolve()
    for target in (full, full.with_name(full.name + ".work")):
        if target == root_path or target in root_path.parents:
            raise UserError(
                f"--out {out}: is the source folder {root} or a folder above it; nothing was changed. "
                "Give the target store its own folder"
            )
