"""Process-wide JAX set-up shared by every experiment entry point (CLI, quickstart, reproduce).

Call `configure_jax()` first thing in `main`, before any JAX array or device is created: the
settings below only take effect before the backends initialise.

What it turns on (each is the default of the entry points, each can be overridden):
- the persistent compilation cache (`$LTJAX_COMPILATION_CACHE`, else `~/.cache/ltjax/jax`), so a
  second run of a recipe starts training within seconds;
- on CPU, the number of virtual CPU devices the batch is split over (`$LTJAX_CPU_DEVICES`,
  default `DEFAULT_CPU_DEVICES`, reduced to divide the batch): the same global batch and the same
  maths (the data mesh all-reduces gradients and BatchNorm statistics).
"""
from __future__ import annotations

import os

import jax

CACHE_ENV = "LTJAX_COMPILATION_CACHE"
CPU_DEVICES_ENV = "LTJAX_CPU_DEVICES"

# Virtual CPU devices the batch is split over by default. Splitting ResNet-32's batch of 128 over
# 8 devices ran its step faster on 2 cores (experiments/results/bench_train.md), but it is not
# the default: with jaxlib 0.10, whole CLI runs on 8 CPU devices aborted here, repeatedly, on
# XLA:CPU's 40 s all-reduce rendezvous timeout ("Expected 8 threads to join the rendezvous, but
# only 4 of them arrived"), with asynchronous and with synchronous dispatch. XLA's CPU pool has
# max(cores, devices) threads and a device's share of an all-reduce blocks one of them, so any
# work queued behind it can starve the rendezvous. `LTJAX_CPU_DEVICES=8` opts in.
DEFAULT_CPU_DEVICES = 1


def default_cache_dir() -> str:
  """`$LTJAX_COMPILATION_CACHE`, else `~/.cache/ltjax/jax` (per user, shared by all runs)."""
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "ltjax",
                                                   "jax")


def cpu_device_count(batch_size: int | None = None) -> int:
  """Virtual CPU devices for a run: `$LTJAX_CPU_DEVICES`, else `DEFAULT_CPU_DEVICES`, reduced to
  the largest count that divides `batch_size` (when given), so that every recipe's batch splits
  evenly."""
  count = int(os.environ.get(CPU_DEVICES_ENV) or DEFAULT_CPU_DEVICES)
  if count < 1:
    raise ValueError(f"${CPU_DEVICES_ENV} must be >= 1, got {count}.")
  if batch_size:
    count = max(d for d in range(1, count + 1) if batch_size % d == 0)
  return count


def _user_set_cpu_devices() -> bool:
  """Whether the user already chose the CPU device count (jax config / env, or the XLA flag)."""
  # jax declares its config options at run time; pyright sees no such attribute.
  chosen = jax.config.jax_num_cpu_devices  # pyright: ignore[reportAttributeAccessIssue]
  return (chosen != -1 or "JAX_NUM_CPU_DEVICES" in os.environ
          or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""))


def configure_jax(*, cache_dir: str | None = None, batch_size: int | None = None,
                  cpu_defaults: bool = True) -> None:
  """Turns on the persistent compilation cache and the CPU defaults (see the module docstring).

  Args:
    cache_dir: where compiled programs are kept (default `default_cache_dir()`); "" disables it.
    batch_size: the run's global batch; the CPU device count is chosen to divide it.
    cpu_defaults: split the batch over `cpu_device_count(batch_size)` virtual CPU devices (one
      unless `$LTJAX_CPU_DEVICES` says otherwise). This only acts on the CPU backend (an
      accelerator's devices are unchanged) and gives way to the user's own
      `jax_num_cpu_devices` / `$JAX_NUM_CPU_DEVICES` / `--xla_force_host_platform_device_count`.
  """
  cache_dir = default_cache_dir() if cache_dir is None else cache_dir
  if cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    # Small programs too: on CPU even the evaluation step takes seconds to compile.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  if cpu_defaults and not _user_set_cpu_devices():
    jax.config.update("jax_num_cpu_devices", cpu_device_count(batch_size))
