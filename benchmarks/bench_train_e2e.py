"""End-to-end BYOL training speed on Fashion-MNIST (CPU) at equal core budgets, against the compute floor.

Every variant runs in its own process pinned (``os.sched_setaffinity``) to the same CPU set, the *budget*;
DataLoader workers inherit it, so the plain loop's workers and main process share exactly the cores our
process and its threads get. ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` are removed from the children's
environment, so torch's default thread count is the budget's size. Variants (``@64`` = the same at 64 px):

* ``public``: ``ReLATrainer`` as ``rela-fast train`` runs it (tensor views, prefetched in a producer thread by
  default on CPU; torch threads as the trainer leaves them);
* ``public_nokeep``: the same with ``keep_memory=False`` (glibc returns freed memory to the OS each step, as
  it does for any process that does not ask otherwise; see :mod:`rela_fast.malloc`);
* ``public_inline``: the same with ``prefetch=0`` (augmentation in the training thread, between steps);
* ``public_1t``: the same as ``public`` with one torch thread in the training loop (the producer beside it);
* ``public_channels_last`` / ``public_compile`` (``--layouts``): the training step's layout and compilation;
* ``plain``: a lightly-style loop: torchvision transforms (the same BYOL recipe) in ``--plain-workers``
  DataLoader worker processes (default: the budget's size), an eager model, AdamW, torch's default threads;
* ``plain_1t``: the same with one torch thread in its main process (the workers take the other cores);
* ``floor``: the plain loop's model, loss and optimiser on views made before the clock starts (no loading,
  no augmentation), torch's default threads: the limit for any pipeline with this budget;
* ``floor_1t``: the same with one torch thread (on a loaded machine one thread can beat two: the goals are
  judged against the faster of the two floors);
* ``plain_keep`` / ``floor_keep``: ``plain`` / ``floor`` with the allocator setting the trainer makes on CPU
  (:func:`rela_fast.malloc.keep_freed_memory`), so that no goal is met by that setting alone;
* ``floor_trainer``: ``ReLATrainer`` on pre-made views (the trainer's bookkeeping without augmentation);
* ``fasttrainer``: the old demo's ``FastTrainer`` from a checkout (``--baseline-tree``; skipped when not given).

Rounds are interleaved (every variant once per round, the order reversed every other round). Before each
round the script waits up to ``--settle`` s for the 1-min load average to fall to ``--max-load`` x the
machine's CPUs, records the load averages, and measures the CPU time other processes used during each run
(``/proc/stat`` minus this script's children). A round is ``quiet`` when its load average was within the
bound and other processes used at most ``--max-others`` cores on average during it; medians and ratios are
given over all rounds and over quiet rounds, the goals are judged on quiet rounds only, each against the
fastest of the baseline's settings (``plain``/``plain_1t``/``plain_keep``, ``floor``/``floor_1t``/``floor_keep``).
``--transfer`` adds
the fused transfer loss (fwd + bwd at 2x1024,512,512 fp32) against eager and its matmul floor, measured in
a child with the same budget, and the per-call cost of its argument checks. Quiet re-run (README in
``benchmarks/results/train_e2e/``):

    python benchmarks/bench_train_e2e.py --rounds 3 --layouts --transfer --out benchmarks/results/train_e2e/X.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA = "/usr/share/datasets/fashion-mnist"
HERE = Path(__file__).resolve().parents[1]

_PRE = r"""
import json, sys, time, torch
cfg = json.loads(sys.argv[1])
warm, steps, batch, size = cfg["warmup"], cfg["steps"], cfg["batch"], cfg["size"]
if cfg.get("threads"): torch.set_num_threads(cfg["threads"])
if cfg.get("keep"):  # the allocator setting the trainer makes on CPU (rela_fast.malloc), for the baselines
    from rela_fast.malloc import keep_freed_memory; assert keep_freed_memory()
def report(rate, **info):
    print("RESULT", rate); print("INFO", json.dumps(dict(info, torch_threads=torch.get_num_threads())))
"""

_PUBLIC = _PRE + r"""
from rela_fast.train import Callback, ReLATrainer
import rela_fast.train.views as V
if cfg.get("prefetch") is not None:  # the pipeline's option, as a config field would pass it
    create = V.create_views
    V.create_views = lambda *a, **k: create(*a, **k, prefetch=cfg["prefetch"])
class Clock(Callback):
    def on_step_end(self, trainer, state):
        if state.step == warm: self.t = time.perf_counter()
        if state.step == warm + steps: self.rate = steps / (time.perf_counter() - self.t)
clock = Clock()
views = None
if cfg.get("premade"):  # floor_trainer: the same batches over and over, made before the clock starts
    from rela_fast.data import open_source
    from rela_fast.train import TensorViews, two_views
    src = open_source(cfg["data"])
    imgs = torch.from_numpy(src.array()[: 2 * batch].copy())[:, None]
    made = list(TensorViews(imgs, None, torch.device("cpu")).batches(two_views("byol", size),
                torch.arange(2 * batch), epoch=0, phase=2, batch_size=batch))
    labels = torch.as_tensor(src.labels, dtype=torch.int64)
    class Premade:
        name = "premade"
        def batches(self, views, indices, *, epoch, phase, batch_size):
            for k, s in enumerate(range(0, len(indices) // batch_size * batch_size, batch_size)):
                idx = torch.as_tensor(indices[s:s + batch_size], dtype=torch.int64)
                v1, v2, _, _ = made[k % len(made)]
                yield v1, v2, idx, labels[idx]
    views = Premade()
t = ReLATrainer("convnet-16", "byol", None, epochs=1, batch_size=batch, lr=2e-3, weight_decay=1e-4, device="cpu",
                max_steps=warm + steps, method_kwargs={"hidden_dim": 512, "proj_dim": 128}, callbacks=[clock],
                image_size=size, views=views, **cfg.get("extra", {}))
t.fit(cfg["data"])
report(clock.rate, pipeline=type(t.views).__name__, depth=getattr(t.views, "depth", 0))
"""

_PLAIN = _PRE + r"""
from torch.utils.data import DataLoader, Dataset
from rela_fast.data import open_source
from rela_fast.train import BYOL, create_backbone, build_torchvision, two_views
from rela_fast.train.augment import BatchViews
from rela_fast.train.views import two_view_batch
images = open_source(cfg["data"]).array()
torch.manual_seed(0)
backbone, width, _ = create_backbone("convnet-16", size)
byol = BYOL(width, hidden_dim=512, proj_dim=128); byol.attach(backbone)
params = [p for m in (backbone, byol) for p in m.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
if cfg.get("premade"):  # the compute floor: two batches of views made before the clock starts
    ops = tuple(BatchViews(v) for v in two_views("byol", size))
    x = torch.from_numpy(images[: 2 * batch].copy())[:, None]
    made = [two_view_batch(x[s:s + batch], torch.arange(s, s + batch), ops, seed=0, epoch=0, phase=2)
            for s in (0, batch)]
    loader = (made[k % 2] for k in range(warm + steps))
else:
    t1, t2 = (build_torchvision(v) for v in two_views("byol", size))
    class Views(Dataset):
        def __len__(self): return len(images)
        def __getitem__(self, i):
            img = torch.from_numpy(images[i])[None].expand(3, -1, -1)
            return t1(img), t2(img)
    loader = DataLoader(Views(), batch_size=batch, shuffle=True, num_workers=cfg["workers"], drop_last=True,
                        persistent_workers=cfg["workers"] > 0)
step = 0
for v1, v2 in loader:
    h = backbone(torch.cat([v1, v2]))
    loss = byol.loss(h[:batch], h[batch:], v1, v2)
    opt.zero_grad(); loss.backward(); opt.step()
    step += 1; byol.on_step(step, warm + steps)
    if step == warm: t = time.perf_counter()
    if step == warm + steps:
        report(steps / (time.perf_counter() - t), workers=0 if cfg.get("premade") else cfg["workers"]); break
"""

_FAST = _PRE + r"""
from rela_fast.data import open_source
from rela_fast.demo import FastTrainer
import rela_fast.train.methods as M  # the old trainer has no callbacks: time steps in BYOL's per-step hook
tr = FastTrainer("convnet-16", "byol", None, epochs=1, batch_size=batch, lr=2e-3, weight_decay=1e-4,
                 device="cpu", max_steps=warm + steps, method_kwargs={"hidden_dim": 512, "proj_dim": 128})
t0, base_on_step = {}, M.BYOL.on_step
def on_step(self, step, total):
    base_on_step(self, step, total)
    if step == warm: t0["t"] = time.perf_counter()
    if step == warm + steps: t0["rate"] = steps / (time.perf_counter() - t0["t"])
M.BYOL.on_step = on_step
tr.fit(open_source(cfg["data"]))
report(t0["rate"])
"""

_TRANSFER = _PRE + r"""
import importlib.util, statistics
spec = importlib.util.spec_from_file_location("btl", cfg["script"])
btl = importlib.util.module_from_spec(spec); spec.loader.exec_module(btl)
from rela_fast.ops.transfer_loss.checks import check_inputs
from rela_fast.ops.backend import dispatch
inputs = btl._inputs("cpu", torch.float32, (2, 1024, 512, 512))
runs = {v: btl._step(v, *inputs) for v in ("fused", "eager", "matmul-floor")}
times = {v: [] for v in runs}
for v in runs:
    for _ in range(3): runs[v]()
for block in range(cfg["blocks"]):  # interleaved blocks, the minimum of each block
    for v in runs:
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter(); runs[v](); best = min(best, time.perf_counter() - t)
        times[v].append(best)
med = {v: statistics.median(x) for v, x in times.items()}
def per_call(fn, n=2000):
    t = time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter() - t) / n
h, w, b, y = inputs
check_s = per_call(lambda: check_inputs(h, w, b, y, None))
dispatch_s = per_call(lambda: dispatch("transfer_loss", h.device, None))
report(med["eager"] / med["fused"], fused_ms=med["fused"] * 1e3, eager_ms=med["eager"] * 1e3,
       floor_ms=med["matmul-floor"] * 1e3, fused_over_floor=med["fused"] / med["matmul-floor"],
       check_inputs_us=check_s * 1e6, dispatch_us=dispatch_s * 1e6,
       checks_share_of_fused=(check_s + dispatch_s) / med["fused"])
"""


def variants_for(args) -> dict[str, tuple[str, dict]]:
    """name -> (child code, its settings) for the requested sizes and options."""
    out: dict[str, tuple[str, dict]] = {}
    for size in args.sizes:
        tag = "" if size == 28 else f"@{size}"
        out[f"public{tag}"] = (_PUBLIC, {"size": size})
        out[f"plain{tag}"] = (_PLAIN, {"size": size, "workers": args.plain_workers})
        out[f"floor{tag}"] = (_PLAIN, {"size": size, "premade": True})
        out[f"public_nokeep{tag}"] = (_PUBLIC, {"size": size, "extra": {"keep_memory": False}})
        out[f"plain_keep{tag}"] = (_PLAIN, {"size": size, "workers": args.plain_workers, "keep": True})
        out[f"floor_keep{tag}"] = (_PLAIN, {"size": size, "premade": True, "keep": True})
        if size == 28:
            out["public_inline"] = (_PUBLIC, {"size": size, "prefetch": 0})
            out["public_1t"] = (_PUBLIC, {"size": size, "threads": 1})
            out["plain_1t"] = (_PLAIN, {"size": size, "workers": args.plain_workers, "threads": 1})
            out["floor_1t"] = (_PLAIN, {"size": size, "premade": True, "threads": 1})
            out["floor_trainer"] = (_PUBLIC, {"size": size, "premade": True})
    if args.layouts:
        out["public_channels_last"] = (_PUBLIC, {"size": 28, "extra": {"channels_last": True}})
        out["public_compile"] = (_PUBLIC, {"size": 28, "extra": {"compile": True}})
    if args.baseline_tree:
        out["fasttrainer"] = (_FAST, {"size": 28, "tree": str(args.baseline_tree.resolve())})
    if args.transfer:
        out["transfer_loss"] = (_TRANSFER, {"size": 28, "blocks": 7,
                                            "script": str(HERE / "benchmarks" / "bench_transfer_loss.py")})
    if args.only:
        keep = set(args.only.split(","))
        unknown = keep - set(out)
        if unknown:
            raise SystemExit(f"--only: unknown variant(s) {', '.join(sorted(unknown))}; known: {', '.join(out)}")
        out = {k: v for k, v in out.items() if k in keep}
    return out


def busy_jiffies() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields[:8]) - idle) / hz, sum(fields[:8]) / hz


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_variant(name: str, code: str, settings: dict, args) -> dict:
    """One run of a variant in a child pinned to the budget; its rate, info and the others' CPU use."""
    cfg = {"warmup": args.warmup, "steps": args.steps, "batch": args.batch, "data": args.data, **settings}
    tree = settings.get("tree", str(HERE))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = tree
    load = os.getloadavg()
    busy0, _ = busy_jiffies()
    mine0, t0 = children_cpu(), time.monotonic()
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], env=env, cwd=tree, capture_output=True,
                         text=True, timeout=3600, preexec_fn=lambda: os.sched_setaffinity(0, args.cpus))
    wall = time.monotonic() - t0
    others = max(0.0, (busy_jiffies()[0] - busy0) - (children_cpu() - mine0)) / wall
    lines = out.stdout.splitlines()
    rate = [ln.split()[1] for ln in lines if ln.startswith("RESULT")]
    if out.returncode != 0 or not rate:
        raise RuntimeError(f"{name} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    info = json.loads(next((ln[5:] for ln in lines if ln.startswith("INFO ")), "{}"))
    return {"value": float(rate[0]), "load_before": [round(x, 2) for x in load],
            "others_busy_cores": round(others, 3), "wall_s": round(wall, 1), **info}


def settle(args) -> tuple[list[float], float]:
    """Wait (at most --settle s) for the 1-min load average to fall within the bound; (loads, waited s)."""
    bound, t0 = args.max_load * (os.cpu_count() or 1), time.monotonic()
    while os.getloadavg()[0] > bound and time.monotonic() - t0 < args.settle:
        time.sleep(5)
    return [round(x, 2) for x in os.getloadavg()], round(time.monotonic() - t0, 1)


def run_rounds(variants: dict, args) -> list[dict]:
    rounds = []
    bound = args.max_load * (os.cpu_count() or 1)
    for r in range(args.rounds):
        loads, waited = settle(args)
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        runs = {}
        for name in order:
            code, settings = variants[name]
            runs[name] = run_variant(name, code, settings, args)
            print(f"round {r}: {name} {runs[name]['value']:.3f} (load {runs[name]['load_before'][0]}, others "
                  f"{runs[name]['others_busy_cores']} cores)", flush=True)
        others = max(v["others_busy_cores"] for v in runs.values())
        quiet = loads[0] <= bound and others <= args.max_others
        rounds.append({"round": r, "order": order, "load_before": loads, "settle_waited_s": waited,
                       "max_others_busy_cores": others, "quiet": quiet, "runs": runs})
        print(f"round {r}: load {loads}, others up to {others} cores -> quiet={quiet}", flush=True)
    return rounds


RATIOS = [  # (numerator, denominator, what it says)
    ("public", "plain", "end-to-end vs the lightly-style loop (goal >= 1.5)"),
    ("public", "plain_1t", "end-to-end vs the lightly-style loop with 1 main thread"),
    ("public", "floor", "end-to-end as a fraction of the compute floor (goal >= 0.9)"),
    ("plain", "floor", "lightly-style loop as a fraction of the floor"),
    ("plain_1t", "floor", "lightly-style loop (1 main thread) as a fraction of the floor"),
    ("public", "floor_1t", "end-to-end as a fraction of the 1-thread floor"),
    ("floor_1t", "floor", "the floor at 1 thread vs at the budget's threads"),
    ("public", "public_inline", "prefetch on vs off"),
    ("public_1t", "public", "1 training thread + producer vs the default threads"),
    ("floor_trainer", "floor", "the trainer on pre-made views vs the bare loop on them"),
    ("public", "public_nokeep", "freed memory kept (the default on CPU) vs returned to the OS"),
    ("plain_keep", "plain", "the lightly-style loop with the trainer's allocator setting vs without"),
    ("floor_keep", "floor", "the floor with the trainer's allocator setting vs without"),
    ("public", "plain_keep", "end-to-end vs the lightly-style loop given the same allocator setting"),
    ("public", "floor_keep", "end-to-end as a fraction of the floor with the same allocator setting"),
    ("public@64", "plain@64", "64 px: end-to-end vs the lightly-style loop (goal >= 1.5)"),
    ("public@64", "public_nokeep@64", "64 px: freed memory kept vs returned to the OS"),
    ("plain_keep@64", "plain@64", "64 px: the lightly-style loop with the allocator setting vs without"),
    ("floor_keep@64", "floor@64", "64 px: the floor with the allocator setting vs without"),
    ("public@64", "plain_keep@64", "64 px: end-to-end vs the lightly-style loop with the same allocator setting"),
    ("public@64", "floor_keep@64", "64 px: end-to-end as a fraction of the floor with the same allocator setting"),
    ("public@64", "floor@64", "64 px: end-to-end as a fraction of the floor (goal >= 0.9)"),
    ("plain@64", "floor@64", "64 px: lightly-style loop as a fraction of the floor"),
    ("public_channels_last", "public", "channels_last vs the default layout"),
    ("public_compile", "public", "torch.compile vs eager"),
    ("fasttrainer", "public", "the old FastTrainer vs the public path"),
]
GOALS = {"public/plain": 1.5, "public/floor": 0.9, "public@64/plain@64": 1.5, "public@64/floor@64": 0.9}


def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    med = statistics.median(values)
    return {"n": len(values), "median": med, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / med if med else None}


def summarise(rounds: list[dict]) -> dict:
    """Per-variant statistics and ratios of medians, over all rounds and over quiet rounds."""
    out = {}
    for scope, chosen in (("all_rounds", rounds), ("quiet_rounds", [r for r in rounds if r["quiet"]])):
        names = {n for r in chosen for n in r["runs"]} - {"transfer_loss"}
        per = {n: _stats([r["runs"][n]["value"] for r in chosen if n in r["runs"]]) for n in sorted(names)}
        ratios = {}
        for num, den, what in RATIOS:
            if per.get(num, {}).get("n") and per.get(den, {}).get("n"):
                paired = [r["runs"][num]["value"] / r["runs"][den]["value"] for r in chosen
                          if num in r["runs"] and den in r["runs"]]
                ratios[f"{num}/{den}"] = {"ratio_of_medians": per[num]["median"] / per[den]["median"],
                                          "per_round": paired, "what": what}
        out[scope] = {"steps_per_s": per, "ratios": ratios, "transfer_loss": _transfer(chosen)}
    return out


def _transfer(rounds: list[dict]) -> dict:
    """The fused transfer loss's numbers per round: x eager, x its matmul floor, the checks' per-call cost."""
    runs = [r["runs"]["transfer_loss"] for r in rounds if "transfer_loss" in r["runs"]]
    if not runs:
        return {}
    keys = ("fused_ms", "eager_ms", "floor_ms", "fused_over_floor", "check_inputs_us", "dispatch_us",
            "checks_share_of_fused")
    out = {k: _stats([run[k] for run in runs]) for k in keys}
    out["eager_over_fused"] = _stats([run["value"] for run in runs])
    return out


def verdict(summary: dict, min_rounds: int) -> dict:
    """The goals, judged on quiet rounds only (need ``min_rounds`` of them)."""
    quiet = summary["quiet_rounds"]
    out = {}
    per = quiet["steps_per_s"]
    for key, goal in GOALS.items():
        num, den = key.split("/")
        base = den.split("@")[0]  # against the fastest baseline setting: threads, one thread, allocator kept
        dens = [d for d in (den.replace(base, base + x) for x in ("", "_1t", "_keep")) if per.get(d, {}).get("n")]
        den = max(dens, key=lambda d: per[d]["median"]) if dens else den
        n = min(per.get(num, {}).get("n", 0), per.get(den, {}).get("n", 0))
        if n < min_rounds:
            out[key] = {"goal": goal, "met": None, "why": f"{n} quiet rounds (need {min_rounds})"}
        else:
            v = per[num]["median"] / per[den]["median"]
            out[key] = {"goal": goal, "against": den, "value": v, "met": v >= goal, "short_by": max(0.0, goal - v)}
    return out


def machine(args) -> dict:
    import torch

    from rela_fast.environment import cpu_model

    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "budget_cpus": len(args.cpus),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.machine()}


def command_line(argv: list[str]) -> str:
    """The command as run, with paths outside the checkout replaced by ``<option>`` placeholders."""
    parts, prev = [], ""
    for a in argv:
        opt, eq, val = a.partition("=") if a.startswith("--") else ("", "", a)
        if not opt or eq:
            p = Path(val)
            if p.is_absolute():
                try:
                    val = str(p.resolve().relative_to(HERE))
                except ValueError:
                    val = f"<{(opt or prev).lstrip('-') or 'path'}>"
            a = f"{opt}={val}" if eq else val
        parts.append(a)
        prev = a
    return "python benchmarks/bench_train_e2e.py " + shlex.join(parts)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=DATA)
    p.add_argument("--baseline-tree", type=Path, help="checkout of the commit before #12 (its extension built)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--sizes", default="28,64", help="image sides (28: every variant; others: public/plain/floor)")
    p.add_argument("--cores", type=int, help="the budget: the first N CPUs this process may use (default: all)")
    p.add_argument("--plain-workers", type=int, help="DataLoader workers of the plain loop (default: the budget)")
    p.add_argument("--max-load", type=float, default=0.5, help="quiet: 1-min load average <= this x CPUs")
    p.add_argument("--max-others", type=float, default=0.25, help="quiet: other processes' cores in use, at most")
    p.add_argument("--settle", type=float, default=180, help="wait up to this many s for a quiet start of a round")
    p.add_argument("--min-quiet", type=int, default=3, help="quiet rounds needed to judge the goals")
    p.add_argument("--layouts", action="store_true", help="also channels_last and torch.compile")
    p.add_argument("--transfer", action="store_true", help="also the fused transfer loss vs eager and its floor")
    p.add_argument("--only", default="", help="comma list of variants to run")
    p.add_argument("--note", default="", help="a line recorded with the result (e.g. why it was run)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    allowed = sorted(os.sched_getaffinity(0))
    args.cpus = set(allowed[: args.cores] if args.cores else allowed)
    args.plain_workers = args.plain_workers if args.plain_workers is not None else len(args.cpus)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    variants = variants_for(args)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rounds = run_rounds(variants, args)
    summary = summarise(rounds)
    quiet_n = sum(r["quiet"] for r in rounds)
    result = {
        "suite": "train_e2e", "date": started, "command": command_line(argv), "machine": machine(args),
        "note": args.note,
        "setup": {"model": "convnet-16 + BYOL 512-128, AdamW", "batch": args.batch, "sizes": args.sizes,
                  "warmup_steps": args.warmup, "timed_steps": args.steps, "rounds": args.rounds,
                  "budget": f"{len(args.cpus)} CPUs for every variant (its process, threads and workers)",
                  "plain_workers": args.plain_workers, "quiet_bound": {
                      "load1_max": args.max_load * (os.cpu_count() or 1), "others_busy_cores_max": args.max_others}},
        "quiet": f"{quiet_n} of {len(rounds)} rounds quiet",
        "rounds": rounds, "summary": summary, "goals": verdict(summary, args.min_quiet),
    }
    print(json.dumps({"quiet": result["quiet"], "ratios": {k: round(v["ratio_of_medians"], 3) for k, v in
                                                           summary["all_rounds"]["ratios"].items()},
                      "goals": result["goals"]}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
