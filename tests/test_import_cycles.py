"""The bbg_jax package's import graph: no cycles, and no library module importing scripts/tests.

The graph is read from the source with ``ast`` (nothing is imported): an edge A -> B for each
import in A of B, a bbg_jax module. Two graphs: the module-level one (what runs at import time;
a cycle there can fail an import) and the one that adds imports deferred into functions, the
usual way to hide a cycle that is still a knot in the design. ``if TYPE_CHECKING:`` blocks never
run and are left out of both. ``from pkg import name`` points at ``pkg.name`` when that is a
module, else at ``pkg``; the implicit import of a module's parent packages is not an edge (every
``from bbg_jax.models import layers`` inside bbg_jax/models would otherwise close a harmless loop
through ``__init__``).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "bbg_jax"


@functools.cache
def _module_files() -> dict[str, Path]:
    files = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


@functools.cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, deferred: bool):
    """Import statements that run when the module is imported, and with ``deferred`` those in
    function and class bodies too; never those under ``if TYPE_CHECKING:``."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node):
            continue
        elif deferred or not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef
                                        | ast.ClassDef | ast.Lambda):
            stack += list(ast.iter_child_nodes(node))


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node, module: str, is_package: bool, modules: set[str]) -> list[tuple[str, str]]:
    """(imported name, source line) for each bbg_jax module the statement imports."""
    line = ast.unparse(node)
    if isinstance(node, ast.Import):
        return [(a.name, line) for a in node.names if a.name in modules]
    src = _absolute(node, module, is_package)
    out = []
    for alias in node.names:
        sub = f"{src}.{alias.name}"
        if sub in modules:
            out.append((sub, line))
        elif src in modules:
            out.append((src, line))
    return out


@functools.cache
def import_graph(deferred: bool = False) -> dict[str, dict[str, str]]:
    """{module: {imported module: the import line}} over bbg_jax's module-level imports (and
    with ``deferred`` those inside functions too)."""
    files = _module_files()
    modules = set(files)
    graph: dict[str, dict[str, str]] = {m: {} for m in files}
    for module, path in files.items():
        tree = _parse(path)
        is_package = path.name == "__init__.py"
        for node in _imports(tree, deferred):
            for target, line in _targets(node, module, is_package, modules):
                if target != module:
                    graph[module].setdefault(target, line)
    return graph


def strongly_connected(graph: dict[str, dict[str, str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm; returns the components of more than one module (the cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _describe(graph, comp: frozenset[str]) -> str:
    return "; ".join(f"{a} -> {b}: {graph[a][b]!r}" for a in sorted(comp)
                     for b in sorted(graph[a]) if b in comp)


def test_graph_sees_the_package():
    graph, full = import_graph(), import_graph(deferred=True)
    assert "bbg_jax.models.layers" in graph["bbg_jax.models.generator"]
    assert "bbg_jax.models.winograd" in graph["bbg_jax.models.conv"]
    # A deferred import is an edge of the full graph only (benchmark imports layers late).
    assert "bbg_jax.models.layers" in full["bbg_jax.benchmark"]
    assert "bbg_jax.models.layers" not in graph["bbg_jax.benchmark"]


def test_no_module_level_import_cycles():
    graph = import_graph()
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles: " + " | ".join(_describe(graph, c) for c in cycles)


def test_no_import_cycles_at_all():
    graph = import_graph(deferred=True)
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles: " + " | ".join(_describe(graph, c) for c in cycles)


def _forbidden_names() -> set[str]:
    # scripts/ and tests/ are not packages: their files are importable by their stem when the
    # folder is on sys.path, so each stem counts as well as the folder names.
    names = {"scripts", "tests", "conftest"}
    for folder in ("scripts", "tests"):
        names |= {p.stem for p in (ROOT / folder).rglob("*.py")}
    return names


def test_library_never_imports_scripts_or_tests():
    forbidden = _forbidden_names()
    bad = []
    for module, path in _module_files().items():
        for node in ast.walk(_parse(path)):  # every import, even a deferred one
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            bad += [f"{module}: {ast.unparse(node)}" for n in names
                    if n.split(".")[0] in forbidden]
    assert not bad, bad
