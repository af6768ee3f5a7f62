# The two commands of the README. Both install everything first (idempotent).
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup pipeline test

setup:
	bash scripts/setup.sh

## Run the whole pipeline on the shipped dataset and print EM/F1 and the registration.
pipeline: setup
	dvc repro
	@python -m medqa.summary

## Run the test suite.
test: setup
	python -m pytest -q

## Benchmarks, ours vs plain Hugging Face side by side; writes reports/benchmarks.md.
## PRESET=small (default, about 10 minutes on 2 CPU cores) or PRESET=full (the whole data: hours on a CPU).
PRESET ?= small
.PHONY: bench
bench: setup
	bash benchmarks/setup_venv.sh || echo "bench: .venv-bench could not be created; the inference reference is skipped"
	python -m benchmarks.run --preset $(PRESET)
