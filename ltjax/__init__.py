"""ltjax: long-tailed classification in JAX.

The pure numerics (`ltjax.priors`, `ltjax.losses`, `ltjax.posthoc`, `ltjax.metrics`) depend on jax,
numpy and optax only. The heavier layers (`ltjax.data`, `ltjax.models`, `ltjax.train`) are imported
on first access so that `import ltjax` stays cheap for users who only want a loss.
"""
import importlib

__version__ = "0.1.0"

_SUBMODULES = ("priors", "losses", "posthoc", "metrics", "data", "models", "train", "checkpointing",
               "testing")


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"ltjax.{name}")
  raise AttributeError(f"module 'ltjax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_SUBMODULES))
