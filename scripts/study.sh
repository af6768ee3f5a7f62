#!/usr/bin/env bash
# The learning-curve and recipe study as queued DVC experiments, then a table and a plot in reports/.
#
#   scripts/study.sh [small|full]    (from the project root, after `make setup`)
#
#   small  the learning curve: 25% and 50% of the training questions with the default recipe, once
#          with the same epochs and once with the same optimizer steps (epochs ×4 and ×2), so more data
#          and more steps are told apart (100% is the workspace's own run: `dvc repro` first).
#          ~50 min on a 2-core CPU.
#   full   the curves for 3 seeds, plus the recipe grid:
#          learning rate, head learning rate, layer-wise learning-rate decay, epochs, learning-rate
#          warm-up, weight decay, max_seq_length, batch size, and the paper's recipe. Hours on a CPU.
#
# Each experiment is a whole pipeline run (`dvc exp run --queue -S ...`), so `dvc exp show` lists
# them all with params and metrics; `dvc exp apply <name>` brings one into the workspace. Runs log to
# the project's MLflow store (MLFLOW_TRACKING_URI overrides) and register @candidate versions like
# any run (the champion gate still applies). STUDY_DRY_RUN=1 only prints the queue.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
preset=${1:-small}
python -c "from medqa.tracking import configure_tracking; configure_tracking()" >/dev/null
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlruns/mlflow.db}

queue() {  # queue NAME OVERRIDES...
  local name=$1; shift
  local args=()
  for o in "$@"; do args+=(-S "$o"); done
  if [ -n "${STUDY_DRY_RUN:-}" ]; then echo "dvc exp run --queue -n $name ${args[*]}"; return; fi
  dvc exp remove "$name" >/dev/null 2>&1 || true  # rerunning the study replaces its experiments
  dvc exp run --queue -n "$name" "${args[@]}"
}

curve() {  # curve SEED: same epochs (fewer steps with less data), then same steps (epochs scaled up)
  local epochs
  epochs=$(python -c "from medqa.config import load_params; print(load_params().train.epochs)")
  queue "lc-025-s$1" tokenize.train_fraction=0.25 "train.seed=$1"
  queue "lc-050-s$1" tokenize.train_fraction=0.5 "train.seed=$1"
  queue "lc-025-steps-s$1" tokenize.train_fraction=0.25 "train.epochs=$(python -c "print($epochs * 4)")" "train.seed=$1"
  queue "lc-050-steps-s$1" tokenize.train_fraction=0.5 "train.epochs=$(python -c "print($epochs * 2)")" "train.seed=$1"
  [ "$1" = 42 ] || queue "lc-100-s$1" tokenize.train_fraction=1.0 "train.seed=$1"
}

case $preset in
  small) curve 42 ;;
  full)
    for s in 42 7 1234; do curve "$s"; done
    queue llrd-0.8 train.layer_lr_decay=0.8
    queue paper-recipe train.learning_rate=2e-5 train.head_learning_rate=2e-5
    for lr in 1e-4 3e-4; do queue "lr-$lr" "train.learning_rate=$lr"; done
    for hlr in 1e-3 1e-2; do queue "head-lr-$hlr" "train.head_learning_rate=$hlr"; done
    for ep in 2 5; do queue "epochs-$ep" "train.epochs=$ep"; done
    queue warmup-0 train.warmup_ratio=0.0
    queue wd-0.1 train.weight_decay=0.1
    queue maxlen-256 tokenize.max_seq_length=256 tokenize.doc_stride=96
    queue batch-16 train.batch_size=16
    ;;
  *) echo "usage: scripts/study.sh [small|full]" >&2; exit 2 ;;
esac
[ -n "${STUDY_DRY_RUN:-}" ] && exit 0

dvc queue start --jobs 1
# (status captured first: grep -q closing the pipe early would end the loop under pipefail)
while status=$(dvc queue status 2>/dev/null) && grep -qE '\b(Queued|Running)\b' <<<"$status"; do sleep 15; done
dvc queue status
python -m medqa.study --out reports
