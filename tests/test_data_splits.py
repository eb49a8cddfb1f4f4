"""Long-tailed splits: counts, the three selection protocols, fingerprints, validation splits."""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import shared_data
from ltjax import data

# The LDAM-DRW subset of CIFAR-10 at IR 100, seed 0, as indices into the official train order.
_CIFAR10_LDAM_IR100_SHA256 = "4bf45bff8878d2786e47dccd702f96ff33b2b11d8c7da3b5015f10937290f866"


@pytest.fixture(scope="module")
def cifar10_labels():
  return data.load_arrays("cifar10", "train",
                          manual_dir=shared_data.manual_dir("cifar10")).labels


@pytest.mark.parametrize("num_classes,n_max,totals", [
    (10, 5000, {10: 20431, 50: 13996, 100: 12406, 200: 11203}),
    (100, 500, {10: 19573, 50: 12608, 100: 10847, 200: 9502}),
])
def test_counts_reproduce_methods_table(num_classes, n_max, totals):
  for ratio, total in totals.items():
    counts = data.longtail_counts(n_max, num_classes, imbalance_ratio=ratio)
    assert counts.dtype == np.int64 and counts.shape == (num_classes,)
    assert counts.sum() == total
    assert counts[0] == n_max and counts[-1] == int(n_max / ratio)
    assert np.all(np.diff(counts) <= 0)


def test_counts_cifar100_shot_groups_match_methods_table():
  groups = {10: (69, 31, 0), 50: (41, 41, 18), 100: (35, 35, 30), 200: (30, 31, 39)}
  for ratio, expected in groups.items():
    n = data.longtail_counts(500, 100, imbalance_ratio=ratio)
    assert (np.sum(n > 100), np.sum((n >= 20) & (n <= 100)), np.sum(n < 20)) == expected


def test_step_profile_halves_the_classes():
  np.testing.assert_array_equal(
      data.longtail_counts(5000, 10, imbalance_ratio=100, profile="step"), [5000] * 5 + [50] * 5)
  # Odd C: the tail gets the extra class (LDAM-DRW's loop would drop it).
  assert data.longtail_counts(100, 5, imbalance_ratio=10, profile="step").tolist() == [
      100, 100, 10, 10, 10]


def test_ratio_one_is_balanced():
  assert data.longtail_counts(7, 4, imbalance_ratio=1).tolist() == [7, 7, 7, 7]


def _ldam_drw_reference(targets, ratio, seed):
  """LDAM-DRW `IMBALANCECIFAR10` written out independently: global legacy RNG seeded once."""
  cls_num = 10
  img_max = len(targets) / cls_num
  img_num = [int(img_max * (1.0 / ratio) ** (i / (cls_num - 1.0))) for i in range(cls_num)]
  state = np.random.get_state()
  np.random.seed(seed)
  try:
    selected = []
    targets_np = np.array(targets, dtype=np.int64)
    for the_class, the_img_num in zip(np.unique(targets_np), img_num):
      idx = np.where(targets_np == the_class)[0]
      np.random.shuffle(idx)
      selected.append(idx[:the_img_num])
  finally:
    np.random.set_state(state)
  return np.concatenate(selected)


@pytest.mark.parametrize("ratio,seed", [(100, 0), (10, 0), (50, 3)])
def test_ldam_protocol_equals_ldam_drw_code(cifar10_labels, ratio, seed):
  np.random.seed(123)
  before = np.random.get_state()[1].copy()
  indices = data.longtail_indices(cifar10_labels, imbalance_ratio=ratio, protocol="ldam", seed=seed)
  np.testing.assert_array_equal(np.random.get_state()[1], before)  # global RNG untouched
  np.testing.assert_array_equal(indices, _ldam_drw_reference(cifar10_labels, ratio, seed))


def test_ldam_fingerprint_is_pinned(cifar10_labels):
  indices = data.longtail_indices(cifar10_labels, imbalance_ratio=100)
  assert indices.size == 12406
  assert data.split_fingerprint(indices) == _CIFAR10_LDAM_IR100_SHA256


def test_fingerprint_is_stable_across_processes():
  code = ("import numpy as np; from ltjax import data; "
          "y = np.arange(3000) % 10; "
          "print(data.split_fingerprint(data.longtail_indices(y, imbalance_ratio=20, seed=5)))")
  outputs = set()
  for hash_seed in ("1", "2"):
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    outputs.add(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                               capture_output=True, text=True).stdout.strip())
  labels = np.arange(3000) % 10
  here = data.split_fingerprint(data.longtail_indices(labels, imbalance_ratio=20, seed=5))
  assert outputs == {here}


def test_fingerprint_depends_on_every_index():
  a = np.arange(100)
  b = a.copy()
  b[57] = 1000
  assert data.split_fingerprint(a) != data.split_fingerprint(b)
  assert data.split_fingerprint(a) != data.split_fingerprint(a[::-1])
  assert data.split_fingerprint(a.astype(np.int32)) == data.split_fingerprint(a)


def test_ldam_subsets_are_nested_across_ratios(cifar10_labels):
  subsets = [set(data.longtail_indices(cifar10_labels, imbalance_ratio=r).tolist())
             for r in (10, 50, 100, 200)]
  for larger, smaller in itertools.pairwise(subsets):
    assert smaller < larger


def test_first_protocol_keeps_file_order_prefix(cifar10_labels):
  counts = data.longtail_counts(5000, 10, imbalance_ratio=50)
  indices = data.longtail_indices(cifar10_labels, imbalance_ratio=50, protocol="first")
  expected = np.concatenate([np.flatnonzero(cifar10_labels == c)[:counts[c]] for c in range(10)])
  np.testing.assert_array_equal(indices, expected)


def test_random_protocol_draws_by_seed():
  labels = np.repeat(np.arange(5), 200)
  rng_draws = [data.longtail_indices(labels, imbalance_ratio=10, protocol="random", seed=s)
               for s in (0, 0, 1)]
  np.testing.assert_array_equal(rng_draws[0], rng_draws[1])
  assert not np.array_equal(rng_draws[0], rng_draws[2])
  a = rng_draws[0]
  assert np.unique(a).size == a.size
  np.testing.assert_array_equal(np.bincount(labels[a]),
                                data.longtail_counts(200, 5, imbalance_ratio=10))
  assert not np.array_equal(a, data.longtail_indices(labels, imbalance_ratio=10, protocol="first"))


def test_protocols_return_class_order():
  labels = np.random.default_rng(0).integers(0, 6, 3000)
  for protocol in data._splits.PROTOCOLS:
    indices = data.longtail_indices(labels, imbalance_ratio=5, protocol=protocol,
                                    max_per_class=300)
    assert np.all(np.diff(labels[indices]) >= 0)


def test_validation_is_disjoint_balanced_and_borrows_for_full_classes(cifar10_labels):
  split = data.longtail_split(cifar10_labels, imbalance_ratio=100, val_per_class=20)
  train, val = split.train_indices, split.val_indices
  assert not set(train.tolist()) & set(val.tolist())
  np.testing.assert_array_equal(np.bincount(cifar10_labels[val], minlength=10), [20] * 10)
  full = data.longtail_indices(cifar10_labels, imbalance_ratio=100)
  # Class 0 keeps all 5000 images, so its 20 validation images come out of its training subset.
  expected = data.longtail_counts(5000, 10, imbalance_ratio=100) - np.eye(10, dtype=int)[0] * 20
  np.testing.assert_array_equal(split.class_counts, expected)
  assert set(train.tolist()) <= set(full.tolist())
  assert split.fingerprint == data.split_fingerprint(train)
  assert split.summary()["num_train"] == 12386


def test_validation_partial_keeps_training_subset(cifar10_labels):
  split = data.longtail_split(cifar10_labels, imbalance_ratio=100, val_per_class=20,
                              val_shortfall="partial")
  assert split.fingerprint == _CIFAR10_LDAM_IR100_SHA256
  assert split.val_counts.tolist() == [0] + [20] * 9
  with pytest.raises(ValueError, match="Class 0 has only 0 images outside"):
    data.longtail_split(cifar10_labels, imbalance_ratio=100, val_per_class=20,
                        val_shortfall="error")


def test_no_validation_gives_the_plain_subset(cifar10_labels):
  split = data.longtail_split(cifar10_labels, imbalance_ratio=10, protocol="first")
  np.testing.assert_array_equal(
      split.train_indices,
      data.longtail_indices(cifar10_labels, imbalance_ratio=10, protocol="first"))
  assert split.val_indices.size == 0


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(imbalance_ratio=0.5), ValueError, "imbalance_ratio"),
    (dict(imbalance_ratio=float("nan")), ValueError, "imbalance_ratio"),
    (dict(imbalance_ratio=10, protocol="ldam-drw"), ValueError, "protocol"),
    (dict(imbalance_ratio=10, profile="linear"), ValueError, "profile"),
    (dict(imbalance_ratio=10, num_classes=3), ValueError, r"labels.*\[0, 3\)"),
    (dict(imbalance_ratio=10, max_per_class=101), ValueError, "Class 0 has 100 images"),
])
def test_bad_arguments_raise(kwargs, error, match):
  labels = np.repeat(np.arange(4), 100)
  with pytest.raises(error, match=match):
    data.longtail_indices(labels, **kwargs)


def test_bad_labels_raise():
  with pytest.raises(ValueError, match="must lie in"):
    data.longtail_indices(np.array([0, 1, -1]), imbalance_ratio=2)
  with pytest.raises(TypeError, match="integer dtype"):
    data.longtail_indices(np.array([0.0, 1.0]), imbalance_ratio=2)
  with pytest.raises(ValueError, match="1-D"):
    data.longtail_indices(np.zeros((2, 2), int), imbalance_ratio=2)
  with pytest.raises(ValueError, match="imbalance_ratio"):
    data.longtail_counts(10, 3, imbalance_ratio=0.9)
  with pytest.raises(ValueError, match="per_class"):
    data.validation_indices(np.arange(4), np.arange(2), per_class=-1)


@pytest.mark.parametrize("shortfall", ["borrow", "error"])
def test_a_validation_split_too_large_names_the_class_and_the_largest_value(shortfall):
  # Classes of 50, 30, 12 and 40 images; the long-tailed subset keeps at most 20 of each.
  labels = np.repeat(np.arange(4), [50, 30, 12, 40])
  train = data.longtail_indices(labels, imbalance_ratio=2.0, max_per_class=10)
  outside = np.bincount(np.delete(labels, train), minlength=4)
  largest = 12 if shortfall == "borrow" else int(outside.min())
  limiting = 2 if shortfall == "borrow" else int(np.argmin(outside))
  _, val = data.validation_indices(labels, train, per_class=largest, shortfall=shortfall)
  np.testing.assert_array_equal(np.bincount(labels[val], minlength=4), [largest] * 4)
  for too_many in (largest + 1, 100000):
    with pytest.raises(ValueError) as e:
      data.validation_indices(labels, train, per_class=too_many, shortfall=shortfall)
    assert str(e.value).startswith(f"Class {limiting} has only {largest} images")
    assert str(e.value).endswith(f"the largest possible value is {largest}.")
