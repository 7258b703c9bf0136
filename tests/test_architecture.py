"""The package's architecture, read from the source with ``ast`` (nothing is imported for the
graph): no import cycles between modules or between subpackages, a small declared public
surface, and underscored modules kept private to their subpackage.

What counts as an import: every ``import`` / ``from ... import`` statement in a module, at top
level or inside a function (a lazy import defers the cost, not the dependency: two subpackages
that import each other lazily still cannot be understood, tested or released apart), except
those under ``if TYPE_CHECKING:``, which never run. ``from . import x`` is an edge to the module
``x`` when it is one, else to the package; ``from .a import b`` to ``a.b`` when it is a module,
else to ``a``. Parent packages that Python initialises on the way are not edges (every module
would otherwise depend on ``seqkv/__init__.py``). Names resolved at run time (``import_module``
with a computed name, the lazy tables of ``seqkv/__init__.py`` and ``seqkv.codecs``) are not
seen.

``make check-imports`` runs just this file.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "python" / "seqkv"
#: seqkv.__all__ plus every subpackage's __all__. The names a user can reach by the documented
#: route, once each; it stays tens of names, not the ~200 public names of the flat layout.
MAX_PUBLIC_NAMES = 100


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int
    lazy: bool  # inside a function


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def discover() -> dict[str, Path]:
    """Every Python module of the package: the ``.py`` sources, and the native extension by its
    stubs (``seqkv/_native/*.pyi``: a node others import, with no imports of its own)."""
    stubs = {module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.pyi"))}
    return {**stubs, **{module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement that can run, with whether it is inside a function."""

    def walk(node: ast.AST, lazy: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for orelse in child.orelse:
                    yield from walk(ast.Module(body=[orelse], type_ignores=[]), lazy)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, lazy
            yield from walk(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    yield from walk(tree, False)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The seqkv modules ``name`` imports, resolved to the most specific module each names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    if path.suffix == ".pyi":
        return []
    for node, lazy in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:  # `import seqkv.a.b` names the module seqkv.a.b
                target = target.rpartition(".")[0]
            if target.startswith("seqkv") and target != name:
                found.append(Import(name, target, node.lineno, lazy))
    return found


def subpackage(module: str) -> str:
    """``seqkv.store.tiers`` -> ``seqkv.store``; a top-level module is its own unit."""
    return ".".join(module.split(".")[:2])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the directed graph, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


MODULES = discover()
IMPORTS = [imp for name, path in MODULES.items() for imp in imports_of(name, path, MODULES)]


def _describe(cycle: list[str], edge_of: dict[tuple[str, str], Import]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        imp = edge_of[(a, b)]
        where = f"{MODULES[imp.importer].relative_to(PACKAGE_ROOT.parent)}:{imp.line}"
        steps.append(f"  {a} -> {b}   ({where}{', lazy' if imp.lazy else ''})")
    return "import cycle:\n" + "\n".join(steps)


def test_the_parser_sees_the_package():
    assert {"seqkv", "seqkv.errors", "seqkv.store.session_store", "seqkv.codecs.lm"} <= set(MODULES)
    assert any(i.importer == "seqkv.codecs.base" and i.target == "seqkv.errors" for i in IMPORTS)
    assert any(i.lazy for i in IMPORTS)


def test_no_import_cycle_between_modules():
    graph: dict[str, set[str]] = {}
    edge_of = {}
    for imp in IMPORTS:
        graph.setdefault(imp.importer, set()).add(imp.target)
        edge_of.setdefault((imp.importer, imp.target), imp)
    cycle = find_cycle(graph)
    assert cycle is None, _describe(cycle, edge_of)


def test_no_import_cycle_between_subpackages():
    graph: dict[str, set[str]] = {}
    edge_of = {}
    for imp in IMPORTS:
        a, b = subpackage(imp.importer), subpackage(imp.target)
        if a != b and a != "seqkv":
            graph.setdefault(a, set()).add(b)
            edge_of.setdefault((a, b), imp)
    cycle = find_cycle(graph)
    assert cycle is None, _describe(cycle, edge_of)


def _subpackages() -> list[str]:
    return sorted(name for name, path in MODULES.items() if path.name == "__init__.py" and name.count(".") == 1)


def _declares_all(path: Path) -> bool:
    for node in ast.parse(path.read_text(), str(path)).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return True
    return False


@pytest.mark.parametrize("package", ["seqkv", *_subpackages()])
def test_every_package_declares_its_public_names(package):
    assert _declares_all(MODULES[package]), f"{MODULES[package]} has no __all__"
    module = importlib.import_module(package)
    assert len(module.__all__) == len(set(module.__all__)), f"{package}.__all__ repeats a name"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{package}.__all__ lists names it does not have: {missing}"


def test_public_surface_stays_small():
    surface = {
        package: len(importlib.import_module(package).__all__) for package in ["seqkv", *_subpackages()]
    }
    total = sum(surface.values())
    print(f"public names: {total} ({', '.join(f'{p}: {n}' for p, n in surface.items())})")
    assert total <= MAX_PUBLIC_NAMES, f"{total} public names > {MAX_PUBLIC_NAMES}: {surface}"


def _is_private_module(name: str) -> bool:
    last = name.rpartition(".")[2]
    return last.startswith("_") and not last.startswith("__")


def test_private_modules_are_imported_only_inside_their_package():
    leaks = []
    for imp in IMPORTS:
        private = next((m for m in _ancestors(imp.target) if _is_private_module(m)), None)
        if private is not None and not imp.importer.startswith(private.rpartition(".")[0] + "."):
            leaks.append(f"{imp.importer} imports {imp.target} ({MODULES[imp.importer].relative_to(PACKAGE_ROOT.parent)}:{imp.line})")
    assert not leaks, "private modules imported from outside their package:\n" + "\n".join(leaks)


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def test_test_modules_have_unique_names():
    """pytest imports test files by basename (rootdir-relative, no packages): two files of one
    name in different folders stop the whole run at collection."""
    seen: dict[str, Path] = {}
    tests = Path(__file__).resolve().parent
    for path in sorted(tests.rglob("test_*.py")):
        if "wheel" in path.relative_to(tests).parts:
            continue  # run by its own pytest with its own rootdir
        assert path.name not in seen, f"{path.relative_to(tests)} and {seen[path.name].relative_to(tests)} share a name"
        seen[path.name] = path
