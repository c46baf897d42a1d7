"""Deprecated flag spellings: they keep working, and the command says once which name replaced them.

One name per concept across the subcommands: ``--quiet`` (no progress output; formerly ``--no-progress`` on
``train`` and ``eval``) and ``--workers`` (parallel data readers: the decoder's threads in ``convert``, the
data loader's processes in ``train`` and ``eval``; formerly ``--threads`` on ``convert``).

The note is printed on stderr after the command finished successfully, so a refusal stays one line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

NOTES = "_deprecated_flags"  # namespace attribute: {old spelling: new spelling}
USED = "_flag_spelling"  # namespace attribute: {dest: the spelling the user typed}


class DeprecatedAlias(argparse.Action):
    """Stores into the new flag's ``dest`` and records that the old spelling was used."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        notes = dict(getattr(namespace, NOTES, {}) or {})
        notes[option_string or self.option_strings[0]] = self.new
        setattr(namespace, NOTES, notes)
        remember_spelling(namespace, self.dest, option_string or self.option_strings[0])


def remember_spelling(namespace: argparse.Namespace, dest: str, spelling: str) -> None:
    used = dict(getattr(namespace, USED, {}) or {})
    used[dest] = spelling
    setattr(namespace, USED, used)


def spelling(args: argparse.Namespace, dest: str, default: str) -> str:
    """The flag the user typed for ``dest`` (the deprecated one, if that was used), for messages."""
    return (getattr(args, USED, {}) or {}).get(dest, default)


def add_deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, dest: str, *,
                         flag: bool = False, **kwargs: Any) -> None:
    """``old`` sets ``dest`` like ``new`` does; ``flag=True`` for a store-true switch, else ``kwargs`` (type,
    metavar) describe its value."""
    if flag:
        kwargs.update(nargs=0, const=True)
    parser.add_argument(old, dest=dest, action=DeprecatedAlias, new=new, default=argparse.SUPPRESS,
                        help=f"deprecated spelling of {new}", **kwargs)


def print_notes(args: argparse.Namespace, prog: str) -> None:
    """One note per deprecated spelling used (once each), on stderr."""
    for old, new in sorted((getattr(args, NOTES, {}) or {}).items()):
        print(f"{prog}: note: {old} is deprecated; use {new}", file=sys.stderr)
