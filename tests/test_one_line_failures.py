"""Issue 22 item 9: an impossible validation size and a corrupted prepared record file each end a
run with one line (a `ConfigError` / `DatasetUnavailableError` that the CLI prints as one line),
before anything is compiled."""
import pytest

from experiments import experiment
from experiments.configs import fmnist_cnn
from tests.test_new_method import toy_source


def test_val_per_class_larger_than_a_class_is_one_config_line(prepared):
  config = fmnist_cnn.get_config()
  config.update(data_dir=prepared, val_per_class=100000, imbalance_ratio=10.0)
  with pytest.raises(experiment.ConfigError) as e:
    experiment.load_splits(config, source=toy_source)
  line = experiment.describe_failure(e.value)
  assert line is not None and "\n" not in line
  # toy_source: 10 classes of 30 training images each, all of which can be borrowed.
  assert line == ("Configuration error: config.val_per_class=100000 (config.imbalance_ratio=10) "
                  "on fashion_mnist: Class 0 has only 30 images in all, fewer than the 100000 "
                  "validation images per class asked for; the largest possible value is 30.")
  config.val_per_class = 3
  assert experiment.load_splits(config, source=toy_source).val_labels.size == 30
