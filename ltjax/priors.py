"""Class priors estimated from training counts (Menon et al., 2021, §4)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ltjax import _checks
from ltjax import _domains


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

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import priors
    >>> jnp.set_printoptions(precision=4)
    >>> print(priors.class_prior([6, 3, 1]))
    [0.6 0.3 0.1]
  """
  class_counts = _checks.as_array(class_counts, "class_counts")
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

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import priors
    >>> jnp.set_printoptions(precision=4)
    >>> print(priors.log_prior([1000, 100, 10]))
    [-0.1044 -2.4069 -4.7095]
  """
  if not _domains.EPS.contains(eps):
    raise ValueError(f"`eps` must be {_domains.EPS} so that zero-count classes stay finite, got "
                     f"{eps!r}.")
  return jnp.log(class_prior(class_counts) + eps)
