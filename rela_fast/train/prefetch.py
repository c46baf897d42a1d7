"""Make the next batches of views while the model trains on this one: a producer thread, a bounded queue.

The in-memory tensor pipeline (:class:`~rela_fast.train.views.TensorViews`) augments whole batches with torch
ops. Run inline, that work sits between two training steps and the cores wait for it; on a small CPU machine
it is 5-15 % of a step. :class:`PrefetchViews` wraps any :class:`~rela_fast.train.views.ViewPipeline` and runs
its ``batches`` generator in a producer thread, ``depth`` batches ahead of the training loop, so the
augmentation of batch k+1 overlaps the forward and backward of batch k (torch releases the GIL inside its ops).

What stays the same, whatever the overlap:

* the views: the wrapped pipeline keys its randomness by (seed, epoch, phase, view, first index) and is
  asked for exactly the same batches in the same order; the consumer gets them in that order;
* the subsets and everything downstream: the producer touches no global RNG and no model state.

The trainer drops its generator when the phase changes at the hand-over, at ``max_steps`` or on an exception;
dropping (or closing) a :class:`Prefetcher` stops its thread within one batch and joins it, so nothing is left
running. A producer-side exception is raised in the consumer, at the batch where it happened.

Threads: :func:`thread_plan` splits the cores this process may run on (``os.sched_getaffinity``) between the
training loop (torch's intra-op threads of the calling thread) and the producer. On fewer than 4 cores the
loop keeps every core and the producer runs one more thread beside it (it is busy for a small part of each
step); from 4 cores on the producer gets its own quarter.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["DEFAULT_DEPTH", "PrefetchViews", "Prefetcher", "available_cores", "prefetch", "thread_plan"]

DEFAULT_DEPTH = 2  # batches made ahead: one ready, one in the making, beside the one training
_POLL_S = 0.05  # how often a blocked producer looks for a stop request
_JOIN_S = 60.0  # how long close() waits for a producer busy with one batch


def available_cores() -> int:
    """How many CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def thread_plan(cores: int | None = None) -> tuple[int, int]:
    """``(consumer, producer)`` torch intra-op threads for ``cores`` CPUs (default: :func:`available_cores`).

    Under 4 cores the training loop keeps them all and the producer adds one thread (taking a core from the
    loop would cost it up to half its speed for work that fills a tenth of a step); from 4 on, the producer
    gets a quarter of them and the loop the rest.
    """
    n = available_cores() if cores is None else max(1, int(cores))
    if n < 4:
        return n, 1
    producer = n // 4
    return n - producer, producer


class Prefetcher:
    """An iterator over ``source`` whose items are made by a producer thread, up to ``depth`` ahead.

    ``source`` is iterated in the producer thread only. Close it (or drop it) to stop the producer; the
    source is closed in the producer thread. ``threads`` sets the producer thread's torch intra-op threads.
    """

    def __init__(self, source: Iterable[Any], depth: int = DEFAULT_DEPTH, threads: int | None = 1) -> None:
        if int(depth) < 1:
            raise ValueError(f"Prefetcher: depth must be >= 1, got {depth}")
        self._queue: queue.Queue = queue.Queue(maxsize=int(depth))
        self._stop = threading.Event()
        self._done = False
        restore = torch.get_num_threads()  # this (the consumer's) count: torch's default for later threads
        self._thread = threading.Thread(target=_produce, args=(iter(source), self._queue, self._stop, threads, restore),
                                        name="rela-fast-prefetch", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        while True:
            try:
                kind, value = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self.close()
                    raise RuntimeError("Prefetcher: the producer thread ended without a result") from None
        if kind == "item":
            return value
        self.close()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the producer (it finishes the batch in hand) and wait for it; idempotent."""
        self._done = True
        self._stop.set()
        while True:  # free the queue's slots so a producer blocked in put() sees the stop at once
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(_JOIN_S)
            if self._thread.is_alive():
                warnings.warn(f"Prefetcher: the producer thread did not stop within {_JOIN_S:.0f} s", stacklevel=2)

    @property
    def alive(self) -> bool:
        """Whether the producer thread is still running."""
        return self._thread.is_alive()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: the daemon thread goes with it
            self.close()


def _put(q: queue.Queue, stop: threading.Event, message: tuple[str, Any]) -> bool:
    """Put unless asked to stop (polled while the queue is full); True when it was put."""
    while not stop.is_set():
        try:
            q.put(message, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _produce(items: Iterator[Any], q: queue.Queue, stop: threading.Event, threads: int | None,
             restore: int) -> None:
    """The producer thread: move items into the queue until the end, an error or a stop request.

    It holds no reference to its :class:`Prefetcher`, so dropping the consumer's handle closes it.
    ``torch.set_num_threads`` sets the calling thread's count and the default of threads started later, so
    the producer sets its own and puts ``restore`` (the consumer's) back as that default when it ends.
    """
    threads = None if threads is None or int(threads) == restore else max(1, int(threads))
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        for item in items:
            if stop.is_set() or not _put(q, stop, ("item", item)):
                return
        _put(q, stop, ("end", None))
    except BaseException as e:  # handed to the consumer, raised there
        _put(q, stop, ("error", e))
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
        if threads is not None:
            torch.set_num_threads(restore)


def prefetch(source: Iterable[Any], depth: int = DEFAULT_DEPTH, threads: int | None = 1) -> Prefetcher:
    """``source``'s items made ``depth`` ahead in a producer thread (any loop of your own: views, batches)."""
    return Prefetcher(source, depth, threads)


class PrefetchViews:
    """A :class:`~rela_fast.train.views.ViewPipeline` whose batches are made ahead by a producer thread.

    ``inner`` is the pipeline that makes them (its ``name`` is kept: the run summary names the backend).
    ``threads``: ``(consumer, producer)`` torch intra-op threads, or None for :func:`thread_plan` of the
    cores available. The consumer's count is lowered to it when higher (never raised above the user's).
    """

    def __init__(self, inner: Any, depth: int = DEFAULT_DEPTH, threads: tuple[int, int] | None = None) -> None:
        if int(depth) < 1:
            raise ValueError(f"PrefetchViews: depth must be >= 1, got {depth}")
        self.inner, self.depth, self.threads = inner, int(depth), threads
        self.name = getattr(inner, "name", type(inner).__name__)

    def batches(self, views, indices, *, epoch: int, phase: int, batch_size: int) -> Prefetcher:
        """The inner pipeline's batches for these arguments, made ahead; close or drop it to stop early."""
        consumer, producer = self.threads if self.threads is not None else thread_plan()
        if torch.get_num_threads() > consumer:
            torch.set_num_threads(consumer)
        source = self.inner.batches(views, indices, epoch=epoch, phase=phase, batch_size=batch_size)
        return Prefetcher(source, self.depth, producer)
