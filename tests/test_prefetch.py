"""Views made ahead in a producer thread (rela_fast.train.prefetch): the same batches in the same order, a
producer error raised where it happened, a thread that stops when the consumer closes or drops it, and a
trainer run (with a hand-over) whose losses, metrics and subsets do not depend on the overlap."""

from __future__ import annotations

import gc
import hashlib
import threading
import time

import numpy as np
import pytest
import torch

from rela_fast.data import open_source
from rela_fast.errors import UserError
from rela_fast.train import Callback, ReLATrainer, TensorViews, two_views
from rela_fast.train.prefetch import Prefetcher, PrefetchViews, available_cores, prefetch, thread_plan
from rela_fast.train.views import LoaderViews, create_views

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = dict(hidden_dim=32, proj_dim=16)
CPU = torch.device("cpu")


def _producers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "rela-fast-prefetch" and t.is_alive()]


def _wait_gone(timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while _producers() and time.monotonic() < end:
        time.sleep(0.01)
    return not _producers()


@pytest.fixture(autouse=True)
def no_producer_left():
    """Every test starts and ends with no producer thread running."""
    assert _wait_gone()
    yield
    gc.collect()
    assert _wait_gone(), "a producer thread outlived its test"


def _images(n: int = 96, side: int = 28, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    g = np.random.default_rng(seed)
    return (torch.from_numpy(g.integers(0, 256, (n, 3, side, side), dtype=np.uint8)),
            g.integers(0, 10, n).tolist())


# -- the iterator -----------------------------------------------------------------------------------------

def test_prefetcher_yields_the_source_in_order_and_ends():
    items = [torch.randn(3) for _ in range(17)]
    for depth in (1, 2, 4):
        got = list(Prefetcher(iter(items), depth=depth))
        assert len(got) == 17 and all(a is b for a, b in zip(got, items))
    assert list(prefetch([])) == []
    with pytest.raises(ValueError, match="depth"):
        Prefetcher([1], depth=0)


def test_producer_error_is_raised_in_the_consumer_after_the_good_items():
    def source():
        yield 1
        yield 2
        raise KeyError("bad sample 7")

    it = Prefetcher(source())
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(KeyError, match="bad sample 7"):
        next(it)
    with pytest.raises(StopIteration):  # closed after the error
        next(it)
    assert _wait_gone()


def _endless(closed: threading.Event, made: list):
    try:
        k = 0
        while True:
            made.append(k)
            yield k
            k += 1
    finally:
        closed.set()


@pytest.mark.parametrize("how", ["close", "drop", "with", "break"])
def test_stopping_early_stops_the_thread_and_closes_the_source(how):
    closed, made = threading.Event(), []
    if how == "break":  # the trainer's way: leave the loop, drop the iterator with the frame
        def consume():
            for k in Prefetcher(_endless(closed, made), depth=2):
                if k == 3:
                    return k

        assert consume() == 3
    elif how == "with":
        with Prefetcher(_endless(closed, made), depth=2) as it:
            assert next(it) == 0
    else:
        it = Prefetcher(_endless(closed, made), depth=2)
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        time.sleep(0.2)  # the producer fills the queue and blocks in put()
        assert len(made) <= 3 + 2 + 1  # bounded: the consumed, the queue, the one in hand
        if how == "close":
            it.close()
        del it
    t0 = time.perf_counter()
    assert _wait_gone(2.0) and time.perf_counter() - t0 < 2.0
    assert closed.wait(2.0), "the source generator was not closed"


def test_producer_threads_are_its_own_and_the_default_is_given_back():
    torch.set_num_threads(2)
    seen = {}

    def source():
        seen["producer"] = torch.get_num_threads()
        yield 0

    assert list(Prefetcher(source(), threads=1)) == [0]
    assert seen["producer"] == 1 and torch.get_num_threads() == 2
    later = {}
    t = threading.Thread(target=lambda: later.update(n=torch.get_num_threads()))
    t.start()
    t.join()
    assert later["n"] == 2  # a thread started afterwards gets the consumer's count, not the producer's


def test_thread_plan():
    assert [thread_plan(n) for n in (1, 2, 3, 4, 8, 16)] == [(1, 1), (2, 1), (3, 1), (3, 1), (6, 2), (12, 4)]
    assert thread_plan() == thread_plan(available_cores())
    assert 1 <= available_cores() <= (__import__("os").cpu_count() or 1)


# -- the view pipeline ------------------------------------------------------------------------------------

def _digests(batches) -> list[str]:
    out = []
    for v1, v2, idx, labels in batches:
        h = hashlib.sha1()
        for t in (v1, v2, idx, labels):
            h.update(t.contiguous().numpy().tobytes())
        out.append(h.hexdigest())
    return out


@pytest.mark.parametrize("recipe,phase,side", [("rela", 1, 28), ("byol", 2, 28), ("simclr", 2, 40)])
def test_prefetched_views_equal_the_inline_ones(recipe, phase, side):
    images, labels = _images(side=side, seed=side + phase)
    inline = TensorViews(images, labels, CPU, seed=5)
    ahead = PrefetchViews(TensorViews(images, labels, CPU, seed=5), depth=3, threads=(1, 1))
    order = torch.from_numpy(np.random.default_rng(phase).permutation(len(images)))
    for start in (0, 16):  # a resume or a hand-over asks again from a later position
        args = dict(epoch=2, phase=phase, batch_size=16)
        a = _digests(inline.batches(two_views(recipe, side), order[start:], **args))
        b = _digests(ahead.batches(two_views(recipe, side), order[start:], **args))
        assert a == b and len(a) == (len(images) - start) // 16
    assert ahead.name == "tensor"


def test_create_views_prefetch_option():
    images, labels = _images(n=32)
    src = open_source(images[:, 0].numpy(), labels=labels)
    assert isinstance(create_views("auto", src, None, labels, device=CPU), PrefetchViews)  # CPU default
    assert isinstance(create_views("tensor", src, None, labels, device=CPU, prefetch=0), TensorViews)
    deep = create_views("tensor", src, None, labels, device=CPU, prefetch=4)
    assert isinstance(deep, PrefetchViews) and deep.depth == 4 and isinstance(deep.inner, TensorViews)
    assert isinstance(create_views("torch", src, None, labels, device=CPU, prefetch=3), LoaderViews)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(UserError, match="prefetch"):
            create_views("auto", src, None, labels, device=CPU, prefetch=bad)


# -- the trainer ------------------------------------------------------------------------------------------

class Recorder:
    """A ViewPipeline that passes another one's batches through and records a digest of each it hands out."""

    def __init__(self, inner):
        self.inner, self.name, self.seen = inner, inner.name, []

    def batches(self, views, indices, *, epoch, phase, batch_size):
        for batch in self.inner.batches(views, indices, epoch=epoch, phase=phase, batch_size=batch_size):
            self.seen.append((epoch, phase, _digests([batch])[0]))
            yield batch


def _train(monkeypatch, data, targets, depth, **kw):
    import rela_fast.train.views as views_module

    made = []

    def create(*a, **k):  # the module's own create_views (imported above), never an earlier patch
        made.append(Recorder(create_views(*a, **k, prefetch=depth)))
        return made[-1]

    monkeypatch.setattr(views_module, "create_views", create)
    trainer = ReLATrainer("convnet-4", "byol", targets, budget=0.5, epochs=3, batch_size=20, threshold=0.3,
                          method_kwargs=SMALL, seed=3, **kw)
    result = trainer.fit(data)
    timing = {"step_time", "images_per_s", "wall_time"}
    rows = [{k: v for k, v in r.items() if k not in timing} for r in result.history]
    return rows, made[0], result


@pytest.fixture(scope="module")
def slice28(fashion_mnist_dir):
    """240 real Fashion-MNIST images (28 px) with labels, and random 16-d ReLA targets."""
    src = open_source(fashion_mnist_dir)
    take = np.arange(0, 60000, 250)[:240]
    images = np.stack([src.read(int(i)) for i in take])
    targets = torch.from_numpy(np.random.default_rng(11).standard_normal((240, 16)).astype(np.float32))
    return open_source(images, labels=[src.labels[i] for i in take]), targets


def test_trainer_results_do_not_depend_on_the_overlap(monkeypatch, slice28):
    data, targets = slice28
    off, spy_off, _ = _train(monkeypatch, data, targets, 0)
    on, spy_on, result = _train(monkeypatch, data, targets, 2)
    assert isinstance(spy_off.inner, TensorViews) and isinstance(spy_on.inner, PrefetchViews)
    assert result.switch_step == 1  # threshold 0.3: the hand-over after the first step, mid-epoch
    steps = [r for r in on if r["event"] == "step"]
    assert [r["phase"] for r in steps] == [1] + [2] * 17
    assert on == off  # losses, rho, lr, online accuracy, subset sizes and digests, row for row
    assert len({r["subset_digest"] for r in on if r["event"] == "epoch"}) == 3
    assert spy_on.seen == spy_off.seen and {p for _, p, _ in spy_on.seen} == {1, 2}
    assert _wait_gone()  # the phase switch, each epoch's end and the last step closed their producers


def test_trainer_with_max_steps_and_an_exception_leaves_no_thread(monkeypatch, slice28):
    data, targets = slice28
    rows, _, result = _train(monkeypatch, data, targets, 2, max_steps=4)
    assert result.steps == 4 and _wait_gone()

    class Boom(Callback):
        def on_step_end(self, trainer, state):
            if state.step == 2:
                raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        _train(monkeypatch, data, targets, 2, callbacks=[Boom()])
    gc.collect()  # the traceback that held the trainer's frame is gone: its producer stops
    assert _wait_gone()
