"""Which project source files a pipeline stage runs, read off the code itself.

A stage's result depends on every ``medqa`` module its command imports, directly or through
another module. ``dvc.yaml`` has to list all of them as deps (or an edit to one of them leaves a
stale cached result), and the train stage's resume fingerprint has to hash all of them (or a
checkpoint written by other code is resumed). Both read this one function, and a test fails when
``dvc.yaml`` and the code disagree, so the lists cannot drift.

The closure is conservative: every import anywhere in a library module counts (module level or
inside a function), because a lazy import still runs when the stage calls that function. Only the
modules of the ``medqa`` command itself are read more closely, because each runs only in part:

- ``cli.py``, the entry: its file, its module level and whatever ``main()`` reaches in it count for
  every stage (``build_parser`` imports the command modules lazily; they are counted as below).
- ``stage_commands.py``: its file counts for every stage (it declares every stage's options and
  path defaults), and so do the imports of its module level and of its parser registration
  (``add_parsers``), but of its command functions only the stage's own, with the helpers it calls:
  another stage's command never runs, and the commands import the library lazily for this reason.
- ``predict_command.py`` and ``tool_commands.py`` (predict; models, promote, rollback, serve,
  doctor) are a dep of no stage. A stage run imports them and runs their ``add_parsers``, which
  only add those commands' parsers beside the stage's: argparse applies a subparser's options and
  defaults only when its command is chosen, so nothing there can change a stage's arguments or
  result (tests/test_stage_deps.py checks that every stage parses the same with or without them).
  What that registration imports still counts for every stage: their module level and what
  ``add_parsers`` reaches, short of the ``cmd_*`` functions, which a stage never runs. A library
  module the tools use thus stays out of the stages' deps only while a command imports it lazily.

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

ENTRY = f"{PACKAGE}.cli"  # `medqa`: main() runs for every command
STAGE_MODULE = f"{PACKAGE}.stage_commands"  # the commands dvc.yaml runs
# the commands people run (predict; promote, rollback, models, serve, doctor): no stage's dep
TOOL_MODULES = (f"{PACKAGE}.predict_command", f"{PACKAGE}.tool_commands")
REGISTER = "add_parsers"  # the function of a command module that cli.build_parser calls

# stage name -> the stage_commands function its dvc.yaml cmd (`medqa <stage>`) runs
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
    """The parsed module, once per file: every stage walks the same library modules."""
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


def _source(module: str) -> Path:
    """The source file of a ``medqa`` module that must exist (the package, a command module)."""
    path = _module_file(module)
    if path is None:
        raise KeyError(f"no module {module} in {PACKAGE_DIR}")
    return path


def _names(nodes: Sequence[ast.AST]) -> list[str]:
    """Every name used under ``nodes``: the candidates for a call of a function of the module."""
    return [n.id for node in nodes for n in ast.walk(node) if isinstance(n, ast.Name)]


def _reached_imports(
    module: str, roots: set[str], blocked: frozenset[str] = frozenset()
) -> set[str]:
    """Modules imported at ``module``'s top level and inside the functions that ``roots`` reach,
    following every name of one of its functions (a call, or a reference such as
    ``set_defaults(func=cmd_x)``) but never into ``blocked``."""
    path = _source(module)
    tree = _tree(path)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    top_level = [n for n in tree.body if not isinstance(n, ast.FunctionDef)]
    missing = roots - functions.keys()
    if missing:
        raise KeyError(f"{path.name} has no function {', '.join(sorted(missing))}")
    seen: set[str] = set()
    todo = [*roots, *_names(top_level)]
    while todo:
        name = todo.pop()
        if name in seen or name in blocked or name not in functions:
            continue
        seen.add(name)
        todo.extend(_names([functions[name]]))
    return _imported_modules([*(functions[n] for n in seen), *top_level])


def _command_functions(module: str) -> frozenset[str]:
    """The ``cmd_*`` functions of a command module: what ``main`` runs for one command."""
    return frozenset(
        n.name
        for n in _tree(_source(module)).body
        if isinstance(n, ast.FunctionDef) and n.name.startswith("cmd_")
    )


def _stage_imports(stage: str) -> set[str]:
    """Modules imported by what ``medqa <stage>`` runs: the entry point, the registration of every
    subcommand's parser, and the stage's own command function with the helpers it calls."""
    imports = _reached_imports(ENTRY, {"main"}) - {STAGE_MODULE, *TOOL_MODULES}  # counted below
    command = STAGE_COMMANDS[stage]
    imports |= _reached_imports(
        STAGE_MODULE, {command, REGISTER}, _command_functions(STAGE_MODULE) - {command}
    )
    for tools in TOOL_MODULES:
        imports |= _reached_imports(tools, {REGISTER}, _command_functions(tools))
    return imports


def stage_sources(stage: str) -> list[Path]:
    """Every project source file the ``medqa <stage>`` command runs, sorted (less the tool
    commands' parsers: see the module docstring)."""
    files = module_closure(_stage_imports(stage))
    files |= {_source(PACKAGE), _source(ENTRY), _source(STAGE_MODULE)}
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
