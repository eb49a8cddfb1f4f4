"""All checkpoint I/O of ltjax, through Orbax's `CheckpointManager` (so a move to Orbax V1 touches
this file only).

A checkpoint holds the whole `TrainState` (params, batch_stats, opt_state, loss_state, step, rng)
plus JSON metadata: the experiment config, the split fingerprint and the epoch reached. Restoring
into the abstract shape of a freshly built state gives back bit-identical arrays, so a resumed
run continues exactly as the uninterrupted one.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
  """Saves and restores `TrainState`s under `directory`, keeping the last `max_to_keep`.

  Args:
    directory: where the step folders go (created if missing).
    max_to_keep: how many checkpoints to keep.
  """

  def __init__(self, directory, *, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.fspath(directory))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()},
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state, *, metadata: dict[str, Any]) -> None:
    """Saves `state` at its step with JSON-serialisable `metadata` and waits for the write."""
    step = int(jax.device_get(state.step))
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(metadata)), force=True)
    self._manager.wait_until_finished()

  def restore(self, like, *, step: int | None = None):
    """Restores `(state, metadata)` at `step` (default latest) into the structure, shapes,
    dtypes and shardings of `like` (a state built the same way)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(like)), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def restore_tree(self, *, step: int | None = None):
    """Restores `(tree, metadata)` without a target: the saved state as nested dicts of host
    NumPy arrays, whatever device topology wrote it (for taking params and batch_stats out of a
    stage-1 run whose optimizer or device count differs)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    saved = self._manager.item_metadata(step)["state"]
    target = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), saved)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def restore_metadata(self, *, step: int | None = None) -> dict[str, Any]:
    """The JSON metadata of checkpoint `step` (default latest) alone."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored["meta"]

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
