"""``rela-fast``: one console script, one module per subcommand in this package.

Each subcommand module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``;
a new subcommand is a new module here and nothing else changes.

Errors (:mod:`rela_fast.cli.errors`): bad arguments, :class:`~rela_fast.errors.UserError` and ``OSError``
(a full disk, a read-only or unreadable path) print one line on stderr and exit 2; anything else is a bug:
one line and exit 1, with the traceback when ``RELA_FAST_DEBUG=1``. ``rela-fast --version`` prints the
installed version. Deprecated flag spellings (:mod:`rela_fast.cli.aliases`) print a note after a successful run.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from rela_fast.cli.aliases import print_notes
from rela_fast.cli.errors import OneLineParser, report
from rela_fast.errors import UserError


def _subcommands() -> dict[str, object]:
    """The subcommand modules (those with HELP and run; errors.py, validate.py and aliases.py are helpers)."""
    modules = {
        info.name: importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    }
    return {name: m for name, m in modules.items() if hasattr(m, "HELP") and hasattr(m, "run")}


def _version() -> str:
    """The installed distribution's version (the package's own when run from a source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rela_fast")
    except PackageNotFoundError:
        from rela_fast import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and documentation)."""
    parser = OneLineParser(prog="rela-fast", description="ReLA data converter and training accelerator")
    parser.add_argument("--version", action="version", version=f"rela-fast {_version()}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name, module in sorted(_subcommands().items()):
        p = sub.add_parser(name, help=module.HELP.replace("%", "%%"), description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _expand_flag_file(argv: list[str]) -> list[str]:
    """``rela-fast CMD --config FILE``: a subcommand with ``FLAG_FILE_KEYS`` reads its flags from a file too
    (the file first, so flags on the command line win). ``train`` has its own typed config instead."""
    module = _subcommands().get(argv[0]) if argv else None
    keys = getattr(module, "FLAG_FILE_KEYS", None)
    if keys is None:
        return argv
    from rela_fast.config_files import expand_flag_file

    return expand_flag_file(argv, keys)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; bad input exits with 2 and a one-line message."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = _expand_flag_file(argv)
    except UserError as exc:
        return report(exc, argparse.Namespace(command=argv[0] if argv else ""))
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a bad argument: exit code 2, its one line already printed; --help exits
        if not exc.code:
            raise
        return exc.code if isinstance(exc.code, int) else 2
    try:
        from rela_fast.distributed import check_environment

        check_environment()  # WORLD_SIZE, RANK, LOCAL_RANK, RELA_FAST_BACKEND: refused alike by every command
        code = int(args._run(args) or 0)
    except BaseException as exc:  # noqa: BLE001 - the one place that turns every failure into its exit code
        if isinstance(exc, SystemExit):
            raise
        return report(exc, args)
    if code == 0:  # after the work, so a refusal stays one line
        print_notes(args, f"rela-fast {args.command}")
    return code


if __name__ == "__main__":
    sys.exit(main())
