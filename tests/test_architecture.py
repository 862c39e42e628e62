"""Issue 18's proxies that the package reads by responsibility, kept true: no module over 700
lines, no class over 400, no function over 120, no import cycle between modules (imports at
module level or inside functions; ``if TYPE_CHECKING:`` blocks aside), and no use of an underscore name that
another module of the package defines (``other._lock``, ``module._helper``)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mixplane"
MAX_MODULE_LINES = 700
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 120


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return out


MODULES = modules()


def spans(tree: ast.Module) -> Iterator[tuple[str, str, int]]:
    """(kind, qualified name, lines) of every class and function."""

    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                kind = "class" if isinstance(child, ast.ClassDef) else "function"
                name = f"{prefix}{child.name}"
                assert child.end_lineno is not None
                yield kind, name, child.end_lineno - child.lineno + 1
                yield from walk(child, f"{name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def oversized(trees: dict[str, ast.Module]) -> list[str]:
    too_long = []
    for name, tree in trees.items():
        lines = max((getattr(n, "end_lineno", 0) or 0) for n in ast.walk(tree))
        if lines > MAX_MODULE_LINES:
            too_long.append(f"module {name}: {lines} lines > {MAX_MODULE_LINES}")
        for kind, qualified, count in spans(tree):
            limit = MAX_CLASS_LINES if kind == "class" else MAX_FUNCTION_LINES
            if count > limit:
                too_long.append(f"{kind} {name}.{qualified}: {count} lines > {limit}")
    return too_long


def test_module_class_and_function_sizes() -> None:
    too_long = oversized(MODULES)
    assert not too_long, "split these:\n" + "\n".join(too_long)


def module_imports(name: str, tree: ast.Module, known: set[str] | None = None) -> set[str]:
    """Package modules that ``name`` imports, at module level or inside its functions (an
    import moved into a function still ties the two modules), not under TYPE_CHECKING."""
    package = name if name in PACKAGE_NAMES else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(
                node,
                (
                    ast.If,
                    ast.Try,
                    ast.With,
                    ast.For,
                    ast.While,
                    ast.FunctionDef,
                    ast.AsyncFunctionDef,
                    ast.ClassDef,
                ),
            ):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                visit(getattr(node, "finalbody", []))
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)

    visit(tree.body)
    known = set(MODULES) if known is None else known
    return {m for m in found if m in known and m != name}


PACKAGE_NAMES = {
    ".".join(p.relative_to(PACKAGE.parent).parts)
    for p in PACKAGE.rglob("__init__.py")
    for p in [p.parent]
}


def import_cycles(trees: dict[str, ast.Module]) -> list[list[str]]:
    graph = {name: module_imports(name, tree, set(trees)) for name, tree in trees.items()}
    # a package's __init__ importing its own submodules is how packages are made, not a cycle
    for name, imported in graph.items():
        if name in PACKAGE_NAMES:
            graph[name] = {m for m in imported if not m.startswith(f"{name}.")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    return cycles


def test_no_import_cycles() -> None:
    cycles = import_cycles(MODULES)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def defined_private(tree: ast.Module) -> set[str]:
    """Underscore names a module defines: its functions, classes and their attributes."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def foreign_underscores(trees: dict[str, ast.Module]) -> list[str]:
    own = {name: defined_private(tree) for name, tree in trees.items()}
    everywhere = set().union(*own.values())
    found = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mixplane"):
                found.extend(
                    f"{name}:{node.lineno}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                )
                continue
            if not isinstance(node, ast.Attribute):
                continue
            attr = node.attr
            if not attr.startswith("_") or attr.startswith("__"):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if attr in own[name] or attr not in everywhere:  # its own, or not the package's
                continue
            found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_underscore_access_across_modules() -> None:
    found = foreign_underscores(MODULES)
    assert not found, "give these a public name or method:\n" + "\n".join(found)


def test_the_checks_can_fail() -> None:
    """Each check finds what it looks for in small made-up modules."""
    long_function = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    assert oversized({"m": ast.parse(long_function)}) == [
        f"function m.f: {MAX_FUNCTION_LINES + 1} lines > {MAX_FUNCTION_LINES}"
    ]
    a = ast.parse("from mixplane.b import g\n")
    b = ast.parse("def g():\n    from mixplane.a import f\n    return f\n")
    assert import_cycles({"mixplane.a": a, "mixplane.b": b}) == [
        ["mixplane.a", "mixplane.b", "mixplane.a"]
    ]
    typed = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mixplane.a import f\n"
    )
    assert import_cycles({"mixplane.a": a, "mixplane.b": typed}) == []
    owner = ast.parse("class Job:\n    def __init__(self):\n        self._lock = 1\n")
    user = ast.parse("def f(job):\n    return job._lock\n")
    assert foreign_underscores({"mixplane.job": owner, "mixplane.server": user}) == [
        "mixplane.server:2: job._lock"
    ]
    helper = ast.parse("def _take(a):\n    return a\n")
    importer = ast.parse("from mixplane.cols import _take\n")
    assert foreign_underscores({"mixplane.cols": helper, "mixplane.arrow": importer}) == [
        "mixplane.arrow:1: from mixplane.cols import _take"
    ]
