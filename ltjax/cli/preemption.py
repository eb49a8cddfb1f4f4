"""Pre-emption safety for every pipeline of the CLI: the stop hook (`stop`, `on_stop`) that the
one run (`ltjax.cli.training.train`) gives the one loop (`ltjax.train.fit`).

SIGTERM (what a pre-empted cloud VM or a batch scheduler sends before it kills the job) makes the
run finish its current step, write a checkpoint and exit with status 0, with no results.json;
the same command then continues from that step (the CLI resumes by default) and ends
bit-identical to an uninterrupted run.

With several processes the signal may reach only some of them, and at different steps; they must
all stop at the same step, or their collective save would deadlock. They agree through JAX's
pre-emption sync point (`multihost_utils.reached_preemption_sync_point`, the coordination
service's pre-emption notice that Orbax's pre-emption support reads too): it returns True on
every process at the same step once any of them was notified. `jax.distributed.initialize`
installs the SIGTERM notifier for that, so a process-local handler is installed only for a single
process.
"""
from __future__ import annotations

import signal

import jax
from jax.experimental import multihost_utils


class Preemption:
  """A context that turns SIGTERM into a request to stop at the next step boundary.

  Call `stop_reason(step)` once after every optimizer step, with the same (global, 1-based)
  step count on every process.

  Args:
    listen: False: SIGTERM keeps its usual effect and only `max_steps` stops (drivers of many
      runs, e.g. `experiments.reproduce`, which a SIGTERM should end rather than move on).
  """

  def __init__(self, *, listen: bool = True):
    self.listen = listen
    self.requested = False
    self._previous = None

  def __enter__(self):
    if self.listen and jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    """Whether to stop after `step` because of a pre-emption notice (agreed by all processes)."""
    if not self.listen:
      return False
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def stop_reason(self, step: int, *, max_steps: int | None = None) -> str | None:
    """"Stopped" once `step` reaches `max_steps` (tests), "Pre-empted" on a pre-emption notice,
    else None."""
    if max_steps is not None and step >= max_steps:
      return "Stopped"
    return "Pre-empted" if self.reached(step) else None

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def announce(why: str, global_step: int) -> None:
  """The one line a stopped run prints (process 0)."""
  if jax.process_index() == 0:
    print(f"{why} at step {global_step}; checkpoint written, run the same command again to "
          "continue.", flush=True)
