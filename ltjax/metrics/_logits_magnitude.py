"""LOS's logits magnitude and regularized standard deviation (Label Over-Smoothing, ICLR 2025)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ltjax import _checks
from ltjax.metrics._accuracy import _check_num_classes


class _ClassLogitStats:
  """Per-class mean/std of `z_ic` on class-c examples and mean on the other examples."""

  def __init__(self, logits, labels, num_classes: int):
    _check_num_classes(num_classes)
    found = _checks.check_logits_labels(logits, labels)
    if found != num_classes:
      raise ValueError(f"`logits` have {found} classes but `num_classes` is {num_classes}.")
    logits = jnp.reshape(jnp.asarray(logits), (-1, num_classes)).astype(jnp.float32)
    positive = jax.nn.one_hot(jnp.ravel(jnp.asarray(labels)), num_classes, dtype=jnp.float32)
    negative = 1.0 - positive
    self.num_positive = jnp.sum(positive, axis=0)
    self.num_negative = jnp.sum(negative, axis=0)
    self.mean_positive = jnp.sum(positive * logits, 0) / jnp.maximum(self.num_positive, 1.0)
    self.mean_negative = jnp.sum(negative * logits, 0) / jnp.maximum(self.num_negative, 1.0)
    centred = positive * (logits - self.mean_positive)
    self.std_positive = jnp.sqrt(jnp.sum(jnp.square(centred), 0)
                                 / jnp.maximum(self.num_positive, 1.0))
    self.defined = (self.num_positive > 0) & (self.num_negative > 0)

  def magnitude(self):
    return jnp.where(self.defined, self.mean_positive - self.mean_negative, jnp.nan)


def logits_magnitude(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                     num_classes: int, normalize: bool = False) -> jax.Array:
  r"""LOS's Logits Magnitude of each class.

  .. math::
    \mathrm{LM}_c = \operatorname{mean}_{i: y_i = c} z_{ic}
                  - \operatorname{mean}_{i: y_i \ne c} z_{ic}

  the gap between the class-c logit on class-c examples and on all other examples. It is invariant
  to a per-class offset `z_ic + b_c` (the classifier bias) and scales with the logits. (It is
  *not* invariant to a per-example offset `z_ic + a_i` unless `a` has the same mean on every
  class's examples.)

  The LOS paper plots LM "after magnitude regularization using the 1-norm"; the official code does
  not contain the metric, so its scaling is inferred (docs/methods.md §7). `normalize=False` (the
  default) returns the raw `LM_c`; `normalize=True` returns `K * LM_c / sum_k |LM_k|` over the `K`
  classes where LM is defined, so the mean absolute magnitude is 1 and runs can be compared.

  Args:
    logits: `f[N, C]` (or `f[..., C]`) logits of an evaluation set.
    labels: integer `[N]` (or `[...]`) true classes.
    num_classes: C (static); must match the logits' class axis.
    normalize: see above.

  Returns:
    `f32[C]`. **NaN** for a class with no example in `labels`, or when every example is of that
    class (one of the two means does not exist).

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import metrics
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5], [1.0, 3.0, 0.0], [0.5, 0.0, 2.5]])
    >>> labels = jnp.array([0, 0, 1, 2])
    >>> print(metrics.logits_magnitude(logits, labels, num_classes=3))
    [0.25   2.5    2.6667]
    >>> print(metrics.logits_magnitude(logits, labels, num_classes=3, normalize=True))
    [0.1385 1.3846 1.4769]
  """
  magnitude = _ClassLogitStats(logits, labels, num_classes).magnitude()
  if not normalize:
    return magnitude
  defined = ~jnp.isnan(magnitude)
  l1 = jnp.sum(jnp.where(defined, jnp.abs(magnitude), 0.0))
  return magnitude * jnp.sum(defined) / l1


def regularized_std(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                    num_classes: int) -> jax.Array:
  r"""LOS's Regularized Standard Deviation of each class.

  .. math::
    \mathrm{RSD}_c = \operatorname{std}_{i: y_i = c}(z_{ic}) / \mathrm{LM}_c

  with the population standard deviation (`ddof=0`) and the raw `LM_c` of `logits_magnitude`. It
  is invariant to scaling the logits by a positive constant and to per-class offsets.

  Returns:
    `f32[C]`. **NaN** where `LM_c` is NaN (see `logits_magnitude`) or exactly 0 (the ratio has no
    value). A negative `LM_c` (a class scored lower on its own examples) gives a negative RSD.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import metrics
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5], [1.0, 3.0, 0.0], [0.5, 0.0, 2.5]])
    >>> labels = jnp.array([0, 0, 1, 2])
    >>> # class 0: std(2.0, 0.0) = 1 over LM_0 = 0.25; classes 1 and 2 have one example each
    >>> print(metrics.regularized_std(logits, labels, num_classes=3))
    [4. 0. 0.]
  """
  stats = _ClassLogitStats(logits, labels, num_classes)
  magnitude = stats.magnitude()
  usable = ~jnp.isnan(magnitude) & (magnitude != 0)
  return jnp.where(usable, stats.std_positive / jnp.where(usable, magnitude, 1.0), jnp.nan)
