"""The house rules that the code itself can check: small rooms, short functions, no private imports across modules.

- no module in ``lddmm_nets/`` or ``registration/`` over ``MAX_LINES`` lines;
- no function (or method) over ``MAX_FUNCTION_LINES`` lines of code (its docstring, however long, not counted);
- no ``from X import _private`` and no ``X._private`` attribute access on another module or another class's object,
  in library code (a module's own names and ``self._...`` are its business).
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("lddmm_nets", "registration")
MAX_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules():
    for pkg in PACKAGES:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def _rel(path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", list(_modules()), ids=_rel)
def test_modules_are_small_rooms(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{_rel(path)} has {n} lines (> {MAX_LINES}): split it by purpose"


def _code_lines(node) -> int:
    n = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        n -= first.end_lineno - first.lineno + 1
    return n


@pytest.mark.parametrize("path", list(_modules()), ids=_rel)
def test_functions_are_short(path):
    tree = ast.parse(path.read_text())
    long = [(node.name, _code_lines(node)) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > MAX_FUNCTION_LINES]
    assert not long, f"{_rel(path)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@pytest.mark.parametrize("path", list(_modules()), ids=_rel)
def test_no_module_imports_another_modules_private_names(path):
    tree = ast.parse(path.read_text())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            bad += [f"from {'.' * node.level}{node.module or ''} import {a.name}" for a in node.names
                    if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name) \
                and node.value.id not in ("self", "cls"):
            bad.append(f"{node.value.id}.{node.attr} (line {node.lineno})")
    assert not bad, f"{_rel(path)} uses private names of other modules or objects: {bad}"
