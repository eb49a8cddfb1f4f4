"""The training CLI, `ltjax-train` (`pip install "ltjax[train,data]"`; in a checkout also
`python -m experiments.main`).

  ltjax-train --config=<recipe name or file> \
      [--config.method=... --config.dataset=... --config.imbalance_ratio=...] --workdir=DIR \
      [--noresume] [--import=my_methods[,...]]

`--config=fmnist_cnn` names a packaged recipe (ltjax/recipes; `ltjax.recipes.names()` lists
them), `--config=path/to/recipe.py[:arg]` any recipe file. Raw archives: `$LTJAX_SHARED_DATA`
(in a checkout, `<repo>/../shared/data`) or `--config.manual_dir`; prepared TFDS data:
`--config.data_dir`, else `$LTJAX_DATA_DIR`, else `~/tensorflow_datasets`.

Trains, checkpoints into DIR/checkpoints, prints the report and writes DIR/results.json and
DIR/per_class_accuracy.png. Bad configurations (every key's domain, the workdir's writability)
fail before any data is read or compiled. Every failure (bad config, divergence, NaN metrics,
unreadable checkpoints, a workdir locked by another run, an I/O error) ends with one line on
stderr and exit status 1, and no results.json (a failed run leaves DIR/failure.json).

`--import=module[,module]` imports those modules before the configuration is read (e.g. a file of
your own `ltjax.train.register_method(...)` calls on PYTHONPATH; `ltjax.cli.plugins`); so does
`experiments.reproduce`.

Pre-emption and resuming: SIGTERM makes the run finish its current step, write a checkpoint
(mid-epoch; with several processes all save the same step) and exit with status 0, no
results.json. Running the same command again continues from the latest checkpoint in DIR
(`--resume`, the default) and ends bit-identical to an uninterrupted run; a checkpoint of another
run (other split, method, or a config value that changes training: batch size, model, schedule,
seed, ...) is refused with one line. A finished run (DIR/results.json of this config) is not
trained again: the command prints its report. `--noresume` refuses a DIR that already holds
checkpoints.
"""
from __future__ import annotations

import functools
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

# Importing these creates no device: `runtime.configure_jax` below still runs before any backend
# initialises (tests/test_runtime.py).
from ltjax import train as lt
from ltjax.cli import _config_flags
from ltjax.cli import experiment
from ltjax.cli import plugins
from ltjax.cli import runtime
from ltjax.cli import streaming

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A packaged recipe's name (e.g. fmnist_cnn; ltjax/recipes) or a recipe "
    "file; --config_help lists its keys, the methods and their hyperparameters with their "
    "domains.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder.")
_RESUME = flags.DEFINE_bool(
    "resume", True, "Continue from the latest checkpoint in workdir when it holds this run's "
    "(a finished run is not trained again); --noresume refuses a workdir holding checkpoints.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show the progress bar.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host; coordinator "
    "and process ids from the environment or the flags below).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def _run(argv):
  """absl's main: one training run of the parsed flags."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  # The CPU device split is chosen to divide the recipe's batch.
  runtime.configure_jax(batch_size=_CONFIG.value.batch_size)
  if _DISTRIBUTED.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  config = _CONFIG.value
  if not _PROGRESS.value:
    import tensorflow_datasets as tfds  # noqa: PLC0415 (only to silence its bars)
    tfds.disable_progress_bar()
  # ImageNet-LT / iNat18 / Places-LT stream their prepared records; array datasets train on the
  # device when they fit (config.pipeline), else streamed from the host.
  workdir = _WORKDIR.value
  assert workdir is not None  # a required flag: absl refused the command line without it
  try:
    results = streaming.run(config, workdir, resume=_RESUME.value,
                            progress=_PROGRESS.value and jax.process_index() == 0)
  except Exception as e:  # pylint: disable=broad-except
    line = experiment.describe_failure(e)
    if line is None:
      raise
    sys.exit(line)
  if results and jax.process_index() == 0:
    print(lt.format_report(results))


def main(argv: list[str] | None = None) -> None:
  """The console script `ltjax-train` (and `python -m experiments.main`)."""
  try:
    argv = _config_flags.resolve_recipe_argv(sys.argv if argv is None else argv)
  except ValueError as e:  # an unknown recipe name: one line
    sys.exit(str(e))
  plugins.import_modules(argv)  # --import: before the flags (the config) are read
  app.run(_run, argv=argv, flags_parser=functools.partial(_config_flags.parse_flags,
                                                          methods=lambda: lt.METHODS))


if __name__ == "__main__":
  main()
