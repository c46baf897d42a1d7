"""``rela-fast info``: versions, extension, GPU and each op's backend (paste this into bug reports)."""

from __future__ import annotations

import argparse
import json

HELP = "print versions, the C++ extension, the GPU and which backend each op uses"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from rela_fast.environment import describe
    from rela_fast.tables import render_table

    info = describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    backends = info.pop("backends")
    print(render_table(None, info.items(), fmt="text"))
    print()
    if not backends:
        print("(no kernel families registered)")
        return 0
    devices = sorted({d for per in backends.values() for d in per})
    rows = [(name, *(per.get(d, "-") for d in devices)) for name, per in backends.items()]
    print(render_table(("op", *devices), rows, fmt="text"))
    return 0
