"""The package's import graph: no cycle, and imports inside functions only where they defer something optional.

Read from the source with ``ast`` (nothing is imported): every ``import`` of a pvt_np module, at any depth,
resolved to the module it loads. Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first, so an
import points at every package above its target too, except the packages the importer itself lies in (those are
already being imported). Imports under ``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pvt_np"

# What a function may import late: optional dependencies (CuPy, torch, timm, mpi4py, safetensors: absent from a plain
# install), heavy ones (SciPy's special functions, a quarter of a second; matplotlib) and the plots (matplotlib). A
# command of the CLI and a top-level attribute of pvt_np are loaded by name (importlib), which is no import statement.
LAZY_ALLOWED = (
    *("cupy", "cupyx", "cupy_backends", "torch", "torchvision", "timm", "mpi4py", "safetensors"),
    *("scipy", "matplotlib"),
)
LAZY_ALLOWED_PVT_NP = ("pvt_np.training.plots",)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            yield from (pair for orelse in child.orelse for pair in _imports_of(orelse, in_function))
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        yield from _imports(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))


def _imports_of(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, in_function
    yield from _imports(node, in_function)


def targets(name: str, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> list[str]:
    """The modules an import statement in module ``name`` loads (the innermost of each; packages added later)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = name.split(".") if known[name].name == "__init__.py" else name.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def edges(name: str, target: str, known: dict[str, Path]) -> list[str]:
    """``target`` and every package above it that importing it runs (not those ``name`` lies in)."""
    parts = target.split(".")
    chain = [".".join(parts[: i + 1]) for i in range(len(parts))]
    own = {".".join(name.split(".")[: i + 1]) for i in range(name.count(".") + 1)}
    return [m for m in chain if m in known and m not in own and m != name]


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    """(every import edge between pvt_np modules, the imports made inside functions as (importer, target, line))."""
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    late = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, in_function in _imports(tree):
            for target in targets(name, node, known):
                if in_function:
                    late.append((name, target, node.lineno))
                graph[name].update(edges(name, target, known))
    return graph, late


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _allowed_late(target: str) -> bool:
    return target.split(".")[0] in LAZY_ALLOWED or target in LAZY_ALLOWED_PVT_NP


def test_the_graph_reader_sees_packages_and_relative_imports() -> None:
    """The reader resolves what the tests below rely on: a package's __init__, ``from . import``, late imports."""
    graph, late = import_graph()
    assert "pvt_np.models" in graph["pvt_np.io.infer"], "importing pvt_np.models.registry runs models/__init__"
    assert {"pvt_np.ops", "pvt_np.ops.parallel"} <= graph["pvt_np.distributed"], "ops.parallel runs ops/__init__"
    assert ("pvt_np.training.plots", "matplotlib.figure") in {(importer, target) for importer, target, _ in late}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_has_no_cycle() -> None:
    """Every import, at module level or inside a function, points down the layers."""
    graph, _ = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_imports_inside_functions_only_defer_optional_dependencies() -> None:
    """A function imports only an optional or heavy dependency (or the plots)."""
    _, late = import_graph()
    stray = sorted(f"{importer} line {line}: {target}" for importer, target, line in late if not _allowed_late(target))
    assert not stray, "imports inside functions: " + "; ".join(stray)
