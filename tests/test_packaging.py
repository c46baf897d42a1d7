"""Packaging: the licence and metadata, and (slow) a wheel built with `pip wheel` that installs into a fresh
virtual environment and runs `rela-fast info` and `rela-fast --version` outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_licence_and_metadata():
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "rela_fast contributors" in licence
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    assert PROJECT["readme"] == "README.md" and PROJECT["authors"] and PROJECT["keywords"]
    assert any(c.startswith("Programming Language :: Python :: 3") for c in PROJECT["classifiers"])
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])  # the SPDX expression says it
    assert {"datasets>=2.18", "tensorboard", "pyyaml"} <= set(PROJECT["optional-dependencies"]["test"])
    assert PROJECT["scripts"]["rela-fast"] == "rela_fast.cli:main"
    import rela_fast

    assert rela_fast.__version__ == PROJECT["version"]


def _sources(dst: Path) -> Path:
    """What an sdist holds (pyproject, setup.py, README, LICENSE, csrc/, rela_fast/), without build outputs."""
    dst.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, dst / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    for name in ("csrc", "rela_fast"):
        shutil.copytree(ROOT / name, dst / name, ignore=ignore)
    return dst


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_outside_the_checkout(tmp_path):
    """`pip wheel` (no build isolation: setuptools and pybind11 come from this environment, nothing is
    downloaded), then a fresh venv that sees this environment's packages (torch, ...) through a .pth file."""
    pytest.importorskip("pybind11")
    src = _sources(tmp_path / "src")
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    built = subprocess.run([*pip, "wheel", str(src), "-w", str(wheels), "--no-deps", "--no-build-isolation", "-q"],
                           capture_output=True, text=True, timeout=1200)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("rela_fast-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    done = subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "host-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = lambda *args: subprocess.run([str(venv / "bin" / "rela-fast"), *args], cwd=elsewhere, env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=600)
    info = run("info", "--json")
    assert info.returncode == 0, info.stderr[-3000:]
    described = json.loads(info.stdout)
    assert described["rela_fast"] == PROJECT["version"] and described["cpp_extension"] == "loaded", described
    version = run("--version")
    assert version.stdout.strip() == f"rela-fast {PROJECT['version']}", version
    where = subprocess.run([str(python), "-c", "import rela_fast, rela_fast._C; print(rela_fast.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # the wheel's copy, not the checkout
