"""Kang et al.'s tau-normalised classifier weights."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ltjax import _checks
from ltjax import _domains


def tau_normalize(kernel: jax.typing.ArrayLike, *,
                  tau: float | jax.typing.ArrayLike) -> jax.Array:
  r"""Divides each class column of a classifier kernel by its L2 norm to the power `tau`.

  .. math::
    \tilde W_{:, c} = W_{:, c} / \lVert W_{:, c} \rVert_2^{\tau}

  `tau=0` is the identity and `tau=1` gives unit-norm columns. The official `tau_norm.py` (Kang et
  al.; identical in GALA and BALMS) also drops the classifier bias; that is the caller's choice here
  (`ltjax.models.tau_normalized_params` drops it, the LA paper's synthetic baseline keeps it).

  A column of zeros has no direction: it is returned as zeros (its norm is replaced by 1), rather
  than as `0 / 0 = NaN`, and its gradient stays finite.

  Args:
    kernel: `f[D, C]`, Flax `Dense` layout (one column per class).
    tau: the exponent, a finite scalar >= 0 (Python or traced).

  Returns:
    `f[D, C]`, the normalised kernel.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import posthoc
    >>> jnp.set_printoptions(precision=4)
    >>> kernel = jnp.array([[3.0, 0.0], [4.0, 0.5]])
    >>> print(jnp.linalg.norm(posthoc.tau_normalize(kernel, tau=1.0), axis=0))
    [1. 1.]

  References:
    Kang et al., "Decoupling representation and classifier for long-tailed recognition",
    ICLR 2020.
  """
  kernel = _checks.as_array(kernel, "kernel")
  _checks.check_floating(kernel, "kernel")
  tau = _checks.check_hyperparameter(tau, "tau", _domains.TAU)
  shape = jnp.shape(kernel)
  if len(shape) != 2:
    raise ValueError(f"`kernel` must be 2-D `[features, classes]` (Flax Dense layout), got shape "
                     f"{shape}.")
  kernel = jnp.asarray(kernel)
  squared_norm = jnp.sum(jnp.square(kernel), axis=0)
  # Double `where`: keeps both the value and the gradient of an all-zero column finite.
  safe_squared_norm = jnp.where(squared_norm > 0, squared_norm, 1.0)
  return kernel / safe_squared_norm ** (0.5 * tau)
