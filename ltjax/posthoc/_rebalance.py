"""GALA's Prediction Re-balancing Strategy (PRS)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ltjax import _checks
from ltjax import _domains


def rebalance(logits: jax.typing.ArrayLike, *,
              tau: float | jax.typing.ArrayLike = 1.0) -> jax.Array:
  r"""GALA's prediction re-balancing over a whole evaluation set.

  With `p = softmax(z)` row-wise and the predicted class mass `s_j = sum_i p_ij`, GALA predicts

  .. math::
    \hat y_i = \arg\max_j \frac{p_{ij}}{s_j^{\tau}}
             = \arg\max_j \left( z_{ij} - \operatorname{logsumexp}_k z_{ik} - \tau \log s_j \right),

  i.e. post-hoc logit adjustment with the prior estimated as the predicted class marginal of the
  evaluation set. The scores are returned in log space (the right-hand side), which never
  overflows or divides by an underflowed `s_j`.

  This is **transductive**: `s` is a sum over every example of the evaluation set, so the scores of
  one example depend on all the others. It cannot run batch-by-batch; gather the logits of the
  whole set first (under a batch-sharded `jax.jit` the sum over examples is a global reduction).

  Args:
    logits: `f[N, C]`, the raw model logits of the whole evaluation set (N >= 1).
    tau: the exponent, a finite scalar >= 0 (the official `pow_for_logits`; 1 in GALA's CIFAR
      configs). `tau=0` gives `log_softmax(logits)`, whose argmax is the plain argmax.

  Returns:
    `f[N, C]` scores `log(p_ij / s_j^tau)`; take their argmax.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import posthoc
    >>> jnp.set_printoptions(precision=4)
    >>> logits = jnp.array([[3.0, 1.0, 0.0], [2.0, 1.5, 0.0], [2.5, 0.0, 1.0]])
    >>> print(jnp.argmax(logits, -1), jnp.argmax(posthoc.rebalance(logits, tau=1.0), -1))
    [0 0 0] [0 1 2]

  References:
    GALA, lt-project-repository/lt-project, `norm_logits`/`pow_for_logits` (docs/methods.md §2.11).
  """
  logits = _checks.as_array(logits, "logits")
  _checks.check_floating(logits, "logits")
  tau = _checks.check_hyperparameter(tau, "tau", _domains.TAU)
  shape = jnp.shape(logits)
  if len(shape) != 2:
    raise ValueError(f"`logits` must be `[examples, classes]` for the whole evaluation set, got "
                     f"shape {shape}.")
  if shape[0] == 0:
    raise ValueError("`logits` must hold at least one example; re-balancing needs the whole set.")
  log_p = jax.nn.log_softmax(jnp.asarray(logits), axis=-1)
  log_class_mass = jax.nn.logsumexp(log_p, axis=0)
  return log_p - tau * log_class_mass
