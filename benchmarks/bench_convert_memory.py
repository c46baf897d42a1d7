"""Peak memory of ``rela-fast convert`` (ReLA-D) beside its wall time, at several dataset sizes.

Each measurement runs ``python -m rela_fast convert FOLDER --out STORE --prior timm:resnet18 --size 224
--dim 64 --device cpu --quiet`` (default batch and shard size) in a fresh subprocess and reads that child's
own peak resident set size from ``os.wait4`` (``ru_maxrss``, the kernel's high-water mark, VmHWM).
Data: ``make_jpeg_folder`` (crops of scikit-image's photos, 500 x 375, quality 90), as
``bench_convert.py``. The bound (issue 16): peak RSS <= 2.0 GB at 1,000 images and flat within 10 %
from 1,000 to 10,000 images.

* pytest: ``pytest benchmarks/bench_convert_memory.py --benchmark-only`` (sizes from
  ``RELA_BENCH_MEMORY_N``, comma-separated, default ``1000``); ``extra_info`` holds ``peak_rss_mb``.
* script: ``python benchmarks/bench_convert_memory.py --n 1000 --n 10000 --json results/X.json``
  (prints one line per size and writes a JSON with every measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRIOR, SIZE, DIM = "timm:resnet18", 224, 64
BOUND_MB, FLAT = 2000.0, 0.10


def make_folder(root: Path, n: int) -> Path:
    """``n`` ImageNet-like JPEGs under ``root/n<N>`` (reused when already complete)."""
    from rela_fast.data.synthetic import make_jpeg_folder

    folder = root / f"n{n}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    return make_jpeg_folder(folder, n, size=(500, 375), quality=90, seed=0)


def measure(folder: Path, out: Path, extra: list[str] | None = None) -> dict:
    """Run one conversion in a child process; its wall time and peak RSS (MB, from the kernel)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "rela_fast", "convert", str(folder), "--out", str(out), "--prior", PRIOR,
           "--size", str(SIZE), "--dim", str(DIM), "--device", "cpu", "--quiet", *(extra or [])]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"convert failed ({status}): {err[-2000:]}")
    meta = json.loads((out / "meta.json").read_text())
    n = meta["count"]
    return {
        "images": n,
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "wall_s": round(wall, 2),
        "images_per_s": round(n / wall, 2),
        "decoder": meta["decoder"],
        "batch_size": meta["settings"]["batch_size"],
        "timing": meta["timing"],
    }


def test_convert_memory(benchmark, tmp_path_factory):
    import pytest

    pytest.importorskip("timm")
    pytest.importorskip("skimage")
    sizes = [int(s) for s in os.environ.get("RELA_BENCH_MEMORY_N", "1000").split(",")]
    root = tmp_path_factory.mktemp("memory")
    results = []
    for n in sizes:
        folder = make_folder(root, n)
        results.append(benchmark.pedantic(measure, args=(folder, root / "store"), rounds=1, iterations=1)
                       if not results else measure(folder, root / "store"))
    benchmark.group = f"convert memory: resnet18 S={SIZE} cpu"
    benchmark.extra_info.update(suite="convert_memory", runs=results, bound_mb=BOUND_MB)
    for r in results:
        print(f"N={r['images']}: peak RSS {r['peak_rss_mb']:.0f} MB, {r['wall_s']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append", help="dataset size (repeat for several; default 1000)")
    parser.add_argument("--data", type=Path, help="folder for the generated JPEGs (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--extra", default="", help="extra convert arguments, space-separated")
    args = parser.parse_args(argv)
    root = args.data or Path(tempfile.mkdtemp(prefix="rela-bench-mem-"))
    runs = []
    for n in args.n or [1000]:
        folder = make_folder(root, n)
        r = measure(folder, root / "store", args.extra.split())
        runs.append(r)
        print(f"N={r['images']}: peak RSS {r['peak_rss_mb']:.0f} MB, wall {r['wall_s']:.1f} s, "
              f"{r['images_per_s']:.1f} images/s ({r['decoder']}, batch {r['batch_size']})", flush=True)
    peaks = [r["peak_rss_mb"] for r in runs]
    verdict = {
        "bound_mb": BOUND_MB,
        "max_peak_mb": max(peaks),
        "within_bound": max(peaks) <= BOUND_MB,
        "spread": round(max(peaks) / min(peaks) - 1, 4),
        "flat_within_10pct": max(peaks) <= min(peaks) * (1 + FLAT),
    }
    print(json.dumps(verdict))
    if args.json:
        import torch

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "suite": "convert_memory", "prior": PRIOR, "size": SIZE, "dim": DIM, "device": "cpu",
            "command": "python benchmarks/bench_convert_memory.py " + " ".join(argv or sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
            "datetime": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "runs": runs, "verdict": verdict,
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
