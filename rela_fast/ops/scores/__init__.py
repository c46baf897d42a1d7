"""ScoreBook update (kernel family ``score_update``): scatter a batch of per-sample losses into the book.

Rule (the specification is :mod:`rela_fast.ops.scores.reference`): EMA of each sample's loss with
momentum ``a``; a sample's first loss sets its score; duplicate indices in a batch contribute their
largest loss once and count every occurrence; non-finite losses are skipped; an out-of-range index
rejects the batch. Backends: reference (torch index ops), C++ (sequential on the CPU), Triton (one
launch per batch on CUDA; out-of-range indices reported through a device counter, without a sync).
"""

from __future__ import annotations

from rela_fast.ops.backend import register

register(
    "score_update",
    reference="rela_fast.ops.scores.reference:update",
    triton="rela_fast.ops.scores.triton_kernels:update",
    cpp="rela_fast.ops.scores.cpp:update",
)
