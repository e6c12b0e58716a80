"""The import graph of the four packages has no cycle, and imports flow corpora -> retrieval -> cqa -> esi.

The graph is built statically from the source (``ast``), so it sees every import a run could take:
module-level ones, those inside functions (lazy imports still tie two modules together), those under
``TYPE_CHECKING`` (where the lazy package exports of :mod:`esi._lazy` declare themselves) and
``importlib.import_module("literal")``. An edge goes from a module to the in-repo module it names;
``from package import name`` points at ``package.name`` when that is a module, else at ``package``.

Not counted: the implicit import of parent packages (``import a.b.c`` first runs ``a/__init__`` and
``a/b/__init__``). Counting it would make every package ``__init__`` that re-exports its own submodules
look cyclic although Python imports that pattern fine; a submodule that imports names back from its
package's ``__init__`` is an explicit edge and is caught.

The deprecated shims (old module paths kept for one release, docstring "Deprecated path...") are in the
graph like any module; on top, nothing else may import them, so they can be deleted without a trace.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("corpora", "retrieval", "cqa", "esi")  # a package may import only from itself and those before it


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path = ROOT, packages: Iterable[str] = LAYERS) -> dict[str, Path]:
    """Every module of the packages: dotted name -> file."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                modules[module_name(path, root)] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve(name: str, known: Mapping[str, Path]) -> str | None:
    """The longest in-repo module that ``name`` is or lies in (``esi.model.ESIModel`` -> ``esi.model``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The absolute module of ``from [.]*module import ...`` inside ``package``."""
    if not node.level:
        return node.module or ""
    anchor = package.split(".")
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join([*anchor, node.module] if node.module else anchor)


def imports_of(tree: ast.AST, module: str, is_package: bool, known: Mapping[str, Path]) -> set[str]:
    """The in-repo modules a module's source imports, anywhere in it."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                names.add(submodule if submodule in known else base)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return {target for name in names if (target := _resolve(name, known)) is not None}


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """module -> the in-repo modules it imports (self-imports dropped)."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[module] = imports_of(tree, module, _is_package(path), modules) - {module}
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None when the graph is acyclic (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph.get(start, ())))]
        state[start] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
                continue
            if state.get(child) == 1:
                return path[path.index(child):] + [child]
            if not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph.get(child, ()))))
    return None


def layer_violations(graph: Mapping[str, Iterable[str]], layers: tuple[str, ...] = LAYERS) -> list[str]:
    """Edges from a lower package to a higher one (corpora must not import retrieval, and so on)."""
    rank = {name: i for i, name in enumerate(layers)}
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if rank[a.split(".")[0]] < rank[b.split(".")[0]])


def deprecated_modules(modules: Mapping[str, Path]) -> set[str]:
    """The shims: modules whose docstring starts with "Deprecated path"."""
    found = set()
    for name, path in modules.items():
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if doc.startswith("Deprecated"):
            found.add(name)
    return found


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return package_modules()


@pytest.fixture(scope="module")
def graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    return import_graph(modules)


# ---- the checker itself ----------------------------------------------------------------------------------

def test_find_cycle_on_small_graphs() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None  # a diamond is no cycle
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y"}}) == ["y", "y"]
    assert find_cycle({"m": {"n"}, "n": set(), "p": {"q"}, "q": {"p"}}) == ["p", "q", "p"]


def test_graph_builder_sees_every_kind_of_import(tmp_path: Path) -> None:
    """Function-level, TYPE_CHECKING, relative and import_module imports are edges; a cycle through any fails."""
    files = {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def f():\n    from .c import g\n",
        "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.d\n",
        "pkg/d.py": "import importlib\nimportlib.import_module('pkg.a')\n",
        "pkg/e.py": "import os\nfrom pkg.d import something\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = package_modules(tmp_path, ["pkg"])
    graph = import_graph(found)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.d"}, "pkg.d": {"pkg.a"},
                     "pkg.e": {"pkg.d"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.a"]


def test_layer_check_flags_an_upward_import() -> None:
    assert layer_violations({"cqa.x": {"retrieval.y"}, "esi.z": {"corpora.w"}}) == []
    assert layer_violations({"corpora.x": {"esi.y"}, "retrieval.a": {"cqa.b"}}) == ["corpora.x -> esi.y",
                                                                                      "retrieval.a -> cqa.b"]


# ---- the repository --------------------------------------------------------------------------------------

def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_imports_flow_corpora_retrieval_cqa_esi(graph: dict[str, set[str]]) -> None:
    assert layer_violations(graph) == []


def test_the_graph_is_not_trivially_empty(graph: dict[str, set[str]]) -> None:
    """Guards the checks above against a builder that silently finds nothing."""
    assert {"esi.model.model", "esi.eval.metrics", "esi.cli.main", "corpora.base"} <= set(graph)
    assert "esi.model.model" in graph["esi.model.factory"]
    assert {"esi.eval.metrics", "esi.eval.probe"} <= graph["esi.eval.suite"] | graph["esi.eval.probe"]
    assert "esi.train.views" in graph["esi.zeroshot.classifier"]  # a function-level import


def test_lazy_package_exports_are_edges_of_the_graph(graph: dict[str, set[str]]) -> None:
    import esi.model
    import esi.train

    for package in (esi.model, esi.train):
        assert set(package._EXPORTS) <= graph[package.__name__], package.__name__


def test_nothing_imports_a_deprecated_path(modules: dict[str, Path], graph: dict[str, set[str]]) -> None:
    shims = deprecated_modules(modules)
    assert {"esi.evaluate", "esi.inference", "esi.data", "esi.views", "esi.api.app", "esi.api.cli"} <= shims
    users = sorted(f"{a} -> {b}" for a, targets in graph.items() if a not in shims for b in targets if b in shims)
    assert users == []
    for name, path in package_modules(ROOT, ["tests", "bench"]).items():
        used = sorted(imports_of(ast.parse(path.read_text(encoding="utf-8")), name, _is_package(path), modules) & shims)
        assert not used, f"{path.relative_to(ROOT)} imports the deprecated {used}"
