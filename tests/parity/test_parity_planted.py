"""The harness catches the bugs it exists for (issue 11, deliverable 4): each is planted in a copy
of the replica and the teacher-forced comparison must fail, while the faithful replica passes
(tests/parity/test_parity_steps.py). Plus the long-tailed subsets the recipes select against
the official subset algorithms (LOS trained on the "ldam" split is the planted split bug)."""
import pathlib
import tarfile

import numpy as np
import pytest

# torch (the `test` extra on Python < 3.12, where its CPU wheel installs) runs the replicas.
torch = pytest.importorskip("torch")

import ltjax
from experiments import shared_data
from experiments.configs import ldam_r32
from experiments.configs import los_r34
from parity import harness
from parity import test_parity_steps as steps
from parity import torch_replicas as tr

pytestmark = pytest.mark.slow

BATCH = steps.BATCH
# The settings of test_parity_steps.py, where the faithful replica passes (and whose compiled
# experiments are reused).
R32 = steps.LDAM_OVERRIDES
GALA = steps.GALA_OVERRIDES

# (bug, recipe, method, overrides, steps, the quantity that must break)
PLANTED = [
    ("bn_momentum_09", "ldam_r32", "ce", R32, 2, "bn_stats"),
    ("biased_running_var", "ldam_r32", "ce", R32, 2, "bn_stats"),
    ("decoupled_weight_decay", "ldam_r32", "ce", R32, 2, "momentum"),
    # DRW from epoch 3 (6 steps per epoch): the late copy differs from step 18 on.
    ("drw_one_epoch_late", "ldam_r32", "ce_drw", R32, 20, "loss"),
    ("ldam_margin_all_classes", "ldam_r32", "ldam_drw", R32, 2, "loss"),
    ("gala_single_accumulation", "gala_r32", "gala", GALA, 3, "loss_state"),
    # GALA's paper mode adjusting the target logit too (the code's form; lam1 != lam2 here).
    ("gala_paper_target_adjusted", "gala_r32", "gala", steps.GALA_PAPER, 2, "loss"),
    # ALA with the other quantity factor than the recipe's, for each of the two.
    ("ala_factor_swapped", "ldam_r32", "ala", R32, 2, "loss"),
    ("ala_factor_swapped", "ldam_r32", "ala", steps.ALA_OPENLT, 2, "loss"),
]


@pytest.fixture(scope="module")
def splits():
  return harness.synthetic_splits(batch_size=BATCH)


def test_planted_remainder_mean_over_full_batch_is_caught(x64):
  """The remainder step's loss averaged over the full batch size: caught on the epoch's last
  step (step 7 of 7), and not before it."""
  splits = harness.synthetic_splits(batch_size=BATCH, remainder=steps.REMAINDER)
  bugs = tr.Bugs(remainder_mean_over_batch_size=True)
  run = harness.build("ldam_r32", "ldam_drw", R32, splits, bugs=bugs)
  harness.check(harness.teacher_forced(run, run.exp.steps_per_epoch - 1))
  trace = harness.teacher_forced(run, run.exp.steps_per_epoch)
  with pytest.raises(AssertionError, match="parity broken"):
    harness.check(trace)
  assert trace.errors["loss"] > 0.5


@pytest.mark.parametrize("bug,recipe,method,overrides,steps,quantity", PLANTED,
                         ids=[f"{p[0]}-{i}" for i, p in enumerate(PLANTED)])
def test_planted_bug_breaks_parity(bug, recipe, method, overrides, steps, quantity, splits, x64):
  run = harness.build(recipe, method, overrides, splits, bugs=tr.Bugs(**{bug: True}))
  trace = harness.teacher_forced(run, steps)
  with pytest.raises(AssertionError, match="parity broken"):
    harness.check(trace)
  limit = harness.GALA_STATE_RTOL if quantity == "loss_state" else harness.RTOL
  assert trace.errors[quantity] > 100 * limit, trace.errors


# ---- long-tailed subsets


def _cifar10_train_labels():
  """The 50,000 CIFAR-10 training labels in file order, from the shared offline copy."""
  for root in (shared_data.shared_data_dir(), pathlib.Path(__file__).resolve().parents[4] /
               "shared" / "data"):
    path = root / "cifar10" / "cifar-10-binary.tar.gz"
    if path.exists():
      labels = []
      with tarfile.open(path) as tar:
        for i in range(1, 6):
          data = tar.extractfile(f"cifar-10-batches-bin/data_batch_{i}.bin").read()
          labels.append(np.frombuffer(data, np.uint8)[::3073])
      return np.concatenate(labels).astype(np.int64)
  pytest.skip("the shared CIFAR-10 copy is not available")


def _cifar100_like_labels():
  """100 classes x 500 images in a fixed shuffled file order (CIFAR-100's shape)."""
  return np.random.default_rng(0).permutation(np.repeat(np.arange(100), 500))


def _recipe_train_indices(config, labels):
  """The long-tailed subset `experiments.experiment.load_splits` draws for `config` (before it
  carves the validation split, ltjax's documented deviation)."""
  split = ltjax.data.longtail_split(
      labels, imbalance_ratio=config.imbalance_ratio, protocol=config.split_protocol,
      seed=config.split_seed, val_per_class=0,
      num_classes=int(labels.max()) + 1)
  return split.train_indices


def _official(labels, ratio, algorithm, **kw):
  nums = tr.img_num_per_cls(len(labels), int(labels.max()) + 1, 1.0 / ratio)
  return algorithm(labels, nums, **kw)


def test_ldam_recipe_keeps_the_official_subset_of_cifar10():
  labels = _cifar10_train_labels()
  config = ldam_r32.get_config()
  ours = _recipe_train_indices(config, labels)
  official = _official(labels, config.imbalance_ratio, tr.ldam_subset)
  assert len(official) == 12406
  np.testing.assert_array_equal(ours, official)  # same images, same order


def test_los_recipe_keeps_the_official_subset():
  labels = _cifar100_like_labels()
  config = los_r34.get_config()
  np.testing.assert_array_equal(_recipe_train_indices(config, labels),
                                _official(labels, config.imbalance_ratio, tr.los_subset))


def test_planted_ldam_split_in_los_is_caught():
  """The comparison above against ltjax's "first" protocol: the faithful LOS algorithm matches,
  the copy that trains LOS on the "ldam" split does not."""
  labels = _cifar100_like_labels()
  config = los_r34.get_config()
  config.split_protocol = "first"
  ours = _recipe_train_indices(config, labels)
  np.testing.assert_array_equal(ours, _official(labels, 100.0, tr.los_subset))
  planted = _official(labels, 100.0, tr.los_subset, bug_ldam_split=True)
  assert len(planted) == len(ours) and not np.array_equal(planted, ours)
