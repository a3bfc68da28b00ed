"""The package's import graph has no cycles, lazy imports included, and the engine stays a layer.

A cycle hidden inside a function still ties two modules together: neither can be understood,
tested or moved without the other, and the first caller to import them in the other order gets a
half-initialised module. So every import statement counts, wherever it is (module top, function
body, ``if TYPE_CHECKING:``, ``try:``), as does ``importlib.import_module("cat_framework...")``.

Edges. ``import a.b`` and ``from a import b`` (``b`` a submodule) point at module ``a.b``;
``from a import name`` (``name`` not a submodule) points at ``a``, that is ``a/__init__.py``,
since that is the code that runs to define ``name``. Relative imports are resolved against the
importing module's package. What is *not* an edge: the implicit run of ``a/__init__.py`` before
``a.b`` loads. A package's ``__init__`` importing its own submodules is the re-export pattern,
and a submodule's ancestors are not its dependencies; but a submodule that explicitly imports a
name from its package's ``__init__`` (``from cat_framework import __version__``) does depend on
it, and is a cycle when that ``__init__`` imports the submodule back.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cat_framework

PACKAGE_DIR = Path(cat_framework.__file__).resolve().parent
ROOT = "cat_framework"
#: the application layer: what runs a pipeline end to end and the command line over it; the
#: engine is used by it and never uses it
APPLICATION = ("cat_framework.runner", "cat_framework.modes", "cat_framework.cli")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int


def module_names(package_dir: Path, root: str) -> dict[str, Path]:
    """``dotted.name -> file`` for every module of the package (a package is its __init__)."""
    out: dict[str, Path] = {}
    for file in sorted(package_dir.rglob("*.py")):
        parts = list(file.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([root, *parts])] = file
    return out


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a module (``a.b.func`` -> ``a.b``)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def _package_of(module: str, modules: dict[str, Path]) -> str:
    is_package = modules[module].name == "__init__.py"
    return module if is_package else module.rpartition(".")[0]


def _from_base(node: ast.ImportFrom, module: str, modules: dict[str, Path]) -> str:
    if not node.level:
        return node.module or ""
    package = _package_of(module, modules).split(".")
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _dynamic_target(node: ast.Call) -> str | None:
    """``importlib.import_module("x")`` / ``import_module("x")`` / ``__import__("x")``."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in {"import_module", "__import__"} or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def _targets(node: ast.AST, module: str, modules: dict[str, Path]) -> Iterator[str | None]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield _known(alias.name, modules)
    elif isinstance(node, ast.ImportFrom):
        base = _from_base(node, module, modules)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            yield sub if sub in modules else _known(base, modules)
    elif isinstance(node, ast.Call):
        target = _dynamic_target(node)
        if target is not None:
            yield _known(target, modules)


def imports_of(module: str, modules: dict[str, Path]) -> list[Edge]:
    """Every edge from ``module`` to another module of the package, wherever the import is."""
    tree = ast.parse(modules[module].read_text(encoding="utf-8"), str(modules[module]))
    edges = []
    for node in ast.walk(tree):
        for target in _targets(node, module, modules):
            if target is not None and target != module:
                edges.append(Edge(module, target, getattr(node, "lineno", 0)))
    return edges


def import_graph(package_dir: Path, root: str) -> dict[str, list[Edge]]:
    modules = module_names(package_dir, root)
    return {m: imports_of(m, modules) for m in modules}


def cycles(graph: dict[str, list[Edge]]) -> list[list[Edge]]:
    """The shortest cycle through each module that is on one, each cycle listed once."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan; the package is small enough for recursion
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph.get(node, []):
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    found: dict[frozenset[Edge], list[Edge]] = {}
    for component in components:
        for start in sorted(component):
            cycle = _cycle_through(graph, component, start)
            found.setdefault(frozenset(cycle), cycle)
    return list(found.values())


def _cycle_through(graph: dict[str, list[Edge]], component: set[str], start: str) -> list[Edge]:
    """The shortest path from ``start`` back to itself inside its component (breadth first)."""
    paths: dict[str, list[Edge]] = {start: []}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for edge in graph[node]:
            if edge.target not in component:
                continue
            if edge.target == start:
                return [*paths[node], edge]
            if edge.target not in paths:
                paths[edge.target] = [*paths[node], edge]
                queue.append(edge.target)
    raise AssertionError(f"no cycle through {start}")  # every member of a component is on one


def describe(cycle: list[Edge]) -> str:
    return " -> ".join(f"{e.source} (line {e.line})" for e in cycle) + f" -> {cycle[0].source}"


def test_the_package_has_no_import_cycles() -> None:
    found = cycles(import_graph(PACKAGE_DIR, ROOT))
    assert not found, "import cycles (lazy imports count):\n" + "\n".join(map(describe, found))


def test_the_engine_never_imports_the_application_layer() -> None:
    graph = import_graph(PACKAGE_DIR, ROOT)
    bad = [
        f"{e.source} (line {e.line}) imports {e.target}"
        for module, edges in graph.items()
        if module.startswith(f"{ROOT}.engine")
        for e in edges
        if e.target.startswith(APPLICATION)
    ]
    assert not bad, "\n".join(bad)


# -- the graph builder itself, on a package written for the purpose ------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "pkg"


def _edges(graph: dict[str, list[Edge]]) -> set[tuple[str, str]]:
    return {(e.source, e.target) for edges in graph.values() for e in edges}


def test_every_import_form_is_an_edge(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "from pkg.a import thing\n",
            "a.py": "import os\nimport pkg.sub.b\nthing = 1\n",
            "sub/__init__.py": "",
            "sub/b.py": "from . import c\nfrom .. import a\n",
            "sub/c.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg.sub import d\n"
                "def late():\n    from pkg.sub.d import name\n"
            ),
            "sub/d.py": (
                "import importlib\n"
                "def f():\n    return importlib.import_module('pkg.e')\n"
                "def g():\n    from pkg import thing\n"
            ),
            "e.py": "from ..outside import x\n",
        },
    )
    assert _edges(import_graph(pkg, "pkg")) == {
        ("pkg", "pkg.a"),
        ("pkg.a", "pkg.sub.b"),
        ("pkg.sub.b", "pkg.sub.c"),  # from . import submodule
        ("pkg.sub.b", "pkg.a"),  # from .. import submodule
        ("pkg.sub.c", "pkg.sub.d"),  # under TYPE_CHECKING, and inside a function
        ("pkg.sub.d", "pkg.e"),  # importlib.import_module
        ("pkg.sub.d", "pkg"),  # a name from the package: its __init__
    }


def test_a_lazy_cycle_is_found_and_named(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.b import f\n",
            "b.py": "def f():\n    from pkg import a\n",
            "c.py": "import pkg.a\n",
        },
    )
    found = cycles(import_graph(pkg, "pkg"))
    assert [describe(c) for c in found] == ["pkg.a (line 1) -> pkg.b (line 2) -> pkg.a"]


def test_a_package_init_importing_its_submodules_is_no_cycle(tmp_path: Path) -> None:
    pkg = _write(
        tmp_path,
        {"__init__.py": "from pkg.a import x\n", "a.py": "from pkg.b import y\nx = y\n"},
    )
    (pkg / "b.py").write_text("y = 1\n")
    assert cycles(import_graph(pkg, "pkg")) == []
    (pkg / "b.py").write_text("from pkg import x\ny = 1\n")  # a name from the __init__: a cycle
    assert [describe(c) for c in cycles(import_graph(pkg, "pkg"))] == [
        "pkg (line 1) -> pkg.a (line 1) -> pkg.b (line 1) -> pkg"
    ]
