"""A stateful loss (optax-style init/loss/update triple, e.g. GALA) as a per-example loss."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def stateful_per_example(init: Callable, loss: Callable, update: Callable) -> Callable:
  """Wraps `init(num_classes) -> state`, `loss(logits, labels, state) -> f[B]` and
  `update(state, logits, labels) -> state` into `loss_fn(logits, labels, *, class_counts)`.

  The state is the one a single `update` would leave after a batch with class frequencies
  `pi = counts / sum(counts)` and zero logits (a fresh model): `init` plus, per class c, `pi_c`
  times the change that one example of class c makes. This is exactly that batch's update for a
  state that sums per-example contributions (GALA's accumulators), it depends on the counts
  smoothly and equivariantly, and it is gradient-free (the counts go through `stop_gradient`, as
  a training step treats its loss state). Bind hyperparameters with `functools.partial` first.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ltjax import losses, testing
    >>> gala = testing.stateful_per_example(losses.gala_init, losses.gala_loss, losses.gala_update)
    >>> logits, labels = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5]]), jnp.array([0, 2])
    >>> per_example = jax.jit(gala)(logits, labels, class_counts=jnp.array([100, 10, 1]))
    >>> print(per_example.shape, bool(jnp.all(per_example > 0)))
    (2,) True
  """
  def loss_fn(logits, labels, *, class_counts):
    logits = jnp.asarray(logits)
    num_classes = logits.shape[-1]
    counts = jax.lax.stop_gradient(jnp.asarray(class_counts, jnp.float32))
    weights = counts / jnp.sum(counts)
    initial = init(num_classes)
    # One single-example update per class, from zero logits.
    per_class = jax.vmap(lambda c: update(initial, jnp.zeros((1, num_classes), jnp.float32),
                                          c[None]))(jnp.arange(num_classes, dtype=jnp.int32))
    state = jax.tree.map(
        lambda s0, s: (s0 + jnp.tensordot(weights, s - s0, axes=1)).astype(jnp.asarray(s0).dtype),
        initial, per_class)
    return loss(logits, labels, state)
  return loss_fn
