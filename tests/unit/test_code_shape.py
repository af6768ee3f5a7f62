"""The house rules a newcomer relies on (issue "A house a newcomer finds their way in"): no module in
src/ or pipeline/ over 400 lines, no function in src/, pipeline/ or benchmarks/ over 60 lines (from
its `def` line through its last line, docstring included). A room that outgrows them is split."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_no_module_over_400_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in _files("src", "pipeline")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_over_60_lines():
    long = {}
    for path in _files("src", "pipeline", "benchmarks"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = n
    assert long == {}
