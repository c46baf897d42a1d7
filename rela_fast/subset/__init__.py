"""Dynamic subsets: per-sample scores on the device, selection policies, the epoch sampler, prior geometry.

* :class:`ScoreBook`: EMA of each sample's loss (plus seen count and last epoch), updated per batch.
* :func:`select_subset`: k indices by policy (random, topk, bottomk, weighted, infobatch), optionally
  stratified by labels; exact and the same on every backend for a given (seed, epoch).
* :class:`EpochSubset`: the ``Sampler`` that draws each epoch's subset and shards it across ranks.
* :func:`prior_scores`: k-means in target space: distance to centroid and cluster ids.
"""

from __future__ import annotations

from rela_fast.subset.geometry import PriorScores, prior_scores
from rela_fast.subset.policies import POLICIES, largest_remainder, select_subset
from rela_fast.subset.sampler import EpochSubset
from rela_fast.subset.scorebook import ScoreBook

__all__ = ["POLICIES", "EpochSubset", "PriorScores", "ScoreBook", "largest_remainder", "prior_scores", "select_subset"]
