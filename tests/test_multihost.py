"""Multi-host: the experiment CLI under `jax.distributed.initialize` with 2 processes x 4 CPU
devices on localhost trains exactly as 1 process x 8 devices (same global batch and mesh order);
parameters are compared after 3 steps."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import experiment
from experiments import shared_data
from experiments.configs import fmnist_cnn
from ltjax import checkpointing
from tests import _processes

# A whole-CLI, multi-process run: .ci/run runs it after the default suite.
pytestmark = pytest.mark.integration
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# CIFAR-10-LT (IR 100, 12,396 training images after validation) in batches of 4096: 3 steps.
_ARGS = ["--config=experiments/configs/fmnist_cnn.py", "--config.dataset=cifar10",
         "--config.num_epochs=1", "--config.batch_size=4096", "--config.val_per_class=10",
         "--config.model_kwargs.widths=(4,)", "--config.model_kwargs.features=8",
         "--config.eval_batch_size=2048", "--progress=false"]


def _launch(workdir, tmp_path, *extra):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "4"}
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.main", *_ARGS, f"--config.data_dir={tmp_path / 'tfds'}",
       f"--workdir={workdir}", *extra], cwd=_ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT)


def _finish(procs):
  with _processes.killed_on_exit(procs):
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]


def _final_state(workdir):
  with checkpointing.Checkpointer(os.path.join(workdir, experiment.CHECKPOINT_DIR)) as ckpt:
    return ckpt.restore_tree()[0]


def test_two_processes_equal_one_process_with_eight_devices(tmp_path):
  if not (shared_data.shared_data_dir() / "cifar10").is_dir():
    pytest.fail(f"the shared CIFAR-10 copy is missing ({shared_data.shared_data_dir()}/cifar10)")
  single, multi, port = str(tmp_path / "single"), str(tmp_path / "multi"), _processes.free_port()
  # The reference: this process (8 CPU devices), same recipe and overrides as the CLI runs.
  assert jax.device_count() == 8
  config = fmnist_cnn.get_config()
  config.update_from_flattened_dict({
      "dataset": "cifar10", "num_epochs": 1, "batch_size": 4096, "val_per_class": 10,
      "model_kwargs.widths": (4,), "model_kwargs.features": 8, "eval_batch_size": 2048,
      "data_dir": str(tmp_path / "tfds")})
  experiment.train_and_evaluate(config, single, splits=experiment.load_splits(config),
                                progress=False)
  _finish([_launch(multi, tmp_path, "--distributed", f"--coordinator_address=localhost:{port}",
                   "--num_processes=2", f"--process_id={i}") for i in range(2)])
  a, b = _final_state(single), _final_state(multi)
  assert int(a["step"]) == int(b["step"]) == 3
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
               (a["params"], a["batch_stats"]), (b["params"], b["batch_stats"]))
  with open(os.path.join(multi, experiment.RESULTS_FILE)) as f:
    device = json.load(f)["device"]
  assert device.startswith("8 x cpu") and "2 process(es)" in device, device  # one global job
