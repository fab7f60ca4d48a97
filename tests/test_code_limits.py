"""Size limits that keep the package readable (issue 16): outside ``training/`` no module is
over 500 lines and no function over 80 lines (from ``def`` to its last line, docstring
included). A module or function that grows past them fails here, naming itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "desktop" / "lunglens"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if "training" not in p.relative_to(PACKAGE).parts
    )


def _long_functions(path: Path, root: Path = PACKAGE) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno:
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_the_package_has_modules_to_check() -> None:
    names = {p.name for p in _modules()}
    assert {"cli.py", "scan.py", "engine.py"} & names and len(names) > 30


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_size(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE)}: {lines} lines"
    assert not _long_functions(path)


def test_the_checker_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    bad = tmp_path / "bad.py"
    bad.write_text(f"def f():\n{body}\n", encoding="utf-8")
    assert _long_functions(bad, tmp_path) == [f"bad.py:1 f ({MAX_FUNCTION_LINES + 1} lines)"]
    bad.write_text("def f():\n    return 1\n", encoding="utf-8")
    assert _long_functions(bad, tmp_path) == []
