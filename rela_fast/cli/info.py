"""``rela-fast info``: versions, extension, GPU and each op's backend (paste this into bug reports)."""

from __future__ import annotations

import argparse
import json

HELP = "print versions, the C++ extension, the GPU and which backend each op uses"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from rela_fast.environment import describe

    info = describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    backends = info.pop("backends")
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    print()
    devices = sorted({d for per in backends.values() for d in per})
    print(f"{'op':<24}" + "".join(f"{d:<12}" for d in devices))
    for name, per in backends.items():
        print(f"{name:<24}" + "".join(f"{per.get(d, '-'):<12}" for d in devices))
    if not backends:
        print("(no kernel families registered)")
    return 0
