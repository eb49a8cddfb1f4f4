"""Data sources: the shared CIFAR-10 binary archive, stock TFDS Fashion-MNIST prepared offline,
any TFDS builder by name (mocked, never downloading), plain arrays, and their error messages."""
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import shared_data
from ltjax import data
from ltjax.data import _cifar_binary

_CACHE = pathlib.Path(os.environ.get("LTJAX_TEST_TFDS_DIR",
                                     "~/.cache/ltjax/tfds-tests")).expanduser()
_SHARED = shared_data.shared_data_dir()


def test_importing_ltjax_data_does_not_import_tensorflow():
  """Nor grain (and orbax), torch or matplotlib: each is imported where it is used, also through
  `ltjax.train` and `ltjax.models`; `import ltjax` alone imports no subpackage."""
  heavy = ("tensorflow", "tensorflow_datasets", "grain", "orbax", "torch", "matplotlib")
  probe = "import sys, {}; print(sorted(m for m in {!r} if m in sys.modules))"
  for modules in ("ltjax.data", "ltjax.train, ltjax.models"):
    out = subprocess.run([sys.executable, "-c", probe.format(modules, heavy)], check=True,
                         capture_output=True, text=True)
    assert out.stdout.strip() == "[]", modules
  out = subprocess.run([sys.executable, "-c", "import sys, ltjax; print(sorted(sys.modules))"],
                       check=True, capture_output=True, text=True)
  assert not [m for m in out.stdout.split("'") if m.startswith(("ltjax.", "jax"))]


@pytest.fixture(scope="module")
def cifar10_members(tmp_path_factory):
  """The shared archive's members, extracted once (a folder in the official layout)."""
  folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-bin"
  folder.mkdir()
  with tarfile.open(_SHARED / "cifar10" / "cifar-10-binary.tar.gz") as tar:
    for member in tar.getmembers():
      if member.isfile():
        (folder / pathlib.Path(member.name).name).write_bytes(tar.extractfile(member).read())
  return folder


def test_cifar10_archive_reads_and_matches_official_md5s(cifar10_members):
  splits = data.read_cifar_binary("cifar10", _SHARED / "cifar10")
  (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
  assert train_x.shape == (50000, 32, 32, 3) and train_x.dtype == np.uint8
  assert test_x.shape == (10000, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(train_y), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(test_y), [1000] * 10)
  # The first training labels of the official release: frog, truck, truck, deer, automobile.
  assert train_y[:5].tolist() == [6, 9, 9, 4, 1]
  # Records are channel-major: image 0's red plane is the first 1024 bytes after its label byte.
  raw = (cifar10_members / "data_batch_1.bin").read_bytes()
  np.testing.assert_array_equal(train_x[0, :, :, 0].ravel(), np.frombuffer(raw[1:1025], np.uint8))
  assert hashlib.md5(raw).hexdigest() == _cifar_binary.CIFAR_LAYOUTS["cifar10"].md5[
      "data_batch_1.bin"]
  # The extracted folder reads the same.
  folder_train_x, _ = data.read_cifar_binary("cifar10", cifar10_members)["train"]
  np.testing.assert_array_equal(folder_train_x, train_x)


def test_cifar10_corrupted_copy_is_rejected(cifar10_members, tmp_path):
  corrupt = tmp_path / "cifar-10-batches-bin"
  shutil.copytree(cifar10_members, corrupt)
  path = corrupt / "data_batch_3.bin"
  raw = bytearray(path.read_bytes())
  raw[12345] ^= 1
  path.write_bytes(bytes(raw))
  with pytest.raises(data.DatasetUnavailableError, match=r"data_batch_3.bin.*corrupt.*MD5"):
    data.read_cifar_binary("cifar10", tmp_path)
  truncated = tmp_path / "bad" / "cifar-10-binary.tar.gz"
  truncated.parent.mkdir()
  truncated.write_bytes((_SHARED / "cifar10" / "cifar-10-binary.tar.gz").read_bytes()[:100000])
  with pytest.raises(data.DatasetUnavailableError, match="not a readable archive"):
    data.read_cifar_binary("cifar10", truncated.parent)


def test_missing_cifar_says_what_to_download(tmp_path):
  with pytest.raises(data.DatasetUnavailableError, match=r"cifar-10-binary.tar.gz"):
    data.load_arrays("cifar10", data_dir=tmp_path / "tfds", manual_dir=tmp_path)
  with pytest.raises(data.DatasetUnavailableError, match=r"cifar-100-binary.tar.gz"):
    data.load_arrays("cifar100", data_dir=tmp_path / "tfds", manual_dir=tmp_path)


def test_load_arrays_cifar10_reads_the_experiments_shared_copy():
  arrays = data.load_arrays("cifar10", "test", data_dir="/nonexistent/tfds",
                            manual_dir=shared_data.manual_dir("cifar10"))
  assert arrays.images.shape == (10000, 32, 32, 3) and arrays.num_classes == 10


def test_the_library_default_manual_dir_assumes_no_checkout(tmp_path, monkeypatch):
  # The shared copy is the experiments' default, passed explicitly; the library's is TFDS's.
  monkeypatch.setenv("LTJAX_SHARED_DATA", str(_SHARED))
  assert data.default_manual_dir("cifar10", tmp_path) == tmp_path / "downloads" / "manual"
  assert shared_data.manual_dir("cifar10", tmp_path) == _SHARED / "cifar10"
  assert shared_data.manual_dir("svhn_cropped", tmp_path) == tmp_path / "downloads" / "manual"
  with pytest.raises(data.DatasetUnavailableError, match=r"cifar-10-binary\.tar\.gz"):
    data.load_arrays("cifar10", "test", data_dir=tmp_path)


def _fake_cifar100(folder: pathlib.Path, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  fine = rng.integers(0, 100, n).astype(np.uint8)
  records = np.concatenate([(fine // 5)[:, None], fine[:, None],
                            images.transpose(0, 3, 1, 2).reshape(n, -1)], axis=1)
  (folder / "cifar-100-binary").mkdir(parents=True)
  (folder / "cifar-100-binary" / "train.bin").write_bytes(records.tobytes())
  (folder / "cifar-100-binary" / "test.bin").write_bytes(records[:10].tobytes())
  return images, fine


def test_cifar100_layout_decodes_fine_labels_and_checks_md5(tmp_path, monkeypatch):
  images, fine = _fake_cifar100(tmp_path, 50, np.random.default_rng(0))
  with pytest.raises(data.DatasetUnavailableError, match=r"train.bin.*corrupt"):
    data.read_cifar_binary("cifar100", tmp_path)
  splits = data.read_cifar_binary("cifar100", tmp_path, verify=False)
  np.testing.assert_array_equal(splits["train"][0], images)
  np.testing.assert_array_equal(splits["train"][1], fine)
  assert splits["test"][0].shape == (10, 32, 32, 3)


@pytest.mark.slow
def test_stock_tfds_fashion_mnist_prepares_offline_and_gives_lt_split():
  start = time.perf_counter()
  train = data.load_arrays("fashion_mnist", "train", data_dir=_CACHE,
                           manual_dir=_SHARED / "fashion-mnist")
  test = data.load_arrays("fashion_mnist", "test", data_dir=_CACHE)
  elapsed = time.perf_counter() - start
  assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.uint8
  assert test.images.shape == (10000, 28, 28, 1) and train.num_classes == 10
  np.testing.assert_array_equal(np.bincount(train.labels), [6000] * 10)
  assert 0 < train.images.mean() < 255
  split = data.longtail_split(train.labels, imbalance_ratio=100, val_per_class=20)
  counts = data.longtail_counts(6000, 10, imbalance_ratio=100)
  assert split.class_counts[1:].tolist() == counts[1:].tolist()
  assert split.class_counts[0] == 6000 - 20 and split.val_counts.tolist() == [20] * 10
  print(f"fashion_mnist load (prepare if cold) {elapsed:.1f} s")


def test_fashion_mnist_corrupt_or_missing_manual_files_fail_fast(tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(_SHARED / "fashion-mnist", manual)
  with open(manual / "t10k-labels-idx1-ubyte.gz", "r+b") as f:
    f.seek(100)
    f.write(b"\x00\x01")
  start = time.perf_counter()
  with pytest.raises(data.DatasetUnavailableError, match=r"t10k-labels-idx1-ubyte.gz is corrupt"):
    data.load_arrays("fashion_mnist", data_dir=tmp_path / "tfds", manual_dir=manual)
  (manual / "train-images-idx3-ubyte.gz").unlink()
  with pytest.raises(data.DatasetUnavailableError,
                     match=r"train-images-idx3-ubyte.gz <- http.*download=True"):
    data.load_arrays("fashion_mnist", data_dir=tmp_path / "tfds", manual_dir=manual)
  assert time.perf_counter() - start < 30  # no network retries


@pytest.mark.parametrize("name,match", [
    ("imagenet_lt", "must be downloaded by hand"),
    ("i_naturalist2018", "i_naturalist2018 is not prepared"),
    ("places365_small", "places365_small is not prepared"),
])
def test_large_tfds_builders_by_name_fail_fast_offline(tmp_path, name, match):
  start = time.perf_counter()
  with pytest.raises(data.DatasetUnavailableError, match=match):
    data.load_arrays(name, data_dir=tmp_path / "tfds", manual_dir=tmp_path / "manual")
  assert time.perf_counter() - start < 30


def test_unknown_tfds_name_raises(tmp_path):
  with pytest.raises(ValueError, match="Unknown TFDS dataset 'cifar11'"):
    data.load_arrays("cifar11", data_dir=tmp_path)


def test_any_builder_by_name_reads_through_data_source(tmp_path):
  with tfds.testing.mock_data(num_examples=37):
    arrays = data.load_arrays("cifar100", "train", data_dir=tmp_path, download=True)
  assert arrays.images.shape == (37, 32, 32, 3) and arrays.images.dtype == np.uint8
  assert arrays.num_classes == 100 and arrays.labels.dtype == np.int64
  assert arrays.labels.min() >= 0 and arrays.labels.max() < 100


def test_array_source_checks_its_inputs():
  arrays = data.array_source(np.zeros((4, 5, 5), np.uint8), np.array([0, 1, 2, 1]))
  assert arrays.images.shape == (4, 5, 5, 1) and arrays.num_classes == 3
  with pytest.raises(ValueError, match="must lie in"):
    data.array_source(np.zeros((2, 5, 5, 3)), np.array([0, 3]), num_classes=3)
  with pytest.raises(ValueError, match="labels"):
    data.array_source(np.zeros((2, 5, 5, 3)), np.array([0, 1, 1]))


@pytest.mark.slow
def test_cifar10_binary_tfds_builder_prepares_a_local_archive(tmp_path, monkeypatch):
  """The TFDS builder on a small fake archive in the official layout (its MD5s registered for
  the test): a normal TFDS dataset whose records come back in the official order."""
  layout = _cifar_binary.CIFAR_LAYOUTS["cifar10"]
  rng = np.random.default_rng(0)
  folder = tmp_path / "build" / "cifar-10-batches-bin"
  folder.mkdir(parents=True)
  expected = {}
  for split, names in layout.members.items():
    parts = []
    for name in names:
      images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
      labels = rng.integers(0, 10, 7).astype(np.uint8)
      raw = np.concatenate([labels[:, None], images.transpose(0, 3, 1, 2).reshape(7, -1)],
                           axis=1).tobytes()
      (folder / name).write_bytes(raw)
      monkeypatch.setitem(layout.md5, name, hashlib.md5(raw).hexdigest())
      parts.append((images, labels))
    expected[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
  manual = tmp_path / "manual"
  manual.mkdir()
  with tarfile.open(manual / "cifar-10-binary.tar.gz", "w:gz") as tar:
    tar.add(folder, arcname="cifar-10-batches-bin")
  for split in ("train", "test"):
    arrays = data.load_arrays("cifar10_binary", split, data_dir=tmp_path / "tfds",
                              manual_dir=manual)
    np.testing.assert_array_equal(arrays.images, expected[split][0])
    np.testing.assert_array_equal(arrays.labels, expected[split][1])
  assert (tmp_path / "tfds" / "cifar10_binary" / "3.0.2" / "dataset_info.json").is_file()
  source = data.tfds_source("cifar10_binary", "train", data_dir=tmp_path / "tfds")
  assert [int(source[i]["label"]) for i in range(35)] == expected["train"][1].tolist()


def test_prepare_cli_reports_missing_data_clearly(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "experiments.prepare_data", "--dataset=places365_small",
       f"--data_dir={tmp_path}", f"--manual_dir={tmp_path}"],
      capture_output=True, text=True, cwd=pathlib.Path(__file__).parents[1], timeout=120,
      check=False)
  assert out.returncode != 0
  assert "places365_small is not prepared" in out.stderr + out.stdout
  assert "Traceback" not in out.stderr


_HOLD_PREPARE_LOCK = """
import fcntl, sys, time
with open(sys.argv[1], "a") as f:
  fcntl.flock(f, fcntl.LOCK_EX)
  print("locked", flush=True)
  time.sleep(float(sys.argv[2]))
"""


@pytest.mark.slow
def test_preparing_waits_for_another_process_preparing_the_same_dataset(tmp_path):
  """Two processes on an unprepared data dir (two runs, parallel test workers) prepare one after
  the other: the second waits for the first's lock, then prepares (or finds it prepared)."""
  manual = shared_data.manual_dir("fashion_mnist")
  if not manual.is_dir():
    pytest.skip("no shared Fashion-MNIST archives")
  lock = tmp_path / ".fashion_mnist.prepare.lock"
  holder = subprocess.Popen([sys.executable, "-c", _HOLD_PREPARE_LOCK, str(lock), "120"],
                            stdout=subprocess.PIPE, text=True)
  built = []
  try:
    assert holder.stdout.readline().strip() == "locked"
    worker = threading.Thread(target=lambda: built.append(data.prepare(
        "fashion_mnist", data_dir=tmp_path, manual_dir=manual)))
    worker.start()
    time.sleep(5.0)
    # Still waiting: nothing of the dataset written while another process holds the lock.
    assert worker.is_alive() and not (tmp_path / "fashion_mnist").exists()
  finally:
    holder.kill()
    holder.wait()
  worker.join(timeout=300)
  assert built and built[0].is_prepared()
