"""Check that the outputs the docs show are what the trained model prints today.

An example is a ```bash block holding one `medqa predict` command in single mode (--question and
--context), followed by a ```text block: what that command prints. Each is run as written, in the
project root, against the project's trained model (`make pipeline` first), and its output compared
with the text: words and answers exactly, numbers to the precision printed (one in the last digit
is rounding, and passes), so a number the docs show is a number the model gives.

    python scripts/check_doc_examples.py            # README.md and docs/guide.md; exit 1 on a difference
    python scripts/check_doc_examples.py --update   # rewrite the output blocks with today's output
    python scripts/check_doc_examples.py --project ../trained-copy   # another copy's trained model

Retraining or recalibrating moves the numbers: run it with --update and read the diff (an answer
that changed, or an example that now abstains, may need a better example rather than new text).
Exit status 2, one line, when there is no trained model to ask.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/guide.md")
_FENCE = re.compile(r"^```(\w*)\s*$")
_NUMBER = re.compile(r"-?\d+\.\d+")


@dataclass(frozen=True)
class Example:
    """One documented command and the output shown for it (None: no output block yet)."""

    doc: str
    line: int  # 1-based line of the command's opening fence, for messages
    argv: list[str]  # the command's arguments after `medqa`
    shown: str | None
    output_span: tuple[int, int] | None  # the output block's content lines, [start, end)
    insert_at: int  # where a missing output block goes (the line after the command's block)


def _blocks(lines: list[str]) -> list[tuple[str, int, int]]:
    """(language, first content line, end line) of each fenced block, 0-based, end exclusive."""
    blocks, start, lang = [], -1, ""
    for i, line in enumerate(lines):
        fence = _FENCE.match(line)
        if fence and start < 0:
            start, lang = i + 1, fence.group(1)
        elif line.strip() == "```" and start >= 0:
            blocks.append((lang, start, i))
            start = -1
    return blocks


def _predict_argv(body: list[str]) -> list[str] | None:
    """The arguments of a block that is exactly one single-mode `medqa predict` command."""
    text = "\n".join(body).replace("\\\n", " ").strip()
    if "\n" in text or not text.startswith("medqa predict "):
        return None
    argv = shlex.split(text, comments=True)[1:]
    return argv if "--question" in argv and "--context" in argv else None


def _output_span(
    lines: list[str], command_end: int, after: tuple[str, int, int] | None
) -> tuple[int, int] | None:
    """The content lines of the ```text block right after a command's block (blank lines between
    them at most: prose between them makes it some other text), or None."""
    if after is None or after[0] != "text":
        return None
    if any(line.strip() for line in lines[command_end + 1 : after[1] - 1]):
        return None
    return after[1], after[2]


def find_examples(doc: str, text: str) -> list[Example]:
    """Every example of a document, with the output block that follows it, if any."""
    lines = text.splitlines()
    blocks = _blocks(lines)
    examples = []
    for n, (lang, start, end) in enumerate(blocks):
        argv = _predict_argv(lines[start:end]) if lang == "bash" else None
        if argv is None:
            continue
        span = _output_span(lines, end, blocks[n + 1] if n + 1 < len(blocks) else None)
        shown = "\n".join(lines[span[0] : span[1]]) if span else None
        examples.append(Example(doc, start, argv, shown, span, end + 1))
    return examples


def same_output(shown: str, now: str) -> bool:
    """Equal but for rounding: the text around the numbers exactly, each number within one unit of
    the last digit the docs print."""
    shown, now = shown.strip(), now.strip()
    if _NUMBER.sub("#", shown) != _NUMBER.sub("#", now):
        return False
    for a, b in zip(_NUMBER.findall(shown), _NUMBER.findall(now)):
        unit = 10.0 ** -len(a.split(".")[1])
        if abs(float(a) - float(b)) > unit * 1.001:
            return False
    return True


def run_medqa(argv: list[str]) -> str:
    """What `medqa ARGV` prints to stdout, run in this process (one line on stderr if it fails)."""
    from medqa.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["-q", *argv])
    if status != 0:
        raise RuntimeError(f"`medqa {shlex.join(argv)}` exited {status}")
    return out.getvalue()


def missing_model(examples: list[Example], project: Path) -> str | None:
    """Why the examples cannot be run in ``project`` (no registry or model folder they name), or
    None."""
    for ex in examples:
        model = ex.argv[ex.argv.index("--model") + 1] if "--model" in ex.argv else ""
        if model.startswith("models:/") and not (project / "mlruns" / "mlflow.db").exists():
            return f"no MLflow store at {project / 'mlruns'} for {model}"
        if (
            model
            and not model.startswith(("models:/", "runs:/"))
            and not (project / model).is_dir()
        ):
            return f"no model folder {project / model}"
    return None


def _rewrite(text: str, updates: list[tuple[Example, str]]) -> str:
    """``text`` with each example's output block replaced (or added) by its new output."""
    lines = text.splitlines()
    for ex, now in sorted(updates, key=lambda u: u[0].insert_at, reverse=True):
        new = now.rstrip("\n").splitlines()
        if ex.output_span:
            lines[ex.output_span[0] : ex.output_span[1]] = new
        else:
            lines[ex.insert_at : ex.insert_at] = ["```text", *new, "```"]
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


def check(docs: list[str], update: bool, run: Callable[[list[str]], str] = run_medqa) -> list[str]:
    """Run every example of ``docs`` (paths under the root); return the differences found, after
    rewriting the output blocks when ``update``."""
    problems = []
    for doc in docs:
        text = (ROOT / doc).read_text(encoding="utf-8")
        updates = []
        for ex in find_examples(doc, text):
            now = run(ex.argv)
            if ex.shown is not None and same_output(ex.shown, now):
                print(f"{doc}:{ex.line}: ok")
                continue
            updates.append((ex, now))
            print(f"{doc}:{ex.line}: {'updated' if update else 'differs'}")
            shown = "no output block" if ex.shown is None else f"shown:\n{ex.shown}"
            problems.append(f"{doc}:{ex.line}: {shown}\nprinted now:\n{now.rstrip()}")
        if update and updates:
            (ROOT / doc).write_text(_rewrite(text, updates), encoding="utf-8")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Check (or --update) the examples; exit 1 on a difference, 2 without a trained model."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--update", action="store_true", help="rewrite the output blocks")
    ap.add_argument(
        "--project",
        type=Path,
        default=ROOT,
        help="the trained project the commands run in (default: this checkout)",
    )
    ap.add_argument("docs", nargs="*", default=list(DOCS), help="markdown files of this checkout")
    args = ap.parse_args(argv)
    examples = [
        ex for doc in args.docs for ex in find_examples(doc, (ROOT / doc).read_text("utf-8"))
    ]
    if (why := missing_model(examples, args.project)) is not None:
        print(f"check_doc_examples: error: {why}; run `make pipeline` first", file=sys.stderr)
        return 2
    here = Path.cwd()
    os.chdir(args.project)  # the commands run as written in the project root, as a reader's do
    try:
        problems = check(args.docs, args.update)
    except RuntimeError as e:
        print(f"check_doc_examples: error: {e}", file=sys.stderr)
        return 2
    finally:
        os.chdir(here)
    if problems and not args.update:
        print("\n\n".join(problems), file=sys.stderr)
        print(
            "the docs show other output: rerun with --update and review the diff", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
