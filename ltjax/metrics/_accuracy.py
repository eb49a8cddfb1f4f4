"""Confusion matrix and the accuracies read from it: per class, balanced, many/medium/few shot."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ltjax import _checks
from ltjax import _domains


def _check_num_classes(num_classes) -> None:
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"`num_classes` must be a positive Python int (static), got {num_classes!r}.")


def _check_in_range(x, name: str, num_classes: int) -> None:
  value = _checks.concrete_value(x)
  if value is not None and value.size and (value.min() < 0 or value.max() >= num_classes):
    raise ValueError(f"`{name}` must lie in [0, {num_classes}), got values in "
                     f"[{value.min()}, {value.max()}].")


def confusion_matrix(labels: jax.typing.ArrayLike, predictions: jax.typing.ArrayLike, *,
                     num_classes: int) -> jax.Array:
  r"""Counts `M[t, p]` = number of examples of true class `t` predicted as `p`.

  .. math::
    M = \sum_i \mathrm{onehot}(y_i) \, \mathrm{onehot}(\hat y_i)^\top

  Computed as the contraction of the two one-hot matrices over the examples (no scatter), so it
  runs under `jax.jit` with a batch-sharded input in every sharding mode (Auto, Explicit,
  `shard_map`, `pmap`): the contraction becomes a global reduction, and its output is declared
  replicated so Explicit mode accepts a sharded contracting axis. Work `O(N C^2)`, memory
  `O(N C + C^2)` (a broadcast outer-product sum would need `O(N C^2)` memory: 200 GB for
  ImageNet-LT's 50k x 1000). The one-hots are float32 (fast matmul), exact because no count can
  exceed `N <= 2^24`; larger inputs switch to an int32 contraction.

  Args:
    labels: integer `[...]` true classes.
    predictions: integer `[...]` predicted classes, same shape as `labels`.
    num_classes: C (static).

  Returns:
    `i32[C, C]`, rows = true class, columns = predicted class.

  Raises:
    TypeError: non-integer `labels` or `predictions`.
    ValueError: shape mismatch, or (when the values are known at trace time) a value outside
      `[0, C)`. Under `jit` with traced inputs an out-of-range value is not counted.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import metrics
    >>> labels, predictions = jnp.array([0, 0, 1, 2]), jnp.array([0, 1, 1, 2])
    >>> print(metrics.confusion_matrix(labels, predictions, num_classes=3))
    [[1 1 0]
     [0 1 0]
     [0 0 1]]
  """
  _check_num_classes(num_classes)
  labels = _checks.as_array(labels, "labels")
  predictions = _checks.as_array(predictions, "predictions")
  _checks.check_integer(labels, "labels")
  _checks.check_integer(predictions, "predictions")
  if jnp.shape(labels) != jnp.shape(predictions):
    raise ValueError(f"`labels` shape {jnp.shape(labels)} must equal `predictions` shape "
                     f"{jnp.shape(predictions)}.")
  _check_in_range(labels, "labels", num_classes)
  _check_in_range(predictions, "predictions", num_classes)
  labels, predictions = jnp.ravel(labels), jnp.ravel(predictions)
  # float32 sums of 0/1 are exact up to 2^24.
  dtype = jnp.float32 if labels.shape[0] <= 2**24 else jnp.int32
  true_onehot = jax.nn.one_hot(labels, num_classes, dtype=dtype)
  pred_onehot = jax.nn.one_hot(predictions, num_classes, dtype=dtype)
  return _sum_over_examples("nc,nd->cd", true_onehot, pred_onehot).astype(jnp.int32)


def _sum_over_examples(subscripts: str, *operands) -> jax.Array:
  """`einsum` contracting the (possibly batch-sharded) example axis into a replicated result."""
  mesh = jax.typeof(operands[0]).sharding.mesh
  if mesh.empty:
    mesh = jax.sharding.get_abstract_mesh()
  # Explicit mode rejects a contraction over a sharded axis unless the output sharding is given.
  out_sharding = None if mesh.empty else jax.NamedSharding(mesh, jax.P())
  return jnp.einsum(subscripts, *operands, preferred_element_type=operands[0].dtype,
                    out_sharding=out_sharding)


def _check_confusion(confusion, caller: str = "this function"):
  confusion = _checks.as_array(confusion, "confusion")
  shape = jnp.shape(confusion)
  if len(shape) == 1:
    raise ValueError(f"`confusion` must be a square `[C, C]` matrix, got shape {shape}: "
                     f"{caller} reads a confusion matrix; for labels and predictions use "
                     f"{caller}_score(labels, predictions) (scikit-learn style).")
  if len(shape) != 2 or shape[0] != shape[1]:
    raise ValueError(f"`confusion` must be a square `[C, C]` matrix, got shape {shape}.")
  dtype = jnp.result_type(confusion)
  if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
    raise TypeError(f"`confusion` must hold counts (integer or floating), got {dtype}.")
  return confusion


def _no_predictions(caller: str, extra: tuple) -> None:
  """A second positional argument means the scikit-learn habit `f(labels, predictions)`."""
  if extra:
    raise TypeError(f"{caller}(confusion) takes a confusion matrix; called as "
                    f"{caller}(labels, predictions)? use "
                    f"ltjax.metrics.{caller}_score(labels, predictions) instead.")


def per_class_accuracy(confusion: jax.typing.ArrayLike, *unexpected) -> jax.Array:
  r"""Recall of each class, `acc_c = M[c, c] / sum_p M[c, p]`.

  Args:
    confusion: `[C, C]` counts, rows = true class (from `confusion_matrix`).

  Returns:
    `f32[C]`. A class with no test example has no accuracy: its entry is **NaN** by design.

  Raises:
    TypeError: called scikit-learn style, `(labels, predictions)`: use
      :func:`per_class_accuracy_score`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import metrics
    >>> jnp.set_printoptions(precision=4)
    >>> labels, predictions = jnp.array([0, 0, 1, 2]), jnp.array([0, 1, 1, 2])
    >>> confusion = metrics.confusion_matrix(labels, predictions, num_classes=3)
    >>> print(metrics.per_class_accuracy(confusion))
    [0.5 1.  1. ]
  """
  _no_predictions("per_class_accuracy", unexpected)
  confusion = _check_confusion(confusion, "per_class_accuracy")
  confusion = jnp.asarray(confusion, jnp.float32)
  support = jnp.sum(confusion, axis=1)
  correct = jnp.diagonal(confusion)
  return jnp.where(support > 0, correct / jnp.where(support > 0, support, 1.0), jnp.nan)


def balanced_accuracy(confusion: jax.typing.ArrayLike, *unexpected) -> jax.Array:
  r"""Mean per-class accuracy over the classes present in the test set.

  .. math::
    \mathrm{BA} = \frac{1}{|\{c : n_c > 0\}|} \sum_{c : n_c > 0} \mathrm{acc}_c

  Classes with no test example are left out of the mean (as sklearn's
  `balanced_accuracy_score`); on a balanced test set this equals top-1 accuracy.

  Returns:
    `f32[]`; **NaN** only when the confusion matrix is all zeros (no example at all).

  Raises:
    TypeError: called scikit-learn style, `(labels, predictions)`: use
      :func:`balanced_accuracy_score`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import metrics
    >>> confusion = metrics.confusion_matrix(jnp.array([0, 0, 1, 2]), jnp.array([0, 1, 1, 2]),
    ...                                      num_classes=3)
    >>> print(round(float(metrics.balanced_accuracy(confusion)), 4))
    0.8333
  """
  _no_predictions("balanced_accuracy", unexpected)
  _check_confusion(confusion, "balanced_accuracy")
  accuracy = per_class_accuracy(confusion)
  return _mean_over_defined(accuracy, jnp.ones(accuracy.shape, bool))


def balanced_error(confusion: jax.typing.ArrayLike, *unexpected) -> jax.Array:
  r"""`1 - balanced_accuracy(confusion)`, the LA paper's balanced error (same NaN rule).

  Called scikit-learn style, `(labels, predictions)`, it raises `TypeError` pointing to
  :func:`balanced_error_score`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import metrics
    >>> labels, predictions = jnp.array([0, 0, 1, 2]), jnp.array([0, 1, 1, 2])
    >>> confusion = metrics.confusion_matrix(labels, predictions, num_classes=3)
    >>> print(round(float(metrics.balanced_error(confusion)), 4))
    0.1667
  """
  _no_predictions("balanced_error", unexpected)
  _check_confusion(confusion, "balanced_error")
  return 1.0 - balanced_accuracy(confusion)


def _mean_over_defined(values, mask):
  """Mean of `values[mask]` ignoring NaNs; NaN when nothing is left."""
  keep = mask & ~jnp.isnan(values)
  count = jnp.sum(keep)
  total = jnp.sum(jnp.where(keep, values, 0.0))
  return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


def shot_accuracy(confusion: jax.typing.ArrayLike, *, class_counts: jax.typing.ArrayLike,
                  many: int | float = 100, few: int | float = 20) -> dict[str, jax.Array]:
  r"""Mean per-class accuracy over the many-, medium- and few-shot classes.

  Groups follow the **training** counts `n_c` (GALA `shot_acc`, LOS `valid_base`):
  many `n_c > many`, medium `few <= n_c <= many`, few `n_c < few` (so the boundary counts 20 and
  100 are medium).

  Args:
    confusion: `[C, C]` test counts, rows = true class.
    class_counts: `[C]` training counts.
    many: the many-shot threshold (exclusive).
    few: the few-shot threshold (exclusive).

  Returns:
    `{"many", "medium", "few"}` of `f32[]`. A group's mean skips classes without test examples;
    a group with no class (e.g. "few" on CIFAR-10-LT) or no tested class is **NaN** by design.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import metrics
    >>> labels, predictions = jnp.array([0, 0, 1, 2]), jnp.array([0, 1, 1, 2])
    >>> confusion = metrics.confusion_matrix(labels, predictions, num_classes=3)
    >>> shots = metrics.shot_accuracy(confusion, class_counts=jnp.array([500, 50, 5]))
    >>> {group: round(float(value), 4) for group, value in shots.items()}
    {'many': 0.5, 'medium': 1.0, 'few': 1.0}
  """
  confusion = _check_confusion(confusion, "shot_accuracy")
  num_classes = jnp.shape(confusion)[0]
  class_counts = _checks.as_array(class_counts, "class_counts")
  _checks.check_class_counts(class_counts, "class_counts", num_classes)
  for name, value in (("many", many), ("few", few)):
    if not _domains.NON_NEGATIVE.contains(value):
      raise ValueError(f"`{name}` must be {_domains.NON_NEGATIVE}, got {value!r}.")
  if not many >= few:
    raise ValueError(f"`many` ({many}) must be >= `few` ({few}).")
  counts = jnp.asarray(class_counts)
  accuracy = per_class_accuracy(confusion)
  groups = {"many": counts > many, "medium": (counts >= few) & (counts <= many),
            "few": counts < few}
  return {name: _mean_over_defined(accuracy, mask) for name, mask in groups.items()}


# scikit-learn-style helpers: `(labels, predictions)` in, one number (or vector) out. They build
# the confusion matrix and read it with the functions above; under `jax.jit` pass `num_classes`.


def _confusion_from(labels, predictions, num_classes: int | None) -> jax.Array:
  labels = _checks.as_array(labels, "labels")
  predictions = _checks.as_array(predictions, "predictions")
  if num_classes is None:
    values = [v for v in (_checks.concrete_value(x) for x in (labels, predictions))
              if v is not None]
    if len(values) < 2:
      raise ValueError("`num_classes` is required when `labels` or `predictions` are traced "
                       "(under jax.jit): the number of classes must be static.")
    _checks.check_integer(labels, "labels")
    _checks.check_integer(predictions, "predictions")
    num_classes = int(max((int(v.max()) + 1 if v.size else 1) for v in values))
  return confusion_matrix(labels, predictions, num_classes=num_classes)


def per_class_accuracy_score(labels: jax.typing.ArrayLike, predictions: jax.typing.ArrayLike, *,
                             num_classes: int | None = None) -> jax.Array:
  """Recall of each class from labels and predictions (scikit-learn's
  `recall_score(average=None)`): :func:`per_class_accuracy` of their :func:`confusion_matrix`.

  Args:
    labels: integer `[...]` true classes.
    predictions: integer `[...]` predicted classes, same shape.
    num_classes: C; inferred from the largest value when omitted (not possible under `jax.jit`).

  Returns:
    `f32[C]`, NaN for a class without a true example.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import metrics
    >>> jnp.set_printoptions(precision=4)
    >>> labels, predictions = jnp.array([0, 0, 1, 2]), jnp.array([0, 1, 1, 2])
    >>> print(metrics.per_class_accuracy_score(labels, predictions))
    [0.5 1.  1. ]
  """
  return per_class_accuracy(_confusion_from(labels, predictions, num_classes))


def balanced_accuracy_score(labels: jax.typing.ArrayLike, predictions: jax.typing.ArrayLike, *,
                            num_classes: int | None = None) -> jax.Array:
  """Balanced accuracy from labels and predictions, as scikit-learn's
  `balanced_accuracy_score(y_true, y_pred)`: :func:`balanced_accuracy` of their confusion matrix.

  Args:
    labels: integer `[...]` true classes.
    predictions: integer `[...]` predicted classes, same shape.
    num_classes: C; inferred from the largest value when omitted (not possible under `jax.jit`).
      Classes without a true example are left out of the mean either way.

  Returns:
    `f32[]`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import metrics
    >>> labels, predictions = jnp.array([0, 0, 1, 2]), jnp.array([0, 1, 1, 2])
    >>> print(round(float(metrics.balanced_accuracy_score(labels, predictions)), 4))
    0.8333
  """
  return balanced_accuracy(_confusion_from(labels, predictions, num_classes))


def balanced_error_score(labels: jax.typing.ArrayLike, predictions: jax.typing.ArrayLike, *,
                         num_classes: int | None = None) -> jax.Array:
  """`1 - balanced_accuracy_score(labels, predictions)`, the LA paper's balanced error.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import metrics
    >>> labels, predictions = jnp.array([0, 0, 1, 2]), jnp.array([0, 1, 1, 2])
    >>> print(round(float(metrics.balanced_error_score(labels, predictions)), 4))
    0.1667
  """
  return balanced_error(_confusion_from(labels, predictions, num_classes))


def shot_accuracy_score(labels: jax.typing.ArrayLike, predictions: jax.typing.ArrayLike, *,
                        class_counts: jax.typing.ArrayLike, many: int | float = 100,
                        few: int | float = 20) -> dict[str, jax.Array]:
  """Many/medium/few-shot accuracy from labels and predictions: :func:`shot_accuracy` of their
  confusion matrix, with C the length of `class_counts`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import metrics
    >>> labels, predictions = jnp.array([0, 0, 1, 2]), jnp.array([0, 1, 1, 2])
    >>> counts = jnp.array([500, 50, 5])  # many-, medium- and few-shot
    >>> shots = metrics.shot_accuracy_score(labels, predictions, class_counts=counts)
    >>> {group: round(float(value), 4) for group, value in shots.items()}
    {'many': 0.5, 'medium': 1.0, 'few': 1.0}
  """
  class_counts = _checks.as_array(class_counts, "class_counts")
  _checks.check_class_vector(class_counts, "class_counts")
  confusion = _confusion_from(labels, predictions, jnp.shape(class_counts)[0])
  return shot_accuracy(confusion, class_counts=class_counts, many=many, few=few)
