"""Issue 22 item 9: an impossible validation size and a corrupted prepared record file each end a
run with one line (a `ConfigError` / `DatasetUnavailableError` that the CLI prints as one line),
before anything is compiled."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from experiments import experiment
from experiments import shared_data
from experiments.configs import fmnist_cnn
from ltjax import data
from ltjax.data import _records
from tests.test_new_method import toy_source

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


_TFDS_CACHE = pathlib.Path(os.environ.get("LTJAX_TEST_TFDS_DIR",
                                          "~/.cache/ltjax/tfds-tests")).expanduser()


@pytest.fixture
def corrupted_fmnist(tmp_path):
  """A copy of prepared Fashion-MNIST (the tests' TFDS cache, prepared offline from the shared
  archives if cold) with one byte of its training record file flipped, early in the file, so
  that the first chunk read fails."""
  builder = data.prepare("fashion_mnist", data_dir=_TFDS_CACHE,
                         manual_dir=shared_data.shared_data_dir() / "fashion-mnist")
  folder = tmp_path / "tfds" / "fashion_mnist" / pathlib.Path(builder.data_dir).name
  shutil.copytree(builder.data_dir, folder)
  (record,) = folder.glob("fashion_mnist-train.array_record-*")
  with open(record, "r+b") as f:
    f.seek(50_000)
    byte = f.read(1)
    f.seek(50_000)
    f.write(bytes([byte[0] ^ 0xFF]))
  return tmp_path / "tfds", folder


def test_a_corrupted_record_file_names_the_folder_and_how_to_prepare_again(corrupted_fmnist):
  data_dir, folder = corrupted_fmnist
  with pytest.raises(data.DatasetUnavailableError) as e:
    data.load_arrays("fashion_mnist", "train", data_dir=data_dir)
  line = str(e.value)
  assert "\n" not in line
  assert line.startswith(f"A prepared record file in {folder} is corrupt (Corrupted Riegeli")
  assert (f"prepare the dataset again (python -m experiments.prepare_data --dataset=fashion_mnist "
          f"--data_dir={data_dir}, or ltjax.data.prepare).") in line
  # The streamed paths' reads (grain threads / workers) map it the same way.
  builder = tfds.builder("fashion_mnist", data_dir=str(data_dir), file_format="array_record")
  source = builder.as_data_source(split="train")
  with pytest.raises(data.DatasetUnavailableError, match=f"in {folder} is corrupt"):
    for i in range(300):  # byte 50,000 of ~620 per record
      _records.read_record(source, i)


@pytest.mark.slow
def test_the_cli_ends_with_one_line_on_a_corrupted_record_file(corrupted_fmnist, tmp_path):
  data_dir, folder = corrupted_fmnist
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.main", "--config=experiments/configs/fmnist_cnn.py",
       f"--config.data_dir={data_dir}", f"--workdir={workdir}", "--progress=false"],
      cwd=_ROOT, capture_output=True, text=True, timeout=600, check=False,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"I/O error: A prepared record file in {folder} is corrupt")
  assert "Traceback" not in proc.stderr
  assert not (workdir / "results.json").exists()
