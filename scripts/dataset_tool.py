"""Check the hand-written AMD QA sources and assemble them into SQuAD v2.0 splits.

The passages and questions in ``data/sources/`` are written by hand, one by one. This tool never
writes text: it only checks the authored records (spans, counts, labels) and assigns whole
passages to train/dev/test deterministically, so the same sources always give the same splits.

    python scripts/dataset_tool.py check data/sources/03
    python scripts/dataset_tool.py build            # writes data/raw/amd_qa/{train,dev,test}.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

QUESTION_TYPES = {
    "definition",
    "epidemiology",
    "risk_factor",
    "anatomy",
    "pathophysiology",
    "classification",
    "symptom",
    "diagnosis",
    "imaging",
    "treatment",
    "dosage",
    "side_effect",
    "prognosis",
    "monitoring",
    "rehabilitation",
    "differential",
    "note_extraction",
}
KINDS = {"reference", "note"}
ROOT = Path(__file__).resolve().parents[1]
# 70 / 15 / 15 by passage, with dev and test slots spread evenly through every 20 passages
SPLIT_PATTERN = ["train"] * 20
for _slot in (3, 10, 16):
    SPLIT_PATTERN[_slot] = "dev"
for _slot in (6, 13, 19):
    SPLIT_PATTERN[_slot] = "test"


def _load_passages(paths: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(p.rglob("*.json")) if p.is_dir() else [p])
    out = []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SystemExit(
                f"{f}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
            ) from None
        if not isinstance(data, list):
            raise SystemExit(f"{f}: expected a JSON list of passages")
        out.extend((f, p) for p in data)
    return out


def answer_start(context: str, answer: str, occurrence: int = 1) -> int:
    """Character offset of the ``occurrence``-th match of ``answer`` in ``context`` (or -1)."""
    start = -1
    for _ in range(occurrence):
        start = context.find(answer, start + 1)
        if start < 0:
            return -1
    return start


def check(passages: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """Every problem with the authored records, as 'file: pid: reason' lines."""
    problems: list[str] = []
    seen_pids: set[str] = set()
    for f, p in passages:
        pid = p.get("pid", "?")
        where = f"{f}: {pid}"
        if pid in seen_pids:
            problems.append(f"{where}: duplicate pid")
        seen_pids.add(pid)
        for key in ("pid", "title", "kind", "topic", "context", "qas"):
            if key not in p:
                problems.append(f"{where}: missing key {key!r}")
        if p.get("split", "train") != "train":
            problems.append(
                f"{where}: split may only pin a passage to 'train' (dev and test are dealt)"
            )
        if p.get("kind") not in KINDS:
            problems.append(f"{where}: kind must be one of {sorted(KINDS)}")
        ctx = p.get("context", "")
        n_words = len(ctx.split())
        if not 80 <= n_words <= 250:
            problems.append(f"{where}: context has {n_words} words (80-250 allowed)")
        qas = p.get("qas", [])
        if not 5 <= len(qas) <= 10:
            problems.append(f"{where}: {len(qas)} questions (5-10 allowed)")
        questions = set()
        for i, qa in enumerate(qas):
            qwhere = f"{where}: question {i + 1}"
            q = qa.get("question", "")
            if not q.strip():
                problems.append(f"{qwhere}: empty question")
            if q in questions:
                problems.append(f"{qwhere}: duplicate question")
            questions.add(q)
            if qa.get("type") not in QUESTION_TYPES:
                problems.append(
                    f"{qwhere}: type {qa.get('type')!r} not in {sorted(QUESTION_TYPES)}"
                )
            ans = qa.get("answer")
            if ans is None:
                continue
            if ans != ans.strip() or not ans:
                problems.append(f"{qwhere}: answer {ans!r} has surrounding whitespace or is empty")
            count = ctx.count(ans)
            occ = qa.get("occurrence", 1)
            if count == 0:
                problems.append(f"{qwhere}: answer {ans!r} is not in the context verbatim")
            elif count > 1 and "occurrence" not in qa:
                problems.append(
                    f'{qwhere}: answer {ans!r} occurs {count} times; add "occurrence": n'
                )
            elif occ > count:
                problems.append(f"{qwhere}: occurrence {occ} but answer occurs {count} times")
            if len(ans.split()) > 12:
                problems.append(f"{qwhere}: answer has {len(ans.split())} words (keep it short)")
    return problems


def stats(passages: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """Counts the data card and the issue ask for."""
    qas = [qa for _, p in passages for qa in p["qas"]]
    return {
        "passages": len(passages),
        "notes": sum(p["kind"] == "note" for _, p in passages),
        "questions": len(qas),
        "unanswerable": sum(qa.get("answer") is None for qa in qas),
        "types": dict(Counter(qa["type"] for qa in qas).most_common()),
    }


def assign_splits(passages: list[dict[str, Any]]) -> dict[str, str]:
    """Deterministic, stratified passage-level split.

    Passages are ordered by kind (note/reference), then authoring part (each part is one topic
    area), then a hash of the pid, and dealt into the 20-slot pattern in that order, so every split
    gets the same share of notes and of each topic area, hence nearly the same question-type mix.
    Passages pinned with ``"split": "train"`` (the growth batches, added after the first release)
    are not dealt: they join train and leave every other passage's split, so dev and test, unchanged,
    so learning-curve points before and after growth are scored on the same questions.
    """

    def key(p: dict[str, Any]) -> tuple[str, str, str]:
        return (p["kind"], p["pid"].split("-")[0], hashlib.sha256(p["pid"].encode()).hexdigest())

    ordered = sorted((p for p in passages if "split" not in p), key=key)
    dealt = {p["pid"]: SPLIT_PATTERN[i % len(SPLIT_PATTERN)] for i, p in enumerate(ordered)}
    return dealt | {p["pid"]: p["split"] for p in passages if "split" in p}


def to_squad(passages: list[dict[str, Any]], split: str) -> dict[str, Any]:
    """SQuAD v2.0 document: one article per passage, question ids derived from the pid."""
    data = []
    for p in passages:
        qas = []
        for i, qa in enumerate(p["qas"], start=1):
            ans = qa.get("answer")
            entry: dict[str, Any] = {
                "id": f"{p['pid']}-q{i:02d}",
                "question": qa["question"],
                "question_type": qa["type"],
                "is_impossible": ans is None,
                "answers": [],
            }
            if ans is not None:
                entry["answers"] = [
                    {
                        "text": ans,
                        "answer_start": answer_start(p["context"], ans, qa.get("occurrence", 1)),
                    }
                ]
            qas.append(entry)
        data.append(
            {
                "title": p["title"],
                "kind": p["kind"],
                "topic": p["topic"],
                "paragraphs": [{"context": p["context"], "qas": qas}],
            }
        )
    return {"version": "v2.0", "split": split, "data": data}


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


def card_tables(raw_dir: Path) -> str:
    """Markdown statistics of the built splits, for data/README.md."""
    import statistics

    docs = {
        s: json.loads((raw_dir / f"{s}.json").read_text(encoding="utf-8"))
        for s in ("train", "dev", "test")
    }
    qas = {s: [q for a in d["data"] for q in a["paragraphs"][0]["qas"]] for s, d in docs.items()}
    lines = [
        "| split | passages | of which notes | questions | answerable | unanswerable |",
        "|---|---|---|---|---|---|",
    ]
    for s, d in docs.items():
        n_no = sum(q["is_impossible"] for q in qas[s])
        lines.append(
            f"| {s} | {len(d['data'])} | {sum(a['kind'] == 'note' for a in d['data'])} | {len(qas[s])} "
            f"| {len(qas[s]) - n_no} | {n_no} ({n_no / len(qas[s]):.1%}) |"
        )
    all_q = [q for v in qas.values() for q in v]
    arts = [a for d in docs.values() for a in d["data"]]
    n_no = sum(q["is_impossible"] for q in all_q)
    lines.append(
        f"| **all** | {len(arts)} | {sum(a['kind'] == 'note' for a in arts)} | {len(all_q)} "
        f"| {len(all_q) - n_no} | {n_no} ({n_no / len(all_q):.1%}) |"
    )
    types = Counter(q["question_type"] for q in all_q)
    lines += ["", "| question type | all | train | dev | test |", "|---|---|---|---|---|"]
    for t, n in types.most_common():
        per = [sum(q["question_type"] == t for q in qas[s]) for s in ("train", "dev", "test")]
        lines.append(f"| {t} | {n} ({n / len(all_q):.1%}) | {per[0]} | {per[1]} | {per[2]} |")

    def describe(values: list[int]) -> str:
        median, mean = statistics.median(values), statistics.mean(values)
        return f"{min(values)} / {median:g} / {mean:.1f} / {max(values)}"

    words = [len(a["paragraphs"][0]["context"].split()) for a in arts]
    answers = [len(q["answers"][0]["text"].split()) for q in all_q if q["answers"]]
    questions = [len(q["question"].split()) for q in all_q]
    lines += [
        "",
        "| length (words) | min / median / mean / max |",
        "|---|---|",
        f"| passage | {describe(words)} |",
        f"| question | {describe(questions)} |",
        f"| answer | {describe(answers)} |",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="check authored source files or folders")
    c.add_argument("paths", nargs="+", type=Path)
    b = sub.add_parser("build", help="check all sources and write the SQuAD v2.0 splits")
    b.add_argument("--sources", type=Path, default=ROOT / "data" / "sources")
    b.add_argument("--out", type=Path, default=ROOT / "data" / "raw" / "amd_qa")
    k = sub.add_parser("card", help="print the statistics tables of the built splits (markdown)")
    k.add_argument("--raw", type=Path, default=ROOT / "data" / "raw" / "amd_qa")
    args = ap.parse_args()
    if args.cmd == "card":
        print(card_tables(args.raw))
        return
    paths = args.paths if args.cmd == "check" else [args.sources]
    passages = _load_passages(paths)
    problems = check(passages)
    for line in problems:
        print(line)
    if problems:
        sys.exit(f"{len(problems)} problem(s)")
    print(json.dumps(stats(passages), indent=1))
    if args.cmd == "build":
        by_split: dict[str, list[dict[str, Any]]] = {"train": [], "dev": [], "test": []}
        splits = assign_splits([p for _, p in passages])
        for _, p in sorted(passages, key=lambda fp: fp[1]["pid"]):
            by_split[splits[p["pid"]]].append(p)
        for split, ps in by_split.items():
            _write_json_atomic(args.out / f"{split}.json", to_squad(ps, split))
            n_q = sum(len(p["qas"]) for p in ps)
            n_a = sum(qa.get("answer") is not None for p in ps for qa in p["qas"])
            print(f"{split}: {len(ps)} passages, {n_q} questions ({n_a} answerable)")


if __name__ == "__main__":
    main()
