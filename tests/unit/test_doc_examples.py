"""The docs show what the model prints (issue 30, item 5): every predict example of the README and
the guide has its output beside it, and scripts/check_doc_examples.py keeps it true: answers and
words exactly, numbers to the precision printed; --update rewrites the shown output."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from helpers import ROOT


def _load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_doc_examples", ROOT / "scripts" / "check_doc_examples.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


checker = _load_checker()

DOC = """# A page

```bash
medqa predict --model models:/m@champion \\
  --question "How thick was the choroid?" \\
  --context "The choroid measured 386 µm."
```
```text
answer: 386 µm
confidence: 0.852 (raw score 1.000)
offsets: 21-27
```

```bash
medqa predict --model m --question "Q?" --context "C."
```

Prose.

```bash
medqa predict --model m --input questions.jsonl
medqa predict --model m --question "Q?" --context "C."
```
"""


def test_every_predict_example_of_the_docs_shows_its_output() -> None:
    for doc in checker.DOCS:
        examples = checker.find_examples(doc, (ROOT / doc).read_text(encoding="utf-8"))
        assert examples, f"{doc}: no predict example with its output"
        assert [ex.line for ex in examples if ex.shown is None] == [], doc


def test_examples_are_single_commands_followed_by_their_output() -> None:
    first, second = checker.find_examples("page.md", DOC)  # the two-command block is no example
    assert first.argv == [
        "predict",
        "--model",
        "models:/m@champion",
        "--question",
        "How thick was the choroid?",
        "--context",
        "The choroid measured 386 µm.",
    ]
    assert first.shown.startswith("answer: 386 µm") and second.shown is None


@pytest.mark.parametrize(
    "now,same",
    [
        ("answer: 386 µm\nconfidence: 0.853 (raw score 0.999)\noffsets: 21-27\n", True),
        ("answer: 386 µm\nconfidence: 0.855 (raw score 1.000)\noffsets: 21-27\n", False),
        ("answer: 386\nconfidence: 0.852 (raw score 1.000)\noffsets: 21-27\n", False),
        ("answer: 386 µm\nconfidence: 0.852 (raw score 1.000)\noffsets: 21-26\n", False),
        ("no answer: below the policy\nconfidence: 0.852\n", False),
    ],
)
def test_numbers_agree_to_the_printed_precision_and_words_exactly(now: str, same: bool) -> None:
    shown = "answer: 386 µm\nconfidence: 0.852 (raw score 1.000)\noffsets: 21-27"
    assert checker.same_output(shown, now) is same


def test_update_rewrites_and_adds_output_blocks_and_nothing_else(tmp_path: Path, capsys) -> None:
    page = tmp_path / "page.md"
    page.write_text(DOC, encoding="utf-8")
    outputs = {
        "How thick was the choroid?": "answer: 386 µm\nconfidence: 0.901 (raw score 1.000)\n"
        "offsets: 21-27\n",
        "Q?": "no answer: the context holds none\nconfidence: 0.990\n",
    }

    def run(argv: list[str]) -> str:
        return outputs[argv[argv.index("--question") + 1]]

    assert len(checker.check([str(page)], update=False, run=run)) == 2
    assert page.read_text(encoding="utf-8") == DOC  # a check changes nothing
    checker.check([str(page)], update=True, run=run)
    updated = page.read_text(encoding="utf-8")
    assert "confidence: 0.901 (raw score 1.000)" in updated and "0.852" not in updated
    assert (
        '"C."\n```\n```text\nno answer: the context holds none\nconfidence: 0.990\n```\n' in updated
    )
    assert updated.count("```text") == 2 and updated.endswith('--context "C."\n```\n')
    assert checker.check([str(page)], update=False, run=run) == []
    assert "differs" in capsys.readouterr().out


@pytest.mark.slow
def test_the_docs_show_what_the_trained_model_prints() -> None:
    """After `make pipeline` (a trained model and its registry in this checkout): every example as
    written, against it. Without one there is nothing to ask."""
    examples = [
        ex
        for doc in checker.DOCS
        for ex in checker.find_examples(doc, (ROOT / doc).read_text(encoding="utf-8"))
    ]
    if (why := checker.missing_model(examples, ROOT)) is not None:
        pytest.skip(f"{why}: run `make pipeline` first")
    assert checker.main([]) == 0
