"""The 2-process CPU all-reduce hang (experiments/bench/allreduce_hang.py, outside ltjax): with
each step waited for (what ltjax's `serialize_steps` does on such runs) no run hangs. Long: a
few minutes of 2-process runs."""
import pytest

from experiments.bench import allreduce_hang
from ltjax.train import _watchdog

pytestmark = pytest.mark.long


def test_serialized_steps_of_two_processes_with_two_devices_each_do_not_hang():
  assert _watchdog.serialize_steps(2, "cpu", 2, {})
  assert allreduce_hang.main(["--runs=3", "--steps=200", "--devices=2", "--block",
                              "--run_timeout_s=300"]) == 0
