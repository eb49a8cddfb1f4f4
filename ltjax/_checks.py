"""Trace-time argument validation shared by the pure numerics.

Shape and dtype checks run on abstract values, so they fire under `jax.jit`, `jax.vmap` and
`jax.grad` alike. Value checks (negative counts, out-of-range labels) need concrete data: they run
when the argument is a NumPy array, a Python sequence or a committed (non-traced) `jax.Array`, and
are skipped for tracers, where the value is unknown until run time.
"""
from __future__ import annotations

import jax
import jax.core
import jax.numpy as jnp
import numpy as np


def concrete_value(x) -> np.ndarray | None:
  """Returns `x` as a NumPy array when its value is known at trace time, else None."""
  if isinstance(x, jax.core.Tracer):
    return None
  return np.asarray(x)


def check_floating(x, name: str) -> None:
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"`{name}` must have a floating dtype, got {dtype}.")


def check_integer(x, name: str) -> None:
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"`{name}` must have an integer dtype (class indices), got {dtype}.")


def check_logits_labels(logits, labels, *, logits_name: str = "logits") -> int:
  """Checks `logits f[..., C]` against integer `labels [...]`; returns C."""
  check_floating(logits, logits_name)
  check_integer(labels, "labels")
  logits_shape, labels_shape = jnp.shape(logits), jnp.shape(labels)
  if len(logits_shape) < 1:
    raise ValueError(f"`{logits_name}` must have a class axis, got a scalar.")
  if labels_shape != logits_shape[:-1]:
    raise ValueError(
        f"`labels` shape {labels_shape} must equal `{logits_name}` shape without its class axis "
        f"{logits_shape[:-1]}."
    )
  num_classes = logits_shape[-1]
  check_labels_in_range(labels, num_classes)
  return num_classes


def check_labels_in_range(labels, num_classes: int) -> None:
  value = concrete_value(labels)
  if value is not None and value.size and (value.min() < 0 or value.max() >= num_classes):
    raise ValueError(
        f"`labels` must lie in [0, {num_classes}), got values in [{value.min()}, {value.max()}]."
    )


def check_class_vector(x, name: str, num_classes: int | None = None) -> None:
  """Checks a per-class statistic: 1-D, and of length C when C is given."""
  shape = jnp.shape(x)
  if len(shape) != 1:
    raise ValueError(f"`{name}` must be 1-D with one entry per class, got shape {shape}.")
  if num_classes is not None and shape[0] != num_classes:
    raise ValueError(
        f"`{name}` has {shape[0]} entries but the logits have {num_classes} classes."
    )


def check_class_counts(counts, name: str = "class_counts", num_classes: int | None = None) -> None:
  """Checks per-class training counts: 1-D, real, and (when concrete) finite, >= 0, not all zero."""
  check_class_vector(counts, name, num_classes)
  dtype = jnp.result_type(counts)
  if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
    raise TypeError(f"`{name}` must be integer or floating, got {dtype}.")
  value = concrete_value(counts)
  if value is None:
    return
  if not np.all(np.isfinite(value)):
    raise ValueError(f"`{name}` must be finite, got {value}.")
  if np.any(value < 0):
    raise ValueError(f"`{name}` must be non-negative, got {value}.")
  if not np.any(value > 0):
    raise ValueError(f"`{name}` must have at least one positive count, got all zeros.")
