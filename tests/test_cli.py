"""The experiment CLI: bad configs fail at once with a clear message; a tiny real run writes
results.json with the fields design.md lists, and the per-class plot."""
import json
import os
import subprocess
import sys
import time

import pytest

from experiments import experiment
from experiments import shared_data
from experiments.configs import fmnist_cnn

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RECIPE = "experiments/configs/fmnist_cnn.py"


def _cli(*args, env=None, timeout=300):
  started = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "experiments.main", f"--config={_RECIPE}", *args],
                        cwd=_ROOT, capture_output=True, text=True, timeout=timeout, check=False,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})
  return proc, time.perf_counter() - started


@pytest.mark.parametrize("args, env, message", [
    (["--config.method=nope"], {}, "Unknown method 'nope'"),
    (["--config.data_dir=/nonexistent", "--config.manual_dir=/nonexistent"], {},
     "not prepared"),
    (["--config.batch_size=100"], {"JAX_NUM_CPU_DEVICES": "8"},
     "multiple of the number of devices (8)"),
    (["--config.method=crt"], {}, "init_checkpoint"),
])
def test_bad_config_fails_fast_with_a_clear_message(tmp_path, args, env, message):
  # jax logs every trace and compilation: "fails fast" is checked as nothing traced or compiled
  # (a wall-clock bound flaked on a loaded machine: 11.6 s of start-up at load 5).
  proc, seconds = _cli(*args, f"--workdir={tmp_path}", env={**env, "JAX_LOG_COMPILES": "1"})
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "Compiling" not in proc.stderr and "Finished tracing" not in proc.stderr, proc.stderr
  assert seconds < 120  # start-up only (a data preparation or compilation takes minutes)
  assert not os.listdir(tmp_path)


@pytest.mark.integration  # a whole-CLI run on CIFAR-10 (.ci/run runs the marker)
def test_tiny_cifar_run_writes_the_report(tmp_path):
  shared = shared_data.shared_data_dir() / "cifar10"
  if not shared.is_dir():
    pytest.fail(f"the shared CIFAR-10 copy is missing at {shared}")
  workdir = str(tmp_path / "run")
  proc, _ = _cli("--config.dataset=cifar10", "--config.num_epochs=1",
                 "--config.batch_size=256", "--config.imbalance_ratio=100",
                 "--config.model_kwargs.widths=(4,)", "--config.model_kwargs.features=8",
                 "--config.val_per_class=10", "--config.eval_batch_size=1000",
                 f"--config.data_dir={tmp_path / 'tfds'}", "--progress=false",
                 f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  for key in ("method", "dataset", "imbalance_ratio", "recipe", "seed", "num_epochs",
              "split_fingerprint", "device", "versions", "test", "val"):
    assert key in results
  assert set(results["versions"]) >= {"jax", "flax", "optax", "ltjax"}
  assert results["imbalance_ratio"] == 100 and results["num_epochs"] == 1
  assert sum(results["class_counts"]) == 12406 - 10  # LDAM split; the head lends 10 to val
  for split in ("val", "test"):
    r = results[split]
    assert set(r) >= {"top1", "balanced_error", "many", "medium", "few", "per_class"}
    assert len(r["per_class"]) == 10 and 0.0 <= r["top1"] <= 1.0
    assert abs(r["top1"] + r["balanced_error"] - 1.0) < 1e-6
  assert os.path.getsize(os.path.join(workdir, "per_class_accuracy.png")) > 1000
  assert "top-1" in proc.stdout


@pytest.mark.parametrize("layout", ["fashion_mnist/3.0.1", "fashion_mnist/plain/3.0.1"])
def test_check_prepared_accepts_tfds_layouts_with_and_without_a_config_level(tmp_path, layout):
  config = fmnist_cnn.get_config()
  config.data_dir, config.manual_dir = str(tmp_path / "tfds"), str(tmp_path / "empty")
  with pytest.raises(experiment.ConfigError, match="not prepared"):
    experiment.check_prepared(config)
  (tmp_path / "tfds" / layout).mkdir(parents=True)
  (tmp_path / "tfds" / layout / "dataset_info.json").write_text("{}")
  experiment.check_prepared(config)  # no error: the builder is prepared
