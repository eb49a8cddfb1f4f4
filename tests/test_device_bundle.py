"""experiments.device.bundle: the CIFAR-10-LT bundle equals `load_splits` array for array, its
codec is exact, corruption and a mismatched split are refused, and the device entry point's
import path needs nothing the device image lacks but what the bundle carries."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import experiment
from experiments import shared_data
from experiments.device import bundle

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_image_codec_is_exact_on_edges_and_noise():
  rng = np.random.default_rng(1)
  x = rng.integers(0, 256, (7, 9, 5, 3), dtype=np.uint8)
  x[0] = 0
  x[1] = 255
  x[2, :, :, 0] = np.arange(5, dtype=np.uint8) * 60  # ramps: the predictor's a + b - c branch
  x[3] = np.where(rng.random((9, 5, 3)) < 0.5, 0, 255).astype(np.uint8)  # edges in every corner
  residual = bundle.encode_images(x)
  assert len(residual) == x.size
  np.testing.assert_array_equal(bundle.decode_images(residual, x.shape), x)


def test_smooth_images_compress_better_than_raw():
  # The predictor's residuals of a smooth image are small: zlib packs them much tighter.
  yy, xx = np.mgrid[0:32, 0:32]
  x = np.stack([(yy * 3 + xx * 2) % 256] * 3, -1)[None].repeat(20, 0).astype(np.uint8)
  data, encoding = bundle._encode("x", x)  # pylint: disable=protected-access
  assert encoding == "med-zlib"
  assert len(data) < 0.05 * x.size


def test_toy_bundle_round_trip_and_corruption(tmp_path):
  manifest = bundle.write_toy(tmp_path / "b", vendor=True)
  arrays, read = bundle.load(tmp_path / "b")
  assert read == manifest
  assert arrays["train_labels"].dtype == np.int64 and arrays["class_counts"].sum() == 48
  assert bundle.array_sha256(arrays["test_images"]) == manifest["arrays"]["test_images"]["sha256"]
  splits = bundle.to_splits(arrays, manifest)
  assert splits.fingerprint == manifest["fingerprint"] and splits.mean == (0.5, 0.5, 0.5)
  # A flipped byte in an array file is caught by its SHA-256.
  f = tmp_path / "b" / "val_images.zz"
  data = bytearray(f.read_bytes())
  data[-1] ^= 1
  f.write_bytes(bytes(data))
  with pytest.raises(bundle.BundleError, match=r"val_images.zz is corrupt"):
    bundle.load(tmp_path / "b")
  with pytest.raises(bundle.BundleError, match=r"no readable manifest.json"):
    bundle.load(tmp_path / "missing")


def test_a_config_of_another_split_is_refused(tmp_path):
  manifest = bundle.write_toy(tmp_path / "b")
  config = bundle.table_b_config()
  bundle.check_config(manifest, config)
  config.imbalance_ratio = 10.0
  with pytest.raises(bundle.BundleError, match=r"imbalance_ratio=10.0 \(bundle: 100.0\)"):
    bundle.check_config(manifest, config)


@pytest.mark.slow
def test_cifar10_lt_bundle_equals_load_splits(tmp_path):
  """The real bundle (IR 100, LDAM split, val 20 per class, full test set): every array, dtype
  and the fingerprint as `load_splits` cuts them, and small enough to travel with the code."""
  if not (shared_data.shared_data_dir() / "cifar10").is_dir():
    pytest.skip("needs ../shared/data/cifar10")
  config = bundle.table_b_config()
  config.data_dir = str(tmp_path / "tfds")  # nothing prepared: the official binary is read
  splits = experiment.load_splits(config)
  manifest = bundle.write(tmp_path / "b", splits,
                          split={k: config[k] for k in bundle.SPLIT_KEYS})
  arrays, _ = bundle.load(tmp_path / "b")
  back = bundle.to_splits(arrays, manifest)
  assert back.fingerprint == splits.fingerprint
  assert (len(back.train_labels), len(back.val_labels), len(back.test_labels)) == (
      12386, 200, 10000)
  for name in bundle.ARRAYS:
    want, got = np.asarray(getattr(splits, name)), getattr(back, name)
    assert got.dtype == want.dtype and got.shape == want.shape, name
    np.testing.assert_array_equal(got, want, err_msg=name)
  assert back.mean == splits.mean and back.std == splits.std
  code = bundle.travel_bytes([REPO / p for p in ("ltjax", "experiments", "tests", "docs")])
  size = bundle.travel_bytes([tmp_path / "b"])
  assert size + code <= bundle.MAX_TRAVEL_BYTES, (size, code)


# Run in a fresh interpreter: what the device image lacks cannot be imported, and ml_collections
# only from the bundle's vendored zip.
_IMPORT_PATH = """
import importlib.abc, importlib.machinery, sys
LACKING = {"tensorflow", "tensorflow_datasets", "grain", "tensorboardX"}
bundle_dir = sys.argv[1]

class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    top = name.split(".")[0]
    if top in LACKING:
      raise ImportError(f"{name} is not on the device image")
    if top == "ml_collections" and path is None:  # the package itself: from the bundle only
      zips = [p for p in sys.path if p.startswith(bundle_dir)]
      spec = importlib.machinery.PathFinder.find_spec(name, zips) if zips else None
      if spec is None:
        raise ImportError(f"{name} is not on the device image")
      return spec
    return None

sys.meta_path.insert(0, Block())
from experiments.device import bundle
print(bundle.activate(bundle_dir))
from experiments.device import table_b
spec = table_b.table_spec("full")
from experiments import report, runner, runtime
from experiments.bench import train_step
from experiments.device import bench
import ml_collections
assert ml_collections.__file__.startswith(bundle_dir), ml_collections.__file__
assert not {"tensorflow", "tensorflow_datasets", "grain", "tensorboardX"} & set(
    m.split(".")[0] for m in sys.modules)
print("OK", spec.methods)
"""


def test_entry_point_imports_only_what_the_device_image_has(tmp_path):
  bundle.write_toy(tmp_path / "b", vendor=True)
  done = subprocess.run([sys.executable, "-c", _IMPORT_PATH, str(tmp_path / "b")], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False,
                        env={**os.environ, "PYTHONPATH": str(REPO)})
  assert done.returncode == 0, done.stderr[-3000:]
  added, ok = done.stdout.strip().splitlines()[-2:]
  assert json.loads(added.replace("'", '"'))[0].endswith(".zip")
  assert ok.startswith("OK ('ce', 'la_posthoc', 'tau_norm', 'la_loss', 'ldam_drw'")
