"""The scale benchmark (benchmarks/bench_scale.py, issue 25): its fit against known power laws, its overhead
arithmetic, and a smoke run at 1,000 images / scores whose measurements are checked against what the
conversion and the checkpoint must at least have written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "benchmarks" / "bench_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0, 1.37, 2.0])
def test_exponent_recovers_a_power_law(bench, power):
    rng = np.random.default_rng(int(power * 100))
    ns = [int(n) for n in rng.integers(1_000, 10**7, size=4)]
    c = float(rng.uniform(1e-6, 1.0))
    fit = bench.exponent(ns, [c * n**power for n in ns])
    assert fit["fit"] == pytest.approx(power, abs=1e-3)
    assert fit["top"] == pytest.approx(power, abs=1e-3)
    assert fit["sizes"] == sorted(ns) and fit["max"] == pytest.approx(c * max(ns) ** power, rel=1e-9)


def test_exponent_needs_two_sizes(bench):
    assert bench.exponent([1000], [1.0]) is None
    assert bench.exponent([1000, 1000], [1.0, 2.0]) is None
    assert bench.exponent([1000, 2000], [0.0, 2.0]) is None  # a zero has no logarithm


def test_step_overhead_spreads_epoch_costs_over_the_epoch(bench):
    n, byol = 10**6, 0.8
    steps = bench.BUDGET * n / bench.STEP_BATCH
    train = {"part": "train", "n": n, "update_step_s": 1e-4, "save_s": 0.5, "ddp_merge_s": 0.25,
             "epoch_start_s": {"random": 1.0, "infobatch": 2.0}}
    small = dict(train, n=1000, update_step_s=1.0)  # only the largest N counts
    results = {"entries": [small, train, {"part": "step", "byol_step_s": byol}]}
    got = bench.step_overhead(results)
    expected = 1e-4 + (2.0 + 0.5 + 0.25) / steps
    assert got["n"] == n and got["overhead_per_step_s"] == pytest.approx(expected, abs=1e-6)
    assert got["share"] == pytest.approx(expected / byol, abs=1e-5) and got["ok"] is (expected / byol <= 0.05)


def test_smoke_run(bench, tmp_path):
    """1,000 IDX images converted and re-run in child processes; trainer bookkeeping at 1,000 and 4,000 scores."""
    out = tmp_path / "results"
    argv = ["--part", "convert", "--part", "train", "--part", "fit", "--kind", "idx", "--n", "1000",
            "--scores", "1000,4000", "--no-ddp", "--out", str(out), "--data", str(tmp_path / "data")]
    assert bench.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    conv = next(e for e in results["entries"] if e["part"] == "convert")
    assert conv["count"] == 1000 and conv["kind"] == "idx"
    assert conv["store_bytes"] >= 1000 * bench.DIM * 4  # at least the float32 targets
    assert conv["written_bytes"] >= conv["store_bytes"]  # the store was written by the child
    assert conv["inputs_bytes"] == 16 + 1000 * 28 * 28 + 8 + 1000  # the IDX images and labels files
    assert 0 < conv["peak_anon_mb"] <= conv["peak_rss_mb"] + 1
    timing = conv["timing"]
    stages = sum(timing[k] for k in ("listing_s", "prior_s", "fingerprint_s", "encode_call_s", "decode_wait_s",
                                     "shard_write_s", "pca_fit_s", "targets_pass_s"))
    assert 0 < stages <= timing["total_s"] <= conv["convert_s"] <= conv["wall_s"]
    assert conv["reuse"]["timing"]["encode_call_s"] == 0  # the re-run encoded nothing
    assert conv["reuse"]["timing"]["fingerprint_s"] > 0
    train = sorted((e for e in results["entries"] if e["part"] == "train"), key=lambda e: e["n"])
    assert [e["n"] for e in train] == [1000, 4000]
    for e in train:  # the ScoreBook's four int32/float32 vectors at least
        assert e["checkpoint_bytes"] >= 16 * e["n"]
        assert set(e["epoch_start_s"]) == {"random", "topk", "bottomk", "weighted", "infobatch", "infobatch_budget"}
    fits = results["fits"]["exponents"]["train"]
    assert fits["checkpoint_bytes"]["fit"] == pytest.approx(1.0, abs=0.1)  # bytes grow linearly with N
    assert (out / "plot.png").stat().st_size > 0
    readme = (out / "README.md").read_text()
    assert "epoch_start.infobatch" in readme and "--scores 1000,4000" in readme


def test_entry_keys_in_blocks_keep_row_order():
    """What the benchmark found (2 KB and ~40 us a row from one future per row): keys made in blocks on
    the pool are still every row's own key, in row order."""
    import threading

    from rela_fast.data import Source

    class Rows(Source):
        kind, root, labels, classes = "rows", "<rows>", None, None

        def __init__(self, n: int):
            self.paths = [f"row#{i}" for i in range(n)]
            self.threads: set[int] = set()

        def entry_key(self, i: int) -> str:
            self.threads.add(threading.get_ident())
            return f"{self.paths[i]}|{i * 7919 % 1000003}"

    source = Rows(20_000)
    assert source.entry_keys() == [f"row#{i}|{i * 7919 % 1000003}" for i in range(20_000)]
    assert len(source.threads) >= 1 and threading.get_ident() not in source.threads  # run on the pool
    small = Rows(100)
    assert small.entry_keys() == [f"row#{i}|{i * 7919 % 1000003}" for i in range(100)]


def test_array_rows_are_hashed_once_however_many_threads_ask(monkeypatch):
    """An array source's row digests are computed once (every pool thread used to hash all rows again:
    125 s of a 149 s no-op re-run at 10^6 IDX rows), and the keys keep their stored format."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    from rela_fast.data import open_source

    images = np.random.default_rng(0).integers(0, 256, (3000, 6, 6), dtype=np.uint8)
    expected = [f"array#{i}|{hashlib.blake2b(images[i].tobytes(), digest_size=12).hexdigest()}" for i in range(3000)]
    calls = []
    real = hashlib.blake2b
    monkeypatch.setattr(hashlib, "blake2b", lambda *a, **k: calls.append(1) or real(*a, **k))
    source = open_source(images)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: source.entry_keys(), range(8)))
    assert all(keys == expected for keys in got)
    assert [source.entry_key(i) for i in (0, 1234, 2999)] == [expected[0], expected[1234], expected[2999]]
    assert len(calls) == 3000


def test_epoch_shuffle_is_the_reference_hash_order():
    """The epoch's shuffle now hashes on the kernel backend (the reference's int64 passes took 2.0 s of a
    2.8 s epoch start at 10^7 scores); its order must stay argsort of the reference hash of the positions."""
    import torch

    from rela_fast.ops.select import stream_keys
    from rela_fast.ops.select.reference import hash32
    from rela_fast.subset import build_subset, select_subset
    from rela_fast.subset.sampler import _SHUFFLE_SALT

    n, seed = 50_000, 7
    _, sampler = build_subset(n, "random", budget=0.3, epochs=10, seed=seed)
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        subset = select_subset(n, sampler.k, "random", seed=seed, epoch=epoch)
        order = torch.argsort(hash32(torch.arange(subset.numel()), stream_keys(seed, epoch, _SHUFFLE_SALT)))
        assert torch.equal(sampler.indices(), subset[order])


def test_goal_counts_epoch_starts_as_times_and_rates_not(bench):
    fits = {"train": {"epoch_start.random_s": {"fit": 1.3, "max": 0.7}},
            "convert.idx": {"stage.images_per_s": {"fit": 1.5, "max": 5000.0}, "wall_s": {"fit": 1.0, "max": 9.0}}}
    got = bench.goals({"entries": []}, fits)
    assert got["time_exponents_over_goal"] == ["train:epoch_start.random_s 1.3"] and not got["time_exponents_ok"]
