"""The foundation: the extension builds and loads, the CLI's info, the public API (bench: test_bench.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import rela_fast
from rela_fast.cli import main


def test_extension_loads_with_openmp_facts():
    from rela_fast import _C

    assert isinstance(list(_C.families), list)
    assert _C.max_threads() >= 1
    for family in _C.families:
        assert hasattr(_C, family), f"registered family {family} has no submodule"


def test_info_prints_versions_and_every_family(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("torch", "triton", "timm", "dali", "cpp_extension", "cuda_available"):
        assert key in out
    from rela_fast.ops import families

    for name in families():
        assert name in out


def test_info_json_names_backend_per_family_and_device(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    from rela_fast.ops import families

    assert set(info["backends"]) == set(families())
    for per_device in info["backends"].values():
        assert per_device["cpu"] in ("cpp", "reference")


def test_help_of_every_subcommand_renders(capsys):
    from rela_fast.cli import _subcommands

    for argv in [["--help"]] + [[name, "--help"] for name in _subcommands()]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0, argv
        assert "usage: rela-fast" in capsys.readouterr().out


def test_console_script_runs_in_a_fresh_process():
    proc = subprocess.run([sys.executable, "-m", "rela_fast", "info"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "cpp_extension" in proc.stdout


def test_every_public_name_resolves_even_after_all_submodules_are_imported():
    import importlib
    import pkgutil
    import types

    for info in pkgutil.walk_packages(rela_fast.__path__, "rela_fast."):
        if ".cli." not in info.name and not info.name.endswith(("__main__", "triton_kernels")):
            importlib.import_module(info.name)
    for name in rela_fast.__all__:
        value = getattr(rela_fast, name)
        assert not isinstance(value, types.ModuleType), f"rela_fast.{name} is shadowed by a submodule"


def test_unknown_public_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute"):
        rela_fast.not_a_thing  # noqa: B018
