"""Test-wide JAX set-up: 8 simulated CPU devices and a persistent compilation cache.

This runs before any test module imports jax.numpy, so the device count takes effect even though
pytest imported `jax` itself earlier (devices are created lazily on first use).
"""
import os

import jax

# GPU-marked tests opt in with LTJAX_TEST_PLATFORMS=cuda,cpu; everything else is checked on CPU.
jax.config.update("jax_platforms", os.environ.get("LTJAX_TEST_PLATFORMS", "cpu"))
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("LTJAX_TEST_CACHE", os.path.expanduser("~/.cache/ltjax/jax-tests")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
