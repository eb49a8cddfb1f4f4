"""Post-hoc logit adjustment (Menon et al., 2021, eq. 9)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ltjax import _checks
from ltjax import _domains
from ltjax import priors


def adjust_logits(logits: jax.typing.ArrayLike, *, log_prior: jax.typing.ArrayLike | None = None,
                  tau: float | jax.typing.ArrayLike = 1.0,
                  class_counts: jax.typing.ArrayLike | None = None) -> jax.Array:
  r"""Subtracts the scaled log class prior from the logits of a model trained with plain CE.

  .. math::
    \tilde z_{ij} = z_{ij} - \tau \log \pi_j, \qquad \hat y_i = \arg\max_j \tilde z_{ij}.

  With `tau=1` and the training prior, `argmax` of the result estimates the balanced-error Bayes
  rule `argmax_j p(x | j)` when `softmax(z)` estimates `p(j | x)`.

  Deviation from the official code: google-research `logit_adjustment` computes
  `z - log(pi**tau + 1e-12)`; this is `z - tau * log_prior`, with the epsilon (if any) already in
  `log_prior` (`ltjax.priors.log_prior(counts)` uses `log(pi + 1e-12)`). The two are equal at
  `tau = 1` and differ where `pi**tau` nears 1e-12 (at `tau = 2`, 0.047 on iNat18's rarest class,
  2 of 437,513); the registry's `la_posthoc` passes the official shift with `tau = 1`.

  Args:
    logits: `f[..., C]` scores of the unadjusted model.
    log_prior: `f[C]`, the log class prior of the training set. A concrete prior passed here
      instead of its log (values in [0, 1] summing to 1) warns.
    tau: the scaling `tau` >= 0, finite (`ltjax._domains.TAU`): a Python or traced scalar, or
      `[C]` per class; `tau=0` returns `logits` unchanged. Concrete values outside the domain
      raise `ValueError`.
    class_counts: `[C]` training counts, instead of `log_prior`
      (`log_prior=ltjax.priors.log_prior(class_counts)`); give exactly one of the two.

  Returns:
    `f[..., C]` adjusted logits, to be used for prediction only.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import posthoc
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[2.0, 1.0, 0.0]])
    >>> print(posthoc.adjust_logits(logits, class_counts=jnp.array([100, 10, 1])))
    [[2.1044 3.4069 4.7095]]

  References:
    Menon et al., "Long-tail learning via logit adjustment", ICLR 2021.
  """
  logits = _checks.as_array(logits, "logits")
  _checks.check_floating(logits, "logits")
  if len(jnp.shape(logits)) < 1:
    raise ValueError("`logits` must have a class axis, got a scalar.")
  num_classes = jnp.shape(logits)[-1]
  if (log_prior is None) == (class_counts is None):
    raise TypeError("Give exactly one of `log_prior=` (e.g. `ltjax.priors.log_prior(counts)`) and "
                    "`class_counts=`" + (", not both." if log_prior is not None else "."))
  if class_counts is not None:
    _checks.check_class_counts(class_counts, "class_counts", num_classes)
    log_prior = priors.log_prior(class_counts)
  log_prior = _checks.as_array(log_prior, "log_prior")
  _checks.check_floating(log_prior, "log_prior")
  _checks.check_class_vector(log_prior, "log_prior", num_classes)
  _checks.warn_if_prior(log_prior)
  tau = _checks.check_hyperparameter(tau, "tau", _domains.TAU, per_class=num_classes)
  return jnp.asarray(logits) - tau * jnp.asarray(log_prior)
