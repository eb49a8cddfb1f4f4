"""Properties of ltjax.metrics against NumPy references, under jax.jit."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import metrics

C = 6


def _random_labels_predictions(seed, n=200, num_classes=C):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, n).astype(np.int32)
  # Mostly-correct predictions so the diagonal and off-diagonal are both populated.
  predictions = np.where(rng.random(n) < 0.6, labels, rng.integers(0, num_classes, n)).astype(
      np.int32)
  return labels, predictions


def _numpy_confusion(labels, predictions, num_classes):
  flat = np.bincount(labels * num_classes + predictions, minlength=num_classes**2)
  return flat.reshape(num_classes, num_classes)


@functools.partial(jax.jit, static_argnames="num_classes")
def _jit_confusion(labels, predictions, *, num_classes):
  return metrics.confusion_matrix(labels, predictions, num_classes=num_classes)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_equals_bincount(seed):
  labels, predictions = _random_labels_predictions(seed)
  got = _jit_confusion(labels, predictions, num_classes=C)
  assert got.dtype == jnp.int32 and got.shape == (C, C)
  np.testing.assert_array_equal(got, _numpy_confusion(labels, predictions, C))
  np.testing.assert_array_equal(metrics.confusion_matrix(labels, predictions, num_classes=C), got)


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_confusion_matrix_batch_sharded_equals_single_device(axis_type):
  labels, predictions = _random_labels_predictions(3, n=64)
  expected = _numpy_confusion(labels, predictions, C)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
  with jax.set_mesh(mesh):
    args = [jax.device_put(a, jax.P("data")) for a in (labels, predictions)]
    np.testing.assert_array_equal(np.asarray(_jit_confusion(*args, num_classes=C)), expected)
  # Sharded inputs without a mesh context, and the per-device form under shard_map + psum.
  args = [jax.device_put(a, jax.NamedSharding(mesh, jax.P("data"))) for a in (labels, predictions)]
  np.testing.assert_array_equal(np.asarray(_jit_confusion(*args, num_classes=C)), expected)
  per_device = jax.shard_map(
      lambda y, p: jax.lax.psum(metrics.confusion_matrix(y, p, num_classes=C), "data"),
      mesh=mesh, in_specs=(jax.P("data"), jax.P("data")), out_specs=jax.P())
  np.testing.assert_array_equal(np.asarray(jax.jit(per_device)(*args)), expected)


def test_confusion_matrix_bad_inputs():
  labels, predictions = _random_labels_predictions(0, n=10)
  with pytest.raises(TypeError, match="labels"):
    metrics.confusion_matrix(labels.astype(np.float32), predictions, num_classes=C)
  with pytest.raises(TypeError, match="predictions"):
    metrics.confusion_matrix(labels, predictions.astype(np.float32), num_classes=C)
  with pytest.raises(ValueError, match="shape"):
    metrics.confusion_matrix(labels, predictions[:5], num_classes=C)
  with pytest.raises(ValueError, match="predictions"):
    metrics.confusion_matrix(labels, predictions + C, num_classes=C)
  with pytest.raises(ValueError, match="labels"):
    metrics.confusion_matrix(labels - 10, predictions, num_classes=C)
  with pytest.raises(ValueError, match="num_classes"):
    metrics.confusion_matrix(labels, predictions, num_classes=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_balanced_error_is_one_minus_mean_per_class_accuracy(seed):
  labels, predictions = _random_labels_predictions(seed)
  confusion = _numpy_confusion(labels, predictions, C)
  per_class = jax.jit(metrics.per_class_accuracy)(confusion)
  expected = np.array([np.mean(predictions[labels == c] == c) for c in range(C)])
  np.testing.assert_allclose(per_class, expected, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(metrics.balanced_error)(confusion), 1 - expected.mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(metrics.balanced_accuracy(confusion), expected.mean(), rtol=1e-6)


def test_balanced_accuracy_equals_top1_on_a_balanced_test_set():
  rng = np.random.default_rng(4)
  labels = np.repeat(np.arange(C), 30).astype(np.int32)
  predictions = np.where(rng.random(labels.size) < 0.5, labels,
                         rng.integers(0, C, labels.size)).astype(np.int32)
  confusion = _jit_confusion(labels, predictions, num_classes=C)
  np.testing.assert_allclose(metrics.balanced_accuracy(confusion), np.mean(labels == predictions),
                             rtol=1e-6)


def test_balanced_accuracy_differs_from_top1_on_a_long_tailed_test_set():
  # Always predicting the head class: top-1 0.9, balanced accuracy 0.5.
  labels = np.array([0] * 9 + [1], np.int32)
  confusion = metrics.confusion_matrix(labels, np.zeros(10, np.int32), num_classes=2)
  np.testing.assert_allclose(metrics.balanced_accuracy(confusion), 0.5)


def test_classes_without_test_examples():
  labels = np.array([0, 0, 1, 1, 1], np.int32)
  predictions = np.array([0, 2, 1, 1, 0], np.int32)
  confusion = metrics.confusion_matrix(labels, predictions, num_classes=4)
  per_class = np.asarray(metrics.per_class_accuracy(confusion))
  np.testing.assert_allclose(per_class[:2], [0.5, 2 / 3])
  assert np.all(np.isnan(per_class[2:]))  # documented: no test example -> NaN
  np.testing.assert_allclose(metrics.balanced_accuracy(confusion), (0.5 + 2 / 3) / 2, rtol=1e-6)
  assert np.isnan(metrics.balanced_error(np.zeros((3, 3), np.int32)))


def test_confusion_must_be_square():
  with pytest.raises(ValueError, match="square"):
    metrics.per_class_accuracy(np.zeros((3, 4)))


# Train counts straddling the thresholds: 100 and 20 are medium (many: > 100, few: < 20).
SHOT_COUNTS = np.array([500, 101, 100, 50, 20, 19, 1])
SHOT_ACCURACY = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.2])


def _confusion_with_accuracy(accuracy, support=10):
  num_classes = len(accuracy)
  confusion = np.zeros((num_classes, num_classes), np.int32)
  for c, a in enumerate(accuracy):
    correct = round(a * support)
    confusion[c, c] = correct
    confusion[c, (c + 1) % num_classes] = support - correct
  return confusion


def test_shot_accuracy_groups_and_boundaries():
  confusion = _confusion_with_accuracy(SHOT_ACCURACY)
  shots = jax.jit(metrics.shot_accuracy)(confusion, class_counts=SHOT_COUNTS)
  np.testing.assert_allclose(shots["many"], np.mean([0.9, 0.8]), rtol=1e-6)
  np.testing.assert_allclose(shots["medium"], np.mean([0.7, 0.6, 0.5]), rtol=1e-6)
  np.testing.assert_allclose(shots["few"], np.mean([0.4, 0.2]), rtol=1e-6)
  custom = metrics.shot_accuracy(confusion, class_counts=SHOT_COUNTS, many=50, few=50)
  np.testing.assert_allclose(custom["medium"], 0.6, rtol=1e-6)


def test_shot_accuracy_empty_group_is_nan_and_untested_class_is_skipped():
  counts = np.array([5000, 2000, 500, 100])  # no few-shot class (like CIFAR-10-LT)
  confusion = _confusion_with_accuracy([0.9, 0.8, 0.7, 0.6])
  confusion[1] = 0  # class 1 has no test example
  shots = metrics.shot_accuracy(confusion, class_counts=counts)
  np.testing.assert_allclose(shots["many"], np.mean([0.9, 0.7]), rtol=1e-6)
  np.testing.assert_allclose(shots["medium"], 0.6, rtol=1e-6)
  assert np.isnan(shots["few"])


def test_shot_accuracy_bad_inputs():
  confusion = _confusion_with_accuracy(SHOT_ACCURACY)
  with pytest.raises(ValueError, match="class_counts"):
    metrics.shot_accuracy(confusion, class_counts=SHOT_COUNTS[:3])
  with pytest.raises(ValueError, match="many"):
    metrics.shot_accuracy(confusion, class_counts=SHOT_COUNTS, many=10, few=20)
  with pytest.raises(ValueError, match="non-negative"):
    metrics.shot_accuracy(confusion, class_counts=-SHOT_COUNTS)


def _numpy_lm_rsd(logits, labels, num_classes):
  lm, rsd = np.full(num_classes, np.nan), np.full(num_classes, np.nan)
  for c in range(num_classes):
    pos, neg = logits[labels == c, c], logits[labels != c, c]
    if pos.size and neg.size:
      lm[c] = pos.mean() - neg.mean()
      rsd[c] = pos.std() / lm[c]
  return lm, rsd


def _lm_rsd_data(seed=0, n=300):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, C, n).astype(np.int32)
  logits = rng.normal(size=(n, C)).astype(np.float32) + 2.0 * np.eye(C, dtype=np.float32)[labels]
  return logits, labels


@functools.partial(jax.jit, static_argnames=("num_classes", "normalize"))
def _jit_lm(logits, labels, *, num_classes, normalize=False):
  return metrics.logits_magnitude(logits, labels, num_classes=num_classes, normalize=normalize)


@functools.partial(jax.jit, static_argnames="num_classes")
def _jit_rsd(logits, labels, *, num_classes):
  return metrics.regularized_std(logits, labels, num_classes=num_classes)


def test_logits_magnitude_and_rsd_numpy_reference():
  logits, labels = _lm_rsd_data()
  lm, rsd = _numpy_lm_rsd(logits.astype(np.float64), labels, C)
  np.testing.assert_allclose(_jit_lm(logits, labels, num_classes=C), lm, rtol=1e-5)
  np.testing.assert_allclose(_jit_rsd(logits, labels, num_classes=C), rsd, rtol=1e-4)


def test_logits_magnitude_invariances():
  logits, labels = _lm_rsd_data(1)
  lm = _jit_lm(logits, labels, num_classes=C)
  per_class_offset = np.random.default_rng(2).normal(size=C).astype(np.float32) * 5
  np.testing.assert_allclose(_jit_lm(logits + per_class_offset, labels, num_classes=C), lm,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(_jit_lm(logits + 7.0, labels, num_classes=C), lm, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(_jit_lm(3.0 * logits, labels, num_classes=C), 3.0 * lm, rtol=1e-5)
  normalized = _jit_lm(logits, labels, num_classes=C, normalize=True)
  np.testing.assert_allclose(np.mean(np.abs(normalized)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(normalized, C * lm / np.sum(np.abs(lm)), rtol=1e-5)


def test_rsd_invariant_to_positive_scaling_and_class_offsets():
  logits, labels = _lm_rsd_data(3)
  rsd = _jit_rsd(logits, labels, num_classes=C)
  np.testing.assert_allclose(_jit_rsd(4.5 * logits, labels, num_classes=C), rsd, rtol=1e-4)
  offset = np.linspace(-3, 3, C, dtype=np.float32)
  np.testing.assert_allclose(_jit_rsd(logits + offset, labels, num_classes=C), rsd, rtol=1e-4)


def test_lm_rsd_undefined_classes_are_nan():
  logits, labels = _lm_rsd_data(4, n=40)
  labels = np.where(labels == 2, 0, labels).astype(np.int32)  # class 2 absent
  lm = np.asarray(metrics.logits_magnitude(logits, labels, num_classes=C))
  rsd = np.asarray(metrics.regularized_std(logits, labels, num_classes=C))
  assert np.isnan(lm[2]) and np.isnan(rsd[2])
  assert np.all(np.isfinite(np.delete(lm, 2))) and np.all(np.isfinite(np.delete(rsd, 2)))
  only_class_0 = metrics.logits_magnitude(logits, np.zeros(40, np.int32), num_classes=C)
  assert np.all(np.isnan(only_class_0))  # no "other" examples for class 0, no own ones for 1..5
  zero_lm = metrics.regularized_std(np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1]),
                                    num_classes=2)
  assert np.all(np.isnan(zero_lm))


def test_lm_bad_inputs():
  logits, labels = _lm_rsd_data()
  with pytest.raises(ValueError, match="num_classes"):
    metrics.logits_magnitude(logits, labels, num_classes=C + 1)
  with pytest.raises(TypeError, match="labels"):
    metrics.regularized_std(logits, labels.astype(np.float32), num_classes=C)
  with pytest.raises(ValueError, match="shape"):
    metrics.logits_magnitude(logits, labels[:10], num_classes=C)


def _numpy_ece(logits, labels, num_bins):
  z = logits.astype(np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  confidence, correct = p.max(-1), (p.argmax(-1) == labels)
  edges = np.linspace(0, 1, num_bins + 1)
  ece = 0.0
  for lo, hi in itertools.pairwise(edges):
    in_bin = (confidence > lo) & (confidence <= hi)
    if in_bin.any():
      ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
  return ece


@functools.partial(jax.jit, static_argnames="num_bins")
def _jit_ece(logits, labels, *, num_bins=15):
  return metrics.expected_calibration_error(logits, labels, num_bins=num_bins)


@pytest.mark.parametrize("num_bins", [1, 10, 15])
def test_ece_numpy_reference(num_bins):
  rng = np.random.default_rng(num_bins)
  logits = (rng.normal(size=(500, 5)) * 2).astype(np.float32)
  labels = rng.integers(0, 5, 500).astype(np.int32)
  np.testing.assert_allclose(_jit_ece(logits, labels, num_bins=num_bins),
                             _numpy_ece(logits, labels, num_bins), rtol=1e-4, atol=1e-6)


def _binary_predictions_with_confidence(confidence, accuracy, seed):
  """Logits whose top-class softmax probability is `confidence`; correct with prob `accuracy`."""
  rng = np.random.default_rng(seed)
  logits = np.stack([np.zeros_like(confidence), np.log(confidence / (1 - confidence))], -1)
  labels = np.where(rng.random(confidence.size) < accuracy, 1, 0)
  return logits.astype(np.float32), labels.astype(np.int32)


def test_ece_calibrated_near_zero_and_overconfident_positive():
  rng = np.random.default_rng(5)
  confidence = rng.uniform(0.55, 0.99, 100_000)
  logits, labels = _binary_predictions_with_confidence(confidence, confidence, 6)
  assert float(_jit_ece(logits, labels)) < 0.01
  logits, labels = _binary_predictions_with_confidence(confidence, confidence - 0.2, 7)
  np.testing.assert_allclose(_jit_ece(logits, labels), 0.2, atol=0.01)


def test_ece_bad_inputs():
  logits, labels = _lm_rsd_data()
  with pytest.raises(ValueError, match="num_bins"):
    metrics.expected_calibration_error(logits, labels, num_bins=0)
  with pytest.raises(ValueError, match="labels"):
    metrics.expected_calibration_error(logits, labels + C)
  with pytest.raises(ValueError, match="at least one"):
    metrics.expected_calibration_error(np.zeros((0, 3), np.float32), np.zeros((0,), np.int32))


def test_vmap_over_evaluation_sets():
  # e.g. one confusion matrix per post-hoc tau or per seed, in one call.
  pairs = [_random_labels_predictions(s, n=50) for s in range(3)]
  labels, predictions = (np.stack(a) for a in zip(*pairs))
  confusions = jax.vmap(lambda y, p: metrics.confusion_matrix(y, p, num_classes=C))(
      labels, predictions)
  for k in range(3):
    np.testing.assert_array_equal(confusions[k], _numpy_confusion(labels[k], predictions[k], C))
  np.testing.assert_allclose(jax.jit(jax.vmap(metrics.balanced_accuracy))(confusions),
                             [metrics.balanced_accuracy(c) for c in confusions], rtol=1e-6)


def test_logits_magnitude_gradient_is_the_class_mean_difference():
  logits, labels = _lm_rsd_data(5, n=60)
  grad = jax.grad(lambda z: jnp.sum(metrics.logits_magnitude(z, labels, num_classes=C)))(logits)
  counts = np.bincount(labels, minlength=C)
  own = np.eye(C)[labels]
  expected = own / counts + (own - 1) / (labels.size - counts)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
