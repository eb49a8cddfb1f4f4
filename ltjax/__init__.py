"""ltjax: long-tailed classification in JAX.

The pure numerics (`ltjax.priors`, `ltjax.losses`, `ltjax.posthoc`, `ltjax.metrics`) depend on jax,
numpy and optax only. The heavier layers (`ltjax.data`, `ltjax.models`, `ltjax.train`) are imported
on first access so that `import ltjax` stays cheap for users who only want a loss: `pip install
ltjax` installs only what the numerics and the testing kit need, and the `train` and `data` extras
bring Flax, Orbax, TFDS and grain.

A loss of the logits shifted by the log class prior, and the same prior subtracted after training
(with equal logits the rarest class wins):

>>> import jax.numpy as jnp
>>> from ltjax import losses, posthoc, priors
>>> log_pi = priors.log_prior(jnp.array([900, 90, 10]))
>>> loss = losses.logit_adjusted_loss(jnp.zeros((2, 3)), jnp.array([0, 2]), log_prior=log_pi)
>>> [round(float(v), 3) for v in loss]
[0.105, 4.605]
>>> int(jnp.argmax(posthoc.adjust_logits(jnp.zeros(3), log_prior=log_pi)))
2
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
