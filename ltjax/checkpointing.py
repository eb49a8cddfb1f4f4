"""All checkpoint I/O of ltjax, through Orbax's `CheckpointManager` (so a move to Orbax V1 touches
this file only).

A checkpoint holds the whole `TrainState` (params, batch_stats, opt_state, loss_state, step, rng)
plus JSON metadata: the experiment config, the split fingerprint and the epoch reached. Restoring
into the abstract shape of a freshly built state gives back bit-identical arrays, so a resumed
run continues exactly as the uninterrupted one.

Also the rest of a run's file safety: `restore_latest_readable` falls back past unreadable
checkpoints, `atomic_write_text` / `atomic_path` write result files by temp file + rename (a
killed writer never leaves half a file under the real name), and `WorkdirLock` keeps two runs
out of one workdir.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ltjax import _private

_log = logging.getLogger("ltjax")

LOCK_FILE = ".ltjax.lock"
# Sizes and SHA-256 of every file of a saved step, written beside Orbax's files once the save is
# final: a truncated or altered checkpoint is recognised before Orbax reads it (a failing Orbax
# read leaves TensorStore callbacks printing "Event loop is closed" tracebacks).
MANIFEST_FILE = "ltjax_manifest.json"
UNREADABLE_DIR_SUFFIX = "-unreadable"


class CheckpointError(RuntimeError):
  """No checkpoint can be read (all unreadable), with what was tried."""


class WorkdirLocked(RuntimeError):
  """Another live process holds the workdir's lock."""


def _file_digests(folder: str) -> dict[str, list]:
  """`{relative path: [size, sha256]}` of every file under `folder` but the manifest."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, folder)
      if rel == MANIFEST_FILE:
        continue
      with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
      out[rel] = [os.path.getsize(path), digest]
  return out


def _abstract(tree):
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


# Orbax's managers share process-wide state: two threads saving at once into different
# directories (experiments.quickstart --parallel) failed with a step's temp folder missing
# (orbax-checkpoint 0.12.8, Python 3.13). Managers are created, written, read and closed one
# thread at a time.
_ORBAX_LOCK = threading.RLock()


def _state_handler() -> ocp.StandardCheckpointHandler:
  """The handler of the saved `TrainState`: without replica slicing where the arrays live on CPU
  devices (ltjax places states on the default backend's devices; `_private.whole_array_handler`),
  Orbax's default elsewhere or where this Orbax moved the private pieces that handler needs."""
  handler = _private.whole_array_handler() if jax.default_backend() == "cpu" else None
  return handler if handler is not None else ocp.StandardCheckpointHandler()


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  """This checkpointer's Orbax items: "state" (`StandardSave`/`StandardRestore`) and "meta" (JSON).
  A registry rather than `item_handlers`, which accepts only the exact classes the args are
  registered for (`_private.whole_array_handler`'s is a subclass)."""
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for item, handler, save, restore in (
      ("state", _state_handler(), ocp.args.StandardSave, ocp.args.StandardRestore),
      ("meta", ocp.JsonCheckpointHandler(), ocp.args.JsonSave, ocp.args.JsonRestore)):
    registry.add(item, save, handler)
    registry.add(item, restore, handler)
  return registry


class Checkpointer:
  """Saves and restores `TrainState`s under `directory`, keeping the last `max_to_keep`.

  Args:
    directory: where the step folders go (created if missing).
    max_to_keep: how many checkpoints to keep.
  """

  def __init__(self, directory, *, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.fspath(directory))
    with _ORBAX_LOCK:
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
          handler_registry=_handler_registry())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state, *, metadata: dict[str, Any]) -> None:
    """Saves `state` at its step with JSON-serialisable `metadata` and waits for the write."""
    step = int(jax.device_get(state.step))
    with _ORBAX_LOCK:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(metadata)), force=True)
      self._manager.wait_until_finished()
    if jax.process_index() == 0:
      folder = self._step_dir(step)
      atomic_write_text(os.path.join(folder, MANIFEST_FILE), json.dumps(_file_digests(folder)))

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def check_intact(self, step: int) -> None:
    """Raises `CheckpointError` naming the first file of checkpoint `step` that is missing,
    truncated or altered since it was saved (per its manifest; a checkpoint without one, e.g.
    from an older ltjax, is not checked here and left to Orbax)."""
    folder = self._step_dir(step)
    try:
      with open(os.path.join(folder, MANIFEST_FILE)) as f:
        expected = json.load(f)
    except FileNotFoundError:
      return
    except (OSError, ValueError) as e:
      raise CheckpointError(f"checkpoint step {step}: its manifest is unreadable ({e})") from None
    actual = _file_digests(folder)
    for rel, (size, digest) in sorted(expected.items()):
      if rel not in actual:
        raise CheckpointError(f"checkpoint step {step}: {rel} is missing")
      if actual[rel][0] != size:
        raise CheckpointError(f"checkpoint step {step}: {rel} has {actual[rel][0]} of its "
                              f"{size} bytes (truncated)")
      if actual[rel][1] != digest:
        raise CheckpointError(f"checkpoint step {step}: {rel} differs from what was saved")

  def restore(self, like, *, step: int | None = None):
    """Restores `(state, metadata)` at `step` (default latest) into the structure, shapes,
    dtypes and shardings of `like` (a state built the same way)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    self.check_intact(step)
    with _ORBAX_LOCK:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_abstract(like)), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def all_steps(self) -> list[int]:
    """The finalized checkpoint steps, oldest first (Orbax skips unfinished temp folders)."""
    return sorted(self._manager.all_steps())

  def restore_latest_readable(self, like):
    """Restores `(state, metadata, skipped)` from the newest checkpoint that reads back.

    A truncated or otherwise unreadable newer checkpoint is moved aside to
    `<directory>-unreadable/<step>` (kept for inspection, out of Orbax's way so the resumed run
    can save that step again), logged as a warning naming it, and listed in `skipped` as
    `(step, reason)`.

    Raises:
      FileNotFoundError: there is no checkpoint at all.
      CheckpointError: none of the checkpoints can be read.
    """
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    skipped = []
    for step in reversed(steps):
      try:
        state, meta = self.restore(like, step=step)
      except CheckpointError as e:
        reason = str(e).split(": ", 1)[-1]
        skipped.append((step, reason))
        continue
      except Exception as e:  # noqa: BLE001 (Orbax/TensorStore raise many kinds)
        reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        skipped.append((step, reason))
        continue
      break
    else:
      tried = "; ".join(f"step {s} ({r})" for s, r in skipped)
      raise CheckpointError(f"No readable checkpoint in {self.directory}: {tried}.")
    for bad, reason in skipped:
      moved = self._move_aside(bad)
      _log.warning("Checkpoint step %d in %s is unreadable (%s); skipped it (moved to %s) and "
                   "resumed from step %d.", bad, self.directory, reason, moved, step)
    if skipped:
      self._manager.reload()
    return state, meta, skipped

  def _move_aside(self, step: int) -> str:
    aside = os.path.join(self.directory + UNREADABLE_DIR_SUFFIX, str(step))
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    if os.path.exists(aside):
      shutil.rmtree(aside)
    os.replace(os.path.join(self.directory, str(step)), aside)
    return aside

  def restore_tree(self, *, step: int | None = None):
    """Restores `(tree, metadata)` without a target: the saved state as nested dicts of host
    NumPy arrays, whatever device topology wrote it (for taking params and batch_stats out of a
    stage-1 run whose optimizer or device count differs)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    self.check_intact(step)
    with _ORBAX_LOCK:
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
    with _ORBAX_LOCK:
      restored = self._manager.restore(step,
                                       args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored["meta"]

  def close(self) -> None:
    with _ORBAX_LOCK:
      self._manager.wait_until_finished()
      self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def atomic_write_text(path, text: str) -> None:
  """Writes `text` to `path` through a temp file in the same folder and a rename, so `path` is
  either its old content or the whole new one, never a prefix."""
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path):
  """Yields a temp path beside `path` (same extension, for writers that infer the format from
  it, e.g. matplotlib); on success renames it onto `path`, on an exception removes it."""
  path = os.fspath(path)
  folder, name = os.path.split(os.path.abspath(path))
  stem, ext = os.path.splitext(name)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}.tmp-", suffix=ext)
  os.close(fd)
  # mkstemp makes the file 0600; give it the mode a plain open() would (0666 less the umask).
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(tmp, 0o666 & ~umask)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


# Locks this process holds, by real path: re-entering one (the CLI locks before reading data,
# `train_and_evaluate` locks again) nests instead of refusing itself.
_HELD: dict[str, list] = {}


class WorkdirLock:
  """An exclusive, non-blocking `flock` on `<workdir>/.ltjax.lock` for the life of a run
  (`.ltjax.lock.<i>` for JAX process i > 0 of a multi-host job).

  The kernel drops the lock when the holder exits, even when killed, so a crashed run never
  leaves a stale lock; a run that ends (normally or by an exception) also removes the file.
  The file records the holder's pid for the message. Re-entrant within a process (nested uses
  share the first one's lock).

  Raises (on enter):
    WorkdirLocked: another process holds it.
  """

  def __init__(self, workdir):
    # One lock per JAX process index: the processes of one multi-host job share the workdir,
    # two jobs (both with a process 0) do not.
    index = jax.process_index()
    name = LOCK_FILE if index == 0 else f"{LOCK_FILE}.{index}"
    self.path = os.path.realpath(os.path.join(os.fspath(workdir), name))

  def __enter__(self):
    held = _HELD.get(self.path)
    if held is not None:
      held[1] += 1
      return self
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          raise WorkdirLocked(
              f"{os.path.dirname(self.path)} is in use by another run (pid {holder}); wait for "
              "it to finish or use another --workdir.") from None
        raise
      # The holder removes the file on exit (below) while still holding the lock: a file we
      # opened before that removal is locked but unlinked, so lock the new one instead.
      try:
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _HELD[self.path] = [fd, 1]
    return self

  def __exit__(self, *exc):
    held = _HELD[self.path]
    held[1] -= 1
    if held[1] == 0:
      del _HELD[self.path]
      # Removed before unlocking, so that no run ever locks a file that is about to vanish;
      # a kill skips this, and the next run reuses the file (the kernel dropped the lock).
      with contextlib.suppress(FileNotFoundError):
        os.unlink(self.path)
      fcntl.flock(held[0], fcntl.LOCK_UN)
      os.close(held[0])
