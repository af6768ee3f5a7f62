#!/usr/bin/env bash
# GPU check: does this machine train medqa on its accelerator, how fast, and how well?
#
#   scripts/gpu_check.sh          (from anywhere; uses the project's .venv)
#
# Runs `medqa doctor`, then validate -> tokenize -> train -> evaluate on a copy of params.yaml and a
# subset of the shipped data, all inside a temporary folder (own MLflow SQLite store, own outputs):
# the project's data/, models/, reports/ and mlruns/ are never touched. Prints backend, device,
# precision (and why), throughput and test F1. Exits non-zero if a stage fails, if the metrics are
# missing or not numbers, or if a GPU is present but training ran on the CPU.
#
# On a GPU the defaults are the full shipped data and params.yaml's recipe (a few minutes); on CPU
# a small subset for one epoch (a couple of minutes on 2 cores). Knobs (environment variables):
#   GPU_CHECK_EPOCHS            train.epochs            (GPU: params.yaml's; CPU: 1)
#   GPU_CHECK_TRAIN_QUESTIONS   training questions kept (GPU: all;  CPU: 128)
#   GPU_CHECK_EVAL_QUESTIONS    dev and test questions kept, each (GPU: all; CPU: 48)
#   GPU_CHECK_BATCH_SIZE        train.batch_size        (default: params.yaml's)
#   GPU_CHECK_PRECISION         train.precision         (default: params.yaml's, normally auto)
#   GPU_CHECK_NPROC             GPUs to train on; >1 runs the train stage under torchrun (DDP)
#   GPU_CHECK_REQUIRE_GPU       1: fail unless training ran on a GPU; 0: don't care
#                               (default: 1 when /dev/kfd exists or nvidia-smi lists a GPU)
#   GPU_CHECK_MIN_F1            fail if test F1 is below this (default 0: no gate)
#   GPU_CHECK_OUT               folder to copy gpu_check.json and logs/ (doctor.txt, stage logs) into
#   GPU_CHECK_KEEP=1            keep the temporary folder (it is always kept on failure)
#   PYTHON                      interpreter (default: .venv/bin/python of this checkout)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
want=${PYTHON:-$ROOT/.venv/bin/python}
PY=$(command -v "$want") || { echo "gpu_check: no interpreter $want (run scripts/setup.sh, or set PYTHON)" >&2; exit 2; }
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # absolute: the stages run inside the work folder

WORK=$(mktemp -d "${TMPDIR:-/tmp}/medqa-gpu-check.XXXXXX")
ok=0
finish() {
  if [ -n "${GPU_CHECK_OUT:-}" ]; then
    mkdir -p "$GPU_CHECK_OUT"
    cp -r "$WORK/logs" "$GPU_CHECK_OUT/" 2>/dev/null || true
    cp "$WORK/gpu_check.json" "$GPU_CHECK_OUT/" 2>/dev/null || true
  fi
  if [ "$ok" = 1 ] && [ "${GPU_CHECK_KEEP:-0}" != 1 ]; then rm -rf "$WORK"
  else echo "gpu_check: work folder kept: $WORK" >&2; fi
}
trap finish EXIT
mkdir -p "$WORK/logs" "$WORK/reports"
cd "$WORK"  # anything a stage writes to a default relative path lands here, not in the project
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
       PREFECT_SERVER_ANALYTICS_ENABLED=false

# run STEP CMD...: output to logs/STEP.log; on failure show its tail and stop
run() {
  local step=$1; shift
  echo "gpu_check: $step (log: $WORK/logs/$step.log)"
  if ! "$@" >"$WORK/logs/$step.log" 2>&1; then
    tail -n 40 "$WORK/logs/$step.log" >&2
    echo "gpu_check: FAILED at $step" >&2
    exit 1
  fi
}

"$PY" -m medqa --params "$ROOT/params.yaml" doctor | tee "$WORK/logs/doctor.txt"

gpu_present=0
if [ -e /dev/kfd ] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; }; then
  gpu_present=1
fi

# a params.yaml copy and a data subset sized for this machine
ROOT="$ROOT" WORK="$WORK" "$PY" - <<'EOF'
import json, os
from pathlib import Path

import torch
import yaml

from medqa.config import load_yaml

root, work = Path(os.environ["ROOT"]), Path(os.environ["WORK"])
gpu = torch.cuda.is_available()
params = load_yaml((root / "params.yaml").read_text())
env = os.environ.get
train = params["train"]
train["epochs"] = float(env("GPU_CHECK_EPOCHS") or (train["epochs"] if gpu else 1))
train["batch_size"] = int(env("GPU_CHECK_BATCH_SIZE") or train["batch_size"])
train["precision"] = env("GPU_CHECK_PRECISION") or train["precision"]
keep = {"train": int(env("GPU_CHECK_TRAIN_QUESTIONS") or (0 if gpu else 128)),
        "dev": int(env("GPU_CHECK_EVAL_QUESTIONS") or (0 if gpu else 48))}
keep["test"] = keep["dev"]

raw_src = Path(params["validate"]["raw_path"])
raw_src = raw_src if raw_src.is_absolute() else root / raw_src
raw = work / "raw"
raw.mkdir()
for split, limit in keep.items():
    doc = json.loads((raw_src / f"{split}.json").read_text())
    left = limit or float("inf")  # 0: keep everything
    for article in doc["data"]:
        for para in article["paragraphs"]:
            para["qas"] = para["qas"][:max(0, min(len(para["qas"]), left))]
            left -= len(para["qas"])
        article["paragraphs"] = [p for p in article["paragraphs"] if p["qas"]]
    doc["data"] = [a for a in doc["data"] if a["paragraphs"]]
    (raw / f"{split}.json").write_text(json.dumps(doc))
params["validate"]["raw_path"] = str(raw)
(work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
print(f"gpu_check: {train['epochs']:g} epoch(s), batch {train['batch_size']}, precision {train['precision']}; "
      "questions kept: " + ", ".join(f"{s} {n or 'all'}" for s, n in keep.items()))
EOF

medqa() { "$PY" -m medqa --params "$WORK/params.yaml" "$@"; }
NPROC=${GPU_CHECK_NPROC:-1}
run validate medqa validate --raw "$WORK/raw" --out "$WORK/validated" \
  --rejected "$WORK/reports/rejected.jsonl" --report "$WORK/reports/validation.json"
run tokenize medqa tokenize --validated "$WORK/validated" --out "$WORK/features"
train_args=(--params "$WORK/params.yaml" train --features "$WORK/features" --validated "$WORK/validated"
            --out "$WORK/models/checkpoint" --state "$WORK/train_state")
if [ "$NPROC" -gt 1 ]; then
  run train "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m medqa "${train_args[@]}"
else
  run train "$PY" -m medqa "${train_args[@]}"
fi
# the evaluate stage scores ./models/checkpoint: here that is the work folder's (cwd is $WORK)
run evaluate medqa evaluate --features "$WORK/features" --validated "$WORK/validated" --reports "$WORK/reports"

GPU_PRESENT=$gpu_present WORK="$WORK" "$PY" - <<'EOF'
import json, math, os, sys
from pathlib import Path

from medqa.config import load_params
from medqa.device import detect_device, explain_precision

work = Path(os.environ["WORK"])
train = json.loads((work / "models" / "checkpoint" / "medqa.json").read_text())
metrics = json.loads((work / "reports" / "metrics.json").read_text())
curve = json.loads((work / "reports" / "train_curve.json").read_text())
tp = load_params(work / "params.yaml").train
why = explain_precision(tp.precision, detect_device(tp.device))[1]
dev = train["device"]
summary = {
    "backend": train["backend"], "device": dev["name"], "arch": dev["arch"], "precision": train["precision"],
    "precision_reason": why, "world_size": train.get("world_size", 1), "train_windows": train["train_windows"],
    "epochs": tp.epochs, "train_seconds": train["train_seconds"], "windows_per_s": train["samples_per_s"],
    "tokens_per_s": train.get("tokens_per_s"), "peak_memory_mb": train.get("peak_memory_mb"),
    "test_f1": metrics["f1"], "test_em": metrics["exact"], "test_n": metrics["n"],
    "best_baseline_f1": metrics["baselines_f1"][metrics["best_baseline"]],
    "dev_f1_by_epoch": [r["dev_f1"] for r in curve],
}
(work / "gpu_check.json").write_text(json.dumps(summary, indent=2))
print(f"gpu_check: backend {summary['backend']} ({dev['name']}, {dev['arch']}), world size {summary['world_size']}")
print(f"gpu_check: precision {summary['precision']} ({why})")
extra = "".join([f", {summary['tokens_per_s']:.0f} tokens/s" if summary["tokens_per_s"] is not None else "",
                 f", peak memory {summary['peak_memory_mb']:.0f} MB" if summary["peak_memory_mb"] is not None else ""])
print(f"gpu_check: trained {summary['train_windows']} windows x {tp.epochs:g} epoch(s) in "
      f"{summary['train_seconds']} s: {summary['windows_per_s']} windows/s{extra}")
print(f"gpu_check: test F1 {summary['test_f1']:.4f}, EM {summary['test_em']:.4f} (n={summary['test_n']}); "
      f"best baseline F1 {summary['best_baseline_f1']:.4f}; dev F1 by epoch "
      + " / ".join("n/a" if f is None else f"{f:.3f}" for f in summary["dev_f1_by_epoch"]))
problems = []
if not (isinstance(summary["test_f1"], float) and 0 <= summary["test_f1"] <= 1 and not math.isnan(summary["test_f1"])):
    problems.append(f"test F1 is not a number in [0, 1]: {summary['test_f1']!r}")
if not summary["windows_per_s"] > 0:
    problems.append("no training throughput recorded")
require = os.environ.get("GPU_CHECK_REQUIRE_GPU") or os.environ["GPU_PRESENT"]
if require == "1" and summary["backend"] == "cpu":
    problems.append("a GPU is present but training ran on the CPU: see the doctor warnings above")
min_f1 = float(os.environ.get("GPU_CHECK_MIN_F1") or 0)
if summary["test_f1"] < min_f1:
    problems.append(f"test F1 {summary['test_f1']:.4f} is below GPU_CHECK_MIN_F1={min_f1}")
for p in problems:
    print(f"gpu_check: FAILED: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
ok=1
echo "gpu_check: OK"
