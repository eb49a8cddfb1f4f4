"""The one run of every pipeline: `train` feeds an `ltjax.cli.experiment.Experiment` (any
input: device arrays, host-streamed arrays, image lists) to `ltjax.train.fit`, with pre-emption,
the per-epoch record and the run state (`ltjax.train.RunCheckpoints`, one checkpoint schema);
`write_report` evaluates (post-hoc tau chosen on validation, NaN check) and writes the per-class
plot and results.json atomically; `guarded` turns a failed run into failure.json and no results.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from ltjax import checkpointing
from ltjax import train as lt
from ltjax.cli import epoch_log
from ltjax.cli import preemption
from ltjax.cli import provenance

CHECKPOINT_DIR = lt.CHECKPOINT_DIR
RESULTS_FILE = "results.json"
FAILURE_FILE = "failure.json"  # written instead of results.json when a run fails
PLOT_FILE = "per_class_accuracy.png"



# An evaluation metric came out NaN or infinite (raised by the library's evaluation too).
NonFiniteMetrics = lt.NonFiniteMetrics


# Every way a run can fail that the CLI reports as one line (exit status 1), by its label.
RUN_ERRORS = {
    lt.ConfigError: "Configuration error",
    lt.TrainingDiverged: "Training diverged",
    checkpointing.CheckpointError: "Checkpoint error",
    checkpointing.WorkdirLocked: "Workdir locked",
    NonFiniteMetrics: "Evaluation error",
}


def describe_failure(error: BaseException) -> str | None:
  """The one-line report of a run failure (`RUN_ERRORS` or an OS error), None for others."""
  for kind, label in RUN_ERRORS.items():
    if isinstance(error, kind):
      return str(error) if str(error).startswith(label) else f"{label}: {error}"
  if isinstance(error, OSError):
    return f"I/O error: {error}"
  return None



def check_workdir(workdir) -> None:
  """Raises `lt.ConfigError` unless `workdir` is a writable folder or can be created as one.

  Probes by creating (and removing) a file in the folder or its nearest existing ancestor, as
  permission bits alone do not tell (root, read-only mounts); nothing is left behind.
  """
  if not workdir:
    raise lt.ConfigError("--workdir is empty: expected a folder to write the run into.")
  path = os.path.abspath(os.fspath(workdir))
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    what = ("exists and is not a folder" if probe == path
            else f"cannot be created: {probe} is a file")
    raise lt.ConfigError(f"--workdir={workdir} {what}; expected a writable folder.")
  try:
    with tempfile.TemporaryFile(dir=probe, prefix=".ltjax-write-probe-"):
      pass
  except OSError as e:
    where = "" if probe == path else f" (its existing parent {probe} is not writable)"
    raise lt.ConfigError(f"--workdir={workdir} is not writable{where}: {e.strerror or e}; expected "
                      "a writable folder.") from None



def latest_checkpoint_metadata(workdir: str) -> dict | None:
  """The metadata of the latest checkpoint in `workdir/checkpoints` (None: none, unreadable)."""
  return lt.latest_checkpoint_metadata(os.path.join(workdir, CHECKPOINT_DIR))


def finished_results(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """The results of `workdir`'s finished run (its results.json, status ok) when it is `config`'s
  run, None when it has no (readable, successful) results.json.

  Raises:
    lt.ConfigError: the finished run is of another configuration (`config_changes`).
  """
  try:
    with open(os.path.join(workdir, RESULTS_FILE)) as f:
      results = json.load(f)
  except (OSError, ValueError):  # none, or unreadable: the run re-evaluates its checkpoint
    return None
  if not isinstance(results, dict) or results.get("status", "ok") != "ok" or (
      "config" not in results):
    return None
  changes = lt.config_changes(results["config"], config)
  if changes:
    raise lt.ConfigError(f"{workdir} holds a finished run of another configuration ("
                      + "; ".join(changes) + "); use a fresh --workdir.")
  return results



def split_logits(exp, state) -> lt.SplitLogits:
  """The post-hoc-adjusted logits of `state` per split ("val" when the data has one, "test")."""
  return lt.SplitLogits(eval_logits=exp.eval_logits, state=state, images=exp.eval_images,
                        log_prior=exp.stats.log_prior, method=exp.method)


def evaluate(exp, state) -> dict:
  """Validation and test metrics of `state`, with tau chosen on validation (`lt.evaluate`)."""
  return lt.evaluate(split_logits(exp, state), exp.method, exp.hp, labels=exp.eval_labels,
                     class_counts=exp.class_counts)


def _shots(metrics: dict) -> dict:
  return {k: metrics.get(k) for k in epoch_log.SHOT_KEYS}


def epoch_metrics(exp, state, *, also: tuple = (),
                  evaluated: dict | None = None) -> dict:
  """The evaluation part of a per-epoch record: validation and test top-1 / many / medium / few
  of `state` (post-hoc tau chosen on validation, as in the final report), and under `also` the
  same for other methods evaluated on this state (e.g. post-hoc LA on a CE run). The test
  numbers serve only the best-epoch-on-test column (`epoch_log.best_test_epoch`). `evaluated`:
  `evaluate(exp, state)` when already computed."""

  def compact(e, r=None):
    r = evaluate(e, state) if r is None else r
    out = {split: _shots(r[split]) for split in ("val", "test") if split in r}
    if "posthoc" in r:
      out["tau"] = r["posthoc"]["tau"]
    return out

  record = compact(exp, evaluated)
  if also:
    record["also"] = {m: compact(dataclasses.replace(exp, method=lt.get_method(m)))
                      for m in also}
  return record


def evaluated_this_epoch(config, epoch: int, last: int) -> bool:
  """Whether epoch `epoch` (of a run whose last is `last`) is evaluated for its record."""
  every = int(config.get("eval_every_epochs", 1))
  return epoch == last or (every > 0 and (epoch + 1) % every == 0)



def guarded(workdir: str, run_fn: Callable[[], dict]) -> dict:
  """`run_fn()` with `workdir` locked for the whole run (a second run on it raises
  `WorkdirLocked`). A run that fails (diverged, NaN metrics, unreadable checkpoints) raises,
  writes no `results.json`, and leaves `failure.json` (`{"status": "diverged" | "failed",
  "message", ...}`) plus the last good checkpoint; a later successful run removes it."""
  check_workdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  with checkpointing.WorkdirLock(workdir):
    try:
      return run_fn()
    except tuple(RUN_ERRORS) as e:
      if not isinstance(e, (lt.ConfigError, checkpointing.WorkdirLocked)):
        write_failure(workdir, e)
      raise


def write_failure(workdir: str, error: BaseException) -> dict:
  """Writes `workdir/failure.json` for a failed run: status, message and, for a divergence, the
  epoch (counted from 1, as `TrainingDiverged.epoch`), step and last finite loss."""
  record: dict[str, Any] = {
      "status": "diverged" if isinstance(error, lt.TrainingDiverged) else "failed",
      "message": describe_failure(error) or str(error),
      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
  if isinstance(error, lt.TrainingDiverged):
    record.update(epoch=error.epoch, step=error.step, last_finite_loss=error.last_finite_loss,
                  history=error.history)
  if jax.process_index() == 0:
    try:
      checkpointing.atomic_write_text(os.path.join(workdir, FAILURE_FILE),
                                      json.dumps(record, indent=1))
    except OSError as e:  # best effort: the failure itself is what must be reported
      logging.getLogger("ltjax").warning("Could not write %s: %s", FAILURE_FILE, e)
  return record


def train(exp, workdir: str, *, resume: bool = False,
          stop_after_epoch: int | None = None, max_steps: int | None = None,
          preemptible: bool = False, progress: bool | str = True,
          extra: dict | None = None) -> dict:
  """Trains `exp` through `ltjax.train.fit` (any input), checkpoints into `workdir` and writes
  the report (`write_report`): the one run of every pipeline.

  Per epoch: the record (loss, lr, images/s, and the validation / test evaluation every
  `config.eval_every_epochs`) goes to metrics.jsonl and TensorBoard (`epoch_log.EpochLog`,
  process 0), and a checkpoint is written every `config.checkpoint_every_epochs` and at the end
  (`ltjax.train.RunCheckpoints`, schema 2).

  Pre-emption (`preemptible`, the CLI's runs): SIGTERM makes the run finish its current step,
  checkpoint it (mid-epoch) and return {} (`ltjax.cli.preemption`); resuming continues at the
  next step, bit-identically, and the epoch's record in metrics.jsonl is the uninterrupted run's
  (loss included).

  Args:
    exp: the built run (`build_experiment`, `ltjax.cli.streaming.build_list_experiment`).
    workdir: output folder.
    resume: continue from the newest readable checkpoint in `workdir` (bit-identically, also
      from one written mid-epoch), which must be of this run (`ltjax.train.check_same_run`);
      unreadable newer ones are skipped with a warning. False: a workdir holding checkpoints is
      refused.
    stop_after_epoch: stop after this many epochs as if killed (for tests): the checkpoint is
      written and no report is made.
    max_steps: stop after this many optimizer steps of the whole run, checkpointed mid-epoch as
      on pre-emption (for tests; no report).
    preemptible: stop on SIGTERM as described above (False: SIGTERM keeps its usual effect).
    progress: the progress bar (True), one line per step and epoch ("lines") or nothing.
    extra: fields added to the results (e.g. the table a run belongs to).

  Returns:
    The results (empty when stopped early).
  """
  config = exp.config
  ckpts = lt.RunCheckpoints(os.path.join(workdir, CHECKPOINT_DIR), config=config,
                            fingerprint=exp.fingerprint, pipeline=exp.input_name)
  log = None
  try:
    state, meta, (start_epoch, start_step), loss_sum = ckpts.restore_for_resume(
        exp.state, steps_per_epoch=exp.steps_per_epoch, resume=resume)
    # Records count epochs from 1: those of the `start_epoch` epochs already finished.
    finished = [r for r in epoch_log.counted_from_one(meta.get("history", []))
                if r["epoch"] <= start_epoch]
    every = max(int(config.checkpoint_every_epochs), 1)
    last = config.num_epochs - 1
    # One writer (process 0) for the workdir's metrics.jsonl and event files. A mid-epoch
    # checkpoint's epoch has no record yet: the records kept are those of the finished epochs.
    if jax.process_index() == 0:
      log = epoch_log.EpochLog(workdir, start_epoch=start_epoch)

    final = {}  # the last epoch's evaluation, which is the report's (streamed: minutes)

    def on_epoch_end(epoch, state, record):
      if evaluated_this_epoch(config, epoch, last):
        metrics = evaluate(exp, state)
        if epoch == last:
          final["metrics"] = metrics
        record.update(epoch_metrics(exp, state, evaluated=metrics))
      finished.append(record)
      if log is not None:
        log.write(record)
      if (epoch + 1) % every == 0 or epoch == last or epoch + 1 == stop_after_epoch:
        ckpts.save(state, epoch=epoch + 1, history=finished)

    stopped = []

    def stop(global_step):
      why = sigterm.stop_reason(global_step, max_steps=max_steps)
      if why:
        stopped.append((why, global_step))
      return why is not None

    def on_stop(epoch, step_in_epoch, state, loss_sum):
      ckpts.save(state, epoch=epoch, step_in_epoch=step_in_epoch, loss_sum=loss_sum,
                 history=finished)

    num_epochs = config.num_epochs if stop_after_epoch is None else stop_after_epoch
    started = time.perf_counter()
    with preemption.Preemption(listen=preemptible) as sigterm:
      state, history = lt.fit(
          state, step=exp.train_step, last_step=exp.last_step, data=exp.data, stats=exp.stats,
          start_epoch=start_epoch, start_step=start_step, start_loss_sum=loss_sum,
          num_epochs=num_epochs, on_epoch_end=on_epoch_end, progress=progress,
          desc=config.method, stop=stop, on_stop=on_stop)
    train_seconds = time.perf_counter() - started
    per_epoch = log.records() if log is not None else finished
    if stopped:
      preemption.announce(*stopped[0])
      return {}
    if stop_after_epoch is not None and stop_after_epoch < config.num_epochs:
      return {}
  finally:
    ckpts.close()
    if log is not None:
      log.close()
  return write_report(exp, state, workdir, train_seconds=train_seconds, history=history,
                      per_epoch=per_epoch, extra=extra, metrics=final.get("metrics"))


def _non_finite_metrics(tree, prefix="") -> list[str]:
  """The dotted names of the NaN / infinite numbers in a nested dict/list of metrics."""
  if isinstance(tree, dict):
    return [n for k, v in tree.items() for n in _non_finite_metrics(v, f"{prefix}{k}.")]
  if isinstance(tree, (list, tuple)):
    return [n for i, v in enumerate(tree) for n in _non_finite_metrics(v, f"{prefix}{i}.")]
  if isinstance(tree, float) and not math.isfinite(tree):
    return [prefix[:-1]]
  return []


def check_metrics_finite(metrics: dict) -> None:
  """Raises `NonFiniteMetrics` naming every NaN / infinite evaluation number."""
  bad = _non_finite_metrics(metrics)
  if bad:
    shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
    raise lt.NonFiniteMetrics(f"evaluation produced non-finite metrics ({shown}); no results "
                           "written.")


def write_json_atomic(path, record: dict) -> None:
  """`json.dump(record)` to `path` through a temp file + rename (never half a file)."""
  checkpointing.atomic_write_text(path, json.dumps(record, indent=1))


def write_report(exp, state, workdir: str, *, train_seconds: float,
                 history: list, extra: dict | None = None,
                 per_epoch: list | None = None, metrics: dict | None = None) -> dict:
  """Evaluates `state` (validation, then test: the post-hoc tau chosen on validation) and
  writes `workdir/results.json` (with `"status": "ok"` and `extra`) and the per-class plot,
  each atomically; returns the results. The one report of every pipeline.

  `per_epoch` (default `history`) is the run's whole per-epoch record, resumed epochs included;
  `best_test_epoch` is the official codes' protocol computed from it (never used to select).
  Their epochs are counted from 1 (`"epochs_counted_from": 1`, `ltjax.cli.epoch_log`).
  `metrics`: `evaluate(exp, state)` when the run already computed it (its last epoch's record).

  Raises:
    NonFiniteMetrics: an evaluation metric is NaN or infinite (nothing is written).
  """
  config = exp.config
  results = {
      "status": "ok",
      "method": config.method, "dataset": config.dataset,
      "imbalance_ratio": config.imbalance_ratio, "recipe": config.recipe, "seed": config.seed,
      "split_seed": config.split_seed,
      "num_epochs": config.num_epochs, "epochs_counted_from": epoch_log.EPOCHS_COUNTED_FROM,
      "split_protocol": config.split_protocol,
      "split_fingerprint": exp.fingerprint,
      "class_counts": np.asarray(exp.class_counts).astype(int).tolist(),
      "device": provenance.device_description(), "versions": provenance.library_versions(),
      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "train_seconds_this_run": train_seconds, "history": history,
      "config": config.to_dict(), **exp.report_fields,
  }
  metrics = evaluate(exp, state) if metrics is None else metrics
  check_metrics_finite(metrics)
  results.update(metrics)
  results.update(extra or {})
  results["per_epoch"] = history if per_epoch is None else per_epoch
  results["best_test_epoch"] = epoch_log.best_test_epoch(results["per_epoch"], results["test"])
  if jax.process_index() == 0:
    with checkpointing.atomic_path(os.path.join(workdir, PLOT_FILE)) as tmp:
      title = f"{config.method}, {config.dataset} IR {results['imbalance_ratio']:g}"
      lt.plot_per_class(results["test"]["per_class"], exp.class_counts, tmp, title=title)
    # results.json last: its presence means the whole report is there.
    write_json_atomic(os.path.join(workdir, RESULTS_FILE), results)
    failure = os.path.join(workdir, FAILURE_FILE)
    if os.path.exists(failure):
      os.remove(failure)
  return results
