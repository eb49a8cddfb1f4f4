"""Logit-adjusted cross-entropy (Menon et al., 2021) and Balanced Softmax (Ren et al., 2020)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ltjax import _checks
from ltjax import _domains
from ltjax import priors
from ltjax.losses import _inputs
from ltjax.losses import _softmax


def logit_adjusted_loss(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                        log_prior: jax.typing.ArrayLike | None = None,
                        tau: float | jax.typing.ArrayLike = 1.0,
                        class_counts: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Softmax cross-entropy of prior-shifted logits (the LA loss).

  .. math::
    \ell(z, y) = -\log \frac{e^{z_y + \tau \log \pi_y}}{\sum_j e^{z_j + \tau \log \pi_j}}
              = \log\Big(1 + \sum_{j \ne y} (\pi_j / \pi_y)^\tau e^{z_j - z_y}\Big).

  Deviation from the official code (google-research `logit_adjustment`, which shifts by
  `log(pi**tau + 1e-12)`): the shift here is `tau * log_prior`, with any epsilon inside
  `log_prior`; the two are equal at `tau = 1` and differ where `pi**tau` nears 1e-12 (at
  `tau = 2`, 0.047 on iNat18's rarest class). The registry's `la_loss` passes the official shift
  as `log_prior` with `tau = 1` (ltjax/train/_methods.py).

  Args:
    logits: `f[..., C]` model scores (bfloat16 is computed in float32).
    labels: `int[...]` classes in `[0, C)`. Eagerly, out-of-range labels raise `ValueError`;
      under `jax.jit` they give NaN losses.
    log_prior: `f[C]` log class prior, e.g. `ltjax.priors.log_prior(counts)`; no gradient flows
      to it. A concrete prior passed here instead of its log (values in [0, 1] summing to 1)
      warns.
    tau: temperature of the adjustment, >= 0 and finite (`ltjax._domains.TAU`): a scalar, or
      `[C]` for one temperature per class; `tau = 0` is plain cross-entropy. A concrete value
      outside the domain raises `ValueError`; a traced one is checked for shape only.
    class_counts: `[C]` training counts, the keyword every ltjax loss accepts: the same as
      `log_prior=ltjax.priors.log_prior(class_counts)`. Give exactly one of the two.

  Returns:
    `f[...]` per-example losses, at least float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import losses, priors
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5]])
    >>> labels = jnp.array([0, 2])
    >>> counts = jnp.array([100, 10, 1])
    >>> print(losses.logit_adjusted_loss(logits, labels, class_counts=counts))
    [0.0226 4.3585]
    >>> print(losses.logit_adjusted_loss(logits, labels, log_prior=priors.log_prior(counts),
    ...                                  tau=0.0))
    [0.2413 1.1803]

  References:
    Menon et al., "Long-tail learning via logit adjustment", ICLR 2021, eq. (10).
  """
  num_classes = _checks.check_logits_labels(logits, labels)
  log_prior = _log_prior_or_counts(log_prior, class_counts, num_classes)
  tau = _checks.check_hyperparameter(tau, "tau", _domains.TAU, per_class=num_classes)
  logits = _inputs.upcast(logits)
  labels = jnp.asarray(labels)
  shift = _inputs.constant(log_prior, logits.dtype) * tau
  losses = shifted_cross_entropy(logits, labels, shift)
  return _inputs.nan_if_out_of_range(losses, labels, num_classes)


def _log_prior_or_counts(log_prior, class_counts, num_classes: int) -> jax.Array:
  """The validated log prior from exactly one of `log_prior=` / `class_counts=`."""
  if (log_prior is None) == (class_counts is None):
    raise TypeError("Give exactly one of `log_prior=` (e.g. `ltjax.priors.log_prior(counts)`) and "
                    "`class_counts=`" + (", not both." if log_prior is not None else "."))
  if class_counts is not None:
    _checks.check_class_counts(class_counts, "class_counts", num_classes)
    return priors.log_prior(class_counts)
  log_prior = _checks.as_array(log_prior, "log_prior")
  _checks.check_floating(log_prior, "log_prior")
  _checks.check_class_vector(log_prior, "log_prior", num_classes)
  _checks.warn_if_prior(log_prior)
  return jnp.asarray(log_prior)


def shifted_cross_entropy(logits: jax.Array, labels: jax.Array, shift: jax.Array) -> jax.Array:
  r"""`optax.softmax_cross_entropy_with_integer_labels(logits + shift, labels)`, one pass fewer.

  .. math::
    \ell = \mathrm{lse}(z + b) - (z_y + b_y), \qquad
    \max(z_y + b_y,\ \max z + \min b) \le \max(z + b) \le \max z + \max b.

  The stabiliser of the log-sum-exp is the upper bound (see `_softmax.bounded_logsumexp`), so
  `z + b` is never materialised for a max reduction; the certified gap is at most
  `max b - min b` (4.6 for a log prior at imbalance ratio 100), so the exact-max fallback only
  runs for extreme shifts. Same value and gradient as optax's CE of the shifted logits, up to
  rounding (checked in the tests).

  Args:
    logits: `f[..., C]` logits, already upcast.
    labels: `int[...]` labels.
    shift: `f[C]` per-class shift `b`.

  Returns:
    `f[...]` per-example losses (NaN-marking of out-of-range labels is the caller's).
  """
  target = (jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
            + _inputs.at_labels(shift, labels))
  row_max = jnp.max(logits, axis=-1)
  lower = jnp.maximum(target, row_max + jnp.min(shift))
  upper = row_max + jnp.max(shift)
  lse = _softmax.bounded_logsumexp(lambda: logits + shift, lower=lower, upper=upper)
  return lse - target


def balanced_softmax_loss(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                          class_counts: jax.typing.ArrayLike) -> jax.Array:
  r"""Balanced Softmax: cross-entropy of `logits + log(counts)`.

  .. math::
    \ell(z, y) = -\log \frac{n_y e^{z_y}}{\sum_j n_j e^{z_j}}.

  Softmax cross-entropy ignores a per-row constant, so shifting by `log n_j` or by
  `log(n_j / N)` gives the same loss: this is :func:`logit_adjusted_loss` with `tau = 1` on
  `ltjax.priors.log_prior(class_counts)`, which is how it is computed. Deviation from the official
  code (BALMS `BalancedSoftmaxLoss`, raw `log(counts)`): the prior carries the `1e-12` floor of
  `log_prior`, so a zero-count class gets a finite shift `log(1e-12)` instead of `-inf`.

  Args:
    logits: `f[..., C]` model scores.
    labels: `int[...]` classes in `[0, C)`.
    class_counts: `[C]` training counts (>= 0, not all zero); no gradient flows to them.

  Returns:
    `f[...]` per-example losses, at least float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import losses
    >>> jnp.set_printoptions(precision=4)
    >>> logits, labels = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5]]), jnp.array([0, 2])
    >>> print(losses.balanced_softmax_loss(logits, labels, class_counts=jnp.array([100, 10, 1])))
    [0.0226 4.3585]

  References:
    Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition", NeurIPS 2020.
  """
  num_classes = _checks.check_logits_labels(logits, labels)
  _checks.check_class_counts(class_counts, "class_counts", num_classes)
  return logit_adjusted_loss(logits, labels, log_prior=priors.log_prior(class_counts), tau=1.0)
