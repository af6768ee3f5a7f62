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

## The quick loop while editing: unit tests only (no real pipeline, servers or subprocess training).
.PHONY: test-fast lint typecheck
test-fast: setup
	python -m pytest -q -m "not integration and not slow"

## ruff: lint and formatting (a violation fails; `ruff format .` and `ruff check --fix .` repair most).
lint: setup
	ruff check .
	ruff format --check .

## mypy over src/ and pipeline/ (settings in pyproject.toml).
typecheck: setup
	mypy

## The locked environment (docs/development.md, "Upgrading the environment"). `make lock` re-resolves
## every package to today's newest releases that pyproject.toml allows (torch stays at [tool.uv]'s
## pin) and rewrites uv.lock and requirements-lock.txt: their diff is the upgrade to review.
## One package only: make lock UPGRADE="--upgrade-package transformers"; none (after adding a
## dependency to pyproject.toml): make lock UPGRADE=. `make lock-check` fails when pyproject.toml and
## the lock disagree (CI runs it).
UPGRADE ?= --upgrade
LOCK_EXPORT := uv export --quiet --frozen --format requirements-txt --extra dev --no-emit-project \
	--no-emit-package torch --no-header
.PHONY: lock lock-check
lock: setup
	uv lock $(UPGRADE)
	$(LOCK_EXPORT) -o requirements-lock.txt
	bash scripts/setup.sh

lock-check: setup
	uv lock --check
	$(LOCK_EXPORT) | diff -u requirements-lock.txt - \
		|| { echo "requirements-lock.txt is not uv.lock's export: run make lock" >&2; exit 1; }

## Benchmarks, ours vs plain Hugging Face side by side; writes reports/benchmarks.md.
## PRESET=small (default, about 10 minutes on 2 CPU cores) or PRESET=full (the whole data: hours on a CPU).
PRESET ?= small
.PHONY: bench
bench: setup
	bash benchmarks/setup_venv.sh || echo "bench: .venv-bench could not be created; the inference reference is skipped"
	python -m benchmarks.run --preset $(PRESET)

## Corpus scale: STAGES on synthetic SQuAD v2 data of SIZES questions (wall time, questions/s, peak
## RSS, growth between sizes, tokenize on all cores vs one); writes reports/bench_scale.md. Minutes
## at 10k, ~10 at 100k on 2 cores; add 1000000 for the full scale. STAGES may add evaluate, predict
## (a tiny random model: the pipeline around a model) and long (20,000-token contexts).
SIZES ?= 10000 100000
STAGES ?= validate tokenize
.PHONY: bench-scale
bench-scale: setup
	python -m benchmarks.scale_bench --sizes $(SIZES) --stages $(STAGES)

## The paper's recipe (recipes/paper.yaml: batch 32, lr 2e-5 for encoder and QA head, 3 epochs, BERT's
## attention dropout) as a DVC experiment named paper-recipe, run in a temporary copy (the workspace
## keeps the default) and logged to the project's MLflow store; compare it with the default run in
## the table `dvc exp show` prints.
.PHONY: paper-recipe
paper-recipe: setup
	dvc exp remove paper-recipe >/dev/null 2>&1 || true
	python -c "from medqa.tracking import configure_tracking; configure_tracking()" >/dev/null
	flags=$$(python -m medqa.overlay recipes/paper.yaml) && \
		MLFLOW_TRACKING_URI=sqlite:///$(CURDIR)/mlruns/mlflow.db dvc exp run --temp -n paper-recipe $$flags
	dvc exp show --only-changed --drop 'Created|State|Executor|by_type\..*|has_ans_.*'

## The README's and the guide's predict examples run against this project's trained model (after
## `make pipeline`), their output compared with the text shown; `python scripts/check_doc_examples.py
## --update` rewrites the shown output after a retraining.
.PHONY: doc-examples
doc-examples: setup
	python scripts/check_doc_examples.py
