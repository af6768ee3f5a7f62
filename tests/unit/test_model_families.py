"""Any encoder a clinical-NLP user brings: one tiny checkpoint per family, through every stage.

For BERT (uncased and cased WordPiece), RoBERTa (byte-level BPE), DistilBERT, ELECTRA, ALBERT
(Unigram, sentencepiece-style), XLM-RoBERTa (Unigram), ModernBERT (byte-level BPE) and DeBERTa-v2
(Unigram): a tokenizer is trained with the ``tokenizers`` library on the shipped passages and a
2-layer model is built from a config, both saved like a downloaded checkpoint. Then the functions
the stages call run on it in turn: tokenize (its labels checked against the gold text), train (the
Trainer with medqa.optim's optimizer, a short overfit that must beat the abstain floor), evaluate,
register into a throwaway MLflow store, and `medqa predict` on the registered version, whose
answers must be exactly ``context[start:end]``, with no edge whitespace, and the ones evaluate
scored. docs/models.md shows this matrix; the last test keeps the page and the matrix in step.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import torch
import yaml
from datasets import load_from_disk
from mlflow import MlflowClient
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    AlbertConfig,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    ModernBertConfig,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    XLMRobertaConfig,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_QUESTION_ANSWERING_MAPPING

from helpers import ROOT, SHIPPED
from medqa.cli import main
from medqa.config import (
    DecodeParams,
    Params,
    TokenizeParams,
    load_params,
    load_yaml,
    parse_params,
)
from medqa.decoding import decode_best_spans
from medqa.evaluation import evaluate_checkpoint
from medqa.features import build_eval_features, tokenize_splits
from medqa.fileio import read_jsonl, write_jsonl_atomic
from medqa.metrics import score_question
from medqa.modelsource import load_model_config, load_tokenizer
from medqa.predictor import load_saved_model, score_saved_model
from medqa.registry import register_model
from medqa.tracking import configure_tracking
from medqa.training import fine_tune

pytestmark = pytest.mark.slow  # nine tiny model families trained end to end

WINDOWS = TokenizeParams(max_seq_length=128, doc_stride=32)
DECODE = DecodeParams(n_best=20, max_answer_length=30)
VOCAB = 2000
# 80 optimizer steps on the 8 questions' 34 windows: every family at least 0.717 F1 (measured);
# 10 epochs at 6e-3 left bert-uncased at 0.613, too close to the floor + 0.4 the test asks
BATCH, EPOCHS, LR = 8, 16, 4e-3
TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
BERT_SPECIALS = {
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "mask_token": "[MASK]",
}
ROBERTA_SPECIALS = {
    "bos_token": "<s>",
    "cls_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}
WITH_TYPES = ["input_ids", "token_type_ids", "attention_mask"]
NO_TYPES = ["input_ids", "attention_mask"]


def shipped_texts() -> list[str]:
    """Every passage and question of the shipped training split: the tokenizers' training text."""
    doc = json.loads((SHIPPED / "train.json").read_text(encoding="utf-8"))
    return [
        text
        for a in doc["data"]
        for p in a["paragraphs"]
        for text in [p["context"], *(q["question"] for q in p["qas"])]
    ]


def qa_rows(answerable: int = 6, unanswerable: int = 2) -> list[dict[str, Any]]:
    """Validated-style rows from the shortest shipped training passages, one question each."""
    doc = json.loads((SHIPPED / "train.json").read_text(encoding="utf-8"))
    paragraphs = sorted(
        (p for a in doc["data"] for p in a["paragraphs"]), key=lambda p: len(p["context"])
    )
    rows: list[dict[str, Any]] = []
    want = {True: answerable, False: unanswerable}
    for p in paragraphs:
        for q in p["qas"]:
            has_answer = bool(q["answers"]) and not q.get("is_impossible")
            if want[has_answer]:
                want[has_answer] -= 1
                rows.append(
                    {
                        "id": q["id"],
                        "question": q["question"],
                        "context": p["context"],
                        "answers": q["answers"][:1] if has_answer else [],
                    }
                )
                break
    assert not any(want.values())
    return rows


# --- tokenizers, trained on the shipped passages the way each family's original was built ---


def trained_once(build: Callable[..., Tokenizer]) -> Callable[..., Tokenizer]:
    """``build`` run once per argument set (training is the slow part); each call gets a fresh copy,
    since wrapping a tokenizer in PreTrainedTokenizerFast changes its padding and truncation."""
    saved = functools.cache(lambda *args: build(*args).to_str())
    return functools.wraps(build)(lambda *args: Tokenizer.from_str(saved(*args)))


def stable_ids(tok: Tokenizer, n_special: int) -> Tokenizer:
    """``tok`` with token ids (and Unigram scores) that do not depend on the trainer's run.

    The WordPiece and Unigram trainers number tokens in hash-map order, sum Unigram scores in thread
    order and give the characters Unigram must keep scores a step apart in hash order, all different
    in every process; the tiny models' results varied with them. The special tokens keep the first
    ids; the rest are ordered by string (WordPiece) or by rounded score, the kept characters sharing
    the lowest.
    """
    spec = json.loads(tok.to_str())
    model = spec["model"]
    if model["type"] == "WordPiece":
        tokens = sorted(model["vocab"], key=model["vocab"].get)
        model["vocab"] = {
            t: i for i, t in enumerate(tokens[:n_special] + sorted(tokens[n_special:]))
        }
    else:
        pieces = [(p, round(score, 6)) for p, score in model["vocab"][n_special:]]
        lowest_word, lowest = min(s for p, s in pieces if len(p) > 1), min(s for _, s in pieces)
        pieces = [(p, lowest if s < lowest_word else s) for p, s in pieces]
        model["vocab"] = model["vocab"][:n_special] + sorted(pieces, key=lambda ps: (-ps[1], ps[0]))
    return Tokenizer.from_str(json.dumps(spec))


def bert_pairs(tok: Tokenizer, cls: str, sep: str) -> processors.TemplateProcessing:
    """[CLS] question [SEP] context [SEP], the context with token type 1."""
    ids = [(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))]
    return processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1", special_tokens=ids
    )


@trained_once
def wordpiece(lowercase: bool) -> Tokenizer:
    """BERT's (cased or uncased), DistilBERT's and ELECTRA's."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(
        shipped_texts(), trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=specials)
    )
    tok = stable_ids(tok, len(specials))
    tok.post_processor = bert_pairs(tok, "[CLS]", "[SEP]")
    return tok


@trained_once
def byte_level_bpe(roberta: bool) -> Tokenizer:
    """RoBERTa's (offsets trimmed by its post-processor) or ModernBERT's (offsets keep the space)."""
    specials = (
        ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        if roberta
        else ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]
    )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        shipped_texts(),
        trainers.BpeTrainer(
            vocab_size=VOCAB,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    if roberta:
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", 2), ("<s>", 0), trim_offsets=True
        )
    else:
        tok.post_processor = processors.TemplateProcessing(  # ModernBERT has no token types
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", 0), ("[SEP]", 2)],
        )
    return tok


@trained_once
def unigram(specials: tuple[str, ...], lowercase: bool, roberta_pairs: bool) -> Tokenizer:
    """A sentencepiece-style Unigram model: ALBERT's (lower case), XLM-R's and DeBERTa-v3's."""
    tok = Tokenizer(models.Unigram())
    lower = [normalizers.Lowercase()] if lowercase else []
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), *lower])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    unk = next(s for s in specials if "unk" in s.lower())
    tok.train_from_iterator(
        shipped_texts(),
        trainers.UnigramTrainer(vocab_size=VOCAB, special_tokens=list(specials), unk_token=unk),
    )
    tok = stable_ids(tok, len(specials))
    if roberta_pairs:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
        )
    else:
        tok.post_processor = bert_pairs(tok, "[CLS]", "[SEP]")
    return tok


# --- the families ---


def _common(t: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {
        "vocab_size": len(t),
        "pad_token_id": t.pad_token_id,
        "max_position_embeddings": WINDOWS.max_seq_length,
    }


def _roberta_style(t: PreTrainedTokenizerFast) -> dict[str, Any]:
    """Positions start after the padding index: pad_token_id + 1 more rows than the longest window."""
    return {
        **_common(t),
        "max_position_embeddings": WINDOWS.max_seq_length + t.pad_token_id + 1,
        "type_vocab_size": 1,
        "bos_token_id": t.bos_token_id,
        "eos_token_id": t.eos_token_id,
    }


@dataclass(frozen=True)
class Family:
    """How one family's tokenizer and tiny model are built, and what its offsets look like."""

    tokenizer: Callable[[], Tokenizer]
    specials: dict[str, str]
    input_names: list[str]
    config: Callable[[PreTrainedTokenizerFast], PreTrainedConfig]
    spaced_offsets: bool  # some word's offsets include the space before it (decoding must trim it)
    attention: str = "sdpa"
    shared_layers: bool = False  # ALBERT: no per-layer learning rates


FAMILIES = {
    "bert-uncased": Family(
        lambda: wordpiece(True),
        BERT_SPECIALS,
        WITH_TYPES,
        lambda t: BertConfig(**_common(t), **TINY),
        spaced_offsets=False,
    ),
    "bert-cased": Family(
        lambda: wordpiece(False),
        BERT_SPECIALS,
        WITH_TYPES,
        lambda t: BertConfig(**_common(t), **TINY),
        spaced_offsets=False,
    ),
    # trim_offsets spares the first context token of every overflow window
    "roberta": Family(
        lambda: byte_level_bpe(True),
        ROBERTA_SPECIALS,
        NO_TYPES,
        lambda t: RobertaConfig(**_roberta_style(t), **TINY),
        spaced_offsets=True,
    ),
    "distilbert": Family(
        lambda: wordpiece(True),
        BERT_SPECIALS,
        NO_TYPES,
        lambda t: DistilBertConfig(**_common(t), dim=32, n_layers=2, n_heads=2, hidden_dim=64),
        spaced_offsets=False,
    ),
    "electra": Family(
        lambda: wordpiece(True),
        BERT_SPECIALS,
        WITH_TYPES,
        lambda t: ElectraConfig(**_common(t), **TINY, embedding_size=16),
        spaced_offsets=False,
    ),
    "albert": Family(
        lambda: unigram(("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"), True, False),
        BERT_SPECIALS | {"pad_token": "<pad>", "unk_token": "<unk>"},
        WITH_TYPES,
        lambda t: AlbertConfig(**_common(t), **TINY, embedding_size=16),
        spaced_offsets=True,
        shared_layers=True,
    ),
    "xlm-roberta": Family(
        lambda: unigram(("<s>", "<pad>", "</s>", "<unk>", "<mask>"), False, True),
        ROBERTA_SPECIALS,
        NO_TYPES,
        lambda t: XLMRobertaConfig(**_roberta_style(t), **TINY),
        spaced_offsets=True,
    ),
    "modernbert": Family(
        lambda: byte_level_bpe(False),
        BERT_SPECIALS,
        NO_TYPES,
        lambda t: ModernBertConfig(
            **_common(t),
            **TINY,
            cls_token_id=t.cls_token_id,
            sep_token_id=t.sep_token_id,
            bos_token_id=t.cls_token_id,
            eos_token_id=t.sep_token_id,
        ),
        spaced_offsets=True,
    ),
    "deberta-v2": Family(
        lambda: unigram(("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"), False, False),
        BERT_SPECIALS,
        WITH_TYPES,
        lambda t: DebertaV2Config(
            **_common(t),
            **TINY,
            relative_attention=True,
            position_buckets=32,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            type_vocab_size=0,
        ),
        spaced_offsets=True,
        attention="eager",
    ),
}


def save_tiny_checkpoint(family: Family, out: Path) -> Path:
    """A fast tokenizer plus a randomly initialised QA model of ``family``, saved like a hub checkpoint."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=family.tokenizer(),
        model_input_names=family.input_names,
        model_max_length=WINDOWS.max_seq_length,
        **family.specials,
    )
    config = family.config(tok)
    torch.manual_seed(0)
    MODEL_FOR_QUESTION_ANSWERING_MAPPING[type(config)](config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


# --- the checks ---


def assert_labels_cover_gold(
    train: list[dict[str, Any]], evals: list[dict[str, Any]], rows: list[dict[str, Any]]
) -> None:
    """Each labelled window's span covers the gold text, give or take whitespace and the rest of a
    word the tokenizer did not split at the answer's edge; every answerable row is labelled."""
    labelled = set()
    for tf, ef in zip(train, evals):
        if tf["start_positions"] == 0:
            continue
        row = rows[ef["example_index"]]
        gold = row["answers"][0]
        start = ef["offset_mapping"][tf["start_positions"]][0]
        end = ef["offset_mapping"][tf["end_positions"]][1]
        assert start <= gold["answer_start"] and end >= gold["answer_start"] + len(gold["text"])
        span = row["context"][start:end].strip()
        extra = span.replace(gold["text"], "", 1)
        assert gold["text"] in span and not any(c.isspace() for c in extra.strip()), span
        labelled.add(ef["example_index"])
    assert labelled == {i for i, r in enumerate(rows) if r["answers"]}


def stage_params(base: Path, name: str, family: Family) -> Params:
    """params.yaml for a short overfit of ``family``, written and read back through medqa.config.

    The same questions are train, dev and test, so the threshold tuned on dev and the test score
    measure memorisation: enough to tell a model that learns through the stages from one that
    cannot (labels off by a token, windows that lose the answer). Dropout stays at each family's
    default; the head gets the encoder's rate (tests/unit/test_optim.py checks the head's own rate).
    """
    raw = {
        "base_model": str(base),
        "tokenize": {"max_seq_length": WINDOWS.max_seq_length, "doc_stride": WINDOWS.doc_stride},
        "train": {
            "batch_size": BATCH,
            "learning_rate": LR,
            "head_learning_rate": LR,
            "epochs": EPOCHS,
            "weight_decay": 0.0,
            "warmup_ratio": 0.0,
            "layer_lr_decay": 1.0 if family.shared_layers else 0.8,
            "device": "cpu",
            "precision": "fp32",
        },
        "evaluate": {
            "decode": {"n_best": DECODE.n_best, "max_answer_length": DECODE.max_answer_length},
            "bootstrap_samples": 20,
        },
        "register": {"model_name": f"tiny-{name}", "min_f1": 0.0},
    }
    path = Path("params.yaml")
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return load_params(path)


def abstain_floor(rows: list[dict[str, Any]]) -> float:
    """The F1 of never answering: the share of unanswerable questions."""
    return float(np.mean([score_question("", [a["text"] for a in r["answers"]])[1] for r in rows]))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads spin-wait for each other
    and made the same overfit take 1 s or 20 s; tiny models gain nothing from a second thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One throwaway MLflow SQLite store for the module (a new store spends seconds on its schema),
    each family registering under its own model name; the stages find it through
    MLFLOW_TRACKING_URI, as under ``dvc repro`` with the variable set."""
    store = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        configure_tracking(store)  # the experiment, its artifacts under the store
        yield MlflowClient()
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return qa_rows()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_end_to_end(name, rows, tmp_path, tracking, monkeypatch):
    """tokenize -> train -> evaluate -> register -> predict, through the functions the stages call
    and `medqa predict` on the registered version."""
    family = FAMILIES[name]
    started = time.perf_counter()
    base = save_tiny_checkpoint(family, tmp_path / name)
    tokenizer = load_tokenizer(str(base))
    assert tokenizer.is_fast and type(load_model_config(str(base))) is type(
        family.config(tokenizer)
    )
    monkeypatch.chdir(tmp_path)
    params = stage_params(base, name, family)
    validated, features, checkpoint, reports = (
        Path("data/validated"),
        Path("data/features"),
        Path("models/checkpoint"),
        Path("reports"),
    )
    for split in ("train", "dev", "test"):
        write_jsonl_atomic(validated / f"{split}.jsonl", rows)

    tokenize_splits(validated, features, params.base_model, params.tokenize)
    train = load_from_disk(str(features / "train")).to_list()
    evals = load_from_disk(str(features / "dev")).to_list()
    assert len(train) == len(evals) > len(rows)  # the contexts became several windows each
    token_texts = [
        rows[f["example_index"]]["context"][s:e]
        for f in evals
        for s, e in f["offset_mapping"]
        if s >= 0
    ]
    assert family.spaced_offsets == any(t[:1].isspace() and t.strip() for t in token_texts)
    assert_labels_cover_gold(train, evals, rows)

    trained = fine_tune(features, validated, checkpoint, params, Path("models/train_state"))
    run = tracking.get_run(trained["run_id"])
    assert run.data.tags["attn_implementation"] == family.attention

    report = evaluate_checkpoint(
        checkpoint, features, validated, reports, params.base_model, params.evaluate
    )
    floor = abstain_floor(rows)
    print(
        f"\n{name}: loss {trained['final_train_loss']:.3f}, test F1 {report['f1']:.3f} vs floor "
        f"{floor:.3f}, untrained {report['baselines_f1']['base_model_untrained']:.3f}"
    )
    assert report["f1"] >= floor + 0.4, (report["f1"], floor)
    # every decision, answered or not, is a verbatim, trimmed slice of its context
    saved = load_saved_model(checkpoint, reports / "decoding.json", device="cpu")
    decisions, _ = score_saved_model(saved, rows, [r["id"] for r in rows], 64)
    for d, r in zip(decisions, rows):
        text = d.best_text
        assert text == r["context"][d.start : d.end] and text == text.strip(), repr(text)

    registered = register_model(
        checkpoint,
        reports / "metrics.json",
        reports / "decoding.json",
        validated / "test.jsonl",
        reports / "registration.json",
        params.register,
    )
    assert registered["promoted"], registered["reason"]
    tags = tracking.get_model_version(params.register.model_name, registered["version"]).tags
    assert (tags["max_seq_length"], tags["usable_positions"]) == ("128", "128")

    # served as registered: the pyfunc, its bundled decoding.json, the answers evaluate scored
    write_jsonl_atomic(
        Path("questions.jsonl"),
        [{"id": r["id"], "question": r["question"], "context": r["context"]} for r in rows],
    )
    argv = ["predict", "--model", registered["model_uri"], "--input", "questions.jsonl"]
    assert main([*argv, "--output", "answers.jsonl"]) == 0
    served = read_jsonl(Path("answers.jsonl"))
    evaluated = read_jsonl(reports / "predictions.jsonl")
    # what predict serves is what evaluate recorded under the answer policy (calibration.decide)
    assert [s["answer"] for s in served] == [e["policy_answer"] for e in evaluated]
    assert [s["reason"] for s in served] == [e["policy_reason"] for e in evaluated]
    assert [s["confidence"] for s in served] == pytest.approx(
        [e["confidence"] for e in evaluated], rel=1e-5
    )
    for s, r in zip(served, rows):
        assert s["id"] == r["id"]
        if not s["abstained"]:
            assert s["answer"] == r["context"][s["start"] : s["end"]] == s["answer"].strip()
    print(f"{name}: {time.perf_counter() - started:.1f} s end to end")


def test_decoded_answer_has_no_leading_space_with_spaced_offsets(rows, tmp_path):
    """ModernBERT-style byte-level offsets include the space before a word: the gold span's own
    tokens must decode to exactly the gold text, not " " + gold."""
    tokenizer = load_tokenizer(str(save_tiny_checkpoint(FAMILIES["modernbert"], tmp_path / "m")))
    row = rows[0]
    gold = row["answers"][0]
    a_start, a_end = gold["answer_start"], gold["answer_start"] + len(gold["text"])
    features = build_eval_features(tokenizer, [row], WINDOWS)
    starts = [np.zeros(len(f["input_ids"])) for f in features]
    ends = [np.zeros(len(f["input_ids"])) for f in features]
    offsets = features[0]["offset_mapping"]
    inside = [t for t, (s, e) in enumerate(offsets) if s >= 0 and e > a_start and s < a_end]
    assert offsets[inside[-1]][1] >= a_end, "the first window holds the whole answer"
    assert row["context"][offsets[inside[0]][0]].isspace()  # what the decoder used to return as is
    starts[0][inside[0]] = ends[0][inside[-1]] = 9.0
    (decision,) = decode_best_spans(
        features, starts, ends, [row["context"]], DECODE, [row["question"]]
    )
    assert decision.best_text == gold["text"] == row["context"][decision.start : decision.end]


def test_the_models_page_lists_the_matrix_and_its_snippets_load():
    """docs/models.md shows what this module runs: a row per family with the attention it gets and
    whether layer decay applies, and every params.yaml snippet is accepted by medqa.config."""
    page = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    table = {
        cells[0].strip("` "): [c.strip() for c in cells[1:]]
        for line in page.splitlines()
        if line.startswith("| `")
        for cells in [line.strip("|").split("|")]
    }
    assert set(table) == set(FAMILIES)
    for name, family in FAMILIES.items():
        _, _, attention, _, decay, _ = table[name]
        assert attention == family.attention, name
        assert decay.startswith("no" if family.shared_layers else "yes"), name
    snippets = re.findall(r"```yaml\n(.*?)```", page, flags=re.DOTALL)
    assert len(snippets) == 3
    for snippet in snippets:
        parse_params(load_yaml(snippet))
