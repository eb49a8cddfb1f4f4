"""Multi-host: 2 processes x 4 CPU devices under `jax.distributed.initialize` train exactly as
1 process x 8 devices (same global batch, same mesh order), checked after 3 steps.

The worker half of this file runs in the subprocesses (`python tests/test_multihost.py ...`).
"""
import os
import socket
import subprocess
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  from experiments.configs import fmnist_cnn  # pylint: disable=g-import-not-at-top

  c = fmnist_cnn.get_config()
  c.method = "ce"
  c.num_epochs = 1
  c.batch_size = 16
  c.eval_batch_size = 16
  c.model_kwargs = {"widths": (4,), "features": 8}
  c.val_per_class = 0
  return c


def _splits():
  sys.path.insert(0, os.path.join(_ROOT, "tests"))
  from test_checkpoint import tiny_splits  # pylint: disable=g-import-not-at-top

  splits = tiny_splits()
  keep = np.arange(48)  # 3 steps of 16
  return splits.__class__(**{**splits.__dict__, "train_images": splits.train_images[keep],
                             "train_labels": splits.train_labels[keep],
                             "class_counts": np.bincount(splits.train_labels[keep],
                                                         minlength=4)})


def _final_params(workdir):
  from experiments import train  # pylint: disable=g-import-not-at-top
  from ltjax import checkpointing  # pylint: disable=g-import-not-at-top

  with checkpointing.Checkpointer(os.path.join(workdir, train.CHECKPOINT_DIR)) as ckpt:
    tree, _ = ckpt.restore_tree()
  return tree


def _worker(workdir, process_id, num_processes, port):
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", 4)
  jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                             num_processes=num_processes, process_id=process_id)
  assert jax.device_count() == 8 and jax.local_device_count() == 4
  from experiments import train  # pylint: disable=g-import-not-at-top

  train.train_and_evaluate(_config(), workdir, splits=_splits(), progress=False)
  jax.distributed.shutdown()


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one_process_with_eight_devices(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from experiments import train  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == 8
  single = str(tmp_path / "single")
  train.train_and_evaluate(_config(), single, splits=_splits(), progress=False)
  multi, port = str(tmp_path / "multi"), _free_port()
  env = {**os.environ, "PYTHONPATH": _ROOT, "JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen([sys.executable, __file__, multi, str(i), "2", str(port)], env=env,
                            cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  outputs = [p.communicate(timeout=240)[0].decode() for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  a, b = _final_params(single), _final_params(multi)
  assert int(a["step"]) == int(b["step"]) == 3
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
               (a["params"], a["batch_stats"]), (b["params"], b["batch_stats"]))


if __name__ == "__main__":
  _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
