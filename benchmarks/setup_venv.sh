#!/usr/bin/env bash
# Create .venv-bench: transformers 4.x, whose pipeline("question-answering") is the inference
# reference (transformers 5 removed it), beside this project's .venv with transformers 5.
#
# Idempotent: an existing .venv-bench that already imports transformers 4 is left alone. torch is
# installed first, the same way scripts/setup.sh does it (the machine's local CPU wheel, else
# PyTorch's CPU index), so pip never pulls the multi-GB CUDA build. Exits non-zero if it cannot be
# built; `make bench` carries on and the inference-reference row says so.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-bench
PY=${PYTHON:-.venv/bin/python}
check='import sys, torch, transformers; sys.exit(0 if transformers.__version__.startswith("4.") else 1)'
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "$check" >/dev/null 2>&1; then
  echo "bench setup: keeping $VENV (transformers $("$VENV/bin/python" -c 'import transformers; print(transformers.__version__)'))"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q "torch==2.13.0+cpu" 2>/dev/null \
  || $PIP install -q torch --index-url https://download.pytorch.org/whl/cpu
$PIP install -q "transformers>=4.45,<5" numpy safetensors
"$VENV/bin/python" -c "$check"
echo "bench setup: created $VENV (transformers $("$VENV/bin/python" -c 'import transformers; print(transformers.__version__)'))"
