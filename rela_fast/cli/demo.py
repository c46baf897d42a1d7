"""``rela-fast demo``: time to accuracy where BYOL learns. All of Fashion-MNIST, the 30-epoch schedule: ReLA-BYOL
with the offline Lite0 prior against BYOL at 10 % of the steps, trained live side by side (one process per
core), next to the pixel and untrained-student baselines and BYOL 100 % from the committed headline result.

About 6-7 minutes on 2 idle CPU cores (measured: 825 s on 2 cores shared with other jobs at load average ~3.5);
``--live-reference`` also trains BYOL 100 % (about 45 min more on one core);
``--full`` runs ResNet-18 on a CUDA GPU, every row live.
"""

from __future__ import annotations

import argparse

HELP = "the main job: ReLA-BYOL vs BYOL at 10 % of the steps, live, against BYOL 100 % and the baselines"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None,
                        help="Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist, "
                             "from `apt-get install dataset-fashion-mnist`)")
    parser.add_argument("--out", default="rela-demo",
                        help="output folder: targets/, results.json, table.md, plot.png (only a new, empty or "
                             "earlier demo folder is written)")
    parser.add_argument("--full", action="store_true",
                        help="ResNet-18 at 32 px, 20 epochs, Lite0 at 224 px, every row live (needs a CUDA GPU)")
    parser.add_argument("--live-reference", action="store_true",
                        help="also train BYOL 100 %% here (about 45 min on one core) instead of only showing the "
                             "committed 3-seed result")
    parser.add_argument("--budget", type=float, default=0.1,
                        help="fraction of the full run's steps for the live BYOL and ReLA-BYOL runs (default 0.1)")
    parser.add_argument("--prior", default="auto",
                        help="auto (efficientnet_lite0@32 when its weights are installed, else random), random "
                             "(random init of the student's architecture), or efficientnet_lite0@SIZE")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inits and subsets")
    parser.add_argument("--workers", type=int, default=2,
                        help="live runs side by side, one process each (default 2: one per core); 1: one after "
                             "another")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per live run (default 1)")
    parser.add_argument("--reference", default=None,
                        help="the committed headline summary.json to compare with (default: the repository's "
                             "benchmarks/results/headline-fmnist-e30/summary.json)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="fewer SSL images (a smoke run; no committed result then fits)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the schedule (default 30; --full 20)")


def run(args: argparse.Namespace) -> int:
    from rela_fast.demo import DemoConfig, full_config, run_demo
    from rela_fast.errors import UserError

    cfg = DemoConfig(data=args.data, out=args.out, prior=args.prior, seed=args.seed,
                     live_reference=args.live_reference, budget=args.budget, workers=args.workers,
                     reference=args.reference)
    if args.threads < 1:
        raise UserError(f"--threads {args.threads}: at least 1")
    cfg.setup.threads = args.threads
    if args.full:
        cfg = full_config(cfg)
    if args.train_images is not None:
        if args.train_images < 2 * cfg.setup.batch_size:
            raise UserError(f"--train-images {args.train_images}: at least {2 * cfg.setup.batch_size} (two batches)")
        cfg.n_train = args.train_images
    if args.epochs is not None:
        if args.epochs < 1:
            raise UserError(f"--epochs {args.epochs}: at least 1")
        cfg.setup.epochs = args.epochs
    run_demo(cfg)
    return 0
