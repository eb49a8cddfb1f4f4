"""The README's main job (`experiments.quickstart`): runs trained two at a time, each from its own
thread, are the very runs trained one after another."""
import json
import os
import subprocess
import sys

import pytest

# Whole-CLI runs (multi-process or threaded): .ci/run runs them after the default suite.
pytestmark = [pytest.mark.slow, pytest.mark.integration]
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _quickstart(workdir, parallel):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.quickstart", f"--workdir={workdir}", "--methods=ce",
       "--seeds=0,1", "--num_epochs=1", f"--parallel={parallel}"],
      cwd=_ROOT, capture_output=True, text=True, timeout=600, check=False,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "seeds ['0', '1'] (mean)" in proc.stdout
  return [json.loads((workdir / "ce" / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]


def test_runs_in_parallel_threads_equal_runs_one_after_another(tmp_path):
  serial = _quickstart(tmp_path / "serial", 1)
  threads = _quickstart(tmp_path / "threads", 2)
  for a, b in zip(serial, threads, strict=True):
    assert a["seed"] == b["seed"]
    assert [e["loss"] for e in a["per_epoch"]] == [e["loss"] for e in b["per_epoch"]]
    assert a["test"]["per_class"] == b["test"]["per_class"]
  # The two seeds are different runs (a test that mixed them up would pass the loop above).
  assert serial[0]["per_epoch"][0]["loss"] != serial[1]["per_epoch"][0]["loss"]
