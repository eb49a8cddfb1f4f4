"""Process-wide JAX set-up shared by every experiment entry point (CLI, quickstart, reproduce).

Call `configure_jax()` first thing in `main`, before any JAX array or device is created: the
settings below only take effect before the backends initialise.
"""
from __future__ import annotations

import os

import jax

CACHE_ENV = "LTJAX_COMPILATION_CACHE"


def default_cache_dir() -> str:
  """`$LTJAX_COMPILATION_CACHE`, else `~/.cache/ltjax/jax` (per user, shared by all runs)."""
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "ltjax",
                                                   "jax")


def configure_jax(*, cache_dir: str | None = None) -> None:
  """Turns on the persistent compilation cache, so a second run of a recipe skips compilation.

  Args:
    cache_dir: where compiled programs are kept (default `default_cache_dir()`); "" disables it.
  """
  cache_dir = default_cache_dir() if cache_dir is None else cache_dir
  if cache_dir:
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    # Small programs too: on CPU even the evaluation step takes seconds to compile.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
