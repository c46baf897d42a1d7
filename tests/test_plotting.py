"""Plotting is an optional extra: the library never imports matplotlib, and a missing one is one clear message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rela_fast.errors import UserError
from rela_fast.plotting import require_pyplot
from rela_fast.train.metrics import MetricsLog, plot_metrics


def test_importing_the_library_and_its_public_names_does_not_import_matplotlib():
    # ReLACallback is the lightning extra's: Lightning itself imports matplotlib, which is not ours to avoid
    code = ("import sys, rela_fast\n"
            "assert not [m for m in sys.modules if m.startswith('matplotlib')], 'import rela_fast'\n"
            "for name in rela_fast.__all__: name == 'ReLACallback' or getattr(rela_fast, name)\n"
            "import rela_fast.train, rela_fast.train.metrics, rela_fast.bench, rela_fast.cli\n"
            "loaded = [m for m in sys.modules if m.startswith('matplotlib')]\n"
            "assert not loaded, loaded\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Make ``import matplotlib`` fail in this process, as on an install without the ``plot`` extra."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def _rows():
    return [{"event": "step", "step": s, "wall_time": 0.1 * s, "online_acc": 0.1 * s, "loss": 1.0 / s,
             "rho": 0.5, "phase": 1} for s in range(1, 6)]


def test_missing_matplotlib_names_the_extra(no_matplotlib, tmp_path):
    with pytest.raises(UserError) as info:
        require_pyplot("demo plot")
    message = str(info.value)
    assert "demo plot" in message and "rela_fast[plot]" in message and "\n" not in message
    png = tmp_path / "metrics.png"
    with pytest.raises(UserError, match=r"metrics\.png needs matplotlib.*rela_fast\[plot\]"):
        plot_metrics({"run": _rows()}, png)
    with pytest.warns(UserWarning, match=r"rela_fast\[plot\]"):
        assert plot_metrics({"run": _rows()}, png, missing_ok=True) is None
    assert not png.exists()


def test_plot_metrics_draws_when_matplotlib_is_installed(tmp_path):
    pytest.importorskip("matplotlib")
    log = MetricsLog(tmp_path / "run" / "metrics.jsonl")
    for row in _rows():
        log.log(row)
    png = plot_metrics(log.path, tmp_path / "out" / "metrics.png", missing_ok=True)
    assert png == tmp_path / "out" / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
