"""The ``medqa`` command: one subcommand per pipeline stage plus predict and doctor.

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
    s = validate_squad_records(Path(args.raw or p.raw_path), args.out, args.rejected, args.report, p)
    print(f"validated {s.rows_in} rows: accepted {s.accepted}, rejected {s.rejected}")


def cmd_tokenize(args: argparse.Namespace) -> None:
    from medqa.features import tokenize_splits

    p = _params(args)
    counts = tokenize_splits(args.validated, args.out, p.base_model, p.tokenize)
    print(f"windows per split: {counts}")


def cmd_train(args: argparse.Namespace) -> None:
    from medqa.training import fine_tune

    s = fine_tune(args.features, args.validated, args.out, args.curve, _params(args))
    print(f"trained on {s['train_windows']} windows in {s['train_seconds']} s "
          f"({s['samples_per_s']} windows/s, {s['backend']}, {s['precision']}); MLflow run {s['run_id']}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from medqa.evaluation import evaluate_checkpoint

    p = _params(args)
    r = evaluate_checkpoint(args.model, args.features, args.validated, args.reports, p.base_model, p.evaluate)
    lo, hi = r["f1_ci95"]
    print(f"test: EM {r['exact']:.4f}  F1 {r['f1']:.4f} (95% CI {lo:.3f}-{hi:.3f}, n={r['n']}); "
          f"answerable F1 {r['has_ans_f1']:.4f}, unanswerable F1 {r['no_ans_f1']:.4f}")
    print("baselines F1: " + ", ".join(f"{k} {v:.4f}" for k, v in r["baselines_f1"].items()) +
          f"; lead over best {r['lead_over_best_baseline']:+.4f}")


def cmd_register(args: argparse.Namespace) -> None:
    from medqa.registry import register_model

    r = register_model(args.model, args.metrics, args.decoding, args.out, _params(args).register)
    state = "promoted to @champion" if r["promoted"] else "not promoted"
    print(f"registered {r['model_name']} v{r['version']} (@candidate), {state}: {r['reason']}")


def cmd_predict(args: argparse.Namespace) -> None:
    record = {"question": args.question, "context": args.context}
    if args.model.startswith(("models:/", "runs:/")):
        import mlflow
        import pandas as pd
        from mlflow.exceptions import MlflowException

        from medqa.errors import ModelError
        from medqa.tracking import configure_tracking

        configure_tracking()
        try:
            model = mlflow.pyfunc.load_model(args.model)
        except MlflowException as e:
            raise ModelError(f"{args.model}: {e.message.splitlines()[0]}") from None
        result = model.predict(pd.DataFrame([record])).to_dict("records")[0]
    else:
        from medqa.predictor import QAPredictor

        result = QAPredictor(args.model).predict([record])[0]
    result = {k: (v.item() if hasattr(v, "item") else v) for k, v in result.items()}
    if args.json:
        print(json.dumps(result))
    elif result["abstained"]:
        print(f"no answer (score {result['score']:.3f})")
    else:
        print(f"answer: {result['answer']}\nscore: {result['score']:.3f}\n"
              f"offsets: {result['start']}-{result['end']}")


def cmd_doctor(args: argparse.Namespace) -> None:
    import torch

    from medqa.device import choose_precision, detect_device

    info = detect_device()
    print(f"torch {torch.__version__}; hip {torch.version.hip}; cuda {torch.version.cuda}")
    print(f"backend: {info.backend}; device: {info.name} ({info.arch}); bf16: {info.bf16}; "
          f"auto precision: {choose_precision('auto', info)}")
    for var in ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "HSA_OVERRIDE_GFX_VERSION",
                "PYTORCH_HIP_ALLOC_CONF", "PYTORCH_TUNABLEOP_ENABLED"):
        print(f"{var}={os.environ.get(var, '')}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every subcommand has its own --help."""
    ap = argparse.ArgumentParser(prog="medqa", description=f"Clinical extractive QA pipeline for AMD. {DISCLAIMER}")
    ap.add_argument("--params", type=Path, default=None,
                    help="params file (default: ./params.yaml, else built-in defaults)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("validate", help="check raw QA data with pandera; write data/validated")
    s.add_argument("--raw", help="raw data file or folder (default: validate.raw_path)")
    s.add_argument("--out", type=Path, default=Path("data/validated"))
    s.add_argument("--rejected", type=Path, default=Path("reports/rejected.jsonl"))
    s.add_argument("--report", type=Path, default=Path("reports/validation.json"))
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("tokenize", help="sliding-window tokenization; write data/features")
    s.add_argument("--validated", type=Path, default=Path("data/validated"))
    s.add_argument("--out", type=Path, default=Path("data/features"))
    s.set_defaults(func=cmd_tokenize)

    s = sub.add_parser("train", help="fine-tune on the detected device (ROCm, CUDA, MPS or CPU)")
    s.add_argument("--features", type=Path, default=Path("data/features"))
    s.add_argument("--validated", type=Path, default=Path("data/validated"))
    s.add_argument("--out", type=Path, default=Path("models/checkpoint"))
    s.add_argument("--curve", type=Path, default=Path("reports/train_curve.json"))
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="SQuAD v2 EM/F1 on test, baselines, latency; write reports/")
    s.add_argument("--model", type=Path, default=Path("models/checkpoint"))
    s.add_argument("--features", type=Path, default=Path("data/features"))
    s.add_argument("--validated", type=Path, default=Path("data/validated"))
    s.add_argument("--reports", type=Path, default=Path("reports"))
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("register", help="register the model in MLflow; move @champion if it passes the gate")
    s.add_argument("--model", type=Path, default=Path("models/checkpoint"))
    s.add_argument("--metrics", type=Path, default=Path("reports/metrics.json"))
    s.add_argument("--decoding", type=Path, default=Path("reports/decoding.json"))
    s.add_argument("--out", type=Path, default=Path("reports/registration.json"))
    s.set_defaults(func=cmd_register)

    s = sub.add_parser("predict", help="answer a question from a context with a saved or registered model")
    s.add_argument("--model", required=True, help="models:/<name>@<alias>, models:/<name>/<version>, or a folder")
    s.add_argument("--question", required=True)
    s.add_argument("--context", required=True)
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("doctor", help="show the torch build, backend (rocm/cuda/mps/cpu) and device")
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
