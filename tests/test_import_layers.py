"""The import graph has ReLA-D standing without ReLA-F (issue 23, item 5).

Every ``import`` statement (top level or inside a function, absolute or relative) in the encoder, the
converter and the shared models package is read from the source's AST; none may name ``rela_fast.train``
(and the models package, below both halves, names neither half).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rela_fast

PACKAGE = Path(rela_fast.__file__).parent


def _imported_modules(source: str, package: list[str]) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` for every import in ``source``, a module of ``package``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _violations(folder: str, banned: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        package = list(path.relative_to(PACKAGE.parent).parts[:-1])
        for line, module in _imported_modules(path.read_text(), package):
            if any(module == b or module.startswith(b + ".") for b in banned):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("folder", ["encoder", "conversion"])
def test_rela_d_imports_nothing_from_the_trainer(folder):
    assert _violations(folder, ("rela_fast.train",)) == []


def test_models_import_neither_half():
    assert _violations("models", ("rela_fast.train", "rela_fast.encoder", "rela_fast.conversion")) == []


def test_the_walker_sees_imports_inside_functions_and_relative_ones():
    """The check would pass vacuously if it missed run-time imports (the old ``run:DIR`` prior had one)."""
    src = "def f():\n    from ..train.checkpoint import load_backbone\n    import rela_fast.train.trainer\n"
    found = [m for _, m in _imported_modules(src, ["rela_fast", "encoder"])]
    assert "rela_fast.train.checkpoint.load_backbone" in found and "rela_fast.train.trainer" in found
    assert "rela_fast.encoder.engine" in [m for _, m in _imported_modules("from .engine import x", ["rela_fast",
                                                                                                      "encoder"])]
