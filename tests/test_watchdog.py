"""The step deadline (ltjax/train/_watchdog.py): a step that does not complete in time ends the
process with one line naming the process and the step; steps that complete never fire."""
import json
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import train as lt
from ltjax.train import _watchdog

_DELAY = {"s": 0.0}


@jax.jit
def _callback_step(x):
  """A jitted step that sleeps `_DELAY["s"]` in a host callback (XLA:CPU runs such a step at its
  dispatch: a step that blocks the calling thread, as a stuck collective can)."""

  def host_sleep(x):
    time.sleep(_DELAY["s"])
    return np.asarray(x)

  return jax.pure_callback(host_sleep, jax.ShapeDtypeStruct(x.shape, x.dtype), x + 1)


class _Output:
  """A dispatched step's output that becomes ready at `ready_at` (time.monotonic)."""

  def __init__(self, ready_at):
    self.ready_at = ready_at

  def is_ready(self):
    return time.monotonic() >= self.ready_at


_BLOCKED = textwrap.dedent("""
    import sys, time
    import jax.numpy as jnp
    from ltjax import train as lt
    from tests import test_watchdog as t
    started = time.monotonic()
    with lt.StepDeadline(1.0, process_index=1, failure_path=sys.argv[2]) as deadline:
      x = deadline.call(36, t._callback_step, jnp.zeros(3))  # compiles: not timed
      print("step 36", x.tolist(), flush=True)
      if sys.argv[1] == "call":
        t._DELAY["s"] = 60.0  # a collective that never returns, as far as the run can tell
        deadline.call(37, t._callback_step, x)
      else:  # the step returned; its output never becomes ready
        deadline.watch(37, t._Output(time.monotonic() + 60.0))
        time.sleep(60.0)
    print("not reached", time.monotonic() - started)
    """)


@pytest.mark.parametrize("how", ["call", "watch"])
def test_a_step_past_its_deadline_ends_the_process_with_one_line(tmp_path, how):
  failure = tmp_path / "failure.json"
  started = time.monotonic()
  proc = subprocess.run([sys.executable, "-c", _BLOCKED, how, str(failure)],
                        capture_output=True, text=True, timeout=120, check=False)
  elapsed = time.monotonic() - started
  assert proc.returncode == _watchdog.EXIT_STATUS != 0, proc.stderr
  assert proc.stdout == "step 36 [1.0, 1.0, 1.0]\n"  # flushed before the exit; no "not reached"
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("process 1: step 37 did not complete in 1 s (collective timeout);")
  assert "LTJAX_COLLECTIVE_TIMEOUT_S" in lines[-1]
  assert elapsed < 50  # the deadline (1 s) plus start-up, not the 60 s step
  record = json.loads(failure.read_text())
  assert record["status"] == "failed" and record["message"] == lines[-1]
  assert record["step"] == 37 and record["process_index"] == 1


_SERIALIZED_FIRST = textwrap.dedent("""
    import sys, time
    from ltjax import train as lt

    class Never:  # a dispatched step whose collective never completes
      def block_until_ready(self):
        time.sleep(60.0)

    with lt.StepDeadline(1.0, process_index=0, serialize=True) as deadline:
      deadline.call(0, lambda: ("state", Never()))  # the first call: compiled, then waited for
    print("not reached")
    """)


def test_a_serialized_first_step_that_never_completes_fires_too():
  """Serialized steps (multi-process CPU) are waited for under the guard from the first one on:
  the first call's compilation is exempt, its wait is not."""
  started = time.monotonic()
  proc = subprocess.run([sys.executable, "-c", _SERIALIZED_FIRST], capture_output=True,
                        text=True, timeout=120, check=False)
  assert proc.returncode == _watchdog.EXIT_STATUS, proc.stderr
  assert proc.stdout == ""
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "process 0: step 0 did not complete in 1 s (collective timeout);")
  assert time.monotonic() - started < 50


def _record_fires(monkeypatch):
  fired = []

  def fire(self, step):
    fired.append(step)
    self._pending.clear()  # as if the process had exited

  monkeypatch.setattr(lt.StepDeadline, "_fire", fire)
  return fired


def test_steps_that_complete_do_not_fire_even_when_the_loop_runs_ahead(monkeypatch):
  fired = _record_fires(monkeypatch)
  with lt.StepDeadline(0.6, poll_s=0.02) as deadline:
    # Real jitted steps, the first one compiling for longer than the limit would allow.
    _DELAY["s"] = 0.8
    x = deadline.call(0, _callback_step, jnp.zeros(3))
    _DELAY["s"] = 0.2
    for s in range(1, 4):
      x = deadline.call(s, _callback_step, x)
    # 6 steps of 0.3 s dispatched at once: the last is ready 1.8 s after its dispatch, but each
    # took 0.3 s once its predecessor was done.
    now = time.monotonic()
    for s in range(4, 10):
      deadline.watch(s, _Output(now + 0.3 * (s - 3)))
    time.sleep(2.0)
    time.sleep(0.8)  # idle between steps (evaluation, checkpoint): no step is pending
  assert fired == []
  np.testing.assert_array_equal(np.asarray(x), np.full(3, 4.0))


def test_a_late_step_fires_once_naming_its_step(monkeypatch):
  fired = _record_fires(monkeypatch)
  with lt.StepDeadline(0.3, poll_s=0.02) as deadline:
    now = time.monotonic()
    deadline.watch(0, _Output(now + 0.1))
    deadline.watch(1, _Output(now + 1.5))
    deadline.watch(2, _Output(now + 1.6))
    time.sleep(1.8)
  assert fired == [1]


def test_the_limit_comes_from_the_environment():
  env = _watchdog.ENV_VAR
  assert _watchdog.timeout_from_env(1, {}) is None
  assert _watchdog.timeout_from_env(2, {}) == _watchdog.DEFAULT_MULTIPROCESS_S
  assert _watchdog.timeout_from_env(1, {env: "120"}) == 120.0
  assert _watchdog.timeout_from_env(4, {env: "off"}) is None
  assert _watchdog.timeout_from_env(4, {env: "0"}) is None
  for bad in ("soon", "-1", "nan"):
    with pytest.raises(ValueError, match=f"{env}="):
      _watchdog.timeout_from_env(2, {env: bad})
  off = lt.StepDeadline.from_env(process_index=0, process_count=1)
  off.watch(0, jnp.zeros(1))  # off: nothing watched, no thread
  assert off.seconds is None and off._thread is None


def test_serialized_steps_are_complete_when_call_returns():
  # A step long enough that an asynchronous dispatch returns before it is done.
  step = jax.jit(lambda a: jax.lax.fori_loop(0, 200, lambda i, v: jnp.tanh(v @ v), a))
  a = jnp.eye(128) * 0.5
  step(a).block_until_ready()  # compiled
  with lt.StepDeadline(None, serialize=True) as deadline:
    for s in range(3):
      out = deadline.call(s, step, a)
      assert out.is_ready()
  np.testing.assert_allclose(np.asarray(out), np.asarray(step(a)))


def test_steps_are_serialized_on_multi_process_cpu_runs_with_several_devices_per_process():
  serialize = _watchdog.serialize_steps
  assert serialize(2, "cpu", 2, {}) and serialize(2, "cpu", 4, {})
  assert not serialize(2, "cpu", 1, {}) and not serialize(1, "cpu", 8, {})
  assert not serialize(2, "gpu", 4, {}) and not serialize(2, "tpu", 4, {})
  assert not serialize(2, "cpu", 4, {_watchdog.SERIALIZE_ENV_VAR: "0"})
  assert serialize(1, "gpu", 1, {_watchdog.SERIALIZE_ENV_VAR: "1"})
  deadline = lt.StepDeadline.from_env(process_index=1, process_count=2, backend="cpu",
                                      local_devices=2)
  assert deadline.serialize and deadline.process_index == 1
