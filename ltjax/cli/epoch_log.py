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
"""
from __future__ import annotations

import json
import os

METRICS_FILE = "metrics.jsonl"
EVENTS_DIR = "tensorboard"
SHOT_KEYS = ("top1", "many", "medium", "few")


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
    start_epoch: the first epoch this process trains; lines of later epochs left by an
      interrupted run (written after its last checkpoint) are dropped, so a resumed run's file
      holds each epoch once.
    tensorboard: also write event files (skipped, with the JSON lines kept, where tensorboardX
      is not installed).
  """

  def __init__(self, workdir: str, *, start_epoch: int = 0, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, METRICS_FILE)
    kept = [r for r in self.records() if r["epoch"] < start_epoch]
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
        self._writer.add_scalar(tag, value, global_step=record["epoch"] + 1)
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

  Returns `{"epoch", "test": {top1, many, medium, few}}` or None.
  """
  evaluated = [r for r in per_epoch if (r.get("test") or {}).get("top1") is not None]
  if not evaluated:
    if final is None:
      return None
    return {"epoch": None, "test": {k: final.get(k) for k in SHOT_KEYS}}
  best = max(evaluated, key=lambda r: r["test"]["top1"])  # max keeps the first maximum
  return {"epoch": best["epoch"], "test": dict(best["test"])}
