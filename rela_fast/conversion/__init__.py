"""ReLA-D: source -> decoder -> fused prior encoder -> feature shards -> streaming PCA -> target store.

The pieces, in the order data flows through them (nothing flows back):

* :mod:`.settings`: :class:`ConvertSettings`, every knob validated once;
* :mod:`.inputs`: the source, the prior, S, d and the decoder, opened and checked once;
* :mod:`.compat`: reuse / refuse / recompute an existing store (:class:`StoreMismatch` values);
* :mod:`.shards`, :mod:`.workdir`: the shard plan in the marked ``<out>.work`` folder, the output lock;
* :mod:`.encode`: :class:`ShardEncoder`, decode + encode + finite check, one atomic file per shard;
* :mod:`.finalize`: :class:`Finalizer`, PCA, standardisation and the atomic commit of the store;
* :mod:`.report`: timing and the summary line; :mod:`.run`: :func:`convert`, which chains them.

**Resume.** A run killed at any moment (SIGKILL included) loses at most the shard in flight; the next
run with the same command keeps every shard whose digest still matches the source and recomputes the
rest. PCA statistics are accumulated per shard in float64 and merged in shard order, so the targets equal
an uninterrupted run's. **Changed sources** are recomputed or refused, never silently reused.
**Ownership**: only directories carrying rela_fast's marker (:mod:`rela_fast.ownership`) are replaced or
deleted.
"""

from rela_fast.conversion.compat import StoreMismatch, store_mismatches
from rela_fast.conversion.encode import KILL_AFTER_ROWS_ENV
from rela_fast.conversion.run import convert
from rela_fast.conversion.settings import ConvertSettings

__all__ = ["convert", "ConvertSettings", "StoreMismatch", "store_mismatches", "KILL_AFTER_ROWS_ENV"]
