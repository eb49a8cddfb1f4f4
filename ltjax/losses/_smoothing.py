"""Label over-smoothing (LOS, ICLR 2025): cross-entropy against heavily smoothed labels."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ltjax import _checks
from ltjax import _domains
from ltjax.losses import _inputs


def label_over_smooth_loss(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                           delta: float | jax.typing.ArrayLike) -> jax.Array:
  r"""Cross-entropy against labels smoothed by `delta`.

  .. math::
    q = (1 - \delta)\,\mathrm{onehot}(y) + \delta / C, \qquad
    \ell(z, y) = -\sum_j q_j \log \mathrm{softmax}(z)_j,

  PyTorch's `CrossEntropyLoss(label_smoothing=delta)`. LOS uses it in its classifier re-training
  stage with `delta = 0.98`; `delta = 0` is plain cross-entropy. Expanding the sum,

  .. math::
    \ell(z, y) = \mathrm{CE}(z, y) + \delta\,\big(z_y - \tfrac1C \textstyle\sum_j z_j\big),

  which is what is computed (on optax's integer-label cross-entropy): it equals
  `optax.softmax_cross_entropy(z, optax.smooth_labels(onehot(y), delta))` (tested) without
  materialising the one-hot target and the full log-softmax, which made the forward+backward pass
  2-3x slower than plain CE in `experiments/bench/losses.py`.

  Args:
    logits: `f[..., C]` model scores.
    labels: `int[...]` classes in `[0, C)` (NaN losses under `jax.jit` for out-of-range labels).
    delta: smoothing, a scalar in `[0, 1]`.

  Returns:
    `f[...]` per-example losses, at least float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import losses
    >>> jnp.set_printoptions(precision=4)
    >>> logits, labels = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5]]), jnp.array([0, 2])
    >>> print(losses.label_over_smooth_loss(logits, labels, delta=0.98))
    [1.7113 1.1803]

  References:
    LOS: "Label Over-Smoothing for Long-Tailed Recognition" (Thinklab-SJTU/LOS), ICLR 2025;
    Müller et al., "When does label smoothing help?", NeurIPS 2019.
  """
  num_classes = _checks.check_logits_labels(logits, labels)
  delta = _checks.check_hyperparameter(delta, "delta", _domains.LOS_DELTA)
  logits = _inputs.upcast(logits)
  labels = jnp.asarray(labels)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  target_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  losses = ce + delta * (target_logit - jnp.mean(logits, axis=-1))
  return _inputs.nan_if_out_of_range(losses, labels, num_classes)
