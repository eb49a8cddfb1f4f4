"""Class priors estimated from training counts (Menon et al., 2021, §4)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ltjax import _checks


def class_prior(class_counts: jax.typing.ArrayLike) -> jax.Array:
  r"""The empirical class prior of a training set.

  .. math::
    \pi_c = n_c / \sum_j n_j.

  The counts are a statistic of the data, not a parameter: no gradient flows back to them.

  Args:
    class_counts: `[C]` non-negative training counts (integer or floating), at least one positive.
      Negative or all-zero counts raise `ValueError` when the counts are concrete; under `jax.jit`
      with traced counts only the shape and dtype are checked.

  Returns:
    `f32[C]` (f64 under x64) prior summing to one.
  """
  _checks.check_class_counts(class_counts, "class_counts")
  # float32, or float64 under jax_enable_x64 (float64 references match to rounding).
  counts = jax.lax.stop_gradient(
      jnp.asarray(class_counts, jax.dtypes.canonicalize_dtype(jnp.float64)))
  return counts / jnp.sum(counts)


def log_prior(class_counts: jax.typing.ArrayLike, *, eps: float = 1e-12) -> jax.Array:
  r"""The log class prior, finite for classes with no training example.

  .. math::
    \log(\pi_c + \epsilon).

  The official LA code adds its epsilon after the power, `log(pi**tau + 1e-12)`; callers here
  scale the log prior, `tau * log(pi + eps)`. The two agree at `tau = 1` and for every class whose
  prior is far above `eps`.

  Args:
    class_counts: `[C]` training counts, as in :func:`class_prior`.
    eps: positive floor added to the prior; a zero-count class gets `log(eps)` (about -27.6 for the
      default), never `-inf`.

  Returns:
    `f32[C]` (f64 under x64) log prior.
  """
  if not eps > 0:
    raise ValueError(f"`eps` must be positive so zero-count classes stay finite, got {eps}.")
  return jnp.log(class_prior(class_counts) + eps)
