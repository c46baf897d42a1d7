"""``rela-fast demo``: convert Fashion-MNIST with a prior, train BYOL (100 %) and ReLA-BYOL (50 %, 20 %), probe, plot.

The default is sized for a small CPU (a few minutes on 2 cores, under 15 on busy ones): a small ConvNet
student at 28 px on part of the data, all said in the output. ``--full`` runs ResNet-18 on all 60k images on a CUDA GPU.
"""

from __future__ import annotations

import argparse

HELP = "the main job: convert Fashion-MNIST, train BYOL vs ReLA-BYOL at 50 %/20 % budget, probe, table + plot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None,
                        help="Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist, "
                             "from `apt-get install dataset-fashion-mnist`)")
    parser.add_argument("--out", default="rela-demo", help="output folder: targets, results.json, plot.png")
    parser.add_argument("--full", action="store_true",
                        help="ResNet-18 at 32 px on all 60k images, 20 epochs (needs a CUDA GPU)")
    parser.add_argument("--prior", default="auto",
                        help="auto (default: the measured choice, see the output), random (random init of the "
                             "student's architecture), or efficientnet_lite0[@SIZE] (ImageNet weights, offline)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data subsets, inits and subsets")
    parser.add_argument("--threads", default="auto",
                        help="CPU threads for torch (auto: 1 when the machine is busy, else all cores)")
    parser.add_argument("--train-images", type=int, default=None, help="SSL images (default 6400; --full 60000)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every run (default 6; --full 20)")


def run(args: argparse.Namespace) -> int:
    from rela_fast.demo import DemoConfig, auto_threads, full_config, run_demo
    from rela_fast.errors import UserError

    cfg = DemoConfig(data=args.data, out=args.out, prior=args.prior, seed=args.seed, full=args.full)
    if args.full:
        cfg = full_config(cfg)
    if args.threads == "auto":
        cfg.setup.threads = auto_threads()
    else:
        try:
            cfg.setup.threads = int(args.threads)
        except ValueError:
            raise UserError(f"--threads {args.threads!r}: expected auto or a positive integer") from None
        if cfg.setup.threads < 1:
            raise UserError(f"--threads {args.threads}: expected auto or a positive integer")
    if args.train_images is not None:
        if args.train_images < 2 * cfg.setup.batch_size:
            raise UserError(f"--train-images {args.train_images}: at least {2 * cfg.setup.batch_size} "
                            "(two batches at the 50 % budget)")
        cfg.n_train = args.train_images
    if args.epochs is not None:
        if args.epochs < 1:
            raise UserError(f"--epochs {args.epochs}: at least 1")
        cfg.setup.epochs = args.epochs
    run_demo(cfg)
    return 0
