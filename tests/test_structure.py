"""The package's structure: no module imports a module that imports it (directly or through others)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mot_neuro"


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module of ``from ... import`` (relative imports resolved against the importer)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_string(node: ast.AST, package: str) -> bool:
    """A string that is a dotted module name of the package, or ``module:attribute``: what a dispatch by name
    hands to ``importlib.import_module`` (so such an import is in the graph, too)."""
    if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
        return False
    return re.fullmatch(rf"{re.escape(package)}(\.\w+)+(:\w+)?", node.value) is not None


def _import_statements(tree: ast.AST, package: str):
    """Every import statement of ``tree``, however deeply nested, except the body of ``if TYPE_CHECKING:``; and a
    module's name in a string (for ``importlib``), as the import statement it stands for."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif _module_string(child, package):  # "pkg.mod" or "pkg.mod:function", for importlib: an import all the same
            named = ast.Import(names=[ast.alias(name=child.value.partition(":")[0])])
            named.by_name = True  # counted only when it names a module exactly (not a tag such as "pkg.cell")
            yield named
        if _type_checking_only(child):
            for branch in child.orelse:  # the else branch does run
                yield from _import_statements(ast.Module(body=[branch], type_ignores=[]), package)
            continue
        yield from _import_statements(child, package)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports, from every ``import``/``from ... import`` statement in its
    source, at module level or inside functions and classes (those under ``if TYPE_CHECKING:`` never run)."""
    paths = {_module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        for node in _import_statements(ast.parse(path.read_text(), filename=str(path)), package.name):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = _resolve(name, is_package, node)
                targets = [f"{module}.{alias.name}" for alias in node.names]
            if getattr(node, "by_name", False):
                targets = [t for t in targets if t in paths]
            for target in targets:
                # the deepest module of the package a dotted name is in: "from a.b import c" is an import of
                # a.b when c is a name inside a.b, of a.b.c when c is a submodule
                while target and target not in paths:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of two or more modules (each one a cycle of imports), as sorted lists."""
    edges = graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_import_graph_sees_function_level_imports(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.b import g\n    return g\n")
    (package / "b.py").write_text("import importlib\n\n\ndef g():\n    return importlib.import_module('pkg.a')\n")
    (package / "c.py").write_text("from . import b\n\nif True:\n    import pkg.d\n")
    (package / "d.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from pkg.c import x\n")
    graph = import_graph(package)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.c"] == {"pkg.b", "pkg.d"} and graph["pkg.d"] == set()  # type-checking imports never run
    assert import_cycles(graph) == [["pkg.a", "pkg.b"]]


def test_no_import_cycles():
    graph = import_graph()
    assert "mot_neuro.cli" in graph and graph["mot_neuro.cli"], "the graph holds the package's modules"
    cycles = import_cycles(graph)
    assert cycles == [], "modules that import each other (directly or through others): " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles
    )
