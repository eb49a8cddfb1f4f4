"""Preparation of loss inputs: the compute dtype of logits, class statistics as constants."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ltjax import _checks


def upcast(logits: jax.typing.ArrayLike) -> jax.Array:
  """Returns `logits` in at least float32.

  bfloat16 has an 8-bit mantissa: a logsumexp over 1000 classes, or a logit plus a log prior of
  -9, loses most of its digits. Every loss therefore computes in float32 (float64 stays float64);
  the loss comes back in that dtype and the gradient is cast back to the logits' dtype by autodiff.
  """
  logits = jnp.asarray(logits)
  return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def stat_dtype():
  """The dtype class statistics (counts, margins, weights, priors) are computed in: float32, or
  float64 when `jax_enable_x64` is on (so float64 runs match float64 references to ~1e-15)."""
  return jax.dtypes.canonicalize_dtype(jnp.float64)


def constant(statistic: jax.typing.ArrayLike, dtype) -> jax.Array:
  """A class statistic (counts, prior, margins, weights) as a gradient-free array of `dtype`."""
  return jax.lax.stop_gradient(jnp.asarray(statistic).astype(dtype))


def positive_counts(class_counts: jax.typing.ArrayLike, num_classes: int | None,
                    dtype=None) -> jax.Array:
  """Validated counts with every zero raised to the smallest positive count.

  Count-based margins and weights (`n^(-1/4)`, `1 / log(n / min n + 1)`, `1 / (1 - beta^n)`)
  diverge at `n = 0`. A class with no training example never appears as a label, so its own
  margin or weight is never used; giving it the rarest observed class's value keeps every output
  finite and leaves the other classes' values unchanged (class-balanced weights are renormalised
  over all C classes, so there the zero-count class does take a share of the sum).
  """
  _checks.check_class_counts(class_counts, "class_counts", num_classes)
  counts = constant(class_counts, stat_dtype() if dtype is None else dtype)
  smallest = jnp.min(jnp.where(counts > 0, counts, jnp.inf))
  return jnp.where(counts > 0, counts, smallest)


def nan_if_out_of_range(losses: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """Marks losses of out-of-range labels as NaN.

  Eagerly such labels raise; under `jax.jit` their values are unknown at trace time. optax's
  integer-label cross-entropy already returns NaN for them (its gather fills with NaN); losses
  built on one-hot targets call this so that the answer is NaN everywhere, never a finite number.
  """
  in_range = (labels >= 0) & (labels < num_classes)
  return jnp.where(in_range, losses, jnp.nan)


def at_labels(per_class: jax.Array, labels: jax.Array) -> jax.Array:
  """`per_class[labels]`: a per-class statistic (or a row of a `[C, C]` one) at each label.

  The result takes the labels' sharding. Under a mesh with explicit axes, plain indexing of a
  replicated per-class array by batch-sharded labels cannot infer the output sharding and raises.
  """
  return per_class.at[labels].get(out_sharding=jax.typeof(labels).sharding)
