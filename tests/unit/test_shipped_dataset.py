"""The shipped AMD dataset: counts, spans, split disjointness, and zero rejections by our validator."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from helpers import ROOT
from medqa.config import ValidateParams
from medqa.validate import validate_records

RAW = ROOT / "data" / "raw" / "amd_qa"


def load(split):
    return json.loads((RAW / f"{split}.json").read_text(encoding="utf-8"))


def test_counts_and_mix_hold():
    docs = {s: load(s) for s in ("train", "dev", "test")}
    articles = [a for d in docs.values() for a in d["data"]]
    qas = {
        s: [q for a in d["data"] for p in a["paragraphs"] for q in p["qas"]]
        for s, d in docs.items()
    }
    all_q = [q for v in qas.values() for q in v]
    assert len(articles) >= 200
    assert sum(a["kind"] == "note" for a in articles) >= len(articles) / 4
    assert len(all_q) >= 1500
    assert sum(q["is_impossible"] for q in all_q) >= 0.10 * len(all_q)
    assert sum(not q["is_impossible"] for q in qas["test"]) >= 200
    for a in articles:
        n_words = len(a["paragraphs"][0]["context"].split())
        assert 80 <= n_words <= 250, a["title"]
        assert 5 <= len(a["paragraphs"][0]["qas"]) <= 10, a["title"]
    # the test split's type mix stays close to the whole dataset's
    whole, test = (
        Counter(q["question_type"] for q in all_q),
        Counter(q["question_type"] for q in qas["test"]),
    )
    for t, n in whole.most_common(5):
        assert abs(test[t] / len(qas["test"]) - n / len(all_q)) < 0.05, t


def test_every_answer_is_an_exact_span_and_splits_are_disjoint():
    seen: dict[str, str] = {}
    for split in ("train", "dev", "test"):
        for a in load(split)["data"]:
            ctx = a["paragraphs"][0]["context"]
            assert seen.setdefault(ctx, split) == split, f"passage {a['title']!r} in two splits"
            for q in a["paragraphs"][0]["qas"]:
                assert q["is_impossible"] == (not q["answers"])
                for ans in q["answers"]:
                    assert (
                        ctx[ans["answer_start"] : ans["answer_start"] + len(ans["text"])]
                        == ans["text"]
                    ), q["id"]


def test_pipeline_validation_accepts_every_row(tmp_path):
    s = validate_records(
        RAW, tmp_path / "v", tmp_path / "r.jsonl", tmp_path / "v.json", ValidateParams()
    )
    assert s.rejected == 0 and s.rows_in == sum(s.accepted.values()) >= 1500


def test_shipped_splits_are_what_the_sources_build(tmp_path):
    out = tmp_path / "built"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "dataset_tool.py"), "build", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    for split in ("train", "dev", "test"):
        assert json.loads((out / f"{split}.json").read_text()) == load(split), split


def test_growth_passages_pinned_to_train_leave_every_other_split_unchanged():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "dataset_tool", ROOT / "scripts" / "dataset_tool.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    first_release = [
        {"pid": f"p0{a}-{i:03d}", "kind": "reference"} for a in (1, 2) for i in range(1, 21)
    ]
    grown = first_release + [
        {"pid": f"p0{a}-1{i:02d}", "kind": "note", "split": "train"}
        for a in (1, 2)
        for i in range(1, 6)
    ]
    before, after = tool.assign_splits(first_release), tool.assign_splits(grown)
    assert {pid: after[pid] for pid in before} == before
    assert all(after[p["pid"]] == "train" for p in grown if "split" in p)
    problems = tool.check([(Path("x.json"), {**grown[0], "split": "test"})])
    assert any(
        "x.json: p01-001: split may only pin a passage to 'train'" in line for line in problems
    )
