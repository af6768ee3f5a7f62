"""The ``medqa`` command: one subcommand per pipeline stage, plus predict, the registry commands
(promote, rollback, models), serve and doctor.

dvc.yaml calls the stage subcommands; each is a thin adapter around one function in the library.
Errors a user can fix print one line (no traceback) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from medqa.errors import MedqaError

DISCLAIMER = "Research use only; not medical advice."


def _params(args: argparse.Namespace) -> Any:
    """params.yaml (or --params); the documented defaults when neither exists."""
    from medqa.config import DEFAULT_PARAMS, Params, load_params

    if args.params is None:
        return load_params(DEFAULT_PARAMS) if DEFAULT_PARAMS.exists() else Params()
    return load_params(args.params)


def cmd_validate(args: argparse.Namespace) -> None:
    from medqa.data import validate_squad_records

    p = _params(args).validate
    s = validate_squad_records(
        Path(args.raw or p.raw_path),
        args.out,
        args.rejected,
        args.report,
        p,
        repairs_path=args.repairs,
    )
    print(
        f"validated {s.rows_in} rows: accepted {sum(s.accepted.values())}, repaired {sum(s.repaired.values())} "
        f"({s.merged} merged), rejected {s.rejected}; written {s.written}"
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
    from medqa.reports import figure

    ci = (
        f"95% CI {figure(r['f1_ci95'][0], '.3f')}-{figure(r['f1_ci95'][1], '.3f')}, "
        if r.get("f1_ci95")
        else ""
    )
    print(
        f"{label}: EM {figure(r['exact'])}  F1 {figure(r['f1'])} ({ci}n={r['n']}); "
        f"answerable F1 {figure(r['has_ans_f1'])}, unanswerable F1 {figure(r['no_ans_f1'])}"
    )
    print(
        "baselines F1: "
        + ", ".join(f"{k} {figure(v)}" for k, v in r["baselines_f1"].items())
        + f"; lead over best {figure(r['lead_over_best_baseline'], '+.4f')}"
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from medqa.evaluation import default_reports_dir, evaluate_checkpoint, evaluate_model

    p = _params(args)
    checkpoint = Path("models/checkpoint")  # the evaluate stage's input in dvc.yaml
    if args.model is None and args.split is None:  # the DVC stage
        r = evaluate_checkpoint(
            checkpoint,
            args.features,
            args.validated,
            args.reports or Path("reports"),
            p.base_model,
            p.evaluate,
        )
        _print_scores("test", r)
        return
    model, split = args.model or str(checkpoint), args.split or "test"
    reports = args.reports or default_reports_dir(model, split)
    r = evaluate_model(model, split, args.validated, reports, p.validate, p.evaluate, args.decoding)
    _print_scores(r["split"], r)
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


def _load_predictor(model: str, decoding: Path | None = None) -> Any:
    """The QAPredictor behind a registry URI (through its pyfunc, as the server loads it) or a folder
    (with ``decoding``: that decoding.json instead of the folder's own, e.g. for a training checkpoint)."""
    if model.startswith(("models:/", "runs:/")):
        import mlflow
        from mlflow.exceptions import MlflowException

        from medqa.errors import ModelError
        from medqa.tracking import configure_tracking

        configure_tracking()
        try:
            return mlflow.pyfunc.load_model(model).unwrap_python_model().predictor
        except MlflowException as e:
            raise ModelError(f"{model}: {e.message.splitlines()[0]}") from None
    from medqa.predictor import QAPredictor

    return QAPredictor(model, decoding_file=decoding)


def _predict_file(predictor: Any, args: argparse.Namespace) -> None:
    """Stream --input (a file or - for stdin) through the model in batches; write JSONL results."""
    import io
    import tempfile

    from tqdm import tqdm

    from medqa.errors import DataError
    from medqa.predictor import predict_stream, read_records

    fmt = (
        args.format
        if args.format != "auto"
        else ("csv" if args.input.lower().endswith(".csv") else "jsonl")
    )
    if args.input == "-":
        source = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="")
    else:
        try:
            source = open(args.input, encoding="utf-8", newline="")
        except OSError as e:
            raise DataError(f"{args.input}: {e.strerror}") from None
    out_path = Path(args.output) if args.output not in (None, "-") else None
    # a file output is written beside its target and renamed at the end: no half-written results
    sink = (
        tempfile.NamedTemporaryFile(
            "w",
            encoding="utf-8",
            dir=out_path.parent or ".",
            prefix=f".{out_path.name}.",
            delete=False,
        )
        if out_path
        else sys.stdout
    )
    name = "stdin" if args.input == "-" else args.input
    try:
        with source, tqdm(unit="rec", desc="predict", file=sys.stderr, dynamic_ncols=True) as bar:
            n = predict_stream(
                predictor,
                read_records(source, fmt),
                lambda r: sink.write(json.dumps(r) + "\n"),
                args.batch_size,
                bar.update,
            )
    except DataError as e:
        if out_path:
            sink.close()
            Path(sink.name).unlink()
        raise DataError(f"{name}: {e}") from None
    except UnicodeDecodeError as e:
        if out_path:
            sink.close()
            Path(sink.name).unlink()
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
    predictor = _load_predictor(args.model, args.decoding)
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
    from medqa.tracking import configure_tracking

    model = args.model or f"models:/{args.name or _params(args).register.model_name}@champion"
    # the server starts uvicorn by name: find it beside this interpreter even when the venv is not activated
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = os.environ | {"MLFLOW_TRACKING_URI": configure_tracking(), "PATH": path}
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model,
        "--env-manager",
        "local",
        "-h",
        args.host,
        "-p",
        str(args.port),
        "-w",
        str(args.workers),
    ]
    print(
        f"serving {model} at http://{args.host}:{args.port}/invocations",
        file=sys.stderr,
        flush=True,
    )
    os.execve(
        sys.executable, cmd, env
    )  # the server replaces this process: signals reach it directly


def cmd_doctor(args: argparse.Namespace) -> None:
    from medqa.device import doctor_report

    facts, warnings = doctor_report()
    print("\n".join(facts))
    for w in warnings:
        print(f"warning: {w}")
    if not warnings:
        print("no problems found")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every subcommand has its own --help."""
    ap = argparse.ArgumentParser(
        prog="medqa", description=f"Clinical extractive QA pipeline for AMD. {DISCLAIMER}"
    )
    ap.add_argument(
        "--params",
        type=Path,
        default=None,
        help="params file (default: ./params.yaml, else built-in defaults)",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("validate", help="check raw QA data with pandera; write data/validated")
    s.add_argument("--raw", help="raw data file or folder (default: validate.raw_path)")
    s.add_argument("--out", type=Path, default=Path("data/validated"))
    s.add_argument("--rejected", type=Path, default=Path("reports/rejected.jsonl"))
    s.add_argument(
        "--repairs",
        type=Path,
        default=Path("reports/repairs.jsonl"),
        help="one line per lossless repair (validate.repair): id, what, before, after",
    )
    s.add_argument("--report", type=Path, default=Path("reports/validation.json"))
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("tokenize", help="sliding-window tokenization; write data/features")
    s.add_argument("--validated", type=Path, default=Path("data/validated"))
    s.add_argument("--out", type=Path, default=Path("data/features"))
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
    s.add_argument("--features", type=Path, default=Path("data/features"))
    s.add_argument("--validated", type=Path, default=Path("data/validated"))
    s.add_argument("--out", type=Path, default=Path("models/checkpoint"))
    s.add_argument(
        "--state",
        type=Path,
        default=Path("models/train_state"),
        help="checkpoint folder for resuming (default models/train_state)",
    )
    s.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "evaluate",
        help="SQuAD v2 EM/F1, baselines, latency: the DVC stage, or any model on any data",
        description="Without --model and --split: the DVC evaluate stage. It scores models/checkpoint "
        "on the test split with the abstention threshold tuned on dev, beside the lexical "
        "and untrained-base-model baselines and the registry's @champion (a regression "
        "check, skipped with a warning if it cannot be loaded), and writes "
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
        "--features",
        type=Path,
        default=Path("data/features"),
        help="the stage's tokenized splits (stage only; default data/features)",
    )
    s.add_argument(
        "--validated",
        type=Path,
        default=Path("data/validated"),
        help="validated splits (default data/validated)",
    )
    s.add_argument(
        "--reports",
        type=Path,
        help="output folder (default: reports for the stage, else reports/eval-<model>-<split>-<time>)",
    )
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser(
        "register", help="register the model in MLflow; move @champion if it passes the gate"
    )
    s.add_argument("--model", type=Path, default=Path("models/checkpoint"))
    s.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"))
    s.add_argument("--decoding", type=Path, default=Path("reports/decoding.json"))
    s.add_argument(
        "--test",
        type=Path,
        default=Path("data/validated/test.jsonl"),
        help="test rows the candidate and the current champion are both scored on",
    )
    s.add_argument("--out", type=Path, default=Path("reports/registration.json"))
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
    s.add_argument("--question")
    s.add_argument("--context")
    s.add_argument("--json", action="store_true", help="single mode: print the result as JSON")
    s.add_argument("--input", help="batch mode: JSONL or CSV file, or - for stdin")
    s.add_argument(
        "--format",
        choices=["auto", "jsonl", "csv"],
        default="auto",
        help="input format (auto: csv for a .csv file, otherwise jsonl)",
    )
    s.add_argument("--output", help="batch mode: JSONL results file (default: stdout)")
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
        help="serve a registered model over REST (mlflow models serve, local env)",
        description="Run `mlflow models serve --env-manager local` on the project's registry. "
        'POST /invocations with {"dataframe_records": [{"question": ..., '
        '"context": ...}]}; GET /ping for health. Bad records get HTTP 400.',
    )
    s.add_argument("--model", help="model URI (default: models:/<name>@champion)")
    s.add_argument("--name", help=name_help)
    s.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    s.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    s.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser(
        "doctor", help="show the torch build, backend (rocm/cuda/mps/cpu) and device"
    )
    s.set_defaults(func=cmd_doctor)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point: MedqaError becomes one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MedqaError as e:
        print(f"medqa {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
