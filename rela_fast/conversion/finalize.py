"""Finalizer: per-shard moments -> PCA (docs/ALGORITHM.md#pca) -> a pass gathering the projections'
per-dimension moments -> a pass standardising them (population variance) into ``targets.npy`` of
a new store, committed atomically (:class:`~rela_fast.targets.StoreWriter`). Shards are read one at a
time (with one read ahead) and targets are written sequentially, so memory does not grow with N."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from rela_fast.conversion.inputs import ConversionInputs
from rela_fast.conversion.report import Timing, versions
from rela_fast.conversion.settings import ConvertSettings
from rela_fast.conversion.shards import ShardPlan, load_ahead
from rela_fast.errors import UserError
from rela_fast.pca import Moments, PCAResult, StreamingPCA
from rela_fast.targets import SCHEMA_VERSION, StoreWriter, TargetStore


def fit_pca(moments: StreamingPCA, n: int, inputs: ConversionInputs) -> PCAResult:
    """The PCA of all decoded rows, after checking that d components exist; its result must be finite."""
    dim = inputs.dim
    if n == 0:
        raise UserError(
            f"{inputs.source.root}: none of the {inputs.n_src} files could be decoded; see why with --on-error fail"
        )
    if dim > n - 1:
        raise UserError(
            f"--dim {dim}: only {n} images could be decoded, so PCA has at most {n - 1} components; "
            f"use --dim {max(n - 1, 1)} or less"
        )
    result = moments.finalize(dim)
    if not (torch.isfinite(result.components).all() and torch.isfinite(result.eigenvalues).all()):
        raise UserError("the PCA of the prior's features is not finite; check the prior and its --weights")
    return result


def projection_moments(plan: ShardPlan, result: PCAResult, device: torch.device) -> Moments:
    """Pass 1: per-dimension moments of the projections (per shard, merged in order)."""
    total = Moments(scatter=False)
    for _, (feats, _) in load_ahead(plan.shards):
        if len(feats):
            total.merge(Moments(scatter=False).update(result.transform(torch.from_numpy(feats).to(device))))
    return total


class Finalizer:
    """Turns the finished shards and their merged moments into the target store (rank 0 only)."""

    def __init__(self, inputs: ConversionInputs, settings: ConvertSettings, plan: ShardPlan, timing: Timing,
                 world: int, reused: int) -> None:
        self.inputs, self.settings, self.plan, self.timing = inputs, settings, plan, timing
        self.world, self.reused = world, reused

    def run(self, moments: StreamingPCA) -> TargetStore:
        self.timing.finalize = time.perf_counter()
        infos = [s.info() for s in self.plan.shards]
        n = sum(info["count"] for info in infos)
        with self.timing.stage("pca_fit_s"):
            result = fit_pca(moments, n, self.inputs)
        with self.timing.stage("projection_pass_s"):
            t_moments = projection_moments(self.plan, result, self.inputs.device)
        std = t_moments.population_std()
        degenerate = int((std <= 0).sum())
        std = torch.where(std > 0, std, torch.ones_like(std))
        writer = StoreWriter(self.settings.out)
        try:
            with self.timing.stage("targets_pass_s"):
                rows, skipped = self._write_targets(writer, n, infos, result, t_moments.mean, std)
            with self.timing.stage("arrays_s"):
                self._write_arrays(writer, rows, result, t_moments.mean, std)
            writer.json("skipped", skipped)
            writer.json("meta", self.meta(n, len(skipped), result, t_moments.mean, std, degenerate))
            return writer.commit()
        except BaseException:
            writer.abort()
            raise

    def _write_targets(self, writer: StoreWriter, n: int, infos: list[dict], result: PCAResult,
                       mean: torch.Tensor, std: torch.Tensor) -> tuple[np.ndarray, list[list[str]]]:
        """Pass 2: standardise shard by shard, rows in source order."""
        rows_all = np.empty(n, dtype=np.int64)
        offset, skipped, paths = 0, [], self.inputs.paths
        with writer.target_rows(n, self.inputs.dim) as append:
            for (_, (feats, rows)), info in zip(load_ahead(self.plan.shards), infos):
                if len(rows):
                    y = (result.transform(torch.from_numpy(feats).to(self.inputs.device)) - mean) / std
                    append(y.float().cpu().numpy())
                    rows_all[offset : offset + len(rows)] = rows
                    offset += len(rows)
                skipped += [[paths[r], reason] for r, reason in info["failures"]]
        return rows_all, skipped

    def _write_arrays(self, writer: StoreWriter, rows: np.ndarray, result: PCAResult, mean: torch.Tensor,
                      std: torch.Tensor) -> None:
        source = self.inputs.source
        writer.array("rows", rows)
        if source.labels is not None:
            writer.array("labels", np.asarray(source.labels, dtype=np.int64)[rows])
        for name, value in (("pca_mean", result.mean), ("pca_components", result.components),
                            ("eigenvalues", result.eigenvalues), ("target_mean", mean), ("target_std", std)):
            writer.array(name, value.cpu().numpy())
        classes = getattr(source, "classes", None)
        writer.json("source", {"paths": self.inputs.paths, "keys": self.inputs.keys,
                               "classes": list(classes) if classes else None})

    def meta(self, n: int, skipped: int, result: PCAResult, mean: torch.Tensor, std: torch.Tensor,
             degenerate: int) -> dict[str, Any]:
        inputs, s = self.inputs, self.settings
        eig = result.eigenvalues.cpu().numpy()
        ratio = float(eig.sum() / result.total_variance) if result.total_variance else 1.0
        return {
            "schema_version": SCHEMA_VERSION, "count": n, "dim": inputs.dim, "feature_dim": inputs.feature_dim,
            "size": inputs.size, "prior": inputs.prior_id, "source": inputs.fingerprint, "source_count": inputs.n_src,
            "skipped": skipped, "decoder": inputs.decoder.name, "eigenvalues": eig.tolist(),
            "explained_variance_ratio": ratio,
            "statistics": {
                "feature_mean_norm": float(result.mean.norm()), "feature_total_variance": result.total_variance,
                "target_mean": mean.cpu().tolist(), "target_std": std.cpu().tolist(), "degenerate_dims": degenerate,
            },
            "settings": {
                "batch_size": s.batch_size, "shard_size": s.shard_size, "on_error": s.on_error,
                "precision": s.precision, "device": str(inputs.device), "world_size": self.world,
                "reused_shards": self.reused, "features_dir": str(s.work) if s.keep_features else None,
                "verify_content": s.verify_content,
            },
            "timing": self.timing.as_meta(time.perf_counter()),
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
