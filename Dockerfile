# medqa on AMD GPUs, built on AMD's ROCm PyTorch image. The image's ROCm build of torch is kept:
# pip is held to the installed torch by a constraints file (PIP_CONSTRAINT), so no dependency can
# swap in a CUDA or CPU torch from PyPI, and the build stops if the base image's torch is not ROCm.
#
#   docker build -t medqa-rocm .                       # pin: --build-arg BASE=rocm/pytorch:<tag>
#   docker run --rm -it --device=/dev/kfd --device=/dev/dri --group-add video \
#       --ipc=host --security-opt seccomp=unconfined --shm-size 8g \
#       -v "$PWD":/work -w /work medqa-rocm \
#       bash -c "pip install -q --no-deps -e . && medqa doctor && dvc repro"
#
# The image installs medqa's dependencies; the mounted checkout is installed over it (--no-deps) so
# the code that runs is the code dvc.yaml hashes. Not built by this project's CI (no Docker engine).
ARG BASE=rocm/pytorch:latest
FROM ${BASE}

# HF offline: the base model is a pip package. PIP_BREAK_SYSTEM_PACKAGES: some tags use the
# distribution's Python rather than a venv; inside a container that is the environment to use.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_CONSTRAINT=/opt/medqa/torch-constraint.txt

WORKDIR /opt/medqa
COPY pyproject.toml README.md uv.lock requirements-lock.txt ./
COPY src ./src
# The same lock as scripts/setup.sh: every package at its locked version and hash, --no-deps so the
# image's torch stays (its ROCm extras came with it); then medqa itself, built by the locked setuptools.
RUN python3 -c "import sys, torch; sys.exit(None if torch.version.hip else 'base image torch is not a ROCm build')" \
    && python3 -c "from importlib.metadata import version; print('torch==' + version('torch'))" > "$PIP_CONSTRAINT" \
    && python3 -m pip install --no-cache-dir --no-deps --require-hashes -r requirements-lock.txt \
    && python3 -m pip install --no-cache-dir --no-deps --no-build-isolation -e . \
    && python3 -c "import sys, torch; sys.exit(None if torch.version.hip else 'pip replaced the ROCm torch')" \
    && git config --system --add safe.directory /work
CMD ["medqa", "doctor"]
