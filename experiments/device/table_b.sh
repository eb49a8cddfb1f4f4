#!/usr/bin/env bash
# Table B at the recipes' full schedules on one accelerator: CIFAR-10-LT IR 100, ResNet-32,
# 200 epochs, 3 seeds of CE, LA post-hoc, LA loss, Balanced Softmax, LDAM-DRW, GALA (+PRS),
# ALA and LOS (`python -m experiments.reproduce --table=B_full`). The 3 seeds of each method
# train as one vmapped program; LA post-hoc and GALA+PRS are the CE and GALA runs evaluated
# with their post-hoc step; LOS re-trains the CE runs' classifiers.
#
#   experiments/device/table_b.sh [--budget_s=SECONDS] [--loop] [other reproduce flags]
#
# With --budget_s, an invocation stops cleanly before the budget: every run in progress is
# checkpointed at the end of an epoch, with its metrics.jsonl / TensorBoard record, and the
# script exits 75. Running the same command again continues where it stopped. With --loop, the
# script itself starts the next chunk until the table is done (a budget per chunk). Exit 0: all
# runs finished and experiments/results/table_b_full.{json,md} written.
#
# Needs the prepared CIFAR-10 (or its archives in ../shared/data/cifar10) and a jax with the
# accelerator's plugin (e.g. `pip install -U "jax[cuda13]"` on NVIDIA GPUs, `jax[tpu]` on TPU).
# Runs are kept under $LTJAX_TABLE_B_WORKDIR (default ~/ltjax-table-b); PYTHON picks the
# interpreter (default: .venv/bin/python when there is one, else python3).
set -uo pipefail
cd "$(dirname "$0")/../.."

EXIT_BUDGET=75
loop=0
args=()
for arg in "$@"; do
  if [[ "$arg" == "--loop" ]]; then loop=1; else args+=("$arg"); fi
done
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
workdir="${LTJAX_TABLE_B_WORKDIR:-$HOME/ltjax-table-b}"

chunk=1
while true; do
  echo "== Table B chunk $chunk ($(date -u +%H:%M:%SZ)), workdir $workdir"
  "$python" -m experiments.reproduce --table=B_full --workdir="$workdir" "${args[@]}"
  status=$?
  if [[ $status -eq 0 ]]; then
    echo "== Table B done: experiments/results/table_b_full.md"
    exit 0
  elif [[ $status -ne $EXIT_BUDGET ]]; then
    echo "== Table B chunk $chunk failed (exit $status)" >&2
    exit "$status"
  elif [[ $loop -eq 0 ]]; then
    echo "== Budget reached after chunk $chunk: run the same command again to continue."
    exit "$EXIT_BUDGET"
  fi
  chunk=$((chunk + 1))
done
