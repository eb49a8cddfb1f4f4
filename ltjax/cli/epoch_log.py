"""The per-epoch record of a run: `metrics.jsonl` and TensorBoard event files in its workdir.

Each finished epoch appends one JSON line (train loss, lr, images/s, and the validation and test
accuracy with many/medium/few when the epoch was evaluated) and writes the same numbers as
TensorBoard scalars (`train/loss`, `val/top1`, `test/few`, ...), so a long run can be watched
while it trains (`tail -f`, `tensorboard --logdir <workdir>`) and plotted afterwards.

The event files are written with tensorboardX: a maintained, pure-Python writer (numpy and
protobuf only) that needs neither TensorFlow nor the tensorboard package at training time.
clu's `metric_writers`, which the Flax examples use, write through `tf.summary` (importing
TensorFlow, seconds and ~1 GB per process) and clu has had no release since 0.0.12 (2024-04).

The per-epoch test accuracy is recorded for one purpose only: the official codes' protocol
(best epoch on the test set), reported in its own labelled column. Nothing selects on it.

Epoch numbering: every epoch a person sees is counted from 1 ("epoch 3 of 5" is the third): a
record's "epoch" (metrics.jsonl, results.json "per_epoch" and "best_test_epoch", failure.json),
the TensorBoard step, `ltjax.train.fit`'s bar and log lines and the tables' best epochs. Only
internal indices stay 0-based (fit's loop variable and `on_epoch_end`'s first argument, the
input's epoch, the checkpoint metadata's "epoch", see `ltjax.train._run_state`). results.json
files record `"epochs_counted_from": 1`; older ones (without it) counted from 0, and
`per_epoch` / `best_epoch` read both.
"""
from __future__ import annotations

import json
import os

METRICS_FILE = "metrics.jsonl"
EVENTS_DIR = "tensorboard"
SHOT_KEYS = ("top1", "many", "medium", "few")
# What results.json files record since epochs are counted from 1 (older files: absent, from 0).
EPOCHS_COUNTED_FROM = 1


def scalars(record: dict) -> dict[str, float]:
  """The TensorBoard scalars of one epoch record: `train/<key>` for the loop's numbers,
  `<split>/<key>` for evaluated splits and `<method>/<split>/<key>` for the methods evaluated
  on the same state (e.g. post-hoc LA on the CE run). Lists (vmapped replicas) and None are
  skipped."""
  out = {}
  for key in ("loss", "lr", "images_per_s"):
    if isinstance(record.get(key), (int, float)):
      out[f"train/{key}"] = float(record[key])

  def add(prefix, metrics):
    for split in ("val", "test"):
      for key, value in (metrics.get(split) or {}).items():
        if isinstance(value, (int, float)):
          out[f"{prefix}{split}/{key}"] = float(value)
    if isinstance(metrics.get("tau"), (int, float)):
      out[f"{prefix}posthoc/tau"] = float(metrics["tau"])

  add("", record)
  for method, metrics in (record.get("also") or {}).items():
    add(f"{method}/", metrics)
  return out


class EpochLog:
  """Appends epoch records to `<workdir>/metrics.jsonl` and `<workdir>/tensorboard/`.

  Args:
    workdir: the run's folder.
    start_epoch: the epochs already finished (the 0-based index of the first epoch this
      process trains, fit's `start_epoch`); lines of later epochs left by an interrupted run
      (written after its last checkpoint) are dropped, so a resumed run's file holds each epoch
      once (epochs 1..start_epoch; a file of an older ltjax is renumbered from 1 first).
    tensorboard: also write event files (skipped, with the JSON lines kept, where tensorboardX
      is not installed).
  """

  def __init__(self, workdir: str, *, start_epoch: int = 0, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, METRICS_FILE)
    kept = [r for r in counted_from_one(self.records()) if r["epoch"] <= start_epoch]
    with open(self.path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    self._writer = None
    if tensorboard:
      try:
        # Imported when a run opens its log: tensorboardX takes 2-3 s to import.
        import tensorboardX  # noqa: PLC0415
      except ImportError:
        pass
      else:
        self._writer = tensorboardX.SummaryWriter(os.path.join(workdir, EVENTS_DIR))

  def records(self) -> list[dict]:
    """Every epoch record in the file, in order."""
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]

  def write(self, record: dict) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._writer is not None:
      for tag, value in scalars(record).items():
        self._writer.add_scalar(tag, value, global_step=record["epoch"])
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def best_test_epoch(per_epoch: list[dict], final: dict | None = None) -> dict | None:
  """The official codes' protocol: the evaluated epoch with the highest test top-1 (the first
  on ties, as LDAM-DRW's `is_best = acc1 > best_acc1`). Falls back to `final` (the report's test
  metrics) when no epoch was evaluated (post-hoc only runs).

  Returns `{"epoch", "test": {top1, many, medium, few}}` (the record's epoch number, counted
  from 1 for records of this ltjax) or None.
  """
  evaluated = [r for r in per_epoch if (r.get("test") or {}).get("top1") is not None]
  if not evaluated:
    if final is None:
      return None
    return {"epoch": None, "test": {k: final.get(k) for k in SHOT_KEYS}}
  best = max(evaluated, key=lambda r: r["test"]["top1"])  # max keeps the first maximum
  return {"epoch": best["epoch"], "test": dict(best["test"])}


def counted_from_one(records: list[dict]) -> list[dict]:
  """`records` (metrics.jsonl lines, a checkpoint's "history") with "epoch" counted from 1.
  Records written before ltjax counted epochs from 1 hold an epoch 0, which no newer record
  does: those are renumbered, so that a run resumed across the change counts one way."""
  if not any(r.get("epoch") == 0 for r in records):
    return records
  return _renumbered(records, 1)


def _renumbered(records: list[dict], shift: int) -> list[dict]:
  """`records` with `shift` added to each "epoch"."""
  return [dict(r, epoch=r["epoch"] + shift) if "epoch" in r else r for r in records]


def _shift(results: dict) -> int:
  """What to add to the epoch numbers of `results` (a results.json) to count them from 1: 0 for
  files that record `epochs_counted_from`, 1 for older ones, written counted from 0."""
  return EPOCHS_COUNTED_FROM - int(results.get("epochs_counted_from", 0))


def per_epoch(results: dict) -> list[dict]:
  """The per-epoch records of a results.json (its "per_epoch", or an older file's "history"),
  their "epoch" counted from 1 whichever ltjax wrote the file."""
  return _renumbered(results.get("per_epoch") or results.get("history") or [], _shift(results))


def best_epoch(results: dict) -> dict:
  """The official codes' best epoch on test of a results.json (`best_test_epoch`: recorded, or
  computed from its records and final "test" metrics), its "epoch" counted from 1 whichever
  ltjax wrote the file."""
  best = results.get("best_test_epoch")
  if not best:  # computed from the records, already counted from 1
    computed = best_test_epoch(per_epoch(results), results["test"])
    assert computed is not None  # with the final metrics to fall back on, there is always one
    return computed
  if best.get("epoch") is None:
    return best
  return dict(best, epoch=best["epoch"] + _shift(results))
