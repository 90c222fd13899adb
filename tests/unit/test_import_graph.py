"""The gateway's import graph is acyclic, and no filter reaches into the wiring layer.

The graph is built from the AST of every module under gateway/, imports inside functions included (a cycle closed
by a function-level import is still a cycle: it only moves the failure from import time to call time). Imports
under `if TYPE_CHECKING:` are left out: they never run, and annotations are strings (`from __future__ import
annotations`), so they cannot form a cycle at runtime.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gateway"

# the wiring layer: modules that build components and hand them to filters and handlers; a filter depends on what
# it is given, never on how the gateway is put together
WIRING = frozenset(
    {
        "gateway.app",
        "gateway.compose",
        "gateway.wiring",
        "gateway.server",
        "gateway.cli",
        "gateway.net.workers",
    }
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except the bodies of `if TYPE_CHECKING:` blocks (their `else` branches do run)."""
    out: list[ast.AST] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The gateway module `name` refers to (itself, or its package when `name` is an attribute)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gateway"):
                    targets.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            if not prefix.startswith("gateway"):
                continue
            targets.add(prefix)
            for alias in node.names:
                # `from gateway.filters import authn` imports the module gateway.filters.authn
                targets.add(f"{prefix}.{alias.name}")
    edges: set[str] = set()
    for target in targets:
        resolved = _resolve(target, modules)
        # a module's own packages are already loaded when it runs (and gateway's __init__ files are empty)
        if resolved is not None and resolved != name and not name.startswith(resolved + "."):
            edges.add(resolved)
        # importing a.b.c runs a/__init__ and a/b/__init__ first; they are empty here, but count them all the same
        parts = target.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent in modules and parent != name and not name.startswith(parent + "."):
                edges.add(parent)
    return edges


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    def visit(root: str) -> None:
        nonlocal counter
        # iterative, so a deep graph cannot hit the recursion limit
        work: list[tuple[str, list[str]]] = [(root, sorted(graph.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, pending = work[-1]
            if pending:
                nxt = pending.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(components)


def test_graph_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    """The parser itself: an import inside a function counts, one under TYPE_CHECKING does not."""
    pkg = tmp_path / "gateway"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from gateway.sub import b\n    return b\n")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gateway import a\n"
    )
    (pkg / "sub" / "c.py").write_text("from . import b\nfrom ..a import f\n")
    modules = {module_name_in(tmp_path, p): p for p in pkg.rglob("*.py")}
    assert imports_of("gateway.a", pkg / "a.py", modules) == {"gateway.sub", "gateway.sub.b"}
    assert imports_of("gateway.sub.b", pkg / "sub" / "b.py", modules) == set()
    assert imports_of("gateway.sub.c", pkg / "sub" / "c.py", modules) == {"gateway.sub.b", "gateway.a"}


def module_name_in(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_cycle_finder_reports_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert cycles == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_filters_do_not_import_the_wiring_layer() -> None:
    graph = import_graph()
    bad = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name.startswith("gateway.filters.")
        for target in targets
        if target in WIRING or target.endswith(".install")
    )
    assert bad == [], "filters importing the wiring layer:\n" + "\n".join(bad)


def test_wiring_modules_exist() -> None:
    """The WIRING list names real modules (a rename must not silently empty the check)."""
    modules = all_modules()
    assert "gateway.app" in modules
    assert "gateway.server" in modules
