"""The ``medqa`` command: one subcommand per pipeline stage, plus predict, the registry commands
(promote, rollback, models), serve and doctor.

dvc.yaml calls the stage subcommands; each is a thin adapter around one function in the library.
Errors a user can fix print one line (no traceback) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from medqa.errors import MedqaError

DISCLAIMER = "Research use only; not medical advice."


def _params(args: argparse.Namespace) -> Any:
    """The project's params.yaml, found from any subfolder (or --params); the documented defaults
    when neither exists."""
    from medqa.config import DEFAULT_PARAMS, Params, find_project_root, load_params

    if args.params is None:
        root = find_project_root()
        path = root / DEFAULT_PARAMS if root else DEFAULT_PARAMS
        return load_params(path) if path.exists() else Params()
    return load_params(args.params)


def _require_store() -> None:
    """Refuse to open the MLflow store outside a project when no tracking server is set: MLflow
    would create an empty store where the command was typed and report "no such model"."""
    from medqa.config import PROJECT_FILES, find_project_root
    from medqa.errors import ConfigError
    from medqa.tracking import user_tracking_uri

    if user_tracking_uri() is None and find_project_root() is None:
        raise ConfigError(
            f"{Path.cwd()} is not inside a medqa project (no folder at or above it holds "
            f"{' and '.join(PROJECT_FILES)}) and MLFLOW_TRACKING_URI is not set: run it in the "
            "project, or set MLFLOW_TRACKING_URI to the team's tracking server"
        )


def _opens_store_at_once(args: argparse.Namespace) -> bool:
    """Commands that reach the store inside library code (register, serve, evaluate of a registry
    URI), checked before they start; the other registry commands check in _registry and
    _load_predictor, after their own arguments."""
    return args.command in ("register", "serve") or (
        args.command == "evaluate" and str(args.model).startswith(("models:/", "runs:/"))
    )


def cmd_validate(args: argparse.Namespace) -> None:
    from medqa.data import validate_records
    from medqa.features import question_limit

    params = _params(args)
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
    from medqa.features import tokenize_splits

    p = _params(args)
    counts = tokenize_splits(args.validated, args.out, p.base_model, p.tokenize)
    print(f"windows per split: {counts}")


def cmd_train(args: argparse.Namespace) -> None:
    from medqa.process import die_with_parent

    die_with_parent()  # first: a dvc killed while torch imports must not leave a trainer behind
    from medqa.training import fine_tune

    s = fine_tune(args.features, args.validated, args.out, _params(args), args.state)
    if not s:  # a torchrun worker other than rank 0: rank 0 reports
        return
    print(
        f"trained on {s['train_windows']} windows in {s['train_seconds']} s "
        f"({s['samples_per_s']} windows/s, {s['tokens_per_s']} tokens/s, {s['backend']}, {s['precision']}, "
        f"world size {s['world_size']}, peak memory {s['peak_memory_mb']:.0f} MB); MLflow run {s['run_id']}"
    )


def _print_scores(label: str, r: dict[str, Any]) -> None:
    """EM/F1 with the bootstrap interval, answerable/unanswerable F1, and the floor baselines."""
    from medqa.reports import score_lines

    print("\n".join(score_lines(r, label)))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from medqa.evaluation import default_reports_dir, evaluate_checkpoint, evaluate_model

    p = _params(args)
    checkpoint = Path(p.paths.checkpoint)  # the evaluate stage's input in dvc.yaml
    if args.model is None and args.split is None:  # the DVC stage
        if args.precision is not None:
            from medqa.errors import ConfigError

            raise ConfigError(
                "the stage reads evaluate.precision; --precision is for --model/--split"
            )
        r = evaluate_checkpoint(
            checkpoint,
            args.features,
            args.validated,
            args.reports or Path(p.paths.reports),
            p.base_model,
            p.evaluate,
        )
        _print_scores("test", r)
        print(f"precision {r['precision']} ({r['precision_reason']})")
        return
    model, split = args.model or str(checkpoint), args.split or "test"
    reports = args.reports or default_reports_dir(model, split)
    r = evaluate_model(
        model, split, args.validated, reports, p.validate, p.evaluate, args.decoding, args.precision
    )
    _print_scores(r["split"], r)
    print(f"precision {r['precision']} ({r['precision_reason']})")
    print(
        f"null threshold {r['null_threshold']:.4f} from {r['threshold_from']}; reports in {reports}"
    )


def cmd_register(args: argparse.Namespace) -> None:
    from medqa.registry import register_model

    p = _params(args)
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


def _load_predictor(model: str, decoding: Path | None = None, precision: str | None = None) -> Any:
    """The QAPredictor behind a registry URI (through its pyfunc, as the server loads it) or a
    folder (with ``decoding``: that decoding.json instead of the folder's own, e.g. for a training
    checkpoint), at its recorded precision or at ``precision``; the choice goes to stderr."""
    if model.startswith(("models:/", "runs:/")):
        from medqa.server import load_served_model
        from medqa.tracking import configure_tracking

        _require_store()
        configure_tracking()
        predictor = load_served_model(model, precision).unwrap_python_model().predictor
    else:
        from medqa.predictor import QAPredictor

        predictor = QAPredictor(model, decoding_file=decoding, precision=precision)
    print(f"precision {predictor.precision} ({predictor.precision_reason})", file=sys.stderr)
    return predictor


def _check_batch_paths(args: argparse.Namespace) -> None:
    """Refuse --input/--output mistakes before the model loads and any prediction runs: a missing
    input; an output that is a folder, or the input file itself (it would be overwritten). A missing
    folder of --output is created, as every other output folder of medqa is."""
    from medqa.errors import DataError

    if args.input != "-" and not Path(args.input).is_file():
        what = "is a folder" if Path(args.input).is_dir() else "no such file"
        raise DataError(f"--input {args.input}: {what}")
    if args.output in (None, "-"):
        return
    out = Path(args.output)
    if out.is_dir():
        raise DataError(f"--output {out}: is a folder; name a file, e.g. {out / 'answers.jsonl'}")
    if args.input != "-" and out.exists() and os.path.samefile(args.input, out):
        raise DataError(
            f"--output {out} is the --input file: the answers would overwrite the questions; "
            "name another file"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"--output {out}: cannot create {out.parent} ({e.strerror})") from None


def _sniff_format(lines: Any) -> tuple[str, Any]:
    """jsonl when the first non-blank line is a JSON object, else csv (a header row), for input
    whose name says neither (stdin); returns the lines with the ones read put back in front."""
    import itertools

    head = []
    for line in lines:
        head.append(line)
        if line.strip():
            break
    first = head[-1].lstrip() if head else ""
    fmt = "jsonl" if first.startswith("{") or not first else "csv"
    return fmt, itertools.chain(head, lines)


def _predict_file(predictor: Any, args: argparse.Namespace) -> None:
    """Stream --input (a file or - for stdin) through the model in batches; write JSONL results.

    --format auto: csv for a .csv file, jsonl for .jsonl/.json/.ndjson, else (stdin) by content.
    A file output is written to a temporary file beside it and renamed at the end, so a failed run
    leaves no half-written results and no temporary file.
    """
    import contextlib
    import io
    import tempfile

    from tqdm import tqdm

    from medqa.errors import DataError
    from medqa.predictor import predict_stream, read_records

    name = "stdin" if args.input == "-" else args.input
    out_path = Path(args.output) if args.output not in (None, "-") else None
    with contextlib.ExitStack() as stack:
        try:
            if args.input == "-":
                stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline="")
                source = stack.enter_context(stdin)
            else:
                source = stack.enter_context(open(args.input, encoding="utf-8-sig", newline=""))
            sink = (
                stack.enter_context(
                    tempfile.NamedTemporaryFile(
                        "w",
                        encoding="utf-8",
                        dir=out_path.parent,
                        prefix=f".{out_path.name}.",
                        delete=False,
                    )
                )
                if out_path
                else sys.stdout
            )
        except OSError as e:
            raise DataError(f"{e.filename or name}: {e.strerror}") from None
        if out_path:  # on the way out, unless it was renamed into place
            stack.callback(Path(sink.name).unlink, missing_ok=True)
        bar = stack.enter_context(
            tqdm(unit="rec", desc="predict", file=sys.stderr, dynamic_ncols=True)
        )
        try:
            lines: Any = source
            suffix = Path(name.lower()).suffix
            fmt = args.format
            if fmt == "auto" and suffix in (".csv", ".jsonl", ".json", ".ndjson"):
                fmt = "csv" if suffix == ".csv" else "jsonl"
            elif fmt == "auto":
                fmt, lines = _sniff_format(source)
            n = predict_stream(
                predictor,
                read_records(lines, fmt),
                lambda r: print(json.dumps(r), file=sink),
                args.batch_size,
                bar.update,
            )
        except DataError as e:
            raise DataError(f"{name}: {e}") from None
        except UnicodeDecodeError as e:
            raise DataError(f"{name}: not UTF-8 text ({e.reason})") from None
        if out_path:
            sink.close()
            os.replace(sink.name, out_path)
    print(f"predicted {n} records" + (f" -> {out_path}" if out_path else ""), file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> None:
    from medqa.errors import DataError

    single = args.question is not None or args.context is not None
    if single == (args.input is not None):
        raise DataError("give either --question and --context, or --input FILE (- for stdin)")
    if args.batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.decoding is not None and args.model.startswith(("models:/", "runs:/")):
        raise DataError(
            "--decoding is for a model folder; a registered model carries its own decoding.json"
        )
    if not single:
        _check_batch_paths(args)
    predictor = _load_predictor(args.model, args.decoding, args.precision)
    if not single:
        _predict_file(predictor, args)
        return
    result = predictor.predict([{"question": args.question, "context": args.context}])[0]
    if args.json:
        print(json.dumps(result))
    elif result["abstained"]:
        print(f"no answer (score {result['score']:.3f})")
    else:
        print(
            f"answer: {result['answer']}\nscore: {result['score']:.3f}\n"
            f"offsets: {result['start']}-{result['end']}"
        )


def _registry(args: argparse.Namespace) -> tuple[Any, str]:
    """An MlflowClient on the project's registry and the model name (--name or register.model_name)."""
    from mlflow import MlflowClient

    from medqa.tracking import configure_tracking

    _require_store()
    configure_tracking()
    return MlflowClient(), args.name or _params(args).register.model_name


def _print_move(name: str, event: dict[str, Any]) -> None:
    was = f"v{event['previous']}" if event["previous"] is not None else "none"
    print(f"{name}@champion: {was} -> v{event['version']} ({event['action']}: {event['reason']})")


def cmd_promote(args: argparse.Namespace) -> None:
    from medqa.registry import promote

    client, name = _registry(args)
    event = promote(client, name, args.version)
    if event is None:
        print(f"{name}@champion is already v{args.version}; nothing changed")
    else:
        _print_move(name, event)


def cmd_rollback(args: argparse.Namespace) -> None:
    from medqa.registry import rollback

    client, name = _registry(args)
    _print_move(name, rollback(client, name))


def cmd_models(args: argparse.Namespace) -> None:
    from medqa.registry import list_versions

    client, name = _registry(args)
    rows = list_versions(client, name)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{name}")
    print(f"{'version':>7}  {'test_f1':>7}  {'test_em':>7}  {'created (UTC)':<25}  aliases")
    for r in rows:
        f1 = f"{r['test_f1']:.4f}" if r["test_f1"] is not None else "-"
        em = f"{r['test_em']:.4f}" if r["test_em"] is not None else "-"
        print(f"{r['version']:>7}  {f1:>7}  {em:>7}  {r['created']:<25}  {', '.join(r['aliases'])}")


def cmd_serve(args: argparse.Namespace) -> None:
    from medqa.errors import ConfigError
    from medqa.server import serve
    from medqa.tracking import configure_tracking

    p = _params(args)
    max_records = p.serve.max_records if args.max_records is None else args.max_records
    max_chars = p.serve.max_chars if args.max_chars is None else args.max_chars
    if max_records < 1 or max_chars < 1:
        raise ConfigError("--max-records and --max-chars must be at least 1")
    model = args.model or f"models:/{args.name or p.register.model_name}@champion"
    if model.startswith(("models:/", "runs:/")):  # a pyfunc folder needs no registry
        configure_tracking()
    print(f"serving {model} at http://{args.host}:{args.port}/invocations", file=sys.stderr)
    serve(model, args.host, args.port, args.precision, max_records, max_chars)


def cmd_doctor(args: argparse.Namespace) -> None:
    from medqa.doctor import doctor_report

    facts, warnings = doctor_report()
    print("\n".join(facts))
    for w in warnings:
        print(f"warning: {w}")
    if not warnings:
        print("no problems found")


def _configure_logging(verbose: bool, quiet: bool) -> None:
    """The library logs progress and decisions through ``logging`` under ``medqa``; the command's
    results go to stdout. -v adds debug detail, -q keeps warnings only (also from transformers)."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    log = logging.getLogger("medqa")
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    if quiet:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _path_option(parser: argparse.ArgumentParser, flag: str, where: str, text: str = "") -> None:
    """A path option whose default comes from params.yaml's ``paths`` group, as dvc.yaml's does.

    ``where`` is a paths key, optionally followed by a file inside it ("reports/metrics.json");
    _resolve_paths fills it in after parsing, once the (possibly --params) file is known.
    """
    defaults = dict(parser.get_default("path_defaults") or {})
    defaults[flag.lstrip("-").replace("-", "_")] = where
    parser.set_defaults(path_defaults=defaults)
    parser.add_argument(flag, type=Path, help=f"{text} (default: paths.{where})".lstrip())


def _resolve_paths(args: argparse.Namespace) -> None:
    """Set every path option left out from the params file's paths group."""
    if not getattr(args, "path_defaults", None):
        return
    from medqa.config import find_project_root

    paths = _params(args).paths
    # relative to the project root found from a subfolder, spelled relative to where we stand
    # (from the root itself: exactly the paths.* values, as dvc.yaml has them)
    root = find_project_root() if args.params is None else None
    for dest, where in args.path_defaults.items():
        if getattr(args, dest) is None:
            key, _, inside = where.partition("/")
            path = Path(getattr(paths, key), inside)
            setattr(args, dest, Path(os.path.relpath(root / path)) if root else path)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every subcommand has its own --help."""
    ap = argparse.ArgumentParser(
        prog="medqa", description=f"Clinical extractive QA pipeline for AMD. {DISCLAIMER}"
    )
    ap.add_argument(
        "--params",
        type=Path,
        default=None,
        help="params file (default: the project's params.yaml, found from any subfolder, else "
        "built-in defaults)",
    )
    loud = ap.add_mutually_exclusive_group()
    loud.add_argument(
        "-v", "--verbose", action="store_true", help="also log debug detail (to stderr)"
    )
    loud.add_argument(
        "-q", "--quiet", action="store_true", help="log warnings and errors only (to stderr)"
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("validate", help="check raw QA data with pandera; write data/validated")
    s.add_argument("--raw", help="raw data file or folder (default: validate.raw_path)")
    _path_option(s, "--out", "validated")
    _path_option(s, "--rejected", "reports/rejected.jsonl")
    _path_option(
        s,
        "--repairs",
        "reports/repairs.jsonl",
        "one line per lossless repair (validate.repair): id, what, before, after",
    )
    _path_option(s, "--report", "reports/validation.json")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("tokenize", help="sliding-window tokenization; write data/features")
    _path_option(s, "--validated", "validated")
    _path_option(s, "--out", "features")
    s.set_defaults(func=cmd_tokenize)

    s = sub.add_parser(
        "train",
        help="fine-tune on the detected device (ROCm, CUDA, MPS or CPU)",
        description="Fine-tune with the transformers Trainer on the detected device. Checkpoints "
        "go to --state every epoch (and every train.save_steps steps); a rerun resumes "
        "from the last one when params, data, base model and code are unchanged. "
        "Multi-GPU: torchrun --nproc_per_node N -m medqa train (DDP; train.batch_size "
        "stays the global batch; only rank 0 writes and logs).",
    )
    _path_option(s, "--features", "features")
    _path_option(s, "--validated", "validated")
    _path_option(s, "--out", "checkpoint")
    _path_option(s, "--state", "train_state", "checkpoint folder for resuming")
    s.set_defaults(func=cmd_train)

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
    s.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="arithmetic of the model (default: the one recorded with it; auto: bf16 where the "
        "hardware has it, else fp32; not for the stage, which reads evaluate.precision)",
    )
    _path_option(s, "--features", "features", "the stage's tokenized splits (stage only)")
    _path_option(s, "--validated", "validated", "validated splits")
    s.add_argument(
        "--reports",
        type=Path,
        help="output folder (default: reports for the stage, else reports/eval-<model>-<split>-<time>)",
    )
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser(
        "register", help="register the model in MLflow; move @champion if it passes the gate"
    )
    _path_option(s, "--model", "checkpoint")
    _path_option(s, "--metrics", "reports/metrics.json")
    _path_option(s, "--decoding", "reports/decoding.json")
    _path_option(
        s,
        "--test",
        "validated/test.jsonl",
        "test rows the candidate and the current champion are both scored on",
    )
    _path_option(s, "--out", "reports/registration.json")
    s.set_defaults(func=cmd_register)

    s = sub.add_parser(
        "predict",
        help="answer questions with a saved or registered model: one, or a file of them",
        description="Single mode: --question and --context. Batch mode: --input, a JSONL or CSV "
        "file (or - for stdin) with question, context and optional id; read in a "
        "stream, predicted in batches, written as JSONL (id, answer, score, start, end, "
        "abstained). A result's id is the record's id, else its line number. A bad "
        "record stops the run naming its line (exit 2).",
    )
    s.add_argument(
        "--model",
        required=True,
        help="models:/<name>@<alias>, models:/<name>/<version>, or a folder",
    )
    s.add_argument(
        "--decoding",
        type=Path,
        help="decoding.json to use with a model folder (a training checkpoint has none: use "
        "reports/decoding.json)",
    )
    s.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="arithmetic of the model (default: the one its test F1 was measured at; auto: bf16 "
        "where the hardware has it, else fp32)",
    )
    s.add_argument("--question")
    s.add_argument("--context")
    s.add_argument("--json", action="store_true", help="single mode: print the result as JSON")
    s.add_argument("--input", help="batch mode: JSONL or CSV file, or - for stdin")
    s.add_argument(
        "--format",
        choices=["auto", "jsonl", "csv"],
        default="auto",
        help="input format (auto: csv for a .csv file, jsonl for .jsonl/.json/.ndjson; "
        "otherwise, as for stdin, jsonl when the first line is a JSON object, else csv)",
    )
    s.add_argument(
        "--output",
        help="batch mode: JSONL results file, not the input file nor a folder; its folder is "
        "created if missing (default: stdout)",
    )
    s.add_argument("--batch-size", type=int, default=32, help="records per model call (default 32)")
    s.set_defaults(func=cmd_predict)

    name_help = "registered model name (default: register.model_name from params.yaml)"
    s = sub.add_parser(
        "promote",
        help="move @champion to a version by hand (bypasses the gate; recorded)",
        description="Point the champion alias at VERSION and append the move to the registered "
        "model's champion_history tag, so that rollback can undo it.",
    )
    s.add_argument("version", help="the version number to promote")
    s.add_argument("--name", help=name_help)
    s.set_defaults(func=cmd_promote)

    s = sub.add_parser(
        "rollback",
        help="move @champion back to the previous champion (repeatable)",
        description="Move the champion alias back one step in the champion history; run it again "
        "to go further back. Deleted versions are skipped.",
    )
    s.add_argument("--name", help=name_help)
    s.set_defaults(func=cmd_rollback)

    s = sub.add_parser("models", help="list registered versions with test F1 and aliases")
    s.add_argument("--name", help=name_help)
    s.add_argument("--json", action="store_true", help="print the list as JSON")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser(
        "serve",
        help="serve a registered model over REST (MLflow's scoring protocol, one process)",
        description="Serve a registered version of the project's registry in this process. "
        'POST /invocations with {"dataframe_records": [{"question": ..., '
        '"context": ...}]} (any JSON format of `mlflow models serve`); GET /ping for health. '
        "Bad records get HTTP 400; a request over --max-records or --max-chars gets 413. "
        "SIGTERM or Ctrl-C stops it, a running request included, within one batch.",
    )
    s.add_argument(
        "--model",
        help="models:/ URI or a saved pyfunc folder (default: models:/<name>@champion)",
    )
    s.add_argument("--name", help=name_help)
    s.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    s.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    s.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="arithmetic of the model (default: the one its test F1 was measured at; auto: bf16 "
        "where the hardware has it, else fp32)",
    )
    s.add_argument(
        "--max-records",
        type=int,
        help="records per request; more get HTTP 413 (default: serve.max_records)",
    )
    s.add_argument(
        "--max-chars",
        type=int,
        help="characters of questions and contexts per request; more get HTTP 413 "
        "(default: serve.max_chars)",
    )
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser(
        "doctor", help="show the torch build, backend (rocm/cuda/mps/cpu) and device"
    )
    s.set_defaults(func=cmd_doctor)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point: MedqaError, and an OSError on a path (a stage's input not there yet, an output
    that cannot be written), become one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        if _opens_store_at_once(args):
            _require_store()
        _resolve_paths(args)
        args.func(args)
    except MedqaError as e:
        print(f"medqa {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path given or defaulted that cannot be read or written: the user's fix
        where = f"{e.filename}: " if e.filename else ""
        print(f"medqa {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:
        if "mlflow" not in sys.modules:  # not MLflow's: a bug, with its traceback
            raise
        from medqa.tracking import explain_store_error

        why = explain_store_error(e)
        if why is None:
            raise
        print(f"medqa {args.command}: error: {why}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
