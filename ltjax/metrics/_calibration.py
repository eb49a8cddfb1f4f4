"""Expected calibration error with equal-width confidence bins (Guo et al., 2017)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ltjax import _checks


def expected_calibration_error(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                               num_bins: int = 15) -> jax.Array:
  r"""ECE of the softmax confidence of the top class.

  With confidence `c_i = max_j softmax(z_i)_j`, prediction `argmax_j z_ij` and `B` equal-width bins
  `I_b = (b/B, (b+1)/B]`,

  .. math::
    \mathrm{ECE} = \sum_b \frac{|I_b|}{N} \left| \mathrm{acc}(I_b) - \mathrm{conf}(I_b) \right|
                 = \frac{1}{N} \sum_b \Big| \sum_{i \in I_b} (\mathbb 1[\hat y_i = y_i] - c_i) \Big|

  computed in the right-hand form, so an empty bin contributes 0 (no NaN). Bin counts are one-hot
  sums, valid under a batch-sharded `jax.jit`.

  Args:
    logits: `f[..., C]`.
    labels: integer `[...]` (shape of `logits` without the class axis, at least one example).
    num_bins: B (static, >= 1).

  Returns:
    `f32[]` in [0, 1].

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import metrics
    >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5], [1.0, 3.0, 0.0], [0.5, 0.0, 2.5]])
    >>> labels = jnp.array([0, 0, 1, 2])
    >>> print(round(float(metrics.expected_calibration_error(logits, labels, num_bins=5)), 4))
    0.2639
  """
  if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
    raise ValueError(f"`num_bins` must be a positive Python int, got {num_bins!r}.")
  num_classes = _checks.check_logits_labels(logits, labels)
  logits = jnp.reshape(jnp.asarray(logits), (-1, num_classes)).astype(jnp.float32)
  labels = jnp.ravel(jnp.asarray(labels))
  if logits.shape[0] == 0:
    raise ValueError("`logits` must hold at least one example.")
  probs = jax.nn.softmax(logits, axis=-1)
  confidence = jnp.max(probs, axis=-1)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  bins = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
  in_bin = jax.nn.one_hot(bins, num_bins, dtype=jnp.float32)
  gap = jnp.sum(in_bin * (correct - confidence)[:, None], axis=0)
  return jnp.sum(jnp.abs(gap)) / logits.shape[0]
