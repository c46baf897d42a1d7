"""``rela-fast``: one console script, one module per subcommand in this package.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``;
a new subcommand is a new module here and nothing else changes.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from rela_fast.errors import UserError


def _subcommands() -> dict[str, object]:
    return {
        info.name: importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    }


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(prog="rela-fast", description="ReLA data converter and training accelerator")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in sorted(_subcommands().items()):
        p = sub.add_parser(name, help=module.HELP.replace("%", "%%"), description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; bad input exits with 2 and a one-line message."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        print(f"rela-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rela-fast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
