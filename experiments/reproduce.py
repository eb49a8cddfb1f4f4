r"""Reproduces the papers' comparisons on real long-tailed data: multi-seed results tables.

    python -m experiments.reproduce --table A        # Fashion-MNIST-LT, IR 100 and 10, small CNN
    python -m experiments.reproduce --table B        # CIFAR-10-LT IR 100, ResNet-32 (shortened)
    python -m experiments.reproduce --table smoke    # a one-epoch check of the whole pipeline
    python -m experiments.reproduce --measure_vmap   # seeds vmapped vs one after another

The work is split by concern: `experiments.tables` says what a table runs (its specs, each run's
config and folder), `experiments.runner` runs it (training, reuse, resumption, failures, the
budget) and `experiments.report` aggregates the finished runs into
`<results_dir>/<table>.json` and `.md`; this module is the command line. `--measure_vmap` is the
benchmark `experiments.bench.vmap`.

Every run keeps its own folder `<workdir>/<table>/<dataset>_ir<IR>/<method>/seed<k>/` with
`results.json` (and the trained state under `checkpoints/`); a run whose `results.json` exists is
skipped, so an interrupted table resumes where it stopped, and a table whose runs are all
finished only rewrites its report. A failed run is recorded in its folder's `failure.json`, the
table goes on, shows it under "Failed runs", and the next invocation retries it. Model and tau
selection never look at the test split; the test numbers are the last epoch's.
"""
from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

from experiments import plugins
from experiments import report
from experiments import runner
from experiments import runtime
from experiments import tables
from experiments.bench import vmap as vmap_bench

_TABLE = flags.DEFINE_string("table", None, "Which table: A, B, B_full or smoke.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/ltjax-reproduce",
                               "Where the runs (results.json, checkpoints) are kept.")
_RESULTS_DIR = flags.DEFINE_string("results_dir", "experiments/results",
                                   "Where <table>.json/.md are written.")
_METHODS = flags.DEFINE_list("methods", None, "Only these methods of the table (default all).")
_VMAP = flags.DEFINE_enum("vmap", "table", ["table", "on", "off"],
                          "Train a joint method's seeds as vmapped replicas: as the table "
                          "specifies, always, or never (one run after another).")
_BUDGET_S = flags.DEFINE_float(
    "budget_s", None, "Wall-clock budget of this invocation in seconds: training stops cleanly "
    "(state checkpointed, epoch records kept) before an epoch that would not fit, and the "
    "process exits with status 75; run the same command again to continue.")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Train nothing: write <table>.json/.md from the runs already finished "
    "in --workdir (the others show as missing), e.g. to look at a long table while it runs.")
_MEASURE_VMAP = flags.DEFINE_bool(
    "measure_vmap", False, "Run the benchmark experiments.bench.vmap (3 seeds of Table A's CE "
    "vmapped vs one after another) and write <results_dir>/vmap_speedup.{json,md}.")

# Exit status of an invocation stopped by --budget_s with work left (EX_TEMPFAIL: try again).
EXIT_BUDGET = 75


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  runtime.configure_jax()
  if _MEASURE_VMAP.value:
    vmap_bench.measure_from_flags(workdir=_WORKDIR.value,
                                  out=os.path.join(_RESULTS_DIR.value, vmap_bench.OUT_NAME))
    return
  if _TABLE.value is None:
    raise app.UsageError(f"Pass --table (one of {', '.join(tables.TABLES)}) or --measure_vmap.")
  try:
    spec = tables.get_table(_TABLE.value)
    methods = tables.select_methods(spec, _METHODS.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  vmap = {"table": spec.vmap, "on": True, "off": False}[_VMAP.value]
  started = time.perf_counter()
  if _REPORT_ONLY.value:
    report.write_table(spec, methods, workdir=_WORKDIR.value, results_dir=_RESULTS_DIR.value,
                       wall_seconds=0.0)
    return
  try:
    failures = runner.run_table(spec, methods, workdir=_WORKDIR.value, vmap=vmap,
                                budget=runner.Budget(seconds=_BUDGET_S.value))
  except runner.BudgetReached as e:
    print(f"[{time.strftime('%H:%M:%S')}] Budget of {_BUDGET_S.value:g} s reached ({e}); "
          "progress is checkpointed: run the same command again to continue.", flush=True)
    sys.exit(EXIT_BUDGET)
  report.write_table(spec, methods, workdir=_WORKDIR.value, results_dir=_RESULTS_DIR.value,
                     wall_seconds=time.perf_counter() - started)
  if failures:
    sys.exit(f"{len(failures)} run(s) failed (recorded in their failure.json; a re-run retries "
             "them): " + "; ".join(f"{f['path']}: {f['message']}" for f in failures))


if __name__ == "__main__":
  plugins.import_modules(sys.argv)  # --import: before the flags (the config) are read
  app.run(main)
