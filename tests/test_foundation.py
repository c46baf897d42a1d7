"""The foundation: the extension builds and loads, the CLI's info and bench report, the public API."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import rela_fast
from rela_fast import benchreport
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


def _bench(name, group, median, variant, baseline):
    return {"name": name, "group": group, "stats": {"median": median},
            "extra_info": {"variant": variant, "baseline": baseline}}


def test_bench_ratios_pair_each_variant_with_each_baseline_within_its_group():
    import random

    rng = random.Random()
    medians = {k: rng.uniform(1e-4, 1.0) for k in ("eager", "compiled", "fused", "other_eager", "other_fused")}
    results = {"benchmarks": [
        _bench("a", "loss: s", medians["eager"], "eager", True),
        _bench("b", "loss: s", medians["compiled"], "compiled", True),
        _bench("c", "loss: s", medians["fused"], "fused", False),
        _bench("d", "loss: t", medians["other_eager"], "eager", True),
        _bench("e", "loss: t", medians["other_fused"], "fused", False),
    ]}
    rows = {(r.group, r.variant, r.baseline): r.speedup for r in benchreport.ratios(results)}
    assert set(rows) == {("loss: s", "fused", "eager"), ("loss: s", "fused", "compiled"), ("loss: t", "fused", "eager")}
    assert rows[("loss: s", "fused", "eager")] == pytest.approx(medians["eager"] / medians["fused"])
    assert rows[("loss: s", "fused", "compiled")] == pytest.approx(medians["compiled"] / medians["fused"])
    assert rows[("loss: t", "fused", "eager")] == pytest.approx(medians["other_eager"] / medians["other_fused"])
    table = benchreport.format_table(benchreport.ratios(results))
    assert "fused" in table and "x" in table


def test_bench_report_reads_a_results_file(tmp_path, capsys):
    path = tmp_path / "r.json"
    benches = [_bench("a", "g", 2.0, "slow", True), _bench("b", "g", 0.5, "fast", False)]
    path.write_text(json.dumps({"benchmarks": benches}))
    assert main(["bench", "--report", str(path)]) == 0
    assert "4.00x" in capsys.readouterr().out


def test_bench_unknown_suite_is_a_one_line_error(capsys):
    assert main(["bench", "--suite", "no_such_suite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no_such_suite" in err and len(err.splitlines()) == 1
