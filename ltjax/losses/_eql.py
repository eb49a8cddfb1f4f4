"""Softmax equalization loss v1 (Tan et al., 2020), as in the BALMS/GALA code."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ltjax import _checks
from ltjax.losses import _inputs


def equalization_loss(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                      class_counts: jax.typing.ArrayLike, key: jax.Array,
                      threshold: float = 5e-3, gamma: float = 0.9) -> jax.Array:
  r"""Cross-entropy with rare negative classes randomly dropped from the softmax denominator.

  .. math::
    T_j = [n_j / N < \lambda], \quad \beta_{ij} \sim \mathrm{Bernoulli}(\gamma), \quad
    \ell_i = -z_{iy} + \log \sum_{j:\ \neg(\beta_{ij} T_j [j \ne y_i])} e^{z_{ij}}.

  A fresh Bernoulli draw per (example, class) comes from `key`; the target is never dropped, so
  every row keeps at least one term. As in the official `EQV1SoftmaxLoss` (which adds
  `log(w) = -inf`), dropped logits become `-inf`, but by `jnp.where` rather than by addition, so
  their gradient is exactly zero instead of NaN. (optax's `where=` mask gives the same value but
  was 1.2-1.5x slower in `experiments/bench/losses.py`.) Most of this loss's cost is the `B x C`
  Bernoulli draw itself (threefry on CPU: several times a cross-entropy pass).

  Args:
    logits: `f[..., C]` model scores.
    labels: `int[...]` classes in `[0, C)` (NaN losses under `jax.jit` for out-of-range labels).
    class_counts: `[C]` training counts (>= 0, not all zero); no gradient flows to them.
    key: a PRNG key; split it every step.
    threshold: frequency `lambda` below which a class is rare.
    gamma: probability of dropping a rare negative class.

  Returns:
    `f[...]` per-example losses, at least float32.

  References:
    Tan et al., "Equalization Loss for Long-Tailed Object Recognition", CVPR 2020.
  """
  num_classes = _checks.check_logits_labels(logits, labels)
  _checks.check_class_counts(class_counts, "class_counts", num_classes)
  logits = _inputs.upcast(logits)
  labels = jnp.asarray(labels)
  counts = _inputs.constant(class_counts, jnp.float32)
  rare = counts / jnp.sum(counts) < threshold
  drawn = jax.random.bernoulli(key, gamma, logits.shape)
  is_target = labels[..., None] == jnp.arange(num_classes)
  dropped = drawn & rare & ~is_target
  masked = jnp.where(dropped, -jnp.inf, logits)
  losses = optax.softmax_cross_entropy_with_integer_labels(masked, labels)
  return _inputs.nan_if_out_of_range(losses, labels, num_classes)
