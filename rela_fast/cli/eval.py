"""``rela-fast eval``: the linear probe (docs/ALGORITHM.md#probe-protocol) of a trained run's backbone."""

from __future__ import annotations

import argparse

from rela_fast.cli.aliases import add_deprecated_alias
from rela_fast.cli.validate import device, integer, out_path, real

HELP = "linear-probe a trained run: features extracted once, a linear layer trained on them (Adam, 100 epochs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (from `rela-fast train --out`) or a checkpoint file")
    parser.add_argument("--data", required=True, help="labelled training images for the probe")
    parser.add_argument("--test-data", help="labelled test images (default: the IDX folder's t10k split)")
    parser.add_argument("--epochs", type=integer(3), default=100, help="probe epochs (spec: 100)")
    parser.add_argument("--lr", type=real(0.0, lo_open=True), default=3e-4,
                        help="probe Adam learning rate (spec: 3e-4)")
    parser.add_argument("--batch-size", type=integer(1), default=256,
                        help="images per feature-extraction batch and probe mini-batch (default 256)")
    parser.add_argument("--standardize", action="store_true", help="standardise features first (not the spec)")
    parser.add_argument("--device", type=device, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--workers", type=integer(0, 256), default=0,
                        help="parallel image readers: data-loader worker processes (default 0: in this process)")
    parser.add_argument("--seed", type=integer(0, 2**32 - 1), default=0,
                        help="seed of the probe's initialisation and mini-batch order")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", type=out_path, help="folder for probe.json (new, empty, or an earlier eval's); "
                        "default: beside the run's own files when rela_fast made the run, else printed only")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_deprecated_alias(parser, "--no-progress", "--quiet", "quiet", flag=True)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from rela_fast.cli.validate import check_device
    from rela_fast.eval import linear_probe
    from rela_fast.eval.record import not_kept_note, probe_output, record_probe, run_folder
    from rela_fast.models import load_backbone

    device = check_device(args.device)
    backbone, config, state = load_backbone(args.run, device)
    size = (config.get("backbone") or {}).get("image_size") or config.get("image_size")
    test = args.test_data if args.test_data is not None else args.data
    with probe_output(args.run, args.out) as folder:  # settled (or refused) before the probe runs
        result = linear_probe(backbone, args.data, test, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                              image_size=size, device=device, num_workers=args.workers, seed=args.seed,
                              standardize=args.standardize, progress=not args.quiet)
        prog = state.get("train_state", {})
        prog = prog if isinstance(prog, dict) else {}
        row = {"event": "probe", "accuracy": result.accuracy, "step": prog.get("step"),
               "wall_time": prog.get("wall_time"), "epochs": result.epochs, "lr": result.lr,
               "train_accuracy": result.train_accuracy, "n_train": result.n_train, "n_test": result.n_test,
               "standardize": args.standardize}
        if folder is not None:
            record_probe(folder, row, {"test_accuracies": result.test_accuracies, "config": config})
        else:
            print(f"rela-fast eval: {not_kept_note(args.run)}", file=sys.stderr)
    if args.json:
        print(json.dumps({**row, "test_accuracies": result.test_accuracies}))
        return 0
    wall = prog.get("wall_time")
    print(f"probe acc   {result.accuracy:.4f} (mean of the last 3 of {result.epochs} epochs; "
          f"train acc {result.train_accuracy:.4f})")
    print(f"data        {result.n_train} train / {result.n_test} test images, {result.feature_dim} features, "
          f"{result.num_classes} classes")
    print(f"run         {run_folder(args.run)}: {prog.get('step')} training steps, "
          f"{wall if isinstance(wall, int | float) else 0:.1f} s")
    print(f"time        features {result.extract_seconds:.1f} s, probe {result.train_seconds:.1f} s on {device}")
    if folder is not None:
        print(f"written     {folder.path / 'probe.json'}")
    return 0
