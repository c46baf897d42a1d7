"""The command line's conventions: every option of every subcommand has help text, one name per concept across
subcommands (old spellings work as deprecated aliases that say so once), and `--policy` lists every policy."""

from __future__ import annotations

import argparse

import pytest

from rela_fast.cli import build_parser, main
from rela_fast.cli.aliases import DeprecatedAlias, print_notes
from rela_fast.subset.policies import POLICIES

# Hidden on purpose: `rela-fast bench`'s pre-subcommand spellings (documented in rela_fast/cli/bench.py).
HIDDEN = {("rela-fast bench", "--suite"), ("rela-fast bench", "--list"), ("rela-fast bench", "--out"),
          ("rela-fast bench", "--report")}


def _parsers(parser: argparse.ArgumentParser, name: str = "rela-fast"):
    """``(name, parser)`` for the parser and every nested subcommand parser."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                yield from _parsers(child, f"{name} {sub}")


def _options(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if not isinstance(a, argparse._SubParsersAction | argparse._HelpAction)]


def test_every_option_of_every_subcommand_has_help():
    missing, seen = [], 0
    for name, parser in _parsers(build_parser()):
        for action in _options(parser):
            seen += 1
            flag = action.option_strings[0] if action.option_strings else action.dest
            if action.help == argparse.SUPPRESS and (name, flag) in HIDDEN:
                continue
            if not action.help or action.help == argparse.SUPPRESS or not action.help.strip():
                missing.append(f"{name} {flag}")
    assert seen > 80  # every subcommand was walked
    assert not missing, f"options without help: {missing}"


def _flags(command: str) -> dict[str, argparse.Action]:
    parser = dict(_parsers(build_parser()))[f"rela-fast {command}"]
    return {flag: a for a in _options(parser) for flag in a.option_strings}


@pytest.mark.parametrize("command", ["convert", "train", "eval"])
def test_one_name_per_concept(command):
    flags = _flags(command)
    assert "--quiet" in flags and not isinstance(flags["--quiet"], DeprecatedAlias)
    assert "--workers" in flags and not isinstance(flags["--workers"], DeprecatedAlias)
    for old in ("--no-progress", "--threads"):  # the old spellings, where they exist, are deprecated aliases
        if old in flags:
            assert isinstance(flags[old], DeprecatedAlias) and flags[old].help.startswith("deprecated"), old


def test_policy_help_lists_every_policy():
    help_text = _flags("train")["--policy"].help
    assert all(policy in help_text for policy in POLICIES), help_text


def test_deprecated_aliases_set_the_new_option_and_note_once(capsys):
    base = ["convert", "src", "--out", "o", "--prior", "timm:resnet18"]
    old = build_parser().parse_args([*base, "--threads", "3", "--no-progress", "--threads", "4"])
    new = build_parser().parse_args([*base, "--workers", "4", "--quiet"])
    assert (old.workers, old.quiet) == (new.workers, new.quiet) == (4, True)
    print_notes(old, "rela-fast convert")
    print_notes(new, "rela-fast convert")
    notes = capsys.readouterr().err.splitlines()
    assert notes == ["rela-fast convert: note: --no-progress is deprecated; use --quiet",
                     "rela-fast convert: note: --threads is deprecated; use --workers"]
    evaluated = build_parser().parse_args(["eval", "run", "--data", "d", "--no-progress"])
    assert evaluated.quiet is True


def test_a_refusal_with_an_old_spelling_stays_one_line_and_names_it(tmp_path, capsys):
    code = main(["convert", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--prior", "timm:resnet18",
                 "--threads", "0"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--threads 0" in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rela-fast {version('rela_fast')}"
