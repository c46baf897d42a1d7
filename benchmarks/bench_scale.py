"""How the cost grows with the work (issue 25): conversion, the store, subsets and training bookkeeping at scale.

One command measures everything and writes ``results.json``, ``plot.png`` and ``README.md`` under ``--out``
(default ``benchmarks/results/scale``)::

    nice -n 15 python benchmarks/bench_scale.py                     # all parts, default sizes
    nice -n 15 python benchmarks/bench_scale.py --part convert --kind idx --n 1000000
    nice -n 15 python benchmarks/bench_scale.py --part train --scores 10000000
    python benchmarks/bench_scale.py --part fit                     # exponents, plot, README from results.json

Every invocation merges its measurements into ``results.json`` (an entry with the same part, kind and size
is replaced), so sizes can be run one at a time, and refits.

**convert**: the benchmark makes its own small inputs (cached under ``--data``): ``idx``, an MNIST-format IDX
file of 28 x 28 grey images (the array source); ``tar``, webdataset shards of 32 x 32 JPEGs with ``.cls``
labels (1,000 samples a shard); ``folder``, 100 class folders of 32 x 32 JPEGs. Each size is converted by
``rela_fast.convert`` in a fresh child process (one intra-op thread; the decoder keeps its default threads)
with a tiny, fixed prior (a random ``convnet-8``, S = 32, d = 32: encoding must not dominate), then a
second child opens the store and re-runs the same conversion (the no-op reuse path). Recorded: wall and CPU
time, peak RSS (the child's ``ru_maxrss`` from ``os.wait4``, and the peaks of its anonymous and file-backed
resident pages sampled from ``/proc``), bytes written (the child's ``wchar``, the store's size and the work
folder's peak size), every stage of ``meta.json``'s ``timing`` (rela_fast.conversion.report.STAGES), and
the store's open and reuse times.

**train**: the trainer's bookkeeping with a backbone that costs nothing, at N scores: each policy's epoch
start (``set_epoch`` + ``shard()`` + ``weights_for`` + the trainer's subset digest), the ScoreBook update of
one step (batch 256), checkpoint size, save and resume (``torch.save`` / ``torch.load`` of the sampler +
ScoreBook state, loaded into fresh objects) and, under 2-process gloo DDP, the ScoreBook merge
(``ScoreBook.sync``). **step**: a BYOL step of convnet-16 at batch 256, 28 px, on this CPU (the reference
for the per-step overhead bound). The train and step parts use one intra-op thread.

**fit**: log-log least-squares exponent of every quantity, the goals (every time exponent <= 1.1, peak
anonymous RSS flat within 15 % from the smallest to the largest size, per-step overhead at the largest N
<= 5 % of the BYOL step) and estimates for ImageNet-1k.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "scale"
KINDS = ("idx", "tar", "folder")
PRIOR_WIDTH, SIZE, DIM = 8, 32, 32  # convnet-8: 64 features; S = 32; d = 32
TAR_SHARD, CLASSES, JPEG_POOL = 1000, 100, 512
STEP_BATCH, BUDGET, EPOCHS = 256, 0.5, 100
TIME_EXPONENT_GOAL, RSS_FLAT_GOAL, STEP_SHARE_GOAL = 1.1, 0.15, 0.05


# -- inputs ---------------------------------------------------------------------------------------------
def _images(n: int, seed: int, side: int, channels: int) -> np.ndarray:
    """``n`` smooth-ish uint8 images (gradients + a tile + noise): cheap to make, not constant."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    a, b, c = (rng.random((n, 1, 1), dtype=np.float32) for _ in range(3))
    img = 255 * (a * xx + b * yy + c * (xx * yy)) / 2
    img = img + rng.integers(0, 24, size=(n, side, side), dtype=np.uint8)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], channels, axis=3) if channels > 1 else img


def make_idx(root: Path, n: int) -> Path:
    """``root/idx-<n>/train-{images-idx3,labels-idx1}-ubyte``: n x 28 x 28 images and labels (written once)."""
    folder = root / f"idx-{n}"
    images, labels = folder / "train-images-idx3-ubyte", folder / "train-labels-idx1-ubyte"
    if labels.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with open(images.with_suffix(".part"), "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + b"".join(int(v).to_bytes(4, "big") for v in (n, 28, 28)))
        for start in range(0, n, 100_000):
            f.write(_images(min(100_000, n - start), start, 28, 1).tobytes())
    os.replace(images.with_suffix(".part"), images)
    with open(labels.with_suffix(".part"), "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big"))
        f.write((np.arange(n) % 10).astype(np.uint8).tobytes())
    os.replace(labels.with_suffix(".part"), labels)
    return folder


def _jpeg_pool() -> list[bytes]:
    """A pool of distinct 32 x 32 RGB JPEGs (quality 90); the inputs cycle through it."""
    from PIL import Image

    pool = []
    for img in _images(JPEG_POOL, 7, 32, 3):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        pool.append(buf.getvalue())
    return pool


def make_tar(root: Path, n: int) -> Path:
    """``root/tar-<n>/shard-XXXXX.tar``: webdataset shards of ``TAR_SHARD`` samples (``.jpg`` + ``.cls``)."""
    folder = root / f"tar-{n}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pool = _jpeg_pool()
    for shard_start in range(0, n, TAR_SHARD):
        with tarfile.open(folder / f"shard-{shard_start // TAR_SHARD:05d}.tar", "w") as tar:
            for i in range(shard_start, min(shard_start + TAR_SHARD, n)):
                for ext, data in (("jpg", pool[i % JPEG_POOL]), ("cls", str(i % CLASSES).encode())):
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size, info.mtime = len(data), 1_700_000_000
                    tar.addfile(info, io.BytesIO(data))
    done.write_text("")
    return folder


def make_folder(root: Path, n: int) -> Path:
    """``root/folder-<n>/cXXX/<i>.jpg``: an image folder of ``CLASSES`` class sub-folders."""
    folder = root / f"folder-{n}"
    done = folder.with_name(folder.name + ".complete")
    if done.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    pool = _jpeg_pool()
    for c in range(CLASSES):
        (folder / f"c{c:03d}").mkdir(parents=True)
    for i in range(n):
        with open(folder / f"c{i % CLASSES:03d}" / f"{i:08d}.jpg", "wb") as f:
            f.write(pool[i % JPEG_POOL])
    done.write_text("")
    return folder


MAKERS = {"idx": make_idx, "tar": make_tar, "folder": make_folder}


def tree_bytes(path: Path) -> int:
    """Total size of the regular files under ``path`` (0 when it does not exist)."""
    total = 0
    stack = [path]
    while stack:
        p = stack.pop()
        try:
            for entry in os.scandir(p):
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            pass
    return total


# -- conversion in a child process ------------------------------------------------------------------------
def make_prior():
    """The fixed tiny prior: a convnet-8 (64 features) with weights from ``torch.manual_seed(0)``."""
    import torch

    from rela_fast.models.backbones import ConvNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return ConvNet(PRIOR_WIDTH).eval()


def _self_io() -> dict[str, int]:
    """This process's I/O counters (``/proc/self/io``: wchar = bytes passed to write calls)."""
    try:
        lines = Path("/proc/self/io").read_text().split("\n")
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split(": ") for line in lines if ": " in line)}


def _capture_timing() -> list:
    """Collect the :class:`~rela_fast.conversion.report.Timing` objects ``convert`` makes (the stages of a
    reused run never reach meta.json): the name ``convert`` looks up is swapped for a recording subclass."""
    import rela_fast.conversion.run as run_module

    made: list = []

    class Recording(run_module.Timing):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    run_module.Timing = Recording
    return made


# proposed fixes of files outside this benchmark, swapped in by --variant to measure them before they land;
# none pending (the first, "chunked-keys", is Source.entry_keys in rela_fast/data/sources.py since issue 25)
VARIANTS: dict[str, Any] = {}


def _apply_variant(variant: str | None) -> None:
    """Swap in a proposed fix of a file outside this benchmark's reach, to measure it before it lands."""
    if variant:
        from rela_fast.data.sources import Source

        Source.entry_keys = VARIANTS[variant]


def child_convert(src: str, out: str, mode: str, variant: str | None = None) -> dict[str, Any]:
    """Runs in the child: ``mode="convert"`` converts; ``"reuse"`` opens the store, then re-runs (a no-op)."""
    t0 = time.perf_counter()
    import torch

    import rela_fast
    from rela_fast.targets import TargetStore

    torch.set_num_threads(1)  # two intra-op threads on 2 shared, busy cores spin-wait: conv2d ran 6x slower
    _apply_variant(variant)
    prior = make_prior()
    record: dict[str, Any] = {"import_s": round(time.perf_counter() - t0, 4)}
    if mode == "reuse":
        t1 = time.perf_counter()
        before = TargetStore(out)
        record["open_s"] = round(time.perf_counter() - t1, 4)
        created = before.meta["created"], before.meta["timing"]["total_s"]
        del before
    timings = _capture_timing()
    t1 = time.perf_counter()
    store = rela_fast.convert(src, out, prior=prior, size=SIZE, dim=DIM, device="cpu", progress=False)
    record["convert_s"] = round(time.perf_counter() - t1, 4)
    record["count"] = len(store)
    record["timing"] = store.meta["timing"]
    record["decoder"] = store.meta["decoder"]
    if mode == "reuse":  # a reused store's meta.json holds the first run's timing: take this run's stages
        record["reused"] = (store.meta["created"], store.meta["timing"]["total_s"]) == created
        record["timing"] = {k: round(v, 4) for k, v in timings[0].split.items()}
    else:  # convert() returns after the commit and the store's first open, which meta.json cannot time
        record["commit_open_s"] = round(record["convert_s"] - store.meta["timing"]["total_s"], 4)
    record["io"] = _self_io()
    return record


class Watch(threading.Thread):
    """Samples a child's ``/proc/PID/status`` (RSS split) every 0.1 s and a folder's size every second."""

    def __init__(self, pid: int, folder: Path | None) -> None:
        super().__init__(daemon=True)
        self.pid, self.folder = pid, folder
        self.peak = {"VmHWM": 0, "RssAnon": 0, "RssFile": 0, "RssShmem": 0}
        self.folder_peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        last_scan = 0.0
        while not self.done.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in self.peak:
                        self.peak[key] = max(self.peak[key], int(value.split()[0]))
            except (OSError, ValueError, IndexError):
                pass
            if self.folder is not None and time.monotonic() - last_scan > 1.0:
                self.folder_peak = max(self.folder_peak, tree_bytes(self.folder))
                last_scan = time.monotonic()
            self.done.wait(0.1)


def run_child(args: list[str], watch_folder: Path | None = None) -> dict[str, Any]:
    """Run this script as a child with ``args``; its JSON record plus wall time and memory peaks."""
    fd, result = tempfile.mkstemp(suffix=".json", prefix="rela-scale-")
    os.close(fd)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-json", result, *args]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    watch = Watch(proc.pid, watch_folder)
    watch.start()
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    watch.done.set()
    watch.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"child {args} failed: {err[-3000:]}")
    record = json.loads(Path(result).read_text())
    os.unlink(result)
    kib = 1024
    record.update(
        wall_s=round(wall, 3), peak_rss_mb=round(usage.ru_maxrss / kib, 1),
        peak_anon_mb=round(watch.peak["RssAnon"] / kib, 1), peak_file_mb=round(watch.peak["RssFile"] / kib, 1),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 2), load_before=round(load, 2),
        load_after=round(os.getloadavg()[0], 2),
    )
    if watch_folder is not None:
        record["work_peak_bytes"] = watch.folder_peak
    return record


def measure_convert(kind: str, n: int, data: Path, scratch: Path, variant: str | None = None) -> dict[str, Any]:
    """Make the inputs, convert them in a child, then open + re-run in another child; one result entry."""
    t0 = time.perf_counter()
    src = MAKERS[kind](data, n)
    make_s = time.perf_counter() - t0
    out = scratch / f"store-{kind}-{n}"
    for path in (out, out.with_name(out.name + ".work")):
        shutil.rmtree(path, ignore_errors=True)
    extra = ["--variant", variant] if variant else []
    first = run_child([*extra, "--child", "convert", str(src), str(out)], out.with_name(out.name + ".work"))
    store_bytes = tree_bytes(out)
    again = run_child([*extra, "--child", "reuse", str(src), str(out)])
    if not again.get("reused"):
        raise RuntimeError(f"{kind} n={n}: the re-run recomputed the store instead of reusing it")
    shutil.rmtree(out, ignore_errors=True)
    return {
        "part": "convert", "kind": kind, "n": n, "variant": variant, "count": first["count"],
        "inputs_bytes": tree_bytes(src),
        "make_inputs_s": round(make_s, 2), "wall_s": first["wall_s"], "convert_s": first["convert_s"],
        "import_s": first["import_s"], "commit_open_s": first["commit_open_s"], "cpu_s": first["cpu_s"],
        "peak_rss_mb": first["peak_rss_mb"], "peak_anon_mb": first["peak_anon_mb"],
        "peak_file_mb": first["peak_file_mb"], "store_bytes": store_bytes,
        "work_peak_bytes": first["work_peak_bytes"], "written_bytes": first["io"].get("wchar"),
        "decoder": first["decoder"], "timing": first["timing"],
        "load": [first["load_before"], first["load_after"]],
        "open_s": again["open_s"],
        "reuse": {k: again[k] for k in ("wall_s", "cpu_s", "convert_s", "import_s", "peak_rss_mb", "peak_anon_mb",
                                        "timing")},
    }


# -- trainer bookkeeping at N scores ----------------------------------------------------------------------
def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _filled(n: int, policy: str):
    """The book and sampler of a run of ``policy`` over n samples, every sample scored once."""
    import torch

    from rela_fast.subset import build_subset

    book, sampler = build_subset(n, policy, budget=BUDGET, epochs=EPOCHS, seed=0)
    gen = torch.Generator().manual_seed(1)
    for start in range(0, n, 1 << 20):
        idx = torch.arange(start, min(n, start + (1 << 20)))
        book.update(idx, torch.rand(idx.numel(), generator=gen))
    return book, sampler


def epoch_start(sampler, epoch: int) -> Any:
    """What the trainer does at an epoch start: set the epoch, draw this rank's shard and its weights
    (weighted policies), and the subset digest it logs."""
    from rela_fast.subset.policies import WEIGHTED_POLICIES

    sampler.set_epoch(epoch)
    shard = sampler.shard()
    weights = sampler.weights_for(shard).cpu() if sampler.policy in WEIGHTED_POLICIES else None
    digest = hashlib.sha1(sampler.indices().to(dtype=shard.dtype).numpy().tobytes()).hexdigest()
    return shard, weights, digest


def measure_policies(n: int, reps: int) -> dict[str, float]:
    """Median epoch-start time of each policy at n scores (epochs 1..reps, before any annealing)."""
    from rela_fast.subset import POLICIES

    out = {}
    for policy in POLICIES:
        _, sampler = _filled(n, policy)
        epoch_start(sampler, 0)  # first-call costs out of the timing
        epochs = iter(range(1, reps + 1))
        out[policy] = round(_median_time(lambda s=sampler, e=epochs: epoch_start(s, next(e)), reps), 6)
    return out


def measure_update(n: int, reps: int = 200) -> dict[str, Any]:
    """Median ScoreBook update of one step (batch ``STEP_BATCH``) at n scores, for the chosen backend."""
    import torch

    from rela_fast.ops.backend import choose_backend
    from rela_fast.subset import ScoreBook

    book = ScoreBook(n, momentum=0.9)
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randint(0, n, (STEP_BATCH,), generator=gen), torch.rand(STEP_BATCH, generator=gen))
               for _ in range(16)]
    it = iter(range(10**9))
    step = lambda: book.update(*batches[next(it) % len(batches)])  # noqa: E731
    step()
    return {"update_step_s": round(_median_time(step, reps), 8),
            "update_backend": book.backend or choose_backend("score_update", book.device)}


def measure_checkpoint(n: int, scratch: Path, reps: int = 3) -> dict[str, Any]:
    """Size, save and resume time of the sampler + ScoreBook state (InfoBatch: order and weights), mid-epoch."""
    import torch

    from rela_fast.subset import build_subset

    book, sampler = _filled(n, "infobatch")
    shard, _, _ = epoch_start(sampler, 1)
    path = scratch / f"ckpt-{n}.pt"
    state = lambda: {"scores": book.state_dict(), "sampler": sampler.state_dict(position=len(shard) // 2)}  # noqa

    def resume():
        loaded = torch.load(path, weights_only=True)
        new_book, new_sampler = build_subset(n, "infobatch", budget=BUDGET, epochs=EPOCHS, seed=0)
        new_book.load_state_dict(loaded["scores"])
        new_sampler.load_state_dict(loaded["sampler"])
        return new_sampler.shard()

    save_s = _median_time(lambda: torch.save(state(), path), reps)
    size = path.stat().st_size
    load_s = _median_time(resume, reps)
    if not torch.equal(resume(), shard):
        raise RuntimeError("the resumed sampler's shard differs from the saved one")
    path.unlink()
    return {"checkpoint_bytes": size, "save_s": round(save_s, 6), "resume_s": round(load_s, 6)}


def _ddp_worker(rank: int, n: int, port: int, reps: int, result: str) -> None:
    """One of two gloo ranks: update the book, then time ``sync`` (median of ``reps``) after fresh updates."""
    import torch
    import torch.distributed as dist

    from rela_fast.subset import ScoreBook

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        book = ScoreBook(n, momentum=0.9)
        gen = torch.Generator().manual_seed(10 + rank)
        times = []
        for _ in range(reps + 1):
            for _ in range(8):
                book.update(torch.randint(0, n, (STEP_BATCH,), generator=gen), torch.rand(STEP_BATCH, generator=gen))
            dist.barrier()
            t0 = time.perf_counter()
            book.sync()
            times.append(time.perf_counter() - t0)
        if rank == 0:
            Path(result).write_text(json.dumps({"ddp_merge_s": statistics.median(times[1:])}))
    finally:
        dist.destroy_process_group()


def measure_ddp(n: int, reps: int = 3) -> dict[str, Any]:
    """The ScoreBook merge under 2-process gloo DDP at n scores (spawned processes)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fd, result = tempfile.mkstemp(suffix=".json", prefix="rela-scale-ddp-")
    os.close(fd)
    mp.spawn(_ddp_worker, args=(n, port, reps, result), nprocs=2, join=True)
    out = json.loads(Path(result).read_text())
    os.unlink(result)
    return {"ddp_merge_s": round(out["ddp_merge_s"], 6)}


def measure_train(n: int, scratch: Path, ddp: bool) -> dict[str, Any]:
    """Every trainer-bookkeeping quantity at n scores (one intra-op thread)."""
    import torch

    torch.set_num_threads(1)
    reps = 3 if n >= 5_000_000 else 5
    entry: dict[str, Any] = {"part": "train", "n": n, "batch": STEP_BATCH, "budget": BUDGET,
                             "load": [round(os.getloadavg()[0], 2)]}
    entry["epoch_start_s"] = measure_policies(n, reps)
    entry.update(measure_update(n))
    entry.update(measure_checkpoint(n, scratch))
    if ddp:
        entry.update(measure_ddp(n))
    entry["load"].append(round(os.getloadavg()[0], 2))
    return entry


def measure_byol_step(reps: int = 5) -> dict[str, Any]:
    """Median time of a BYOL step of convnet-16 at batch 256, 28 px: backbone on both views, projector +
    predictor, the momentum target on both views, the symmetric loss, the online classifier, backward, AdamW
    and the EMA. Heads 512-128 (the demo's, the cheaper choice: the 5 % bound is then the stricter one)."""
    import torch
    import torch.nn.functional as F

    from rela_fast.models import create_backbone
    from rela_fast.train.methods import BYOL

    torch.set_num_threads(1)
    torch.manual_seed(0)
    backbone, width, _ = create_backbone("convnet-16", 28)
    method = BYOL(width, hidden_dim=512, proj_dim=128)
    method.attach(backbone)
    classifier = torch.nn.Linear(width, 10)
    params = [p for m in (backbone, method, classifier) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-6)
    gen = torch.Generator().manual_seed(1)
    v1, v2 = (torch.randn(STEP_BATCH, 3, 28, 28, generator=gen) for _ in range(2))
    labels = torch.randint(0, 10, (STEP_BATCH,), generator=gen)
    count = iter(range(1, 10**6))

    def step():
        h = backbone(torch.cat([v1, v2]))
        loss = method.per_sample_loss(h[:STEP_BATCH], h[STEP_BATCH:], v1, v2).mean()
        loss = loss + F.cross_entropy(classifier(h[:STEP_BATCH].detach()), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.on_step(next(count), 1000)

    step()
    return {"part": "step", "arch": "convnet-16", "batch": STEP_BATCH, "image_size": 28, "threads": 1,
            "heads": "512-128", "byol_step_s": round(_median_time(step, reps), 4)}


# -- fits, goals, estimates ----------------------------------------------------------------------------------
def exponent(ns: list[int], values: list[float]) -> dict[str, float] | None:
    """Least-squares slope of log(value) on log(n) over all points, and the slope between the two largest."""
    pts = sorted((n, v) for n, v in zip(ns, values) if v is not None and v > 0)
    if len({n for n, _ in pts}) < 2:
        return None
    x = np.log([n for n, _ in pts])
    y = np.log([v for _, v in pts])
    fit = float(np.polyfit(x, y, 1)[0])
    top = float((y[-1] - y[-2]) / (x[-1] - x[-2]))
    return {"fit": round(fit, 3), "top": round(top, 3), "sizes": [n for n, _ in pts], "max": float(np.exp(y[-1]))}


def convert_quantities(entry: dict[str, Any]) -> dict[str, float]:
    """The timed (``_s``) and sized (``_bytes``) quantities of one conversion entry, flat."""
    q = {k: entry[k] for k in ("wall_s", "cpu_s", "convert_s", "commit_open_s", "open_s", "store_bytes",
                               "work_peak_bytes", "written_bytes") if entry.get(k) is not None}
    q.update({f"stage.{k}": v for k, v in entry["timing"].items() if k.endswith("_s")})
    q.update({f"reuse.{k}": entry["reuse"][k] for k in ("wall_s", "cpu_s", "convert_s") if k in entry["reuse"]})
    q.update({f"reuse.stage.{k}": v for k, v in entry["reuse"]["timing"].items() if k.endswith("_s") and v})
    return q


def train_quantities(entry: dict[str, Any]) -> dict[str, float]:
    q = {f"epoch_start.{p}_s": v for p, v in entry["epoch_start_s"].items()}
    q.update({k: entry[k] for k in ("update_step_s", "save_s", "resume_s", "checkpoint_bytes", "ddp_merge_s")
              if k in entry})
    return q


def convert_series(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Conversion entries by series, each sorted by size: ``kind``, or ``kind+variant`` for a proposed fix."""
    series: dict[str, list] = {}
    for e in results["entries"]:
        if e["part"] == "convert":
            name = e["kind"] + (f"+{e['variant']}" if e.get("variant") else "")
            series.setdefault(name, []).append(e)
    return {name: sorted(es, key=lambda e: e["n"]) for name, es in sorted(series.items())}


def fit_all(results: dict[str, Any]) -> dict[str, Any]:
    """Exponents of every quantity (per conversion series) and the goals' verdicts."""
    fits: dict[str, Any] = {}
    groups = {f"convert.{name}": es for name, es in convert_series(results).items()}
    groups["train"] = [e for e in results["entries"] if e["part"] == "train"]
    for name, entries in groups.items():
        if len(entries) < 2:
            continue
        flatten = train_quantities if name == "train" else convert_quantities
        table: dict[str, dict] = {}
        for e in entries:
            for q, v in flatten(e).items():
                table.setdefault(q, {})[e["n"]] = v
        fits[name] = {q: f for q, by_n in table.items()
                      if (f := exponent(list(by_n), list(by_n.values()))) is not None}
    return {"exponents": fits, "goals": goals(results, fits)}


def is_time(quantity: str) -> bool:
    """A duration in seconds (``..._s``), not a rate such as ``images_per_s``."""
    return quantity.endswith("_s") and not quantity.endswith("per_s")


def goals(results: dict[str, Any], fits: dict[str, Any]) -> dict[str, Any]:
    """The issue's bounds: time exponents, flat anonymous RSS, per-step overhead at the largest N."""
    slow = [f"{g}:{q} {f['fit']}" for g, qs in fits.items() for q, f in qs.items()
            if is_time(q) and f["max"] >= 0.01 and f["fit"] > TIME_EXPONENT_GOAL]
    rss = {}
    for name, entries in convert_series(results).items():
        if len(entries) >= 2:
            anon = [e["peak_anon_mb"] for e in entries]
            rss[name] = {"sizes": [e["n"] for e in entries], "peak_anon_mb": anon,
                         "peak_rss_mb": [e["peak_rss_mb"] for e in entries],
                         "growth": round(anon[-1] / anon[0] - 1, 3), "flat": anon[-1] <= anon[0] * (1 + RSS_FLAT_GOAL)}
    return {"time_exponents_over_goal": slow, "time_exponents_ok": not slow, "rss": rss,
            "step_overhead": step_overhead(results)}


def step_overhead(results: dict[str, Any]) -> dict[str, Any] | None:
    """Per-step bookkeeping at the largest N: the ScoreBook update plus the per-epoch costs (slowest policy's
    epoch start, checkpoint save, DDP merge) spread over the epoch's ``BUDGET x N / batch`` steps."""
    train = [e for e in results["entries"] if e["part"] == "train"]
    step = next((e for e in results["entries"] if e["part"] == "step"), None)
    if not train or step is None:
        return None
    e = max(train, key=lambda e: e["n"])
    steps = BUDGET * e["n"] / STEP_BATCH
    per_epoch = max(e["epoch_start_s"].values()) + e["save_s"] + e.get("ddp_merge_s", 0.0)
    overhead = e["update_step_s"] + per_epoch / steps
    share = overhead / step["byol_step_s"]
    return {"n": e["n"], "steps_per_epoch": int(steps), "update_step_s": e["update_step_s"],
            "per_epoch_s": round(per_epoch, 4), "overhead_per_step_s": round(overhead, 6),
            "byol_step_s": step["byol_step_s"], "share": round(share, 5), "ok": share <= STEP_SHARE_GOAL}


IMAGENET_N, IMAGENET_P = 1_281_167, 512
RESNET18_RESULT = "benchmarks/results/convert_memory/cpu2-2026-12-01.json"


def imagenet_estimate(results: dict[str, Any]) -> dict[str, Any] | None:
    """ImageNet-1k (1.28 M JPEGs, resnet18 at 224, this CPU), as estimates: decode + encode at the rate
    measured for 10,000 ImageNet-like JPEGs (``RESNET18_RESULT``), plus this benchmark's per-image
    bookkeeping (everything but decode and encode) of the largest image-folder run, plus disk from bytes
    per image (targets N x d float32; shards N x P float32 + row ids; source.json as measured here). Without
    an image-folder run the largest IDX run stands in (its bookkeeping has no file stats or JPEG reads)."""
    series = convert_series(results)
    runs = series.get("folder") or series.get("idx")
    ref = REPO / RESNET18_RESULT
    if not runs or not ref.is_file():
        return None
    big = runs[-1]
    run = max(json.loads(ref.read_text())["runs"], key=lambda r: r["images"])
    rate = run["images"] / run["timing"]["decode_encode_s"]
    t = big["timing"]
    bookkeeping = big["convert_s"] - t["decode_wait_s"] - t["encode_call_s"]
    per_image = bookkeeping / big["n"]
    meta_per_image = (big["store_bytes"] - big["n"] * (DIM * 4 + 16)) / big["n"]
    hours = (IMAGENET_N / rate + per_image * IMAGENET_N) / 3600
    gb = 1e9
    shards = IMAGENET_N * (IMAGENET_P * 4 + 8) / gb
    stores = {d: IMAGENET_N * (d * 4 + 16 + meta_per_image) / gb for d in (512, 128)}
    return {
        "images": IMAGENET_N, "resnet18_images_per_s": round(rate, 1), "rate_from": RESNET18_RESULT,
        "bookkeeping_us_per_image": round(per_image * 1e6, 1), "bookkeeping_from": f"{big['kind']} n={big['n']}",
        "conversion_hours": round(hours, 1), "work_folder_gb": round(shards, 2),
        "store_gb": {f"d={d}": round(v, 2) for d, v in stores.items()},
        "peak_disk_gb": {f"d={d}": round(shards + v, 2) for d, v in stores.items()},
        "source_json_bytes_per_image": round(meta_per_image, 1),
    }


# -- results file, plot, README ------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import torch

    from rela_fast.environment import cpu_model

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "cpu": cpu_model(), "memory_gib": round(mem, 1), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}


def load_results(path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    return {"suite": "scale", "issue": 25, "entries": [], "commands": [], "stopped": []}


def merge_entry(results: dict[str, Any], entry: dict[str, Any], command: str) -> None:
    """Replace the entry of the same part, kind and size (or add it), stamped with command and date."""
    key = (entry["part"], entry.get("kind"), entry.get("n"), entry.get("variant"))
    entry = dict(entry, command=command, date=time.strftime("%Y-%m-%dT%H:%M:%S%z"), commit=_commit())
    results["entries"] = [e for e in results["entries"]
                          if (e["part"], e.get("kind"), e.get("n"), e.get("variant")) != key]
    results["entries"].append(entry)
    results["entries"].sort(key=lambda e: (e["part"], e.get("kind") or "", e.get("variant") or "", e.get("n") or 0))


def _commit() -> str | None:
    """The checkout's commit (``+dirty`` when tracked files differ from it), or None outside git."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "rela_fast"]).returncode
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def save_results(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, path)


def _linear_ref(ax, ns: list[int], value: float, n0: int) -> None:
    xs = np.array([min(ns), max(ns)], dtype=float)
    ax.plot(xs, value * xs / n0, color="grey", ls=":", lw=1)


def plot(results: dict[str, Any], path: Path) -> None:
    """Three log-log panels (conversion wall and stages, memory, trainer bookkeeping), each with a dotted
    linear reference (slope 1) through its first point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for i, (kind, es) in enumerate(convert_series(results).items()):
        ns = [e["n"] for e in es]
        c = f"C{i}"
        axes[0].plot(ns, [e["wall_s"] for e in es], "o-", color=c, label=f"{kind}: convert wall")
        axes[0].plot(ns, [e["reuse"]["wall_s"] for e in es], "s--", color=c, label=f"{kind}: no-op re-run wall")
        axes[0].plot(ns, [e["timing"]["fingerprint_s"] + e["timing"]["listing_s"] for e in es], "^:", color=c,
                     label=f"{kind}: listing + fingerprint")
        _linear_ref(axes[0], ns, es[0]["wall_s"], ns[0])
        axes[1].plot(ns, [e["peak_anon_mb"] for e in es], "o-", color=c, label=f"{kind}: peak anonymous RSS")
        axes[1].plot(ns, [e["peak_rss_mb"] for e in es], "s--", color=c, label=f"{kind}: peak RSS (with file pages)")
        axes[1].plot([ns[0], ns[-1]], [es[0]["peak_anon_mb"] * (1 + RSS_FLAT_GOAL)] * 2, ":", color=c, lw=1,
                     label=f"{kind}: goal, anonymous +{RSS_FLAT_GOAL:.0%}")
    train = sorted((e for e in results["entries"] if e["part"] == "train"), key=lambda e: e["n"])
    if train:
        ns = [e["n"] for e in train]
        for i, policy in enumerate(train[0]["epoch_start_s"]):
            axes[2].plot(ns, [e["epoch_start_s"][policy] for e in train], "o-", color=f"C{i}",
                         label=f"epoch start: {policy}")
        for key, style in (("save_s", "s--"), ("resume_s", "d--"), ("ddp_merge_s", "^--"), ("update_step_s", "x-")):
            if all(key in e for e in train):
                axes[2].plot(ns, [e[key] for e in train], style, color="k", alpha=0.6, label=key)
        _linear_ref(axes[2], ns, max(train[0]["epoch_start_s"].values()), ns[0])
    titles = ("conversion (s); dotted: linear reference", "conversion peak memory (MB); dotted: the goal",
              "trainer bookkeeping (s); dotted: linear reference")
    for ax, title, xl in zip(axes, titles, ("images", "images", "scores N")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel(xl)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


BEGIN, END = "<!-- generated by bench_scale.py --part fit: do not edit below -->", "<!-- end of generated part -->"


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def report_markdown(results: dict[str, Any]) -> str:
    """The generated part of README.md: machine, commands, exponents, goals, estimates, stops."""
    fits, lines = results["fits"]["exponents"], [BEGIN, ""]
    lines += [f"Machine: {results['machine']['cpu']} ({results['machine']['cpus']} cores, shared with other "
              f"jobs), {results['machine']['memory_gib']} GiB, torch {results['machine']['torch']}. "
              f"Updated {results['updated']}.", "", "Commands (each merged into results.json):", "", "```"]
    lines += results["commands"] + ["```", "", "| group | quantity | exponent (fit) | slope (two largest) | "
                                    "value at largest size |", "|---|---|---|---|---|"]
    for group, qs in fits.items():
        for q, f in qs.items():
            unit = " B" if q.endswith("_bytes") else " s" if is_time(q) else ""
            lines.append(f"| {group} | {q} | {f['fit']:.2f} | {f['top']:.2f} | {_fmt(f['max'])}{unit} "
                         f"(n={f['sizes'][-1]:,}) |")
    g = results["fits"]["goals"]
    lines += ["", f"Time exponents <= {TIME_EXPONENT_GOAL} (quantities over 10 ms): "
              + ("met" if g["time_exponents_ok"] else "missed by " + ", ".join(g["time_exponents_over_goal"])), ""]
    for kind, r in g["rss"].items():
        lines.append(f"Peak anonymous RSS, {kind}: {r['peak_anon_mb']} MB at {r['sizes']} images: "
                     f"{r['growth']:+.0%} ({'flat' if r['flat'] else 'not flat'} within {RSS_FLAT_GOAL:.0%}); "
                     f"with file-backed pages {r['peak_rss_mb']} MB.")
    s = g["step_overhead"]
    if s:
        lines += ["", f"Per-step bookkeeping at N = {s['n']:,}: {s['overhead_per_step_s'] * 1e3:.3f} ms (ScoreBook "
                  f"update {s['update_step_s'] * 1e3:.3f} ms + {s['per_epoch_s']:.2f} s per epoch over "
                  f"{s['steps_per_epoch']:,} steps) = {s['share']:.2%} of a BYOL step of convnet-16 at batch "
                  f"{STEP_BATCH} ({s['byol_step_s']:.3f} s): {'met' if s['ok'] else 'missed'} (<= 5 %)."]
    est = results.get("imagenet")
    if est:
        lines += ["", f"ImageNet-1k estimate ({est['images']:,} JPEGs, resnet18 at 224 on this CPU): about "
                  f"{est['conversion_hours']} h ({est['resnet18_images_per_s']} images/s from {est['rate_from']}, "
                  f"plus {est['bookkeeping_us_per_image']} us/image of bookkeeping from {est['bookkeeping_from']}); "
                  f"work folder {est['work_folder_gb']} GB, store {est['store_gb']} GB, peak disk "
                  f"{est['peak_disk_gb']} GB."]
    if results.get("stopped"):
        lines += ["", "Not run: " + "; ".join(f"{s['kind']} at {s['n']:,} ({s['why']})" for s in results["stopped"])]
    return "\n".join(lines + ["", END])


def write_readme(path: Path, results: dict[str, Any]) -> None:
    """Replace the generated block of README.md (hand-written text around it is kept)."""
    block = report_markdown(results)
    text = path.read_text() if path.is_file() else "# Scale benchmark (issue 25)\n\n![growth](plot.png)\n\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def refit(out: Path, results: dict[str, Any]) -> None:
    results["fits"] = fit_all(results)
    results["imagenet"] = imagenet_estimate(results)
    results["machine"] = machine()
    results["updated"] = time.strftime("%Y-%m-%d")
    save_results(out / "results.json", results)
    plot(results, out / "plot.png")
    write_readme(out / "README.md", results)


# -- command line ---------------------------------------------------------------------------------------------
def _sizes(text: str | None, default: list[int]) -> list[int]:
    return [int(float(x)) for x in text.split(",")] if text else default


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", action="append", choices=("convert", "train", "step", "fit"),
                   help="what to measure (repeatable; default: all)")
    p.add_argument("--kind", action="append", choices=KINDS, help="conversion source kinds (default: all)")
    p.add_argument("--n", help="conversion sizes, comma-separated (default 1e4,1e5,1e6; tar/folder stop at 1e5 "
                   "unless --n names more)")
    p.add_argument("--scores", help="trainer N, comma-separated (default 1e5,1e6,1e7)")
    p.add_argument("--no-ddp", action="store_true", help="skip the 2-process gloo merge")
    p.add_argument("--variant", choices=sorted(VARIANTS), help="convert with a proposed fix swapped in (recorded "
                   "apart from the plain runs)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (results.json, plot.png, README.md)")
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "rela-bench-scale-data",
                   help="where generated inputs are cached")
    p.add_argument("--drop-data", action="store_true", help="delete each generated input after its measurement")
    p.add_argument("--child", nargs=3, metavar=("MODE", "SRC", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--child-json", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _command(argv: list[str] | None) -> str:
    return "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        record = child_convert(args.child[1], args.child[2], args.child[0], args.variant)
        Path(args.child_json).write_text(json.dumps(record))
        return 0
    parts = args.part or ["convert", "train", "step", "fit"]
    path = args.out / "results.json"
    results = load_results(path)
    command = _command(argv)
    if command not in results["commands"] and parts != ["fit"]:
        results["commands"].append(command)
    scratch = Path(tempfile.mkdtemp(prefix="rela-bench-scale-"))
    try:
        if "convert" in parts:
            for kind in args.kind or KINDS:
                for n in _sizes(args.n, [10**4, 10**5, 10**6] if kind == "idx" else [10**4, 10**5]):
                    entry = measure_convert(kind, n, args.data, scratch, args.variant)
                    _log(f"convert {kind} n={n}: wall {entry['wall_s']} s, peak anon {entry['peak_anon_mb']} MB, "
                         f"re-run {entry['reuse']['wall_s']} s")
                    merge_entry(results, entry, command)
                    save_results(path, results)
                    if args.drop_data:
                        _drop(args.data, kind, n)
        if "step" in parts:
            merge_entry(results, measure_byol_step(), command)
            save_results(path, results)
        if "train" in parts:
            for n in _sizes(args.scores, [10**5, 10**6, 10**7]):
                entry = measure_train(n, scratch, not args.no_ddp)
                _log(f"train n={n}: {json.dumps({k: v for k, v in entry.items() if k != 'part'})}")
                merge_entry(results, entry, command)
                save_results(path, results)
        if "fit" in parts:
            refit(args.out, results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _drop(data: Path, kind: str, n: int) -> None:
    folder = data / f"{kind}-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.with_name(folder.name + ".complete").unlink(missing_ok=True)


def _log(message: str) -> None:
    print(f"bench_scale: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
