"""A deadline on each training step, so that a step stuck in a cross-process collective ends the
run with one line instead of hanging it.

Why a process exit: an XLA collective blocked in Gloo (CPU) or NCCL cannot be interrupted from
Python, and every thread that touches the step's outputs blocks with it. 2-process CPU runs with
2 or 4 devices per process hung in about 1 of 6 runs in the train step's cross-process all-reduce
(README, known gaps). `experiments/bench/allreduce_hang.py` reproduces it outside ltjax: it
needs several steps in flight and several devices per process (`serialize_steps`, which the
loop's `call` applies there, waits for each step; the deadline stays for any other hang).
`StepDeadline` watches from a daemon thread: when a step does not complete in `seconds`, it prints

    process 1: step 37 did not complete in 120 s (collective timeout); ...

to stderr, writes that line to `failure_path` (JSON, `{"status": "failed", "message", ...}`) when
one is given, flushes stdout / stderr and `os._exit`s with status `EXIT_STATUS`, which ends the
process even with the main thread stuck inside XLA.

A step is watched without blocking the loop (JAX dispatches asynchronously): `watch(step, out)`
records the step's output and the thread polls `out.is_ready()`. The time of step s runs from
the later of its dispatch and the completion of the step watched before it, so a loop that runs
ahead of the device by many steps does not bill one step for its predecessors' time. Code that
blocks in the calling thread (a barrier, a synchronous read, a step executed at dispatch, as
XLA:CPU does for steps with host callbacks) is watched with `with deadline.guard(step): ...`.
`call(step, fn, *args)` does both for a step function, except that the first call of each `fn`
is not timed (it compiles, and `ltjax.cli.streaming.compiled_in_step` then waits at a
barrier for the other processes to compile).

The limit: `LTJAX_COLLECTIVE_TIMEOUT_S` (seconds; 0 or "off" disables), by default 600 s in a
multi-process run and off in a single process (`from_env`).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from typing import Any

ENV_VAR = "LTJAX_COLLECTIVE_TIMEOUT_S"
SERIALIZE_ENV_VAR = "LTJAX_SERIALIZE_STEPS"
# A generous default: the slowest legitimate step measured (ResNeXt-50 on 8 CPU devices under
# load) takes tens of seconds; a checkpoint or an evaluation between steps is not a step.
DEFAULT_MULTIPROCESS_S = 600.0
EXIT_STATUS = 1  # the CLI's status of every one-line failure


def timeout_from_env(process_count: int, environ=None) -> float | None:
  """The step limit in seconds from `LTJAX_COLLECTIVE_TIMEOUT_S`, else `DEFAULT_MULTIPROCESS_S`
  with several processes and None (off) with one.

  Raises:
    ValueError: the variable is neither a number nor "off" (one line naming it).
  """
  value = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
  if not value:
    return DEFAULT_MULTIPROCESS_S if process_count > 1 else None
  if value.lower() in ("off", "none"):
    return None
  try:
    seconds = float(value)
  except ValueError:
    raise ValueError(f"{ENV_VAR}={value!r}: expected seconds (e.g. 600) or 'off'.") from None
  if seconds != seconds or seconds < 0:
    raise ValueError(f"{ENV_VAR}={value!r}: expected seconds >= 0 (0 or 'off' disables).")
  return seconds or None


def _ready(x) -> bool:
  try:
    return x.is_ready()
  except RuntimeError:  # deleted (e.g. donated to a later step): it was computed
    return True


def serialize_steps(process_count: int, backend: str, local_devices: int, environ=None) -> bool:
  """Whether a loop should wait for each step before dispatching the next: `LTJAX_SERIALIZE_STEPS`
  ("1" / "0") if set, else on for a multi-process CPU run with several devices per process.

  Why: with several steps in flight, 2 processes x 2 CPU devices hung in Gloo's all-reduce in
  4 of 4 runs of `experiments/bench/allreduce_hang.py` (a plain jax step, no ltjax; one device
  thread of a process waiting to receive, the other to send), and in 0 of 4 when each step was
  waited for (2 x 4 devices: 2 of 2 and 0 of 2); 1 device per process did not hang (0 of 3).
  Waiting costs the overlap of one step's dispatch with the previous step's work, on a path
  (multi-process CPU) used for tests.
  """
  value = (os.environ if environ is None else environ).get(SERIALIZE_ENV_VAR, "").strip()
  if value:
    return value.lower() not in ("0", "false", "no", "off")
  return process_count > 1 and backend == "cpu" and local_devices > 1


class StepDeadline:
  """Ends the process with one line when a watched step does not complete in `seconds`.

  Args:
    seconds: the limit; None (or 0) watches nothing.
    process_index: named in the line (this JAX process).
    failure_path: where to write the failure record (e.g. `<workdir>/failure.json`), or None.
    poll_s: how often the thread checks (default min(1 s, seconds / 10)).
    serialize: `call` waits for each step before returning, so that one step at a time is in
      flight (`serialize_steps`).

  Use as a context manager (the thread stops on exit):

      with StepDeadline(120, process_index=jax.process_index()) as deadline:
        for step in ...:
          state, metrics = train_step(state, batch)
          deadline.watch(step, metrics["loss"])

  or `state, metrics = deadline.call(step, train_step, state, batch)`.
  """

  def __init__(self, seconds: float | None, *, process_index: int = 0,
               failure_path: str | os.PathLike | None = None, poll_s: float | None = None,
               serialize: bool = False):
    self.seconds = float(seconds) if seconds else None
    self.serialize = bool(serialize)
    self.process_index = int(process_index)
    self.failure_path = None if failure_path is None else os.fspath(failure_path)
    self._poll_s = poll_s if poll_s is not None else min(1.0, (self.seconds or 10.0) / 10)
    self._pending: list[list[Any]] = []  # [step, output or None (guard), started]
    self._last_done = time.monotonic()
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._called: set = set()  # the step functions called once (compiled) already

  @classmethod
  def from_env(cls, *, process_index: int, process_count: int, backend: str = "cpu",
               local_devices: int = 1, **kwargs) -> StepDeadline:
    """A deadline with `timeout_from_env(process_count)` seconds, serializing the steps where
    `serialize_steps(...)` says so."""
    return cls(timeout_from_env(process_count), process_index=process_index,
               serialize=serialize_steps(process_count, backend, local_devices), **kwargs)

  def __enter__(self) -> StepDeadline:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    """Stops watching (pending steps are forgotten)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None

  def watch(self, step: int, outputs) -> None:
    """Watches step `step`, just dispatched: it completes when every array of `outputs` (a
    pytree of jax.Arrays, e.g. the step's loss) is ready."""
    if self.seconds is None:
      return
    import jax  # noqa: PLC0415 (the deadline itself needs no jax; only watched outputs do)
    leaves = [x for x in jax.tree.leaves(outputs) if hasattr(x, "is_ready")]
    self._add([int(step), leaves, time.monotonic()])

  def call(self, step: int, fn, *args):
    """`fn(*args)` as step `step`: the call is guarded (but for `fn`'s first, which compiles)
    and the last leaf of its output (e.g. the loss in `(state, metrics)`; it must not be
    donated to a later call) is watched until ready; with `serialize`, waited for before
    returning (under the guard). Returns the output."""
    import jax  # noqa: PLC0415 (see watch)
    watched = self.seconds is not None
    first = fn not in self._called
    self._called.add(fn)
    with self.guard(step) if watched and not first else contextlib.nullcontext():
      out = fn(*args)
    last = jax.tree.leaves(out)[-1:]
    if self.serialize:
      # The wait is guarded even on the first call: only compiling is exempt, and a first
      # collective that never completes is a hang like any other (jax 0.12.1, 2 processes).
      with self.guard(step) if watched else contextlib.nullcontext():
        jax.block_until_ready(last)
    elif watched:
      self.watch(step, last)
    return out

  @contextlib.contextmanager
  def guard(self, step: int):
    """Watches the body (blocking code in this thread) as step `step`."""
    if self.seconds is None:
      yield
      return
    entry = [int(step), None, time.monotonic()]
    self._add(entry)
    try:
      yield
    finally:
      with self._lock:
        if entry in self._pending:
          self._pending.remove(entry)
          self._last_done = time.monotonic()

  def _add(self, entry) -> None:
    with self._lock:
      self._pending.append(entry)
    if self._thread is None:
      self._thread = threading.Thread(target=self._run, name="ltjax-step-deadline", daemon=True)
      self._thread.start()

  def _run(self) -> None:
    while not self._stop.wait(self._poll_s):
      with self._lock:
        now = time.monotonic()
        # Completed steps leave in order: a step's time starts once its predecessor is done.
        while self._pending and self._pending[0][1] is not None and all(
            _ready(x) for x in self._pending[0][1]):
          self._pending.pop(0)
          self._last_done = now
        if not self._pending:
          continue
        step, _, started = self._pending[0]
        if now - max(started, self._last_done) > self.seconds:
          self._fire(step)

  def line(self, step: int) -> str:
    """The one line reported for step `step`."""
    return (f"process {self.process_index}: step {step} did not complete in {self.seconds:g} s "
            "(collective timeout); another process may have died or a cross-process collective "
            f"hung. Run the same command again to resume; {ENV_VAR} sets the limit.")

  def _fire(self, step: int) -> None:
    line = self.line(step)
    if self.failure_path is not None:
      record = {"status": "failed", "message": line, "step": step,
                "process_index": self.process_index,
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
      tmp = f"{self.failure_path}.tmp-{os.getpid()}"
      with contextlib.suppress(OSError):  # best effort: the line is what must come out
        with open(tmp, "w") as f:
          json.dump(record, f, indent=1)
        os.replace(tmp, self.failure_path)
    with contextlib.suppress(Exception):  # a closed stream must not stop the exit
      sys.stdout.flush()
    with contextlib.suppress(Exception):
      sys.stderr.write(line + "\n")
      sys.stderr.flush()
    os._exit(EXIT_STATUS)
