"""examples/ are tests: each example trains on a small Fashion-MNIST slice, each ReLA example adds at most 10 lines
of code to the plain version it starts from, and README.md shows those diffs with their counts.

``python tests/test_examples.py`` prints the README's diff blocks.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PAIRS = [("lightly_byol.py", "lightly_byol_rela.py"), ("lightning_byol.py", "lightning_byol_rela.py")]
MAX_ADDED = 10
SMALL = ["--n", "256", "--batch-size", "64", "--arch", "convnet-4"]


def code_lines(path: Path) -> list[str]:
    """The file's lines of code: the module docstring and blank lines aside."""
    text = path.read_text()
    first = ast.parse(text).body[0]
    start = first.end_lineno if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) else 0
    return [line for line in text.splitlines()[start:] if line.strip()]


def diff(plain: str, rela: str) -> list[str]:
    """The changed lines (``-`` removed, ``+`` added or changed), no context."""
    lines = difflib.unified_diff(code_lines(EXAMPLES / plain), code_lines(EXAMPLES / rela), lineterm="", n=0)
    return [line for line in lines if not line.startswith(("---", "+++", "@@"))]


def added(plain: str, rela: str) -> int:
    return sum(line.startswith("+") for line in diff(plain, rela))


def readme_block(plain: str, rela: str) -> str:
    return "```diff\n" + "\n".join(diff(plain, rela)) + "\n```\n"


def load(name: str):
    """An example as a module (examples/ on the path for its ``_common``)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(f"example_{name[:-3]}", EXAMPLES / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


@pytest.mark.parametrize(("plain", "rela"), PAIRS)
def test_each_rela_example_adds_at_most_ten_lines_and_the_readme_shows_them(plain, rela):
    n = added(plain, rela)
    assert 0 < n <= MAX_ADDED, "\n".join(diff(plain, rela))
    readme = (ROOT / "README.md").read_text()
    assert readme_block(plain, rela) in readme, f"README.md: paste this diff block:\n{readme_block(plain, rela)}"
    assert f"**{n} lines**" in readme and f"examples/{rela}" in readme


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """One store for both ReLA examples (the same slice: the second example's convert reuses it)."""
    return str(tmp_path_factory.mktemp("store") / "fmnist-targets")


@pytest.mark.slow
def test_the_plain_loop_examples_train(fashion_mnist_dir, targets, one_thread):
    plain = load("lightly_byol.py").main(["--data", fashion_mnist_dir, "--epochs", "1", *SMALL])
    assert len(plain) == 256 // 64 and all(math.isfinite(r["loss"]) for r in plain)
    rela = load("lightly_byol_rela.py").main(["--data", fashion_mnist_dir, "--epochs", "2", "--targets", targets,
                                              *SMALL])
    assert len(rela) == 2 * (128 // 64)  # budget 0.5: half the steps per epoch
    assert all(math.isfinite(r["loss"]) and r["phase"] in (1, 2) and r["subset_size"] == 128 for r in rela)
    assert all(math.isfinite(r["rho"]) for r in rela)


@pytest.mark.slow
def test_the_lightning_examples_train(fashion_mnist_dir, targets, tmp_path, one_thread):
    common = ["--data", fashion_mnist_dir, "--epochs", "1", "--out", str(tmp_path), *SMALL]
    plain = load("lightning_byol.py").main(common)
    assert plain.global_step == 256 // 64 and math.isfinite(float(plain.callback_metrics["train_loss"]))
    rela = load("lightning_byol_rela.py").main([*common, "--targets", targets])
    assert rela.global_step == 128 // 64
    metrics = rela.callback_metrics
    assert math.isfinite(float(metrics["train_loss"])) and float(metrics["rela/phase"]) in (1.0, 2.0)
    assert float(metrics["rela/subset_size"]) == 128 and "rela_head.weight" in rela.lightning_module.state_dict()


if __name__ == "__main__":
    for plain, rela in PAIRS:
        print(f"{rela}: {added(plain, rela)} lines\n{readme_block(plain, rela)}")
