"""Per-class loss weights (class-balanced, DRW) and PyTorch's weighted mean."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ltjax import _checks
from ltjax import _domains
from ltjax.losses import _inputs


def _log_beta(beta):
  """`log(beta)`, in double precision when `beta` is a Python number.

  float32(0.9999) is 0.99989998..., so `1 - beta` computed in float32 is off by 1.7e-4 relative;
  the official code computes in float64.
  """
  beta = _checks.check_hyperparameter(beta, "beta", _domains.CB_BETA)
  if isinstance(beta, (int, float)):
    return jnp.asarray(math.log(beta) if beta > 0 else -jnp.inf, _inputs.stat_dtype())
  return jnp.log(jnp.asarray(beta, _inputs.stat_dtype()))


def class_balanced_weights(class_counts: jax.typing.ArrayLike, *,
                           beta: float | jax.typing.ArrayLike = 0.9999) -> jax.Array:
  r"""Class-balanced weights from the effective number of samples.

  .. math::
    w_c \propto \frac{1 - \beta}{1 - \beta^{n_c}}, \qquad \sum_c w_c = C.

  Computed as `expm1(log beta) / expm1(n log beta)` for accuracy at `beta` near one. A zero-count
  class gets the weight of the rarest observed class (the formula is `0/0` or infinite at
  `n = 0`), and takes part in the normalisation to `C`. `beta = 0` gives all ones.

  Args:
    class_counts: `[C]` training counts (>= 0, not all zero); no gradient flows to them.
    beta: in `[0, 1)` (kaidic and CB use 0.9999).

  Returns:
    `f32[C]` (f64 under x64) positive weights summing to `C`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import losses
    >>> jnp.set_printoptions(precision=4)
    >>> print(losses.class_balanced_weights([1000, 100, 10], beta=0.999))
    [0.0422 0.28   2.6778]

  References:
    Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019.
  """
  counts = _inputs.positive_counts(class_counts, None)
  log_beta = _log_beta(beta)
  weights = jnp.expm1(log_beta) / jnp.expm1(counts * log_beta)
  return weights / jnp.sum(weights) * counts.shape[0]


def drw_weights(class_counts: jax.typing.ArrayLike, *, epoch: int | jax.typing.ArrayLike,
                start_epoch: int = 160, beta: float | jax.typing.ArrayLike = 0.9999
                ) -> jax.Array:
  r"""Deferred re-weighting: ones before `start_epoch`, class-balanced weights from then on.

  kaidic/LDAM-DRW `train_rule='DRW'` (`beta = [0, 0.9999][epoch // 160]`, epoch 0-based). `epoch`
  may be traced inside `jax.jit`; the switch is a `jnp.where`, not a Python branch.

  Args:
    class_counts: `[C]` training counts.
    epoch: current 0-based epoch (Python or traced integer scalar).
    start_epoch: first epoch with class-balanced weights, a Python integer >= 0.
    beta: as in :func:`class_balanced_weights`.

  Returns:
    `f32[C]` weights (f64 under x64).

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import losses
    >>> jnp.set_printoptions(precision=4)
    >>> counts = jnp.array([1000, 100, 10])
    >>> print(losses.drw_weights(counts, epoch=0, start_epoch=1, beta=0.999))
    [1. 1. 1.]
    >>> print(losses.drw_weights(counts, epoch=1, start_epoch=1, beta=0.999))
    [0.0422 0.28   2.6778]
  """
  if not _domains.START_EPOCH.contains(start_epoch):
    raise ValueError(f"`start_epoch` must be {_domains.START_EPOCH}, got "
                     f"{start_epoch!r}.")
  epoch = _checks.as_array(epoch, "epoch")
  _checks.check_integer(epoch, "epoch")
  if jnp.shape(epoch) != ():
    raise ValueError(f"`epoch` must be a scalar, got shape {jnp.shape(epoch)}.")
  balanced = class_balanced_weights(class_counts, beta=beta)
  return jnp.where(jnp.asarray(epoch) >= start_epoch, balanced, jnp.ones_like(balanced))


def weighted_mean(losses: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                  class_weights: jax.typing.ArrayLike) -> jax.Array:
  r"""Batch mean with per-class weights, as PyTorch's `F.cross_entropy(weight=w)`.

  .. math::
    \bar\ell = \frac{\sum_i w_{y_i} \ell_i}{\sum_i w_{y_i}}

  (not divided by the batch size). The weights are constants: no gradient flows to them.

  Args:
    losses: `f[...]` per-example losses.
    labels: `int[...]` classes, same shape as `losses`.
    class_weights: `f[C]` per-class weights.

  Returns:
    scalar weighted mean.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import losses
    >>> per_example, labels = jnp.array([0.5, 1.0, 2.0]), jnp.array([0, 0, 1])
    >>> mean = losses.weighted_mean(per_example, labels, class_weights=jnp.array([1.0, 3.0]))
    >>> print(f"{float(mean):.4f}")  # (0.5 + 1.0 + 3 * 2.0) / (1 + 1 + 3)
    1.5000
  """
  _checks.check_floating(losses, "losses")
  _checks.check_integer(labels, "labels")
  _checks.check_floating(class_weights, "class_weights")
  _checks.check_class_vector(class_weights, "class_weights")
  if jnp.shape(losses) != jnp.shape(labels):
    raise ValueError(f"`losses` shape {jnp.shape(losses)} must equal `labels` shape "
                     f"{jnp.shape(labels)}.")
  _checks.check_labels_in_range(labels, jnp.shape(class_weights)[0])
  losses = jnp.asarray(losses)
  weights = _inputs.at_labels(_inputs.constant(class_weights, losses.dtype), jnp.asarray(labels))
  return jnp.sum(weights * losses) / jnp.sum(weights)
