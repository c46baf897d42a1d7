"""``rela-fast``: one console script, one module per subcommand in this package.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``;
a new subcommand is a new module here and nothing else changes.

Errors (:mod:`rela_fast.cli.errors`): bad arguments, :class:`~rela_fast.errors.UserError` and ``OSError``
(a full disk, a read-only or unreadable path) print one line on stderr and exit 2; anything else is a bug:
one line and exit 1, with the traceback when ``RELA_FAST_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from rela_fast.cli.errors import OneLineParser, report


def _subcommands() -> dict[str, object]:
    """The subcommand modules (those with HELP and run; errors.py and validate.py are helpers)."""
    modules = {
        info.name: importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    }
    return {name: m for name, m in modules.items() if hasattr(m, "HELP") and hasattr(m, "run")}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and documentation)."""
    parser = OneLineParser(prog="rela-fast", description="ReLA data converter and training accelerator")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name, module in sorted(_subcommands().items()):
        p = sub.add_parser(name, help=module.HELP.replace("%", "%%"), description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; bad input exits with 2 and a one-line message."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a bad argument: exit code 2, its one line already printed; --help exits
        if not exc.code:
            raise
        return exc.code if isinstance(exc.code, int) else 2
    try:
        from rela_fast.distributed import check_environment

        check_environment()  # WORLD_SIZE, RANK, LOCAL_RANK, RELA_FAST_BACKEND: refused alike by every command
        return int(args._run(args) or 0)
    except BaseException as exc:  # noqa: BLE001 - the one place that turns every failure into its exit code
        if isinstance(exc, SystemExit):
            raise
        return report(exc, args)


if __name__ == "__main__":
    sys.exit(main())
