"""The package's import graph, every import statement counted (function-level and TYPE_CHECKING
ones too): no circle, a bounded longest chain, and a display layer that imports no training."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "covidreg"
#: The longest chain of imports inside the package (modules on it); 14 before the display
#: layer stopped importing the training code. A new import that lengthens it fails here.
LONGEST_CHAIN = 13
#: Modules that only display results (in a terminal or Jupyter) ...
DISPLAY = ("covidreg.progress",)
#: ... and the modules that train, which a display must not import.
TRAINING = (
    "covidreg.engine", "covidreg.stack", "covidreg.model", "covidreg.optimizers",
    "covidreg.experiment", "covidreg.crossval", "covidreg.seeds", "covidreg.compare",
    "covidreg.lr_range", "covidreg.lr_find", "covidreg.processes", "covidreg.estimator",
    "covidreg.api", "covidreg.importance", "covidreg.tune.study", "covidreg.tune.workers",
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def import_graph() -> dict[str, frozenset[str]]:
    """Each module's imports of other package modules. ``from covidreg import X`` is an import
    of the module X, or of nothing when X is a name the package's ``__init__`` defines (it
    imports nothing else at run time: its exports load on first use)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    deps.add(full if full in paths else base if base != "covidreg" else "")
        graph[name] = frozenset(d for d in deps if d in paths and d != name)
    return graph


def longest_chain(graph: dict[str, frozenset[str]]) -> list[str]:
    """The longest chain of imports (the graph has no circle: ``test_no_import_circle``)."""

    @functools.cache
    def from_module(name: str) -> tuple[str, ...]:
        chains = [from_module(dep) for dep in graph[name]]
        return (name, *max(chains, key=len, default=()))

    return list(max((from_module(n) for n in graph), key=len))


def circles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Every import circle found by a depth-first walk, as the modules on it."""
    found, state = [], dict.fromkeys(graph, 0)  # 0 unseen, 1 on the path, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state[dep] == 1:
                found.append([*path[path.index(dep) :], dep])
            elif state[dep] == 0:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in sorted(graph):
        if state[name] == 0:
            visit(name, [name])
    return found


def test_the_graph_is_read_from_every_kind_of_import() -> None:
    graph = import_graph()
    assert "covidreg.errors" in graph["covidreg.config"]  # a module-level import
    assert "covidreg.crossval" in graph["covidreg.api"]  # a function-level one
    assert "covidreg.api" in graph["covidreg"]  # under TYPE_CHECKING
    assert "covidreg.tune.storage" in graph["covidreg.tune.reports"]  # a package's module


def test_no_import_circle() -> None:
    assert circles(import_graph()) == []


def test_the_longest_chain_of_imports_is_bounded() -> None:
    chain = longest_chain(import_graph())
    assert len(chain) <= LONGEST_CHAIN, " -> ".join(chain)


@pytest.mark.parametrize("display", DISPLAY)
def test_a_display_imports_no_training_code(display: str) -> None:
    assert sorted(set(import_graph()[display]) & set(TRAINING)) == []


def test_a_circle_and_a_chain_are_found_where_they_are() -> None:
    graph = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"})}
    assert circles(graph) == [["a", "b", "c", "a"]]
    dag = {"a": frozenset({"b", "c"}), "b": frozenset({"c"}), "c": frozenset()}
    assert longest_chain(dag) == ["a", "b", "c"]
