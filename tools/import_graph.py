#!/usr/bin/env python3
"""Print rela_fast's internal import graph, and check it against the layering docs/ARCHITECTURE.md states.

    python tools/import_graph.py              # one line per package: what it imports from rela_fast
    python tools/import_graph.py --modules    # the same per module
    python tools/import_graph.py --dot        # Graphviz: ... --dot | dot -Tsvg > imports.svg
    python tools/import_graph.py --check      # exit 1 naming every import that breaks a layering rule

Standard library only (``ast``): nothing is imported or executed, so it runs in any Python >= 3.10 without
the project's dependencies. An import inside a function body is *deferred* (marked ``*``): it runs only when
that function is called, which is how the public API stays cheap to import; the layering rules apply to
both kinds. Strings naming ``rela_fast.*`` modules in a package ``__init__`` (the lazy public API) count as
deferred imports of that package.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "rela_fast"
LAZY_NAME = re.compile(rf"^{PACKAGE}(\.\w+)+$")
EXTENSIONS = ("_C",)  # compiled modules (csrc/ -> rela_fast._C): nodes of their own, not the root package

# (importer prefix, imported prefix, why): an import from a module under the first into one under the second
# breaks the layering of docs/ARCHITECTURE.md ("Layers"). Prefixes are package-relative dotted names.
FORBIDDEN: tuple[tuple[str, str, str], ...] = (
    ("models", "encoder", "models sits below both halves"),
    ("models", "train", "models sits below both halves"),
    ("models", "conversion", "models sits below both halves"),
    ("encoder", "train", "ReLA-D stands without ReLA-F"),
    ("conversion", "train", "ReLA-D stands without ReLA-F"),
    ("pca", "train", "ReLA-D stands without ReLA-F"),
    ("targets", "train", "ReLA-D stands without ReLA-F"),
    ("data", "train", "sources and decoders serve both halves"),
    ("data", "encoder", "sources and decoders serve both halves"),
    ("ops", "train", "kernels know nothing of training"),
    ("ops", "subset", "kernels know nothing of the policies built on them"),
    ("subset", "train", "subsets are usable in any loop"),
    ("train.engine", "train.trainer", "the engine knows nothing of the loop that drives it"),
    ("train.config", "train.trainer", "the config knows nothing of the loop that drives it"),
)
# only the command line may import these (the library never depends on its front-ends)
FRONT_ENDS = ("cli", "bench")


@dataclass(frozen=True)
class Edge:
    """``src`` imports ``dst`` (package-relative module names); ``deferred``: inside a function body."""

    src: str
    dst: str
    deferred: bool


def module_name(path: Path, src_root: Path) -> str:
    """``rela_fast/train/trainer.py`` -> ``train.trainer``; a package's ``__init__`` is the package itself."""
    parts = list(path.relative_to(src_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, here: str, is_package: bool) -> str | None:
    """The absolute package-relative module an ``ImportFrom`` names (None: outside rela_fast)."""
    if node.level == 0:
        name = node.module or ""
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            return None
        return name[len(PACKAGE) + 1:]
    base = here.split(".") if here else []
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def _deferred_lines(tree: ast.Module) -> set[int]:
    """Line numbers of import statements inside a function body."""
    lines: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            lines |= {n.lineno for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)}
    return lines


def module_edges(path: Path, here: str, known: set[str]) -> set[Edge]:
    """Every import of a rela_fast module in one file. ``from pkg import name`` is an import of
    ``pkg.name`` when that is a module, else of ``pkg``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    deferred = _deferred_lines(tree)
    is_package = path.name == "__init__.py"
    edges: set[Edge] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name[len(PACKAGE) + 1:] for a in node.names if a.name.startswith(PACKAGE + ".")]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, here, is_package)
            if base is None:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                targets.append(sub if sub in known else base)
        elif is_package and isinstance(node, ast.Constant) and isinstance(node.value, str):
            if LAZY_NAME.match(node.value):
                edges.add(Edge(here, node.value[len(PACKAGE) + 1:], True))
            continue
        else:
            continue
        for dst in targets:
            if dst != here:
                edges.add(Edge(here, dst, node.lineno in deferred))
    return edges


def collect(src_root: Path) -> tuple[set[str], set[Edge]]:
    """All modules under ``src_root`` and their import edges."""
    files = sorted(p for p in src_root.rglob("*.py") if "__pycache__" not in p.parts)
    known = {module_name(p, src_root) for p in files} | set(EXTENSIONS)
    edges: set[Edge] = set()
    for path in files:
        edges |= module_edges(path, module_name(path, src_root), known)
    return known, {e for e in edges if e.dst in known or e.dst == ""}


def package_of(module: str) -> str:
    """The top-level unit a module belongs to: ``train.trainer`` -> ``train``, ``pca`` -> ``pca``."""
    return module.split(".")[0] if module else "(root)"


def collapse(edges: set[Edge], node: Callable[[str], str] = package_of) -> dict[str, dict[str, bool]]:
    """``{src: {dst: deferred}}`` between ``node(module)`` units (packages by default); an edge is deferred
    only when every import behind it is."""
    graph: dict[str, dict[str, bool]] = defaultdict(dict)
    for e in edges:
        s, d = node(e.src), node(e.dst)
        if s != d:
            graph[s][d] = graph[s].get(d, True) and e.deferred
    return graph


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(edges: set[Edge]) -> list[str]:
    """One sentence per import that breaks a rule in :data:`FORBIDDEN` or :data:`FRONT_ENDS`."""
    found = []
    for e in sorted(edges, key=lambda e: (e.src, e.dst)):
        for src, dst, why in FORBIDDEN:
            if _under(e.src, src) and _under(e.dst, dst):
                found.append(f"{PACKAGE}.{e.src} imports {PACKAGE}.{e.dst}: {why}")
        front = package_of(e.dst)
        if front in FRONT_ENDS and package_of(e.src) not in ("cli", "__main__", front):
            found.append(f"{PACKAGE}.{e.src} imports {PACKAGE}.{e.dst}: only the command line uses {front}/")
    return found


def render(graph: dict[str, dict[str, bool]], nodes: list[str], dot: bool) -> str:
    """Text (``src: dst, dst*``) or Graphviz (deferred imports dashed)."""
    if dot:
        lines = [f"digraph {PACKAGE} {{", "  rankdir=LR;"]
        for s in nodes:
            for d, lazy in sorted(graph.get(s, {}).items()):
                lines.append(f'  "{s}" -> "{d}"' + (" [style=dashed];" if lazy else ";"))
        return "\n".join(lines + ["}"])
    width = max(len(n) for n in nodes)
    lines = []
    for s in nodes:
        deps = ", ".join(d + ("*" if lazy else "") for d, lazy in sorted(graph.get(s, {}).items()))
        lines.append(f"{s:<{width}}  -> {deps or '(nothing in rela_fast)'}")
    return "\n".join(lines + ["(* deferred: imported inside a function only)"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", type=Path, default=ROOT / PACKAGE, help="the rela_fast package folder")
    p.add_argument("--modules", action="store_true", help="one node per module instead of per package")
    p.add_argument("--dot", action="store_true", help="print Graphviz instead of text")
    p.add_argument("--check", action="store_true", help="exit 1 when an import breaks a layering rule")
    args = p.parse_args(argv)
    if not (args.src / "__init__.py").is_file():
        print(f"--src {args.src}: not the rela_fast package folder; pass the folder holding __init__.py",
              file=sys.stderr)
        return 2
    modules, edges = collect(args.src)
    if args.check:
        bad = violations(edges)
        print("\n".join(bad) if bad else f"layering rules hold ({len(edges)} imports between {len(modules)} modules)")
        return 1 if bad else 0
    if args.modules:
        graph = collapse(edges, lambda m: m or "(root)")
        nodes = sorted(m or "(root)" for m in modules)
    else:
        graph = collapse(edges)
        nodes = sorted({package_of(m) for m in modules if m not in EXTENSIONS})
    print(render(graph, nodes, args.dot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
