"""Test-wide JAX set-up: 8 simulated CPU devices and a persistent compilation cache.

This runs before any test module imports jax.numpy, so the device count takes effect even though
pytest imported `jax` itself earlier (devices are created lazily on first use).
"""
import os
import subprocess
import sys
import textwrap

import jax
import pytest

# GPU-marked tests opt in with LTJAX_TEST_PLATFORMS=cuda,cpu; everything else is checked on CPU.
jax.config.update("jax_platforms", os.environ.get("LTJAX_TEST_PLATFORMS", "cpu"))
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("LTJAX_TEST_CACHE", os.path.expanduser("~/.cache/ltjax/jax-tests")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


@pytest.fixture
def prepared(tmp_path):
  """A data_dir that `check_prepared` accepts (Fashion-MNIST's TFDS info file), without any data:
  for runs whose data comes from a passed-in source."""
  info = tmp_path / "tfds" / "fashion_mnist" / "3.0.1"
  info.mkdir(parents=True)
  (info / "dataset_info.json").write_text("{}")
  return str(tmp_path / "tfds")


@pytest.fixture
def lock_holder():
  """`hold(workdir) -> Popen`: another process takes `workdir`'s run lock (as a live run's
  `ltjax.checkpointing.WorkdirLock` does) and keeps it until killed or the test ends."""
  holders = []

  def hold(workdir) -> subprocess.Popen:
    from ltjax import checkpointing  # noqa: PLC0415 (conftest imports only jax up front)
    lock = os.path.join(workdir, checkpointing.LOCK_FILE)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({lock!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())
        print("locked", flush=True); time.sleep(120)""")], stdout=subprocess.PIPE, text=True)
    holders.append(holder)
    assert holder.stdout.readline().strip() == "locked"
    return holder

  yield hold
  for holder in holders:
    holder.kill()
    holder.wait()
