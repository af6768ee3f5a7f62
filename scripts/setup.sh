#!/usr/bin/env bash
# Create .venv and install exactly the locked environment: the locked torch version in the right
# build for this machine (pip), then every other package at the version and hash
# requirements-lock.txt gives (uv), then medqa itself. Run again on a .venv that has drifted (a package upgraded or downgraded
# by hand), it puts the locked versions back. To move to newer releases on purpose: `make lock`
# (docs/development.md, "Upgrading the environment").
#
#   MEDQA_TORCH=auto|cpu|rocm|cuda   (default auto: ROCm if /dev/kfd exists, CUDA if nvidia-smi works, else CPU)
#   MEDQA_ROCM_INDEX=https://download.pytorch.org/whl/rocm7.2   (the ROCm wheel index to use)
#   PYTHON=python3.11                (interpreter for the venv)
#
# torch goes in first and is not in requirements-lock.txt: its CPU, ROCm and CUDA builds come from
# different indexes with different hashes. uv.lock pins its version and locks everything else against
# the dependencies every build shares (pyproject.toml, [tool.uv]); the build-specific extras (CUDA
# or ROCm runtime wheels) come with the torch install.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
PY=${PYTHON:-python3}
LOCK=requirements-lock.txt
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"

# The locked torch version: the version line under `name = "torch"` in uv.lock.
torch_locked=$(awk '/^name = "torch"$/ { getline; gsub(/"/, "", $3); print $3; exit }' uv.lock)
[ -n "$torch_locked" ] || { echo "setup: uv.lock has no torch entry (run make lock)" >&2; exit 2; }

kind=${MEDQA_TORCH:-auto}
if [ "$kind" = auto ]; then
  if [ -e /dev/kfd ]; then kind=rocm
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then kind=cuda
  else kind=cpu; fi
fi

# The installed torch without its local build tag (2.13.0+cpu -> 2.13.0); empty when none.
torch_have=$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("torch").split("+")[0])' 2>/dev/null || true)
if [ "$torch_have" = "$torch_locked" ]; then
  echo "setup: keeping installed torch $torch_locked"
else
  echo "setup: installing the $kind build of torch $torch_locked${torch_have:+ (replacing $torch_have)}"
  case "$kind" in
    rocm) $PIP install -q "torch==$torch_locked" --index-url "${MEDQA_ROCM_INDEX:-https://download.pytorch.org/whl/rocm7.2}" ;;
    cuda) $PIP install -q "torch==$torch_locked" ;;
    cpu)  # a local CPU wheel where the machine provides one, else PyTorch's CPU index
          $PIP install -q "torch==$torch_locked+cpu" 2>/dev/null \
            || $PIP install -q "torch==$torch_locked" --index-url https://download.pytorch.org/whl/cpu ;;
    *) echo "setup: MEDQA_TORCH must be auto, cpu, rocm or cuda" >&2; exit 2 ;;
  esac
fi

# uv installs the lock (seconds where pip takes minutes); it comes first, at its own locked version
# and hash, by pip. --no-deps: the lock already lists every dependency, so nothing is resolved and no
# other torch can be pulled in; hashes: a file that differs from the one locked is refused.
awk '/^uv==/ { on = 1 } on { print; if ($0 !~ /\\$/) exit }' "$LOCK" > "$VENV/uv-lock.txt"
$PIP install -q --no-deps --require-hashes -r "$VENV/uv-lock.txt"
UV="$VENV/bin/uv"
$UV pip install -q --python "$VENV/bin/python" --no-deps --require-hashes -r "$LOCK"
# setuptools (the build backend) is in the lock, so medqa builds without fetching another one.
$UV pip install -q --python "$VENV/bin/python" --no-deps --no-build-isolation -e .
$UV pip check -q --python "$VENV/bin/python" \
  || { echo "setup: the installed packages conflict (above)" >&2; exit 1; }
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "hip", torch.version.hip, "cuda", torch.version.cuda)'))"
