"""No code travels (DESIGN guarantee 7): no module of the package imports pickle, dill,
marshal or cloudpickle, or calls exec, eval or compile; checked on the syntax tree."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mixplane"


def _imports_and_calls(tree: ast.AST) -> tuple[set[str], set[str]]:
    modules: set[str] = set()
    calls: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                calls.add(func.id)  # exec(...), eval(...), __import__(...)
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                calls.add(f"{func.value.id}.{func.attr}")  # pickle.loads(...), builtins.eval
    return modules, calls


def test_no_pickle_dill_marshal_exec_or_eval_in_the_package() -> None:
    """DESIGN guarantee 7, checked on the syntax tree of every module of the package."""
    forbidden_modules = {"pickle", "dill", "marshal", "cloudpickle", "shelve", "_pickle", "joblib"}
    forbidden_calls = {"exec", "eval", "compile", "__import__", "builtins.exec", "builtins.eval"}
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    offenders = []
    for path in files:
        modules, calls = _imports_and_calls(ast.parse(path.read_text(), filename=str(path)))
        bad = (modules & forbidden_modules) | (calls & forbidden_calls)
        if bad:
            offenders.append(f"{path.relative_to(PACKAGE.parent)}: {sorted(bad)}")
    assert offenders == []


def test_the_checker_finds_what_it_looks_for() -> None:
    modules, calls = _imports_and_calls(
        ast.parse("import pickle\nfrom dill import x\nimport marshal as m\neval('1')\nexec(s)\n")
    )
    assert {"pickle", "dill", "marshal"} <= modules
    assert {"eval", "exec"} <= calls
