# medqa on AMD GPUs: AMD's ROCm PyTorch image already carries the ROCm build of torch, which
# scripts/setup.sh keeps (it never replaces an importable torch).
#
#   docker build -t medqa-rocm .
#   docker run --rm -it --device=/dev/kfd --device=/dev/dri --group-add video \
#       --ipc=host --shm-size 8g -v "$PWD":/work -w /work medqa-rocm \
#       bash -c "pip install -q --no-deps -e . && medqa doctor && dvc repro"
#
# The image installs medqa's dependencies; the mounted checkout is installed over it (--no-deps) so
# the code that runs is the code dvc.yaml hashes.
FROM rocm/pytorch:latest

WORKDIR /opt/medqa
COPY pyproject.toml README.md ./
COPY src ./src
# --system-site-packages keeps the image's ROCm torch visible inside the venv
RUN python3 -m venv --system-site-packages /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -e ".[dev]" \
    && git config --system --add safe.directory /work
ENV PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false
CMD ["medqa", "doctor"]
