"""``rela-fast eval``: the linear probe (docs/ALGORITHM.md#probe-protocol) of a trained run's backbone."""

from __future__ import annotations

import argparse

from rela_fast.cli.validate import device, integer, real

HELP = "linear-probe a trained run: features extracted once, a linear layer trained on them (Adam, 100 epochs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (from `rela-fast train --out`) or a checkpoint file")
    parser.add_argument("--data", required=True, help="labelled training images for the probe")
    parser.add_argument("--test-data", help="labelled test images (default: the IDX folder's t10k split)")
    parser.add_argument("--epochs", type=integer(3), default=100, help="probe epochs (spec: 100)")
    parser.add_argument("--lr", type=real(0.0, lo_open=True), default=3e-4,
                        help="probe Adam learning rate (spec: 3e-4)")
    parser.add_argument("--batch-size", type=integer(1), default=256)
    parser.add_argument("--standardize", action="store_true", help="standardise features first (not the spec)")
    parser.add_argument("--device", type=device, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--workers", type=integer(0, 256), default=0)
    parser.add_argument("--seed", type=integer(0, 2**32 - 1), default=0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    from rela_fast.cli.validate import check_device
    from rela_fast.eval import linear_probe
    from rela_fast.models import load_backbone
    from rela_fast.train.metrics import MetricsLog, plot_metrics, read_metrics

    device = check_device(args.device)
    backbone, config, state = load_backbone(args.run, device)
    size = (config.get("backbone") or {}).get("image_size") or config.get("image_size")
    test = args.test_data if args.test_data is not None else args.data
    result = linear_probe(backbone, args.data, test, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                          image_size=size, device=device, num_workers=args.workers, seed=args.seed,
                          standardize=args.standardize, progress=not args.no_progress)
    run_dir = Path(args.run) if os.path.isdir(args.run) else Path(args.run).parent
    prog = state.get("train_state", {})
    row = {"event": "probe", "accuracy": result.accuracy, "step": prog.get("step"),
           "wall_time": prog.get("wall_time"), "epochs": result.epochs, "lr": result.lr,
           "train_accuracy": result.train_accuracy, "n_train": result.n_train, "n_test": result.n_test,
           "standardize": args.standardize}
    with open(run_dir / "probe.json", "w") as f:
        json.dump({**row, "test_accuracies": result.test_accuracies, "config": config}, f, indent=1)
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        log = MetricsLog(metrics)
        log.rewrite([r for r in read_metrics(metrics) if r.get("event") != "probe"])  # replaces an older probe
        log.log(row)
        plot_metrics({run_dir.name: metrics}, run_dir / "metrics.png", missing_ok=True)
    if args.json:
        print(json.dumps({**row, "test_accuracies": result.test_accuracies}))
        return 0
    print(f"probe acc   {result.accuracy:.4f} (mean of the last 3 of {result.epochs} epochs; "
          f"train acc {result.train_accuracy:.4f})")
    print(f"data        {result.n_train} train / {result.n_test} test images, {result.feature_dim} features, "
          f"{result.num_classes} classes")
    print(f"run         {run_dir}: {prog.get('step')} training steps, {prog.get('wall_time', 0):.1f} s")
    print(f"time        features {result.extract_seconds:.1f} s, probe {result.train_seconds:.1f} s on {device}")
    return 0
