"""Trace-time argument validation shared by the pure numerics.

Shape and dtype checks run on abstract values, so they fire under `jax.jit`, `jax.vmap` and
`jax.grad` alike. Value checks (negative counts, out-of-range labels) need concrete data: they run
when the argument is a NumPy array, a Python sequence or a committed (non-traced) `jax.Array`, and
are skipped for tracers, where the value is unknown until run time.
"""
from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

# Tolerance of "sums to one" when a prior is passed where its log is expected.
_PRIOR_SUM_TOL = 1e-3
# Cosines slightly past +-1 from float rounding of a normalised dot product are not a mistake.
_COSINE_TOL = 1e-3


def concrete_value(x) -> np.ndarray | None:
  """Returns `x` as a NumPy array when its value is known at trace time, else None."""
  if isinstance(x, jax.core.Tracer):
    return None
  return np.asarray(x)


def as_array(x, name: str) -> Any:
  """`x` as something `jax.numpy` accepts, or a one-line `TypeError` naming the argument.

  Arrays, tracers and Python/NumPy scalars pass through; a (nested) list or tuple of numbers
  becomes a NumPy array (JAX's own functions reject lists with an error that names no argument);
  a NamedTuple (e.g. a `GalaState`), dict, None or a ragged sequence raises.
  """
  if isinstance(x, (np.ndarray, np.generic)) and x.dtype.kind not in "biufc":
    raise TypeError(f"`{name}` must hold numbers, got dtype {x.dtype}.")
  if isinstance(x, (jax.Array, np.ndarray, np.generic, int, float)) and not isinstance(x, bool):
    return x
  if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
    try:
      array = np.asarray(x)
    except ValueError as error:
      raise TypeError(f"`{name}` must be an array; the sequence given is ragged ({error}).") \
          from None
    if array.dtype.kind not in "biufc":
      raise TypeError(f"`{name}` must be an array of numbers; the sequence given holds "
                      f"{array.dtype.name if array.dtype != object else 'other objects'}.")
    return array
  raise TypeError(f"`{name}` must be an array (a jax or numpy array, or a list of numbers), got "
                  f"{type(x).__name__}.")


def check_floating(x, name: str) -> None:
  dtype = jnp.result_type(as_array(x, name))
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"`{name}` must have a floating dtype, got {dtype}.")


def check_integer(x, name: str) -> None:
  dtype = jnp.result_type(as_array(x, name))
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"`{name}` must have an integer dtype (class indices), got {dtype}.")


def check_logits_labels(logits, labels, *, logits_name: str = "logits") -> int:
  """Checks `logits f[..., C]` against integer `labels [...]`; returns C."""
  logits = as_array(logits, logits_name)
  labels = as_array(labels, "labels")
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
  shape = jnp.shape(as_array(x, name))
  if len(shape) != 1:
    raise ValueError(f"`{name}` must be 1-D with one entry per class, got shape {shape}.")
  if num_classes is not None and shape[0] != num_classes:
    raise ValueError(
        f"`{name}` has {shape[0]} entries but the logits have {num_classes} classes."
    )


def check_class_counts(counts, name: str = "class_counts", num_classes: int | None = None) -> None:
  """Checks per-class training counts: 1-D, real, and (when concrete) finite, >= 0, not all zero."""
  counts = as_array(counts, name)
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


def check_hyperparameter(value, name: str, domain, *, per_class: int | None = None,
                         per_class_name: str = "logits") -> Any:
  """Checks a numeric hyperparameter (tau, gamma, a margin, a scale) against its domain.

  Shape and dtype are checked at trace time: a real scalar, or `[C]` (one value per class) when
  `per_class` is C. When the value is concrete, every entry must be finite and in `domain` (an
  `ltjax._domains` domain); a traced value is checked when the function runs eagerly only.

  Returns:
    `value`, with a list or tuple turned into an array.

  Raises:
    TypeError: not a real number / array of reals (booleans and complex numbers included).
    ValueError: a wrong shape, or a concrete value outside the domain (naming `name`).
  """
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"`{name}` must be a number, got the boolean {value}.")
  value = as_array(value, name)
  dtype = jnp.result_type(value)
  if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
    raise TypeError(f"`{name}` must be a real number, got dtype {dtype}.")
  shape = jnp.shape(value)
  allowed = [()] + ([(per_class,)] if per_class is not None else [])
  if shape not in allowed:
    per_class_text = (f" or one value per class, shape ({per_class},) like the class axis of "
                      f"`{per_class_name}`" if per_class is not None else "")
    raise ValueError(f"`{name}` must be a scalar{per_class_text}, got shape {shape}.")
  concrete = concrete_value(value)
  if concrete is not None:
    bad = [float(v) for v in np.ravel(concrete) if not domain.contains(float(v))]
    if bad:
      shown = float(concrete) if concrete.ndim == 0 else bad[0]
      raise ValueError(f"`{name}` must be {domain}, got {shown}.")
  return value


def check_choice(value, name: str, domain) -> None:
  """Checks a string option (`mode`, `quantity_factor`) against a `OneOf` domain."""
  if not domain.contains(value):
    raise ValueError(f"`{name}` must be {domain}, got {value!r}.")


def warn_if_prior(log_prior, name: str = "log_prior") -> None:
  """Warns when a concrete `log_prior` looks like a prior: every value in [0, 1], summing to 1.

  A log prior is <= 0 (or shifted by a constant); passing `counts / counts.sum()` instead
  silently adjusts by the wrong amount and, in the loss, *favours* the head classes.
  """
  value = concrete_value(log_prior)
  if value is None or value.size < 2 or not np.all(np.isfinite(value)):
    return
  if np.all((value >= 0) & (value <= 1)) and abs(float(np.sum(value)) - 1.0) < _PRIOR_SUM_TOL:
    warnings.warn(
        f"`{name}` looks like a prior (values in [0, 1] summing to 1), not its log: pass "
        f"`ltjax.priors.log_prior(class_counts)` (or `class_counts=` itself).",
        UserWarning, stacklevel=3)


def warn_if_not_cosine(cosine, name: str = "cosine") -> None:
  """Warns when concrete `cosine` inputs leave [-1, 1]: raw logits given to a cosine-margin loss
  (LDAM, ALA) are multiplied by `scale` again and their margins lose their meaning."""
  value = concrete_value(cosine)
  if value is None or value.size == 0:
    return
  largest = float(np.nanmax(np.abs(value))) if not np.all(np.isnan(value)) else 0.0
  if largest > 1.0 + _COSINE_TOL:
    warnings.warn(
        f"`{name}` has values up to |{largest:.4g}|, outside [-1, 1]: this loss expects cosine "
        f"similarities (a normalised head, `head=\"cosine\"`), not raw logits; it applies "
        f"`scale` itself.", UserWarning, stacklevel=3)
