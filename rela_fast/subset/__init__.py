"""Dynamic subsets: per-sample scores on the device, selection policies, the epoch sampler, prior geometry.

* :class:`ScoreBook`: each sample's latest loss (``momentum=0``, the InfoBatch policies' score) or an EMA of
  it (the others'; :func:`score_momentum` gives a policy's), plus seen count and last epoch, updated per batch.
* :func:`select_subset`: this epoch's indices by policy (:data:`POLICIES`: random, topk, bottomk, weighted
  with a budget k; infobatch as published, without one; infobatch_budget), optionally stratified by labels;
  the same on every backend for a given (seed, epoch).
* :class:`EpochSubset`: the ``Sampler`` that draws each epoch's subset and shards it across ranks;
  :func:`build_subset`: the book and sampler of a training run for a policy (one recipe).
* :func:`prior_scores`: k-means in target space: distance to centroid and cluster ids.
"""

from __future__ import annotations

from rela_fast.subset.geometry import PriorScores, prior_scores
from rela_fast.subset.policies import POLICIES, largest_remainder, score_momentum, select_subset
from rela_fast.subset.sampler import EpochSubset, build_subset
from rela_fast.subset.scorebook import ScoreBook

__all__ = ["POLICIES", "EpochSubset", "PriorScores", "ScoreBook", "build_subset", "largest_remainder", "prior_scores",
           "score_momentum", "select_subset"]
