"""The pipeline's stage commands: ``medqa validate``, ``tokenize``, ``train``, ``evaluate`` and
``register``, which dvc.yaml runs, and their parsers.

Each command is a thin adapter around one library function. The library is imported inside the
command, never at module level: ``medqa.provenance`` counts only the imports of the stage's own
command (and the helpers it calls) as that stage's source deps, so editing training code does not
rerun validate. This whole file is a dep of every stage (a stage's options and defaults live here);
the tool commands live in ``predict_command`` and ``tool_commands`` so that editing them reruns
nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medqa.cli_common import Subparsers, path_options, precision_option, project_params
from medqa.contracts import (
    DECODING_FILE,
    METRICS_REPORT,
    REGISTRATION_REPORT,
    REJECTED_ROWS,
    REPAIRS_LOG,
    VALIDATION_REPORT,
)


def cmd_validate(args: argparse.Namespace) -> None:
    """Check the raw data; the question limit comes from the tokenizer, so that a question too long
    for tokenize's windows is rejected here rather than truncated there."""
    from medqa.features import question_limit
    from medqa.validate import validate_records

    params = project_params(args)
    p = params.validate
    s = validate_records(
        Path(args.raw or p.raw_path),
        args.out,
        args.rejected,
        args.report,
        p,
        repairs_path=args.repairs,
        question_limit=question_limit(params.base_model, params.tokenize),
    )
    print(
        f"validated {s.rows_in} rows: accepted {sum(s.accepted.values())}, "
        f"repaired {sum(s.repaired.values())} ({s.merged} merged), rejected {s.rejected}; "
        f"written {s.written}"
    )


def cmd_tokenize(args: argparse.Namespace) -> None:
    """Cut the validated splits into the windows training and evaluation read."""
    from medqa.features import tokenize_splits

    p = project_params(args)
    counts = tokenize_splits(args.validated, args.out, p.base_model, p.tokenize)
    print(f"windows per split: {counts}")


def cmd_train(args: argparse.Namespace) -> None:
    """Fine-tune; under torchrun every rank runs this, and only rank 0 reports."""
    from medqa.process import die_with_parent

    die_with_parent()  # first: a dvc killed while torch imports must not leave a trainer behind
    from medqa.training import fine_tune

    s = fine_tune(args.features, args.validated, args.out, project_params(args), args.state)
    if not s:  # a torchrun worker other than rank 0: rank 0 reports
        return
    print(
        f"trained on {s['train_windows']} windows in {s['train_seconds']} s "
        f"({s['samples_per_s']} windows/s, {s['tokens_per_s']} tokens/s, {s['backend']}, {s['precision']}, "
        f"world size {s['world_size']}, peak memory {s['peak_memory_mb']:.0f} MB); MLflow run {s['run_id']}"
    )


def print_scores(label: str, r: dict[str, Any]) -> None:
    """EM/F1 with the bootstrap interval, answerable/unanswerable F1, and the floor baselines."""
    from medqa.reports import score_lines

    print("\n".join(score_lines(r, label)))


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Without --model and --split the DVC stage (its inputs are its deps, its precision its
    params'). With either, any model on any data, scored as it is served: that mode is a tool
    (``tool_commands.cmd_evaluate_adhoc``, handed over as ``args.adhoc`` by its parser
    registration), so neither it nor the data readers it needs are deps of the stage."""
    if args.model is not None or args.split is not None:
        args.adhoc(args)
        return
    from medqa.evaluation import evaluate_checkpoint

    p = project_params(args)
    if args.precision is not None:
        from medqa.errors import ConfigError

        raise ConfigError("the stage reads evaluate.precision; --precision is for --model/--split")
    r = evaluate_checkpoint(
        Path(p.paths.checkpoint),  # the evaluate stage's input in dvc.yaml
        args.features,
        args.validated,
        args.reports or Path(p.paths.reports),
        p.base_model,
        p.evaluate,
    )
    print_scores("test", r)
    print(f"precision {r['precision']} ({r['precision_reason']})")
    print(f"engine {r['engine']} ({r['engine_reason']})")


def cmd_register(args: argparse.Namespace) -> None:
    """Register the checkpoint and move @champion only through the gate."""
    from medqa.registry import register_model

    p = project_params(args)
    r = register_model(
        args.model,
        args.metrics,
        args.decoding,
        args.test,
        args.out,
        p.register,
        p.evaluate.batch_size,
    )
    state = "@champion" if r["promoted"] else "not promoted"
    what = "registered" if r["new_version"] else "kept"
    print(f"{what} {r['model_name']} v{r['version']}, {state}: {r['reason']}")


# --- parsers: every path option defaults to params.yaml's paths group, as dvc.yaml's paths do ------


def _add_validate(sub: Subparsers) -> None:
    """validate writes the validated splits and its three reports, each path overridable."""
    s = sub.add_parser("validate", help="check raw QA data with pandera; write data/validated")
    s.add_argument("--raw", help="raw data file or folder (default: validate.raw_path)")
    path_options(
        s,
        ("--out", "validated"),
        ("--rejected", f"reports/{REJECTED_ROWS}"),
        (
            "--repairs",
            f"reports/{REPAIRS_LOG}",
            "one line per lossless repair (validate.repair): id, what, before, after",
        ),
        ("--report", f"reports/{VALIDATION_REPORT}"),
    )
    s.set_defaults(func=cmd_validate)


def _add_tokenize(sub: Subparsers) -> None:
    """tokenize reads the validated splits and writes the features."""
    s = sub.add_parser("tokenize", help="sliding-window tokenization; write data/features")
    path_options(s, ("--validated", "validated"), ("--out", "features"))
    s.set_defaults(func=cmd_tokenize)


def _add_train(sub: Subparsers) -> None:
    """train; its description says how resuming and multi-GPU runs work."""
    s = sub.add_parser(
        "train",
        help="fine-tune on the detected device (ROCm, CUDA, MPS or CPU)",
        description="Fine-tune with the transformers Trainer on the detected device. Checkpoints "
        "go to --state every epoch (and every train.save_steps steps); a rerun resumes "
        "from the last one when params, data, base model and code are unchanged. "
        "Multi-GPU: torchrun --nproc_per_node N -m medqa train (DDP; train.batch_size "
        "stays the global batch; only rank 0 writes and logs).",
    )
    path_options(
        s,
        ("--features", "features"),
        ("--validated", "validated"),
        ("--out", "checkpoint"),
        ("--state", "train_state", "checkpoint folder for resuming"),
    )
    s.set_defaults(func=cmd_train)


def _add_evaluate(sub: Subparsers) -> None:
    """evaluate: the stage's path options, and the options of its any-model-any-data mode."""
    s = sub.add_parser(
        "evaluate",
        help="SQuAD v2 EM/F1, baselines, latency: the DVC stage, or any model on any data",
        description="Without --model and --split: the DVC evaluate stage. It scores models/checkpoint "
        "on the test split with the abstention threshold tuned on dev, beside the lexical "
        "and untrained-base-model baselines (it reads only its DVC deps: the register "
        "stage compares with the registry's @champion), and writes "
        "reports/metrics.json, predictions.jsonl, decoding.json and errors.md. "
        "With --model and/or --split: scores a saved or registered model as it is served "
        "(its own tokenizer, windows and recorded threshold; nothing is re-tuned) on a "
        "validated split or on a data file of your own, which is validated first by the "
        "validate stage's rules (a bad row stops the run, exit 2). Results go to --reports, "
        "by default a new reports/eval-<model>-<split>-<timestamp>/ folder.",
    )
    s.add_argument(
        "--model",
        help="models:/<name>@<alias>, models:/<name>/<version>, or a model folder "
        "(default with --split: models/checkpoint)",
    )
    s.add_argument(
        "--split",
        help="train, dev or test (from --validated), or a data file or folder in any format "
        "the validate stage reads (default with --model: test); ./test for a file "
        "named test",
    )
    s.add_argument(
        "--decoding",
        type=Path,
        help="decoding.json with the threshold to use (default: the model's own; a training checkpoint "
        "has none: use reports/decoding.json)",
    )
    precision_option(
        s, "the one recorded with it", "; not for the stage, which reads evaluate.precision"
    )
    path_options(
        s,
        ("--features", "features", "the stage's tokenized splits (stage only)"),
        ("--validated", "validated", "validated splits"),
    )
    s.add_argument(
        "--reports",
        type=Path,
        help="output folder (default: reports for the stage, else reports/eval-<model>-<split>-<time>)",
    )
    s.set_defaults(func=cmd_evaluate)


def _add_register(sub: Subparsers) -> None:
    """register reads the checkpoint, its reports and the test rows the gate scores."""
    s = sub.add_parser(
        "register", help="register the model in MLflow; move @champion if it passes the gate"
    )
    path_options(
        s,
        ("--model", "checkpoint"),
        ("--metrics", f"reports/{METRICS_REPORT}"),
        ("--decoding", f"reports/{DECODING_FILE}"),
        (
            "--test",
            "validated/test.jsonl",
            "test rows the candidate and the current champion are both scored on",
        ),
        ("--out", f"reports/{REGISTRATION_REPORT}"),
    )
    s.set_defaults(func=cmd_register)


def add_parsers(sub: Subparsers) -> None:
    """Register the stage subcommands on ``medqa``'s subparsers, in pipeline order."""
    for add in (_add_validate, _add_tokenize, _add_train, _add_evaluate, _add_register):
        add(sub)
