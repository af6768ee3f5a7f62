#!/usr/bin/env bash
# GPU check: does this machine train medqa on its accelerator, how fast, and how well?
#
#   scripts/gpu_check.sh          (from anywhere; uses the project's .venv)
#
# Runs `medqa doctor`, then validate -> tokenize -> train -> evaluate on a copy of params.yaml and a
# subset of the shipped data, all inside a temporary folder (own MLflow SQLite store, own outputs):
# the project's data/, models/, reports/ and mlruns/ are never touched. Prints backend, device,
# precision (and why), throughput and test F1. Exits non-zero if a stage fails, if the metrics are
# missing or not numbers, if a GPU is present but training ran on the CPU, or if a run of all the
# training questions did not learn: its test F1 must clear the best baseline's by GPU_CHECK_F1_MARGIN.
# A run on a subset (the CPU default, CI's tiny run) is a smoke run: too small to learn, it is held
# only to the rest unless GPU_CHECK_F1_MARGIN is set, and its last line says so. The settings, the
# data subset and the verdict are scripts/gpu_check.py.
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
#   GPU_CHECK_F1_MARGIN         fail unless test F1 >= best baseline F1 + this (default 0.10; a
#                               smoke run on a subset is held to it only when this is set)
#   GPU_CHECK_MIN_F1            fail if test F1 is below this (default 0: no gate)
#   GPU_CHECK_OUT               folder to copy gpu_check.json and logs/ (doctor.txt, stage logs) into
#   GPU_CHECK_KEEP=1            keep the temporary folder (it is always kept on failure)
#   PYTHON                      interpreter (default: .venv/bin/python of this checkout)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
want=${PYTHON:-$ROOT/.venv/bin/python}
PY=$(command -v "$want") || { echo "gpu_check: no interpreter $want (run scripts/setup.sh, or set PYTHON)" >&2; exit 2; }
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # absolute: the stages run inside the work folder
HELPER=$ROOT/scripts/gpu_check.py
"$PY" "$HELPER" settings || exit 2  # a bad GPU_CHECK_* value, said before minutes of training

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
"$PY" "$HELPER" prepare "$ROOT" "$WORK"

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

GPU_PRESENT=$gpu_present "$PY" "$HELPER" report "$WORK"
ok=1
