"""The CIFAR-10-LT bundle: everything Table B's device run reads, in one folder that travels.

The lent accelerator reaches nothing outside it (no TFDS, no downloads, no `../shared`), and
what travels to it (working tree + carried folders) is capped at 64 MiB. So the data is cut here
and carried as arrays:

    python -m experiments.device.bundle --out .bundle      # ~48 MiB, ~30 s on 2 cores

writes into `--out` (`.bundle/` is git-ignored):

* the long-tailed training split of `experiments.experiment.load_splits` for the `ldam_r32`
  recipe at IR 100 (LDAM protocol, split seed 0: 12,386 images), its balanced validation split
  (20 per class) and the 10,000-image test set, one file per array;
* `manifest.json`: the split's parameters and fingerprint, class counts, normalisation, and per
  array its shape, dtype, encoding, the SHA-256 of the decoded array (C order, its dtype) and the
  SHA-256 of the file;
* `vendor/ml_collections-<version>.zip`: the one package of the run's import path the device
  image lacks (its image has jax, flax, optax, orbax-checkpoint, absl-py and PyYAML, but neither
  tensorflow-datasets, grain, tensorboardX nor ml_collections). The zip holds the package as
  installed here, pure Python, imported with zipimport (`activate`): nothing to pip-install there.

Images are stored as the residual of the LOCO-I / JPEG-LS median edge predictor (`pred = min(a,
b)` if `c >= max(a, b)`, `max(a, b)` if `c <= min(a, b)`, else `a + b - c`, with `a`, `b`, `c` the
left, upper and upper-left pixel of the same channel, 0 outside the image), modulo 256, then
zlib: 71 % of the raw bytes on CIFAR (zlib alone: 92 %), i.e. ~47 MB for the 66 MB of the three
splits; decoding is exact (a sequential pass over the 32 x 32 pixel positions, vectorised over
images and channels: about a second). Labels are stored as zlib'd uint8 and restored in their
recorded dtype; other arrays (class counts) as zlib'd bytes of their own dtype.

`load(path)` reads a bundle back, checking every SHA-256; `to_splits` makes it the
`experiments.experiment.Splits` the runner trains on, and `check_config` refuses a run whose
split parameters are not the bundle's. This module imports numpy only, so `activate` can run
before anything imports ml_collections.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np

MANIFEST = "manifest.json"
FORMAT = 1
VENDOR_DIR = "vendor"
# The packages of the device entry point's import path that the device image lacks.
VENDORED = ("ml_collections",)
# The split parameters a run's config must share with the bundle (`check_config`).
SPLIT_KEYS = ("dataset", "imbalance_ratio", "split_protocol", "split_seed", "val_per_class")
ARRAYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images",
          "test_labels", "class_counts")
# What travels to the device is capped at 64 MiB; the issue asks for <= 60 MiB with the code.
MAX_TRAVEL_BYTES = 60 * 2**20


class BundleError(ValueError):
  """A missing, corrupt or mismatched bundle."""


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def array_sha256(a: np.ndarray) -> str:
  """SHA-256 of an array's bytes in C order and its own dtype."""
  return _sha256(np.ascontiguousarray(a).tobytes())


def _median_prediction(a, b, c):
  """LOCO-I's median edge predictor of a pixel from its left `a`, upper `b`, upper-left `c`."""
  lo, hi = np.minimum(a, b), np.maximum(a, b)
  return np.where(c >= hi, lo, np.where(c <= lo, hi, a + b - c))


def encode_images(x: np.ndarray) -> bytes:
  """`u8[N, H, W, C]` -> the median predictor's residuals mod 256, C order, uncompressed."""
  p = x.astype(np.int16)
  a = np.zeros_like(p)
  a[:, :, 1:] = p[:, :, :-1]
  b = np.zeros_like(p)
  b[:, 1:] = p[:, :-1]
  c = np.zeros_like(p)
  c[:, 1:, 1:] = p[:, :-1, :-1]
  return ((p - _median_prediction(a, b, c)) % 256).astype(np.uint8).tobytes()


def decode_images(residual: bytes, shape) -> np.ndarray:
  """Inverts `encode_images`: pixels in raster order, each its residual plus the prediction from
  the pixels decoded before it, vectorised over images and channels (pixel-major layout, so that
  each position's images and channels are contiguous)."""
  n, h, w, ch = shape
  r = np.frombuffer(residual, np.uint8).reshape(shape).transpose(1, 2, 0, 3).astype(np.int16)
  x = np.zeros((h + 1, w + 1, n, ch), np.int16)  # a zero row and column of padding first
  for i in range(1, h + 1):
    for j in range(1, w + 1):
      pred = _median_prediction(x[i, j - 1], x[i - 1, j], x[i - 1, j - 1])
      x[i, j] = (r[i - 1, j - 1] + pred) & 255
  return np.ascontiguousarray(x[1:, 1:].transpose(2, 0, 1, 3).astype(np.uint8))


def _encode(name: str, a: np.ndarray) -> tuple[bytes, str]:
  if a.dtype == np.uint8 and a.ndim == 4:
    return zlib.compress(encode_images(a), 6), "med-zlib"
  if np.issubdtype(a.dtype, np.integer) and (a.size == 0 or (a.min() >= 0 and a.max() < 256)):
    return zlib.compress(a.astype(np.uint8).tobytes(), 9), "u8-zlib"
  del name
  return zlib.compress(np.ascontiguousarray(a).tobytes(), 9), "zlib"


def _decode(data: bytes, entry: dict) -> np.ndarray:
  raw = zlib.decompress(data)
  shape = tuple(entry["shape"])
  if entry["encoding"] == "med-zlib":
    return decode_images(raw, shape)
  if entry["encoding"] == "u8-zlib":
    return np.frombuffer(raw, np.uint8).reshape(shape).astype(entry["dtype"])
  if entry["encoding"] == "zlib":
    return np.frombuffer(raw, entry["dtype"]).reshape(shape).copy()
  raise BundleError(f"unknown encoding {entry['encoding']!r} of {entry['file']}.")


def _vendor_zip(package: str, out_dir: pathlib.Path) -> dict:
  """Zips the installed pure-Python `package` (sources only, fixed timestamps: the same bytes
  every time) into `out_dir/<package>-<version>.zip` for zipimport."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise BundleError(f"{package} is not installed here: the bundle carries it to the device "
                      f"(pip install {package}).")
  root = pathlib.Path(next(iter(spec.submodule_search_locations)))
  version = importlib.metadata.version(package)
  path = out_dir / f"{package}-{version}.zip"
  files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    for f in files:
      info = zipfile.ZipInfo(f"{package}/{f.relative_to(root).as_posix()}", (2020, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      z.writestr(info, f.read_bytes())
  return {"file": f"{VENDOR_DIR}/{path.name}", "version": version,
          "sha256": _sha256(path.read_bytes())}


def write(out, splits, *, split: dict, vendor: bool = True) -> dict:
  """Writes `splits` (an `experiments.experiment.Splits`) as a bundle into the folder `out`.

  Args:
    out: the bundle folder (created; its bundle files are replaced).
    splits: the arrays, class counts, fingerprint and normalisation to store.
    split: the split parameters they were cut with (`SPLIT_KEYS`), recorded for `check_config`.
    vendor: also carry the packages of `VENDORED` (the rehearsal's bundles skip them).

  Returns:
    The manifest.
  """
  missing = [k for k in SPLIT_KEYS if k not in split]
  if missing:
    raise BundleError(f"`split` lacks {missing}.")
  if splits.val_images is None:
    raise BundleError("`splits` has no validation split (val_per_class = 0): the table's "
                      "recipes select on it.")
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for name in ARRAYS:
    a = np.asarray(getattr(splits, name))
    data, encoding = _encode(name, a)
    (out / f"{name}.zz").write_bytes(data)
    arrays[name] = {"file": f"{name}.zz", "shape": list(a.shape), "dtype": str(a.dtype),
                    "encoding": encoding, "sha256": array_sha256(a), "file_sha256": _sha256(data),
                    "bytes": len(data)}
  vendored = {}
  if vendor:
    (out / VENDOR_DIR).mkdir(exist_ok=True)
    vendored = {p: _vendor_zip(p, out / VENDOR_DIR) for p in VENDORED}
  manifest = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "split": {k: split[k] for k in SPLIT_KEYS}, "fingerprint": splits.fingerprint,
              "mean": list(splits.mean), "std": list(splits.std), "arrays": arrays,
              "vendor": vendored}
  (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
  return manifest


def read_manifest(path) -> dict:
  """The bundle's manifest; a clear error when `path` holds no bundle of this format."""
  file = pathlib.Path(path) / MANIFEST
  try:
    manifest = json.loads(file.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise BundleError(f"`bundle` {path} holds no readable {MANIFEST} ({e}); write one with "
                      "python -m experiments.device.bundle --out DIR.") from None
  if manifest.get("format") != FORMAT:
    raise BundleError(f"`bundle` {path} has format {manifest.get('format')!r}, expected "
                      f"{FORMAT}: write it again.")
  return manifest


def load(path) -> tuple[dict, dict]:
  """Reads the bundle in folder `path`: `(arrays by name, manifest)`; raises `BundleError` when
  a file or a decoded array does not match its recorded SHA-256."""
  path = pathlib.Path(path)
  manifest = read_manifest(path)
  arrays = {}
  for name, entry in manifest["arrays"].items():
    try:
      data = (path / entry["file"]).read_bytes()
    except OSError as e:
      raise BundleError(f"`bundle` {path}: {e}") from None
    if _sha256(data) != entry["file_sha256"]:
      raise BundleError(f"`bundle` {path}: {entry['file']} is corrupt (its SHA-256 differs from "
                        "the manifest's).")
    a = _decode(data, entry)
    if array_sha256(a) != entry["sha256"]:
      raise BundleError(f"`bundle` {path}: {name} decodes to other data than was stored.")
    arrays[name] = a
  return arrays, manifest


def activate(path) -> list[str]:
  """Makes the bundle's vendored packages importable (zipimport) where they are not installed;
  returns the zips put on `sys.path`. Call before importing `experiments.experiment`."""
  path = pathlib.Path(path)
  added = []
  for package, entry in read_manifest(path).get("vendor", {}).items():
    try:
      if importlib.util.find_spec(package) is not None:
        continue
    except ImportError:  # a finder that refuses it: as good as absent
      pass
    zip_path = path / entry["file"]
    if not zip_path.is_file() or _sha256(zip_path.read_bytes()) != entry["sha256"]:
      raise BundleError(f"`bundle` {path}: {entry['file']} is missing or corrupt.")
    sys.path.insert(0, str(zip_path))
    added.append(str(zip_path))
  return added


def to_splits(arrays: dict, manifest: dict):
  """The bundle as `experiments.experiment.Splits` (imports it: call `activate` first)."""
  from experiments import experiment  # noqa: PLC0415 (after `activate`: it needs ml_collections)

  return experiment.Splits(
      train_images=arrays["train_images"], train_labels=arrays["train_labels"],
      test_images=arrays["test_images"], test_labels=arrays["test_labels"],
      class_counts=arrays["class_counts"], fingerprint=manifest["fingerprint"],
      val_images=arrays["val_images"], val_labels=arrays["val_labels"],
      mean=tuple(manifest["mean"]), std=tuple(manifest["std"]))


def check_config(manifest: dict, config) -> None:
  """Raises `BundleError` unless `config`'s split parameters are the bundle's."""
  split = manifest["split"]
  diff = [f"{k}={config[k]!r} (bundle: {split[k]!r})" for k in SPLIT_KEYS
          if config[k] != split[k]]
  if diff:
    raise BundleError("the run's config cuts another split than the bundle holds: "
                      + ", ".join(diff) + ".")


def travel_bytes(paths) -> int:
  """Bytes of the files under `paths` as the device tool counts them: in a git checkout, the
  tracked files and the untracked ones git does not ignore (a built docs site, a venv or
  __pycache__ stay behind); elsewhere (the bundle folder, ignored on purpose) every file."""
  total = 0
  for p in map(pathlib.Path, paths):
    files = _travelling_files(p)
    total += sum(f.stat().st_size for f in files if f.is_file())
  return total


def _travelling_files(path: pathlib.Path) -> list:
  listed = subprocess.run(
      ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", path.name],
      cwd=path.parent, capture_output=True, check=False)
  if listed.returncode == 0 and listed.stdout:
    return [path.parent / name for name in listed.stdout.decode().split("\0") if name]
  return [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]


def write_toy(out, *, train_per_class=(12, 8, 6, 5, 4, 4, 3, 2, 2, 2), size: int = 16,
              vendor: bool = False) -> dict:
  """A toy bundle of random images in the Table B bundle's format and split parameters (the
  rehearsal's; 48 training images by default, so that batches of 16 leave no partial one)."""
  from experiments import experiment  # noqa: PLC0415 (needs ml_collections)

  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(len(train_per_class)), train_per_class).astype(np.int64)

  def images(n):
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)

  splits = experiment.Splits(
      train_images=images(len(labels)), train_labels=labels, test_images=images(20),
      test_labels=np.arange(20, dtype=np.int64) % 10,
      class_counts=np.asarray(train_per_class, np.int64), fingerprint="toy-" + "0" * 60,
      val_images=images(10), val_labels=np.arange(10, dtype=np.int64),
      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
  config = table_b_config()
  return write(out, splits, split={k: config[k] for k in SPLIT_KEYS}, vendor=vendor)


def table_b_config(imbalance_ratio: float = 100.0):
  """The `ldam_r32` recipe at `imbalance_ratio`: the split every Table B recipe trains on."""
  from experiments.configs import ldam_r32  # noqa: PLC0415 (needs ml_collections)

  config = ldam_r32.get_config()
  config.imbalance_ratio = float(imbalance_ratio)
  return config


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m experiments.device.bundle",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="The bundle folder (e.g. .bundle).")
  parser.add_argument("--imbalance_ratio", type=float, default=100.0)
  args = parser.parse_args(argv)
  from experiments import experiment  # noqa: PLC0415 (keeps `activate` importable first)

  started = time.perf_counter()
  config = table_b_config(args.imbalance_ratio)
  splits = experiment.load_splits(config)
  manifest = write(args.out, splits, split={k: config[k] for k in SPLIT_KEYS})
  arrays, _ = load(args.out)  # read back: every SHA-256 checked
  del arrays
  size = travel_bytes([args.out])
  print(f"Wrote {args.out}: split {manifest['fingerprint'][:12]}, "
        f"{len(splits.train_labels)} train / {len(splits.val_labels)} val / "
        f"{len(splits.test_labels)} test images, {size / 2**20:.1f} MiB, "
        f"{time.perf_counter() - started:.0f} s.")
  code = travel_bytes([p for p in ("ltjax", "experiments", "tests", "docs", "pyproject.toml",
                                    "README.md") if os.path.exists(p)])
  if size + code > MAX_TRAVEL_BYTES:
    sys.exit(f"Bundle + code = {(size + code) / 2**20:.1f} MiB, over the "
             f"{MAX_TRAVEL_BYTES / 2**20:.0f} MiB that may travel.")


if __name__ == "__main__":
  main()
