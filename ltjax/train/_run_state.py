"""One run state for every input and for vmapped replicas: the checkpoint metadata schema, its
one save and its one restore for a resume (same-run and position checks).

Schema 2 (`SCHEMA`), the metadata saved beside every `TrainState`:

    "schema":          2
    "config":          the run's configuration (a dict)
    "split_fingerprint": the training split's fingerprint
    "pipeline":        the input that wrote it ("device", "streaming", "replicas", ...)
    "epoch":           the last finished epoch (0-based; -1 before the first one ends)
    "step_in_epoch":   the steps done of the next epoch (0 at an epoch boundary)
    "epoch_loss_sum":  the loss summed over those steps (a list for vmapped replicas)
    "history":         the per-epoch records of the finished epochs (without their timings)

so a checkpoint resumes at `(epoch + 1, step_in_epoch)`, which must equal its step counter's
`divmod(step, steps_per_epoch)`. Schema 1 (no "schema" key, ltjax before the one engine) meant
by "epoch" the last finished epoch on the array inputs but the epoch to resume on the streamed
image lists (`config.split_protocol == "list"`); `checkpoint_position` reads both.

Epoch numbering: "epoch" (and the positions computed from it) is an internal 0-based index,
never shown as such. Every epoch a person sees is counted from 1 (`ltjax.train.fit`): the
records' "epoch" (in "history" too, as in metrics.jsonl), TensorBoard, the logs; the last
finished epoch index `e` is epoch `e + 1` there. "history" written before ltjax counted epochs
from 1 counted them from 0.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax

SCHEMA = 2
# Config keys that may differ between a run and the run resuming it: where data are read from,
# how it is fed (the pipelines train the same batches), what is evaluated when, how often it is
# checkpointed, and where the initial weights came from (a resume restores the state). None of
# them changes a training step.
RESUMABLE_CHANGES = frozenset({
    "recipe", "data_dir", "manual_dir", "image_root", "list_dir", "verify_lists", "data_workers",
    "pipeline", "eval_batch_size", "eval_every_epochs", "flip_tta", "checkpoint_every_epochs",
    "init_checkpoint", "init_weights"})


# Per-epoch fields that differ between a run and its resumed twin: kept out of the metadata, so
# that a resumed run's checkpoints equal an uninterrupted run's.
_TIMINGS = ("images_per_s", "seconds")


class ConfigError(ValueError):
  """A configuration that cannot run (or cannot resume this workdir); raised before any
  expensive work."""


def _as_dict(config) -> dict:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _flat(tree: Mapping, prefix: str = "") -> dict:
  """`{"lr.base_lr": 0.1, ...}`: a nested config dict by dotted key, values as JSON stores them
  (tuples as lists)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = json.loads(json.dumps(value))
  return out


def config_changes(saved: Mapping, config) -> list[str]:
  """`"config.<key>: <saved> -> <now>"` for each key whose value in `config` differs from the one
  a run saved (`saved`, its checkpoint's or results.json's `config`), the keys of
  `RESUMABLE_CHANGES` aside. A key only one of them has (added to the recipes since) is not
  compared."""
  before, now = _flat(saved), _flat(_as_dict(config))
  return [f"config.{key}: {before[key]!r} -> {now[key]!r}"
          for key in sorted(before.keys() & now.keys())
          if key.split(".")[0] not in RESUMABLE_CHANGES and before[key] != now[key]]


def check_same_run(meta: Mapping, config, fingerprint: str) -> None:
  """Raises `ConfigError` unless a checkpoint's metadata `meta` is of this run: the same split
  (fingerprint), method and configuration (`config_changes`)."""
  if meta["split_fingerprint"] != fingerprint:
    raise ConfigError(f"Cannot resume: the checkpoint's split fingerprint "
                      f"{meta['split_fingerprint'][:12]} differs from this data's "
                      f"{fingerprint[:12]}.")
  method = _as_dict(config)["method"]
  if meta["config"]["method"] != method:
    raise ConfigError(f"Cannot resume a {meta['config']['method']!r} run as {method!r}.")
  changes = config_changes(meta["config"], config)
  if changes:
    raise ConfigError("Cannot resume: the workdir's checkpoint is of another configuration ("
                      + "; ".join(changes) + "); use a fresh --workdir, or the checkpoint's "
                      "values.")


def refuse_existing_checkpoints(directory: str) -> None:
  """The error of a run told not to resume (`resume=False`, the CLI's `--noresume`) whose
  checkpoint folder already holds checkpoints."""
  raise ConfigError(f"{directory} already holds checkpoints: resume them (--resume, the CLI's "
                    "default) or use a fresh --workdir.")


def checkpoint_metadata(config, fingerprint: str, *, epoch: int, step_in_epoch: int = 0,
                        loss_sum=0.0, pipeline: str, history: list | None = None) -> dict:
  """The schema-2 metadata of a checkpoint that resumes at step `step_in_epoch` of epoch
  `epoch` (both 0-based; `loss_sum` the loss summed over the steps done of that epoch)."""
  return {"schema": SCHEMA, "config": _as_dict(config), "split_fingerprint": fingerprint,
          "pipeline": pipeline, "epoch": epoch - 1, "step_in_epoch": step_in_epoch,
          "epoch_loss_sum": loss_sum if step_in_epoch else 0.0,
          "history": [{k: v for k, v in r.items() if k not in _TIMINGS} for r in history or ()]}


def checkpoint_position(meta: Mapping) -> tuple[int, int]:
  """`(epoch, step_in_epoch)` a checkpoint resumes at, from its metadata of schema 1 or 2.

  Raises:
    ConfigError: the metadata is of a newer schema than this ltjax reads.
  """
  schema = int(meta.get("schema", 1))
  if schema > SCHEMA:
    raise ConfigError(f"Cannot resume: the checkpoint's metadata is schema {schema}, written by "
                      f"a newer ltjax; this one reads schemas 1 to {SCHEMA}.")
  epoch, step_in_epoch = int(meta["epoch"]), int(meta.get("step_in_epoch") or 0)
  if schema == 1 and (meta.get("config") or {}).get("split_protocol") == "list":
    return epoch, step_in_epoch  # the streamed lists recorded the epoch to resume
  return epoch + 1, step_in_epoch


def check_position(meta: Mapping, step: int, steps_per_epoch: int) -> tuple[int, int]:
  """The position `(epoch, step_in_epoch)` a checkpoint resumes at (`checkpoint_position`). Raises
  `ConfigError` unless it is its step counter's `divmod(step, steps_per_epoch)` (it is not when
  the steps per epoch changed, which would shift every later batch). Schema-1 checkpoints of
  whole epochs that did not record "step_in_epoch" are not checked."""
  where = checkpoint_position(meta)
  counted = divmod(step, steps_per_epoch)
  if "step_in_epoch" in meta and counted != where:
    # Shown as a person counts epochs (from 1), as in the logs; `where` is 0-based.
    raise ConfigError(
        f"Cannot resume: the checkpoint's position ({where[1]} steps into epoch "
        f"{where[0] + 1}) is not its step counter's ({counted[1]} steps into epoch "
        f"{counted[0] + 1} at {steps_per_epoch} steps per epoch): the batch size or the data "
        "changed.")
  return where


def epoch_loss_sum(meta: Mapping):
  """The loss summed over the steps a mid-epoch checkpoint did of its epoch ("epoch_loss_sum",
  a list for a vmapped step; 0 at an epoch boundary and for checkpoints that did not record it),
  so that the resumed epoch's record is the whole epoch's mean."""
  return meta.get("epoch_loss_sum", 0.0) if meta.get("step_in_epoch") else 0.0


class RunCheckpoints:
  """The checkpoints of one run (`directory`, an `ltjax.checkpointing.Checkpointer`) with the
  schema-2 metadata of `config`, `fingerprint` and `pipeline`: the one save and the one restore
  of every input and of the replicas.

  Use as a context manager, or `close()`.
  """

  def __init__(self, directory, *, config, fingerprint: str, pipeline: str):
    # Orbax is imported when a run checkpoints, not with `ltjax.train`.
    from ltjax import checkpointing  # noqa: PLC0415

    self.checkpointer = checkpointing.Checkpointer(directory)
    self.directory = self.checkpointer.directory
    self.config, self.fingerprint, self.pipeline = config, fingerprint, pipeline

  def save(self, state, *, epoch: int, step_in_epoch: int = 0, loss_sum=0.0,
           history: list | None = None) -> None:
    """Saves `state`, which resumes at step `step_in_epoch` of epoch `epoch` (`loss_sum`: that
    epoch's loss summed so far; `history`: the finished epochs' records). A state whose step is
    already the latest checkpoint's (an epoch's own checkpoint, then a stop) is not saved
    again."""
    if self.checkpointer.latest_step() == int(jax.device_get(state.step)):
      return
    self.checkpointer.save(state, metadata=checkpoint_metadata(
        self.config, self.fingerprint, epoch=epoch, step_in_epoch=step_in_epoch,
        loss_sum=loss_sum, pipeline=self.pipeline, history=history))

  def restore_for_resume(self, like, *, steps_per_epoch: int, resume: bool) -> tuple:
    """Where the run starts: `(state, meta, (epoch, step_in_epoch), loss_sum)` from the latest
    readable checkpoint (checked as this run's, `check_same_run`, at its step counter's
    position, `check_position`; `loss_sum` the cut epoch's, `epoch_loss_sum`), or
    `(like, {}, (0, 0), 0.0)` when there is none.

    Raises:
      ConfigError: there are checkpoints and `resume` is False, they are of another run or at
        another position, or of a newer schema.
    """
    if not self.checkpointer.all_steps():
      return like, {}, (0, 0), 0.0
    if not resume:
      refuse_existing_checkpoints(self.directory)
    state, meta, _ = self.checkpointer.restore_latest_readable(like)
    check_same_run(meta, self.config, self.fingerprint)
    where = check_position(meta, int(jax.device_get(state.step)), steps_per_epoch)
    return state, meta, where, epoch_loss_sum(meta)

  def close(self) -> None:
    self.checkpointer.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def latest_metadata(directory) -> dict | None:
  """The metadata of the latest checkpoint in `directory`; None when there is none or it cannot
  be read (a resume falls back past an unreadable one)."""
  from ltjax import checkpointing  # noqa: PLC0415 (see RunCheckpoints)

  if not os.path.isdir(directory):
    return None
  with checkpointing.Checkpointer(directory) as ckpt:
    if ckpt.latest_step() is None:
      return None
    try:
      return ckpt.restore_metadata()
    except Exception:  # noqa: BLE001 (unreadable: the loop's restore falls back past it)
      return None
