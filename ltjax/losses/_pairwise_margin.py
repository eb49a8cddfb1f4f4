"""The LA paper's general pairwise-margin loss (Menon et al., 2021, eq. 11)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ltjax import _checks
from ltjax.losses import _inputs


def _check_finite(x, name: str) -> None:
  value = _checks.concrete_value(x)
  if value is not None and not np.all(np.isfinite(value)):
    raise ValueError(f"`{name}` must be finite, got {value.tolist()}.")


def pairwise_margin_loss(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                         margins: jax.typing.ArrayLike,
                         class_weights: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Weighted softmax loss with a margin for every (label, class) pair.

  .. math::
    \ell(z, y) = w_y \log\Big(1 + \sum_{j \ne y} e^{\Delta_{yj} + z_j - z_y}\Big),

  computed as `w_y * CE(z + Delta[y] with Delta[y, y] := 0, y)`. Only the row `Delta[y]` of each
  example is gathered, so memory is O(B * C), never O(B * C * C). Special cases:
  `Delta[y, j] = tau * (log pi_j - log pi_y)` is the logit-adjusted loss, `Delta = 0` with CB
  weights is class-balanced CE, and `w_y = 1 / pi_y` gives the balanced-error surrogate.

  Args:
    logits: `f[..., C]` model scores.
    labels: `int[...]` classes in `[0, C)` (NaN losses under `jax.jit` for out-of-range labels).
    margins: `f[C, C]` pairwise margins `Delta[y, j]`; the diagonal is ignored. Constant (no
      gradient flows to it).
    class_weights: `f[C]` per-class weights `w_y`, default ones. Constant.

  Returns:
    `f[...]` per-example losses, at least float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import losses, priors
    >>> logits, labels = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5]]), jnp.array([0, 2])
    >>> log_pi = priors.log_prior(jnp.array([100, 10, 1]))
    >>> margins = log_pi[None, :] - log_pi[:, None]  # Delta[y, j] = log pi_j - log pi_y
    >>> la = losses.logit_adjusted_loss(logits, labels, log_prior=log_pi, tau=1.0)
    >>> bool(jnp.allclose(losses.pairwise_margin_loss(logits, labels, margins=margins), la,
    ...                   atol=1e-6))
    True

  References:
    Menon et al., "Long-tail learning via logit adjustment", ICLR 2021, eq. (11).
  """
  num_classes = _checks.check_logits_labels(logits, labels)
  _checks.check_floating(margins, "margins")
  margins = _checks.as_array(margins, "margins")
  if jnp.shape(margins) != (num_classes, num_classes):
    raise ValueError(f"`margins` must have shape (C, C) = {(num_classes, num_classes)}, got "
                     f"{jnp.shape(margins)}.")
  _check_finite(margins, "margins")
  if class_weights is not None:
    class_weights = _checks.as_array(class_weights, "class_weights")
    _checks.check_floating(class_weights, "class_weights")
    _checks.check_class_vector(class_weights, "class_weights", num_classes)
    _check_finite(class_weights, "class_weights")
  logits = _inputs.upcast(logits)
  labels = jnp.asarray(labels)
  row = _inputs.at_labels(_inputs.constant(margins, logits.dtype), labels)
  is_target = labels[..., None] == jnp.arange(num_classes)
  adjusted = logits + jnp.where(is_target, 0.0, row)
  losses = optax.softmax_cross_entropy_with_integer_labels(adjusted, labels)
  if class_weights is not None:
    losses = _inputs.at_labels(_inputs.constant(class_weights, losses.dtype), labels) * losses
  return _inputs.nan_if_out_of_range(losses, labels, num_classes)
