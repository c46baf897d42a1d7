"""End-to-end BYOL training speed on Fashion-MNIST (CPU): steps/s of three ways to train the same model.

* ``public``: ``rela-fast train /usr/share/datasets/fashion-mnist --method byol ...``, the command users run
  (the trainer picks the in-memory tensor view pipeline for IDX data by itself);
* ``fasttrainer`` (the baseline until issue #12 landed): the old demo's ``FastTrainer`` subclass, from a
  checkout of the commit before it (``--baseline-tree``; skipped when not given);
* ``plain``: a plain PyTorch BYOL loop written the way lightly's examples do it: torchvision transforms
  (the same BYOL recipe) in DataLoader worker processes, an eager model, AdamW.

Every variant trains the same convnet-16 student with the same BYOL heads (512-128), batch 256, 28 px, one
torch thread, in its own process; steady-state steps/s is measured after warm-up steps. Variants run
interleaved, ``--rounds`` times, and the ratios of medians are reported (never absolute timings):

    python benchmarks/bench_train_e2e.py --baseline-tree /path/to/checkout-before-#12 --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA = "/usr/share/datasets/fashion-mnist"

_PUBLIC = r"""
import sys, time, torch
torch.set_num_threads(1)
from rela_fast.train import Callback, ReLATrainer
warm, steps, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
extra = eval(sys.argv[5]) if len(sys.argv) > 5 else {}
class Clock(Callback):
    def on_step_end(self, trainer, state):
        if state.step == warm: self.t = time.perf_counter()
        if state.step == warm + steps: print("RESULT", steps / (time.perf_counter() - self.t))
t = ReLATrainer("convnet-16", "byol", None, epochs=1, batch_size=batch, lr=2e-3, weight_decay=1e-4, device="cpu",
                max_steps=warm + steps, method_kwargs={"hidden_dim": 512, "proj_dim": 128}, callbacks=[Clock()],
                **extra)
print("VIEWS", t.views_arg)
t.fit(sys.argv[4])
print("PIPELINE", type(t.views).__name__)
"""

_FAST = r"""
import sys, time, torch
torch.set_num_threads(1)
from rela_fast.data import open_source
from rela_fast.demo import FastTrainer
warm, steps, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
src = open_source(sys.argv[4])
tr = FastTrainer("convnet-16", "byol", None, epochs=1, batch_size=batch, lr=2e-3, weight_decay=1e-4,
                 device="cpu", max_steps=warm + steps, method_kwargs={"hidden_dim": 512, "proj_dim": 128})
t0 = {}
import rela_fast.train.methods as M  # the old trainer has no callbacks: time steps in BYOL's per-step hook
base_on_step = M.BYOL.on_step
def on_step(self, step, total):
    base_on_step(self, step, total)
    if step == warm: t0["t"] = time.perf_counter()
    if step == warm + steps: print("RESULT", steps / (time.perf_counter() - t0["t"]))
M.BYOL.on_step = on_step
tr.fit(src)
"""

_PLAIN = r"""
import sys, time, torch, numpy as np
torch.set_num_threads(1)
from torch.utils.data import DataLoader, Dataset
from rela_fast.data import open_source
from rela_fast.train import BYOL, create_backbone, build_torchvision, two_views
warm, steps, batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
src = open_source(sys.argv[4])
images = src.array()
t1, t2 = (build_torchvision(v) for v in two_views("byol", 28))
class Views(Dataset):
    def __len__(self): return len(images)
    def __getitem__(self, i):
        img = torch.from_numpy(images[i])[None].expand(3, -1, -1)
        return t1(img), t2(img)
torch.manual_seed(0)
backbone, width, _ = create_backbone("convnet-16", 28)
byol = BYOL(width, hidden_dim=512, proj_dim=128); byol.attach(backbone)
params = [p for m in (backbone, byol) for p in m.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
loader = DataLoader(Views(), batch_size=batch, shuffle=True, num_workers=2, drop_last=True, persistent_workers=True,
                    worker_init_fn=lambda _: torch.set_num_threads(1))
step = 0
for v1, v2 in loader:
    h = backbone(torch.cat([v1, v2]))
    loss = byol.loss(h[:batch], h[batch:], v1, v2)
    opt.zero_grad(); loss.backward(); opt.step()
    step += 1; byol.on_step(step, warm + steps)
    if step == warm: t = time.perf_counter()
    if step == warm + steps:
        print("RESULT", steps / (time.perf_counter() - t)); break
"""


def run_variant(name: str, code: str, tree: Path, args, extra: str = "{}") -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code, str(args.warmup), str(args.steps), str(args.batch), args.data,
                          extra],
                         env=env, cwd=tree, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    info = [ln for ln in out.stdout.splitlines() if ln.startswith("PIPELINE")]
    if info:
        print(f"  {name}: {info[0]}")
    return float(lines[0].split()[1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=DATA)
    p.add_argument("--baseline-tree", type=Path, help="checkout of the commit before #12 (its extension built)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--out", type=Path)
    p.add_argument("--layouts", action="store_true", help="also channels_last and torch.compile variants")
    p.add_argument("--only", default="", help="comma list of variants to run")
    args = p.parse_args(argv)
    here = Path(__file__).resolve().parents[1]
    variants = {"public": (_PUBLIC, here, "{}"), "plain": (_PLAIN, here, "{}")}
    if args.baseline_tree:
        variants["fasttrainer"] = (_FAST, args.baseline_tree.resolve(), "{}")
    if args.layouts:  # the CPU training step's memory format and compilation, same run otherwise
        variants["public_channels_last"] = (_PUBLIC, here, "{'channels_last': True}")
        variants["public_compile"] = (_PUBLIC, here, "{'compile': True}")
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, (code, tree, extra) in variants.items():
            rates[name].append(run_variant(name, code, tree, args, extra))
            print(f"round {r}: {name} {rates[name][-1]:.2f} steps/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = {f"public/{k}": med["public"] / med[k] for k in med if k != "public"}
    result = {
        "suite": "train_e2e", "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/bench_train_e2e.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()} x{os.cpu_count()}, 1 torch thread per process, shared and noisy",
        "setup": {"model": "convnet-16 + BYOL 512-128", "batch": args.batch, "image": "28 px",
                  "warmup_steps": args.warmup, "timed_steps": args.steps, "rounds": args.rounds},
        "steps_per_s": rates, "median_steps_per_s": med, "speedup": ratios,
    }
    print(json.dumps({"median_steps_per_s": med, "speedup": ratios}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
