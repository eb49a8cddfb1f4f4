"""Softmax focal loss (Lin et al., 2017), as in kaidic/LDAM-DRW."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ltjax import _checks
from ltjax import _domains
from ltjax.losses import _inputs


def focal_loss(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
               gamma: float | jax.typing.ArrayLike = 1.0) -> jax.Array:
  r"""Softmax focal loss: cross-entropy down-weighted on well-classified examples.

  .. math::
    \ell(z, y) = (1 - p_y)^\gamma \, \mathrm{CE}(z, y), \qquad p_y = e^{-\mathrm{CE}(z, y)}.

  optax only ships the sigmoid focal loss. `1 - p_y` is computed as `-expm1(-CE)` (accurate when
  `p_y` is near one), and the modulating factor at `p_y = 1` is taken as its limit (`0`, or `1`
  for `gamma = 0`) without differentiating `x^gamma` at zero, so gradients stay finite for every
  `gamma >= 0`. Deviation from kaidic's `FocalLoss`: there, DRW weights enter the CE before `p`
  is computed (so `p` is not a probability); here weights are applied afterwards by
  :func:`weighted_mean`.

  Args:
    logits: `f[..., C]` model scores.
    labels: `int[...]` classes in `[0, C)` (NaN losses under `jax.jit` for out-of-range labels).
    gamma: focusing parameter, a finite scalar >= 0; `gamma = 0` is plain cross-entropy (kaidic
      uses 1).

  Returns:
    `f[...]` per-example losses, at least float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import losses
    >>> jnp.set_printoptions(precision=4)
    >>> logits, labels = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5]]), jnp.array([0, 2])
    >>> print(losses.focal_loss(logits, labels, gamma=2.0))
    [0.0111 0.5665]

  References:
    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
  """
  num_classes = _checks.check_logits_labels(logits, labels)
  gamma = _checks.check_hyperparameter(gamma, "gamma", _domains.FOCAL_GAMMA)
  logits = _inputs.upcast(logits)
  labels = jnp.asarray(labels)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  one_minus_p = -jnp.expm1(-ce)
  positive = one_minus_p > 0
  safe = jnp.where(positive, one_minus_p, 1.0)
  at_zero = jnp.where(gamma == 0, 1.0, 0.0).astype(ce.dtype)
  modulating = jnp.where(positive, safe ** gamma, at_zero)
  return _inputs.nan_if_out_of_range(modulating * ce, jnp.asarray(labels), num_classes)
