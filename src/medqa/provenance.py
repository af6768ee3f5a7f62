"""Which project source files a pipeline stage runs, read off the code itself.

A stage's result depends on every ``medqa`` module its command imports, directly or through
another module. ``dvc.yaml`` has to list all of them as deps (or an edit to one of them leaves a
stale cached result), and the train stage's resume fingerprint has to hash all of them (or a
checkpoint written by other code is resumed). Both read this one function, and a test fails when
``dvc.yaml`` and the code disagree, so the lists cannot drift.

The closure is conservative: every import anywhere in a module counts (module level or inside a
function), because a lazy import still runs when the stage calls that function. Only the stage's
own command function in ``cli.py`` is narrowed to what it (and the cli helpers it calls) imports:
``cli.py`` imports each subcommand's module lazily precisely so that stages stay independent.

``python -m medqa.provenance`` prints each stage's source deps in ``dvc.yaml``'s form.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = "medqa"

# stage name -> the cli.py function its dvc.yaml cmd (`medqa <stage>`) runs
STAGE_COMMANDS = {
    stage: f"cmd_{stage}" for stage in ("validate", "tokenize", "train", "evaluate", "register")
}


def _module_file(module: str) -> Path | None:
    """The source file of a ``medqa`` module name, or None for anything outside the package."""
    if module != PACKAGE and not module.startswith(f"{PACKAGE}."):
        return None
    rel = Path(*module.split(".")[1:]) if module != PACKAGE else Path("__init__")
    for candidate in (PACKAGE_DIR / rel.with_suffix(".py"), PACKAGE_DIR / rel / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imported_modules(nodes: Sequence[ast.AST]) -> set[str]:
    """``medqa`` modules imported anywhere under ``nodes`` (``from medqa.x import y`` → medqa.x)."""
    found: set[str] = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
                found.add(sub.module)
                found.update(f"{sub.module}.{a.name}" for a in sub.names)  # `from medqa import x`
            elif isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names)
    return {m for m in found if _module_file(m) is not None}


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def module_closure(modules: set[str]) -> set[Path]:
    """Source files of ``modules`` and of every ``medqa`` module they import, transitively."""
    files: set[Path] = set()
    todo = list(modules)
    while todo:
        path = _module_file(todo.pop())
        if path is None or path in files:
            continue
        files.add(path)
        todo.extend(_imported_modules([_tree(path)]))
    return files


def _command_imports(function: str) -> set[str]:
    """Modules imported by one ``cli.py`` function, the cli helpers it calls, and cli's module level."""
    tree = _tree(PACKAGE_DIR / "cli.py")
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    if function not in functions:
        raise KeyError(f"cli.py has no function {function}")
    seen: set[str] = set()
    todo = [function]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(
            n.id for n in ast.walk(functions[name]) if isinstance(n, ast.Name) and n.id in functions
        )
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return _imported_modules([*(functions[n] for n in seen), *top_level])


def stage_sources(stage: str) -> list[Path]:
    """Every project source file the ``medqa <stage>`` command runs, sorted."""
    files = module_closure(_command_imports(STAGE_COMMANDS[stage]))
    files |= {PACKAGE_DIR / "cli.py", PACKAGE_DIR / "__init__.py"}
    return sorted(files)


def sources_digest(files: list[Path]) -> str:
    """SHA-256 over the files' names and contents: changes whenever any of them changes."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def dvc_dep_paths(stage: str) -> list[str]:
    """``stage_sources`` as the repo-relative paths dvc.yaml lists (src/medqa/<file>)."""
    return [f"src/{PACKAGE}/{p.relative_to(PACKAGE_DIR).as_posix()}" for p in stage_sources(stage)]


if __name__ == "__main__":
    for name in STAGE_COMMANDS:
        print(f"{name}:")
        print("\n".join(f"      - {p}" for p in dvc_dep_paths(name)))
