"""Label over-smoothing (LOS, ICLR 2025): cross-entropy against heavily smoothed labels."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ltjax import _checks
from ltjax.losses import _inputs


def label_over_smooth_loss(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                           delta: float | jax.typing.ArrayLike) -> jax.Array:
  r"""Cross-entropy against labels smoothed by `delta`.

  .. math::
    q = (1 - \delta)\,\mathrm{onehot}(y) + \delta / C, \qquad
    \ell(z, y) = -\sum_j q_j \log \mathrm{softmax}(z)_j,

  PyTorch's `CrossEntropyLoss(label_smoothing=delta)`, computed with `optax.smooth_labels` and
  `optax.softmax_cross_entropy`. LOS uses it in its classifier re-training stage with
  `delta = 0.98`; `delta = 0` is plain cross-entropy.

  Args:
    logits: `f[..., C]` model scores.
    labels: `int[...]` classes in `[0, C)` (NaN losses under `jax.jit` for out-of-range labels,
      where the one-hot target would otherwise silently be all zeros).
    delta: smoothing in `[0, 1]`.

  Returns:
    `f[...]` per-example losses, at least float32.

  References:
    LOS: "Label Over-Smoothing for Long-Tailed Recognition" (Thinklab-SJTU/LOS), ICLR 2025;
    Müller et al., "When does label smoothing help?", NeurIPS 2019.
  """
  num_classes = _checks.check_logits_labels(logits, labels)
  logits = _inputs.upcast(logits)
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes, dtype=logits.dtype), delta)
  losses = optax.softmax_cross_entropy(logits, targets)
  return _inputs.nan_if_out_of_range(losses, jnp.asarray(labels), num_classes)
