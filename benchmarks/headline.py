"""The headline experiment: time to accuracy of BYOL vs ReLA-BYOL on all of Fashion-MNIST, with honest baselines.

Every run goes through the public :class:`rela_fast.ReLATrainer` (a :class:`~rela_fast.train.ProbeCallback`
probes after every epoch, outside the run's wall time). Each finished run is one file under ``OUT/runs/``;
a re-run skips it, so the experiment can be run in parts, across sessions (``--only`` picks rows):

    python benchmarks/headline.py                            # everything not yet run (headline-fmnist-e30)
    python benchmarks/headline.py --only baselines,byol --recipes authors
    python benchmarks/headline.py --report                   # summary, table, plot, commands.txt

The defaults (convnet-16, 30 epochs, the authors' recipe first) are the learning regime: there BYOL 100 % beats
the pixel probe by >= 2 points and the untrained student by >= 8. At 15 epochs (``headline-fmnist``) it does not.

Rows (ISSUE "The claim, measured where the baseline learns"): the pixel probe, the untrained student, the
prior's own targets, supervised cross-entropy at 100 % (the label ceiling), BYOL at 100/50/20/10 %, ReLA-BYOL at
50/20/10 % with the priors ``random`` (random init of the student's architecture), ``lite0``
(efficientnet_lite0) and ``byol`` (the seed-0 BYOL 100 % student, loaded as ``run:DIR``: the auxiliary
gift); each under ``--recipes`` (``default`` and/or ``authors``); ``--variants`` adds hand-over variants (at
``--variant-budgets``, 50 % unless told). ``--every-seed`` gives every seed to the ReLA rows picked by ``--priors``
and ``--rela-budgets`` (e.g. Lite0 at 10 % under the default recipe), which the main grid seeds only for the random
and the best prior at 50 and 20 %.

Probe (docs/ALGORITHM.md): frozen features, z-scored, a linear layer, Adam 3e-4, 100 epochs, mean of the last 3
epochs' test accuracy; trained on ``--probe-train`` train images, tested on all 10,000 test images. A ReLA
run's wall time includes its prior's whole conversion. ``summary.json`` holds the machine-readable result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rela_fast import demo as D  # noqa: E402
from rela_fast.train import Callback  # noqa: E402

BYOL_BUDGETS = (1.0, 0.5, 0.2, 0.1)
RELA_BUDGETS = (0.5, 0.2, 0.1)
SEEDED = {"byol": (1.0, 0.5, 0.2), "rela": (0.5, 0.2)}  # rows that get every seed (ReLA: best + random prior)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/headline-fmnist-e30")
    p.add_argument("--data", default=None)
    p.add_argument("--arch", default="convnet-16")
    p.add_argument("--train-images", type=int, default=60000, help="fewer only for a smoke run")
    p.add_argument("--epochs", type=int, default=30, help="30: where BYOL 100 %% learns (15 does not)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3, help="the default recipe's (authors: their own 1e-3)")
    p.add_argument("--probe-train", type=int, default=10000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0,
                   help="skip the seeds below this one (two processes can split the seeds)")
    p.add_argument("--priors", default="random,lite0,byol")
    p.add_argument("--rela-budgets", default="0.5,0.2,0.1", help="the budgets of the rela group, comma list")
    p.add_argument("--every-seed", action="store_true",
                   help="every ReLA row picked gets every seed (by default only the random and the best prior at "
                        "50 and 20 %%): completes the seeds of one prior, e.g. --priors lite0 --rela-budgets 0.1")
    p.add_argument("--lite-size", type=int, default=32)
    p.add_argument("--recipes", default="authors,default", help="comma list of authors, default (run in that order)")
    p.add_argument("--variants", default="", help="hand-over variants for ReLA 50 %% of the best prior: soft:N "
                   "(blend over N steps), floor:x (keep x ReLA), lr:constant (no decay), retarget (BYOL target "
                   "restarted at the switch), warmheads:N (backbone frozen for the first N steps of phase 2), "
                   "constant:f (switch after f of the epochs)")
    p.add_argument("--variant-prior", default="", help="prior(s) of the variant runs, comma list (default: the best)")
    p.add_argument("--variant-recipe", default="default", choices=("default", "authors"),
                   help="recipe of the variant runs")
    p.add_argument("--variant-seeds", type=int, default=1, help="seeds of the variant runs (at most --seeds)")
    p.add_argument("--variant-budgets", default="0.5", help="budgets of the variant runs, comma list")
    p.add_argument("--only", default="",
                   help="comma list of row groups: baselines, byol, rela, supervised, variants, infobatch")
    p.add_argument("--infobatch-arms", default="byol,rela",
                   help="which InfoBatch comparisons to run: byol, rela (two processes can take one each)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report", action="store_true", help="only rewrite summary.json, table.md and plot.png")
    args = p.parse_args(argv)
    if not 0 <= args.first_seed < args.seeds:
        p.error(f"--first-seed {args.first_seed}: use a seed in 0..{args.seeds - 1} (below --seeds {args.seeds})")
    unknown = set(args.infobatch_arms.split(",")) - {"byol", "rela"}
    if unknown:
        p.error(f"--infobatch-arms {args.infobatch_arms}: use a comma list of byol, rela "
                f"(not {', '.join(sorted(unknown))})")
    for name in ("rela_budgets", "variant_budgets"):
        try:
            setattr(args, name, parse_budgets(getattr(args, name)))
        except ValueError as why:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: {why}")
    for variant in [v for v in args.variants.split(",") if v]:
        try:
            parse_variant(variant)
        except ValueError as why:
            p.error(f"--variants {variant}: {why}")
    return args


def parse_budgets(text: str) -> tuple[float, ...]:
    """The budgets of a comma list ("0.5,0.2"), each a fraction of the full run's steps in (0, 1]; ValueError
    saying what to write instead (parse() turns it into a one-line usage error)."""
    try:
        budgets = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        budgets = ()
    if not budgets or not all(0 < b <= 1 for b in budgets):
        raise ValueError("use a comma list of fractions in (0, 1], e.g. 0.5,0.2")
    return budgets


def shown(out: Path) -> str:
    """``out`` as a reader re-runs it from the repository root: relative to this checkout, or, for a folder in
    another checkout (experiments run from a frozen worktree write into the main one), from its ``benchmarks``."""
    if out.is_relative_to(ROOT):
        return str(out.relative_to(ROOT))
    parts = out.parts
    return str(Path(*parts[parts.index("benchmarks"):])) if "benchmarks" in parts else str(out)


VARIANT_ARGS = {"soft": int, "warmheads": int, "floor": float, "constant": float, "lr": str, "retarget": None}


def parse_variant(variant: str) -> tuple[str, Any]:
    """(mode, typed argument) of one ``--variants`` value (mode[:arg]); ("", None) for none. Raises ValueError
    saying what to write instead, so parse() refuses it before any run starts and train() reads the same value."""
    if not variant:
        return "", None
    mode, colon, arg = variant.partition(":")
    if mode not in VARIANT_ARGS:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(VARIANT_ARGS)}")
    kind = VARIANT_ARGS[mode]
    if kind is None:
        if colon:
            raise ValueError(f"{mode} takes no argument")
        return mode, None
    if kind is str:
        if arg != "constant":
            raise ValueError(f"use {mode}:constant")
        return mode, arg
    try:
        value = kind(arg)
    except ValueError:
        value = None
    if value is None or not value >= 0:  # also refuses nan
        raise ValueError(f"use {mode}:N with a non-negative {kind.__name__} N")
    return mode, value


def recipe_setup(setup: D.Setup, recipe: str) -> D.Setup:
    """The experiment's settings for one recipe: ``--lr`` and the weight decay are the default recipe's; the
    authors' recipe keeps its own (lr 1e-3, weight decay 0.01 on every parameter)."""
    if recipe == "authors":
        return dataclasses.replace(setup, recipe=recipe, lr=None, weight_decay=None)
    return dataclasses.replace(setup, recipe=recipe)


class RetargetOnHandover(Callback):
    """Hand-over variant "retarget": restart BYOL's momentum target from the online network at the switch."""

    def on_handover(self, trainer, state):
        m = trainer.method_module
        if hasattr(m, "target_backbone"):
            m.target_backbone.load_state_dict(trainer.backbone_module.state_dict())
            m.target_projector.load_state_dict(m.projector.state_dict())


class SaveCurve(Callback):
    """Keeps the probe curve beside the run's checkpoint after every epoch, so a resumed run keeps it too."""

    def __init__(self, probe: D.ProbeCallback, path: Path) -> None:
        self.probe, self.path = probe, path

    def on_epoch_end(self, trainer, state):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.probe.curve))


class Experiment:
    """The runs of one experiment folder: each a JSON file under ``runs/``, written when the run finishes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, args.out
        (self.out / "runs").mkdir(parents=True, exist_ok=True)
        self.setup = D.Setup(arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             threads=args.threads)
        self._data = self._prober = None

    @property
    def data(self) -> D.DemoData:
        if self._data is None:
            self._data = D.load_fashion_mnist(self.args.data, self.args.train_images, self.args.probe_train, 10000,
                                              seed=0)
            self._prober = D.Prober(self._data, self.setup.image_size)
        return self._data

    @property
    def prober(self) -> D.Prober:
        self.data  # noqa: B018 - loading the data builds the prober
        return self._prober

    def done(self, key: str) -> dict | None:
        path = self.out / "runs" / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def record(self, key: str, row: dict) -> dict:
        row = {"key": key, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **row}
        path = self.out / "runs" / f"{key}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(row, indent=1, default=float) + "\n")
        os.replace(tmp, path)
        acc = row.get("acc")
        print(f"[{time.strftime('%H:%M:%S')}] {key}: acc {acc if acc is None else round(100 * acc, 2)} %, "
              f"{row.get('steps', 0)} steps, {row.get('wall_s', 0):.0f} s", flush=True)
        return row

    # -- baselines ----------------------------------------------------------------------------
    def baselines(self) -> None:
        if not self.done("pixels"):
            self.record("pixels", {"row": "pixels", "acc": self.prober.pixels(0)})
        for seed in range(self.args.seeds):
            key = f"untrained-s{seed}"
            if not self.done(key):
                net = D.student_backbone(self.setup.arch, self.setup.image_size, seed)
                self.record(key, {"row": "untrained", "seed": seed, "acc": self.prober(net, seed)})

    def prior_targets(self, prior: str, store) -> None:
        """The probe on the prior's stored targets, and once the same probe on the pixels of the same images: the
        targets exist only for train-split images, so this probe trains on one half of them and tests on the
        other, not on the test split; the pixel row says how much easier that protocol is."""
        rows = np.asarray(store.rows)
        take = np.random.default_rng(0).permutation(len(rows))[: 2 * self.args.probe_train]
        labels = np.asarray(self.data.train.labels)[rows[take]]
        note = f"probe on {len(take) // 2} / {len(take) // 2} disjoint train-split images"
        if not self.done(key := f"prior-targets-{prior}"):
            acc = self.prober.targets(np.asarray(store.targets)[take], labels, 0)
            self.record(key, {"row": "prior_targets", "prior": prior, "acc": acc, "note": f"{note}, stored targets"})
        if not self.done("pixels-train-split"):
            pixels = np.stack([np.asarray(self.data.train.read(int(r))).reshape(-1) for r in rows[take]]) / 255.0
            acc = self.prober.targets(pixels, labels, 0)
            self.record("pixels-train-split", {"row": "pixels_train_split", "acc": acc,
                                               "note": f"{note}, raw pixels: the prior targets' protocol"})

    # -- conversions ----------------------------------------------------------------------------
    def conversion(self, prior: str):
        """(store, seconds): the whole train split converted once per prior (reused on re-runs). A store rebuilt
        because ``work/`` was lost keeps the recorded seconds: every seed of a row then pays the same conversion
        (the targets are the same), not one measured under whatever else the machine runs that day."""
        from rela_fast.targets import load_targets

        store_dir = self.out / "work" / f"targets-{prior}"
        rec = self.done(f"conversion-{prior}")
        if rec is not None and (store_dir / "meta.json").is_file():
            store = load_targets(store_dir)
            self.prior_targets(prior, store)  # done already, or a baseline added since
            return store, rec["seconds"]
        s = self.setup
        if prior == "random":
            mod, size = D.prior_module("random", s.arch, s.image_size, seed=0)
        elif prior == "byol":
            run_dir = self.byol_prior_run()
            mod, size = f"run:{run_dir}", s.image_size
        else:
            mod, size = "efficientnet_lite0", self.args.lite_size
        dim = min(D.feature_dim_of(s.arch, s.image_size), D.prior_width(mod, size))
        store, secs = D.convert_with(self.data, store_dir, mod, size, dim)
        if rec is not None:  # work/ is not committed: the same store rebuilt on another machine or day
            print(f"[{time.strftime('%H:%M:%S')}] conversion-{prior}: store rebuilt in {secs:.0f} s; the recorded "
                  f"{rec['seconds']:.0f} s stays every run's conversion cost", flush=True)
            return store, rec["seconds"]
        self.record(f"conversion-{prior}", {"row": "conversion", "prior": prior, "seconds": secs, "size": size,
                                            "dim": store.dim, "n": len(store)})
        self.prior_targets(prior, store)
        return store, secs

    def byol_prior_run(self) -> Path:
        """The seed-0 BYOL 100 % run directory (trained here if needed): the auxiliary gift, as ``run:DIR``."""
        run_dir = self.out / "work" / "run-byol-100-s0"
        self.train("byol", "default", None, "-", 1.0, 0)
        if not (run_dir / "checkpoint.pt").is_file():  # work/ is not committed: on a new machine, retrain the prior
            spec = D.RunSpec("byol-prior", 1.0, False, seed=0)
            D.make_trainer(spec, self.setup, self.data, None, [], out=run_dir).fit(self.data.train, resume=True)
        return run_dir

    # -- training runs --------------------------------------------------------------------------
    @staticmethod
    def key(method: str, recipe: str, prior: str, budget: float, seed: int, variant: str = "",
            policy: str = "random") -> str:
        v = f"-{variant.replace(':', '')}" if variant else ""
        p = "" if policy == "random" else f"-{policy}"
        return f"{method}-{recipe}-{prior}-b{round(100 * budget)}-s{seed}{v}{p}"

    def train(self, method: str, recipe: str, store, prior: str, budget: float, seed: int, conv_s: float = 0.0,
              variant: str = "", run_dir: Path | None = None, policy: str = "random") -> dict:
        key = self.key(method, recipe, prior, budget, seed, variant, policy)
        if (row := self.done(key)) is not None:
            return row
        rela = store is not None
        mode, value = parse_variant(variant)
        handover = "constant" if mode == "constant" else "adaptive"
        if mode == "lr":  # the learning rate at the switch: a constant schedule instead of the cosine decay
            recipe_kw = {"schedule": value}
        else:
            recipe_kw = {}
        spec = D.RunSpec(key, budget, rela, prior=prior, seed=seed, handover=handover,
                         lambda_const=value if mode == "constant" else 0.5,
                         soft_steps=value if mode == "soft" else 0, floor=value if mode == "floor" else 0.0,
                         warm_heads=value if mode == "warmheads" else 0,
                         method=method, policy=policy)
        if key == self.key("byol", "default", "-", 1.0, 0):
            run_dir = self.out / "work" / "run-byol-100-s0"  # kept: the 'byol' prior loads it as run:DIR
        run_dir = run_dir or self.out / "work" / f"run-{key}"  # checkpoints: a killed run resumes next time
        setup = recipe_setup(self.setup, recipe)
        probe = D.ProbeCallback(self.prober, every=1)
        curve_file = run_dir / "curve.json"
        if curve_file.is_file() and (run_dir / "checkpoint.pt").is_file():
            probe.curve = json.loads(curve_file.read_text())  # the probes of the epochs before a resume
        callbacks = [probe, SaveCurve(probe, curve_file)] + ([RetargetOnHandover()] if mode == "retarget" else [])
        trainer = D.make_trainer(spec, setup, self.data, store, callbacks, out=run_dir, **recipe_kw)
        res = trainer.fit(self.data.train, resume=True)
        curve = [{**p, "wall_s": p["train_s"] + conv_s} for p in probe.curve]
        return self.record(key, {
            "row": method if not rela else "rela", "method": "byol" if method != "supervised" else method,
            "rela": rela, "prior": prior if rela else None, "recipe": recipe, "budget": budget, "seed": seed,
            "variant": variant or None, "policy": policy, "acc": probe.final, "steps": res.steps,
            "train_s": res.wall_time,
            "conversion_s": conv_s, "wall_s": res.wall_time + conv_s, "handover_step": res.switch_step,
            "curve": curve})

    def run(self) -> None:
        a, only = self.args, {x for x in self.args.only.split(",") if x}
        want = lambda group: not only or group in only  # noqa: E731
        torch.set_num_threads(a.threads)
        recipes = [r for r in a.recipes.split(",") if r]
        if want("baselines"):
            self.baselines()
        for seed in range(a.first_seed, a.seeds):  # complete seeds one after the other: a partial result has every row
            for recipe in recipes:
                if want("byol"):
                    for b in BYOL_BUDGETS:
                        if seed == 0 or b in SEEDED["byol"]:
                            self.train("byol", recipe, None, "-", b, seed)
                if want("rela"):
                    for prior in [p for p in a.priors.split(",") if p]:
                        store, conv_s = self.conversion(prior)
                        for b in a.rela_budgets:
                            if seed == 0 or a.every_seed or (b in SEEDED["rela"]
                                                             and prior in ("random", self.best_prior(recipe))):
                                self.train("byol", recipe, store, prior, b, seed, conv_s)
            if seed == 0 and want("supervised"):
                self.train("supervised", "default", None, "-", 1.0, 0)
            if want("infobatch"):
                self.infobatch_vs_random(seed)
            if seed < a.variant_seeds and want("variants"):
                for prior in (a.variant_prior or self.best_prior(a.variant_recipe)).split(","):
                    for var in [v for v in a.variants.split(",") if v]:
                        store, conv_s = self.conversion(prior)
                        for b in a.variant_budgets:
                            self.train("byol", a.variant_recipe, store, prior, b, seed, conv_s, variant=var)

    def infobatch_vs_random(self, seed: int) -> None:
        """InfoBatch as published at full budget vs a random subset of the same size (ISSUE "Score-based
        subsets"), for BYOL and ReLA-BYOL (best prior). The matched random budget is seed 0's InfoBatch
        steps over the full-budget steps, so every seed compares the same two rows."""
        wanted, arms = set(self.args.infobatch_arms.split(",")), []  # arms: (store, prior, conversion s)
        if "byol" in wanted:
            arms.append((None, "-", 0.0))
        if "rela" in wanted:
            prior = self.best_prior()
            store, conv_s = self.conversion(prior)
            arms.append((store, prior, conv_s))
        for store, prior, conv_s in arms:
            self.train("byol", "default", store, prior, 1.0, seed, conv_s, policy="infobatch")
            self.train("byol", "default", store, prior, self.matched_budget(prior), seed, conv_s)

    def full_steps(self, train: bool = True) -> int | None:
        """Optimiser steps of a full-budget run, as the trainer counted them in seed 0's BYOL 100 % run: one
        count, from the code that trains. The run is trained first if it is missing, unless ``train`` is False
        (a report never trains), then None."""
        key = self.key("byol", "default", "-", 1.0, 0)
        row = self.done(key) or (self.train("byol", "default", None, "-", 1.0, 0) if train else None)
        return row["steps"] if row else None

    def matched_budget(self, prior: str) -> float:
        """Seed 0's InfoBatch steps as a fraction of the full-budget steps (two decimals)."""
        ib = self.done(self.key("byol", "default", prior, 1.0, 0, policy="infobatch"))
        return round(ib["steps"] / self.full_steps(), 2)

    def best_prior(self, recipe: str = "default") -> str:
        """The prior whose seed-0 ReLA 50 % run under ``recipe`` probes best so far (lite0 before any is known)."""
        runs = [r for r in self.rows() if r.get("row") == "rela" and r["budget"] == 0.5 and r["seed"] == 0
                and not r.get("variant") and r.get("policy", "random") == "random" and r["recipe"] == recipe]
        return max(runs, key=lambda r: r["acc"])["prior"] if runs else "lite0"

    def rows(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted((self.out / "runs").glob("*.json"))]


# ------------------------------------------------------------------------------------------------
# summary, table, plot
# ------------------------------------------------------------------------------------------------
def _mean(xs):
    return statistics.fmean(xs) if xs else None


def summarise(exp: Experiment) -> dict:
    rows = exp.rows()
    by = lambda kind: [r for r in rows if r.get("row") == kind]  # noqa: E731
    px, un = by("pixels"), by("untrained")
    pts = by("pixels_train_split")
    base = {"pixels": px[0]["acc"] if px else None, "untrained": _mean([r["acc"] for r in un]),
            "pixels_train_split": pts[0]["acc"] if pts else None,
            "prior_targets": {r["prior"]: r["acc"] for r in by("prior_targets")},
            "supervised": _mean([r["acc"] for r in by("supervised")])}
    groups: dict[tuple, list[dict]] = {}
    for r in by("byol") + by("rela"):
        policy = r.get("policy", "random")
        var = "/".join(x for x in (r.get("variant"), None if policy == "random" else policy) if x)
        groups.setdefault((r["rela"], r["prior"], r["recipe"], r["budget"], var or None), []).append(r)
    refs = {}  # per recipe: BYOL 100 %'s mean final accuracy and wall time, the target of that recipe's ReLA rows
    for recipe in {k[2] for k in groups}:
        ref = groups.get((False, None, recipe, 1.0, None), [])
        refs[recipe] = {f: (_mean([r["acc"] for r in ref]), _mean([r[f] for r in ref])) for f in ("wall_s", "steps")}
    out_rows = []
    for (rela, prior, recipe, budget, variant), rs in sorted(groups.items(), key=lambda kv: _order(kv[0])):
        rs = sorted(rs, key=lambda r: r["seed"])
        row = {"method": "byol", "rela": rela, "prior": prior, "recipe": recipe, "budget": budget,
               "seeds": [r["seed"] for r in rs], "acc": [r["acc"] for r in rs],
               "steps": round(_mean([r["steps"] for r in rs])),
               "wall_s": [round(r["wall_s"], 1) for r in rs], "handover_step": [r["handover_step"] for r in rs],
               "time_to_byol100": _time_to(rs, *refs[recipe]["wall_s"]) if rela else None,
               "steps_to_byol100": _time_to(rs, *refs[recipe]["steps"], field="step") if rela else None}
        if variant:
            row["variant"] = variant
        if len({r["steps"] for r in rs}) > 1 or "infobatch" in (variant or ""):  # a random subset size
            row["steps_per_seed"] = [r["steps"] for r in rs]
            if full := exp.full_steps(train=False):
                row["steps_saved"] = round(1 - row["steps"] / full, 3)
        out_rows.append(row)
    a = exp.args
    return {"dataset": "fashion-mnist", "train_images": a.train_images, "untrained_seeds": len(un),
            "probe": {"train": a.probe_train, "test": 10000},
            "student": a.arch, "epochs": a.epochs, "batch_size": a.batch_size, "baselines": base, "rows": out_rows,
            "conversions": {r["prior"]: {k: r[k] for k in ("seconds", "size", "dim")} for r in by("conversion")},
            "curves": {r["key"]: r["curve"] for r in by("byol") + by("rela") if r["seed"] == 0},
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs shared with other jobs, torch "
                       f"{torch.__version__}, {a.threads} torch thread(s) per run"}


def _order(k):
    rela, prior, recipe, budget, variant = k
    return (recipe != "default", bool(variant), rela, str(prior), -budget, str(variant))


def _time_to(rs: list[dict], target: float | None, ref: float | None, field: str = "wall_s") -> float | None:
    """Fraction of BYOL-100 %'s (same recipe) mean ``field`` (wall time incl. conversion, or ``step``) this row
    needed: the mean over seeds of its first probe point at or above BYOL-100 %'s final mean accuracy; None if a
    seed never got there. Steps are the robust measure on a shared machine; wall time counts that a phase-1 step
    is cheaper than a BYOL step and that the conversion is not free."""
    if target is None or not ref:
        return None
    hits = [next((p[field] for p in r["curve"] if p["acc"] >= target), None) for r in rs]
    return None if None in hits else round(_mean(hits) / ref, 3)


def _pct(xs):
    xs = [100 * x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{_mean(xs):.2f}" + (f" +- {statistics.stdev(xs):.2f}" if len(xs) > 1 else "")


def table(summary: dict) -> str:
    from rela_fast.tables import render_table

    b = summary["baselines"]
    rows = [("linear probe on the raw pixels", "-", "-", "-", _pct([b["pixels"]]), 1, 0, "-", "-", "-"),
            ("untrained student", "-", "-", "-", _pct([b["untrained"]]), summary.get("untrained_seeds", 1), 0, "-",
             "-", "-")]
    if b.get("pixels_train_split") is not None:
        rows.append(("raw pixels, the targets' protocol (train-split halves)", "-", "-", "-",
                     _pct([b["pixels_train_split"]]), 1, 0, "-", "-", "-"))
    rows += [(f"the prior's own targets ({k}; train-split halves)", k, "-", "-", _pct([v]), 1, 0, "-", "-", "-")
             for k, v in b["prior_targets"].items()]
    if b["supervised"] is not None:
        rows.append(("supervised cross-entropy (label ceiling)", "-", "default", "100 %", _pct([b["supervised"]]), 1,
                     "-", "-", "-", "-"))
    for r in summary["rows"]:
        name = ("ReLA-BYOL" if r["rela"] else "BYOL") + (f", {r['variant']}" if r.get("variant") else "")
        ho = [h for h in r["handover_step"] if h is not None]
        rows.append((name, r["prior"] or "-", r["recipe"], f"{100 * r['budget']:.0f} %", _pct(r["acc"]),
                     len(r["seeds"]), f"{r['steps']}" + (f" ({100 * r['steps_saved']:.0f} % saved)"
                                                         if "steps_saved" in r else ""), f"{_mean(r['wall_s']):.0f}",
                     f"{len(ho)}/{len(r['seeds'])}" + (f" (step {int(_mean(ho))})" if ho else "") if r["rela"] else "-",
                     "-" if r["time_to_byol100"] is None else
                     f"{r['time_to_byol100']:.2f} ({r.get('steps_to_byol100') or 0:.2f})"))
    return render_table(("row", "prior", "recipe", "budget", "probe acc. (%)", "seeds", "steps",
                         "wall s (incl. conversion)", "handed over",
                         "time (steps) to BYOL-100 % acc., fraction of BYOL-100 %'s"), rows,
                        align="llllrrrrrr")


CURVE_KEY = re.compile(r"^(?P<method>\w+)-(?P<recipe>\w+)-(?P<prior>.*)-b(?P<budget>\d+)-s\d+(?P<extra>.*)$")
BUDGET_STYLE = {"100": "-", "50": "-", "20": "--"}


def plot(summary: dict, path: Path) -> None:
    """Seed 0's probe curves against steps and wall time, one row of panels per recipe; colour = prior (or
    variant), line style = budget, the full-budget BYOL run thick."""
    from rela_fast.plotting import require_pyplot

    plt = require_pyplot(str(path))
    curves = {k: c for k, c in summary["curves"].items() if c and (m := CURVE_KEY.match(k)) and m["budget"] != "10"}
    recipes = sorted({CURVE_KEY.match(k)["recipe"] for k in curves}) or ["default"]
    fig, axes = plt.subplots(len(recipes), 2, figsize=(12, 4.5 * len(recipes)), squeeze=False)
    colours: dict[str, str] = {}
    for key, curve in sorted(curves.items()):
        m = CURVE_KEY.match(key)
        group = m["method"] if m["prior"] == "-" else f"ReLA {m['prior']}{m['extra']}"
        colour = colours.setdefault(group, f"C{len(colours) % 10}")
        row = axes[recipes.index(m["recipe"])]
        for ax, x in zip(row, ("step", "wall_s")):
            ax.plot([p[x] for p in curve], [100 * p["acc"] for p in curve], marker=".", color=colour,
                    ls=BUDGET_STYLE.get(m["budget"], ":"), lw=2.5 if m["budget"] == "100" else 1.2,
                    label=f"{group}, {m['budget']} %")
    b = summary["baselines"]
    for row, recipe in zip(axes, recipes):
        for ax, xlabel in zip(row, ("optimisation steps", "wall time (s, incl. conversion)")):
            for name, v, style in (("pixels", b["pixels"], "--"), ("untrained", b["untrained"], ":")):
                if v is not None:
                    ax.axhline(100 * v, color="gray", ls=style, label=name)
            ax.set(xlabel=xlabel, ylabel="linear probe accuracy (%)", title=f"{recipe} recipe")
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=6, loc="lower right", ncol=2)
    fig.suptitle("Fashion-MNIST (60k): probe accuracy per epoch, seed 0 (10 % runs left out)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reproduce_commands(exp: Experiment) -> list[list[str]]:
    """The invocations that run exactly the row groups this folder holds (whatever partial commands produced
    them): one for the main rows, one per prior whose ReLA rows got extra seeds (``--every-seed``), one per set
    of variants sharing prior(s), recipe, seeds and budgets, then the report."""
    a, rows = exp.args, [r for r in exp.rows() if "recipe" in r]  # the training runs
    common, defaults = ["--out", shown(a.out)], parse([])
    for name in ("data", "arch", "train_images", "epochs", "batch_size", "lr", "probe_train", "priors",
                 "lite_size", "threads"):
        if getattr(a, name) != getattr(defaults, name):
            common += [f"--{name.replace('_', '-')}", str(getattr(a, name))]
    plain = [r for r in rows if not r.get("variant")]
    ib = [r for r in plain if r.get("policy") == "infobatch"]
    grid = [r for r in plain if r.get("policy") != "infobatch" and r["budget"] in (*BYOL_BUDGETS, *RELA_BUDGETS)]
    only = ["baselines", *sorted({r["row"] for r in grid}), *(["infobatch"] if ib else [])]
    main = common + ["--seeds", str(max([r["seed"] for r in plain], default=0) + 1), "--recipes",
                     ",".join(sorted({r["recipe"] for r in plain} | {"default"})), "--only", ",".join(only)]
    if ib:
        main += ["--infobatch-arms", ",".join(sorted({"byol" if r["prior"] is None else "rela" for r in ib}))]
    return [main, *_extra_seed_commands(exp, grid, common), *_variant_commands(rows, common), common + ["--report"]]


def _budgets(rows: list[dict]) -> str:
    return ",".join(f"{b:g}" for b in sorted({r["budget"] for r in rows}, reverse=True))


def _extra_seed_commands(exp: Experiment, grid: list[dict], common: list[str]) -> list[list[str]]:
    """Commands for the ReLA rows with seeds beyond the main rule (random and best prior at 50 / 20 %)."""
    extra: dict[tuple, list[dict]] = {}  # (recipe, prior, budget) -> its runs
    for r in grid:
        if r["row"] == "rela" and r["seed"] > 0 and not (
                r["budget"] in SEEDED["rela"] and r["prior"] in ("random", exp.best_prior(r["recipe"]))):
            extra.setdefault((r["recipe"], r["prior"], r["budget"]), []).append(r)
    groups: dict[tuple, list[dict]] = {}  # (recipe, prior, seeds) -> runs of every budget
    for (recipe, prior, _), rs in extra.items():
        groups.setdefault((recipe, prior, max(r["seed"] for r in rs) + 1), []).extend(rs)
    return [common + ["--seeds", str(n), "--recipes", recipe, "--only", "rela", "--priors", prior,
                      "--rela-budgets", _budgets(rs), "--every-seed"]
            for (recipe, prior, n), rs in sorted(groups.items())]


def _variant_commands(rows: list[dict], common: list[str]) -> list[list[str]]:
    runs: dict[tuple, list[dict]] = {}  # (variant, recipe) -> its runs
    for r in rows:
        if r.get("variant"):
            runs.setdefault((r["variant"], r["recipe"]), []).append(r)
    groups: dict[tuple, list[str]] = {}  # (priors, recipe, seeds, budgets) -> variants
    for (var, recipe), rs in sorted(runs.items()):
        key = (",".join(sorted({r["prior"] for r in rs})), recipe, max(r["seed"] for r in rs) + 1, _budgets(rs))
        groups.setdefault(key, []).append(var)
    return [common + ["--seeds", str(n), "--only", "variants", "--variants", ",".join(vs),
                      "--variant-prior", priors, "--variant-recipe", recipe, "--variant-seeds", str(n)]
            + ([] if budgets == "0.5" else ["--variant-budgets", budgets])
            for (priors, recipe, n, budgets), vs in groups.items()]


def claims_section(summary: dict) -> str:
    """Every ReLA row against the strongest BYOL baseline of either recipe (benchmarks/claims.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("claims", ROOT / "benchmarks" / "claims.py")
    claims = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claims)
    return ("Each ReLA row against the strongest BYOL baseline of either recipe, at 100 % and at the row's own "
            "budget (`python benchmarks/claims.py`; the difference of means in points +- its standard error, "
            "'within noise' inside two of them):\n\n" + claims.render(claims.compare(summary), summary))


def report(exp: Experiment) -> None:
    summary = summarise(exp)
    out = exp.out
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    a = exp.args
    head = (f"Fashion-MNIST, all 60,000 train images; student {a.arch} at 28 px; {a.epochs} epochs at batch "
            f"{a.batch_size} at full budget; probe (docs/ALGORITHM.md): {a.probe_train} train / 10,000 test images "
            "(z-scored features). ReLA wall time includes the prior's whole conversion, but not the training of the "
            "`byol` prior (it is the BYOL 100 % seed-0 run itself: add that row's wall time for a fair cost). Wall "
            "times come from 2 CPU cores shared by 1-4 concurrent runs and other jobs: indicative; steps are exact. "
            "Machine-readable: "
            f"`{shown(out)}/summary.json`.")
    (out / "table.md").write_text(head + "\n\n" + table(summary) + "\n\n" + claims_section(summary) + "\n")
    plot(summary, out / "plot.png")
    cmds = "\n".join(" ".join(shlex.quote(x) for x in ["python", "benchmarks/headline.py", *args])
                      for args in reproduce_commands(exp))
    (out / "commands.txt").write_text(f"# reproduce every row (from the repository root, in the project's venv; "
                                      f"finished runs are skipped, so it can be run in parts):\n{cmds}\n"
                                      f"# machine: {summary['machine']}\n")
    print(table(summary))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    exp = Experiment(parse(argv))
    if not exp.args.report:
        exp.run()
    report(exp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
