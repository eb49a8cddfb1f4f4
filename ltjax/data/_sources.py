"""Image-classification data as host arrays: any TFDS builder, CIFAR's binary layout, or arrays.

Where data lives:
- prepared TFDS datasets: `data_dir`, default `$LTJAX_DATA_DIR`, else `~/tensorflow_datasets`;
- raw archives for offline preparation: `manual_dir`, default TFDS's `<data_dir>/downloads/manual`.
  The library assumes no repository layout: a project's own copy of the archives is passed
  explicitly (the experiments pass their checkout's).
Nothing here downloads unless `download=True`; a missing or corrupt dataset raises one
`DatasetUnavailableError` saying what to download and where to put it. TensorFlow is imported only
to prepare a dataset; reading prepared array_record data goes through `tfds.data_source`.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pathlib
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from ltjax.data import _cifar_binary
from ltjax.data import _records
from ltjax.data._cifar_binary import DatasetUnavailableError

# TFDS is imported where a builder is made (those imports are exempt from PLC0415): it takes
# ~0.4 s, and reading arrays already prepared, or from `array_source`, does not need it.

_READ_CHUNK = 2048
ORDERED_BY_ID = ("cifar10", "cifar100", "cifar10_binary")


class ImageArrays(NamedTuple):
  """One split as host arrays: images u8[N, H, W, channels], labels i64[N], and C."""
  images: np.ndarray
  labels: np.ndarray
  num_classes: int


def default_data_dir() -> pathlib.Path:
  """Where prepared TFDS datasets go: `$LTJAX_DATA_DIR`, else `~/tensorflow_datasets`."""
  return pathlib.Path(os.environ.get("LTJAX_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def default_manual_dir(dataset: str, data_dir=None) -> pathlib.Path:
  """TFDS's folder for raw files downloaded by hand: `<data_dir>/downloads/manual` (the same for
  every dataset; `dataset` is accepted for callers that choose per dataset)."""
  del dataset
  return pathlib.Path(data_dir or default_data_dir()).expanduser() / "downloads" / "manual"


def is_prepared(dataset: str, data_dir=None) -> bool:
  """Whether `dataset` has been prepared under `data_dir` (default `default_data_dir()`), in any
  version or config: TFDS's `dataset_info.json` under `<data_dir>/<dataset>/`. Reads only folder
  listings (no TFDS import), so a command line can fail fast; `prepare` then asks TFDS whether
  this very version is there."""
  data_dir = pathlib.Path(data_dir or default_data_dir()).expanduser()
  # TFDS lays builders out as <name>/<version>/ or <name>/<config>/<version>/.
  return any((data_dir / dataset).glob("**/dataset_info.json"))


def _tfds_builder(dataset: str, data_dir):
  import tensorflow_datasets as tfds  # noqa: PLC0415 (lazy: see the imports)
  if dataset == "cifar10_binary":
    # Registers the `cifar10_binary` builder with TFDS.
    from ltjax.data import _tfds_cifar  # noqa: F401, PLC0415 (lazy: see the imports)
  try:
    return tfds.builder(dataset, data_dir=str(data_dir), file_format="array_record")
  except tfds.core.DatasetNotFoundError as e:
    raise ValueError(f"Unknown TFDS dataset {dataset!r}: {e}") from None


def _sha256(path: pathlib.Path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _check_offline_sources(builder, manual_dir: pathlib.Path) -> None:
  """Raises unless `download_and_prepare` can run from `manual_dir` without the network."""
  name, data_dir = builder.name, builder.data_dir
  instructions = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
  if instructions:
    if not manual_dir.is_dir() or not any(manual_dir.iterdir()):
      raise DatasetUnavailableError(
          f"{name} is not prepared under {data_dir} and must be downloaded by hand: "
          f"{instructions.strip()} Put the files in manual_dir={manual_dir} (or pass manual_dir).")
    return
  infos = builder.url_infos or {}
  if not infos or any(not info.filename for info in infos.values()):
    raise DatasetUnavailableError(
        f"{name} is not prepared under {data_dir}, and TFDS registers no file names that could be "
        f"placed in manual_dir. Prepare it on a machine with internet (download=True, or "
        f"`python -m experiments.prepare_data --dataset={name} --download`) and copy the data dir.")
  missing = [(url, info) for url, info in infos.items()
             if not (manual_dir / info.filename).is_file()]
  if missing:
    listing = "; ".join(f"{info.filename} <- {url}" for url, info in missing)
    raise DatasetUnavailableError(
        f"{name} is not prepared under {data_dir}. Offline, put these files in "
        f"manual_dir={manual_dir}: {listing}. Or pass download=True on a machine with internet.")
  for url, info in infos.items():
    path = manual_dir / info.filename
    if info.size is not None and path.stat().st_size != info.size:
      raise DatasetUnavailableError(f"{path} is corrupt: {path.stat().st_size} bytes, TFDS "
                                    f"expects {info.size}. Re-download {url}.")
    if info.checksum and _sha256(path) != info.checksum:
      raise DatasetUnavailableError(f"{path} is corrupt: its SHA-256 differs from TFDS's "
                                    f"registered {info.checksum}. Re-download {url}.")


def prepare(dataset: str, *, data_dir=None, manual_dir=None, download: bool = False):
  """Prepares a TFDS dataset (array_record) under `data_dir` if it is not there yet.

  Offline (`download=False`, the default) the raw files must be in `manual_dir`: TFDS then uses
  them without a network call. For `"cifar10"`, whose stock builder pins the archive's SHA-256,
  offline preparation builds `"cifar10_binary"` (same features and records) from the binary
  layout instead. Needs TensorFlow (`pip install ltjax[prepare]`).

  Args:
    dataset: a TFDS builder name ("fashion_mnist", "cifar10", "imagenet_lt", ...).
    data_dir: where prepared datasets live (see `default_data_dir`).
    manual_dir: the raw files (default `default_manual_dir`).
    download: let TFDS download what is missing (needs internet).

  Returns:
    The prepared `tfds.core.DatasetBuilder`.
  """
  data_dir = pathlib.Path(data_dir or default_data_dir()).expanduser()
  manual_dir = pathlib.Path(manual_dir or default_manual_dir(dataset, data_dir)).expanduser()
  if dataset == "cifar10" and not download and not _tfds_builder("cifar10", data_dir).is_prepared():
    dataset = "cifar10_binary"
  builder = _tfds_builder(dataset, data_dir)
  if builder.is_prepared():
    return builder
  if dataset == "cifar10_binary" and _cifar_binary.find_cifar_binary("cifar10", manual_dir) is None:
    raise DatasetUnavailableError(_cifar_binary.unavailable_message("cifar10", manual_dir))
  if not download:
    _check_offline_sources(builder, manual_dir)
  with _preparing(dataset, data_dir):
    builder = _tfds_builder(dataset, data_dir)  # another process may have prepared it meanwhile
    if builder.is_prepared():
      return builder
    return _download_and_prepare(builder, dataset, data_dir, manual_dir, download)


@contextlib.contextmanager
def _preparing(dataset: str, data_dir: pathlib.Path):
  """An exclusive, blocking lock on `<data_dir>/.<dataset>.prepare.lock` while `dataset` is
  prepared: two processes starting on an unprepared data dir at once (two runs, parallel test
  workers) would otherwise both write it, and the second one's final rename fails."""
  data_dir.mkdir(parents=True, exist_ok=True)
  with open(data_dir / f".{dataset}.prepare.lock", "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
    yield


def _download_and_prepare(builder, dataset, data_dir, manual_dir, download: bool):
  """Prepares `builder` (offline from `manual_dir` unless `download`, its sources checked);
  see `prepare`."""
  import tensorflow_datasets as tfds  # noqa: PLC0415 (lazy: see the imports)
  config = tfds.download.DownloadConfig(manual_dir=str(manual_dir), try_download_gcs=download)
  try:
    builder.download_and_prepare(download_config=config)
  except DatasetUnavailableError:
    raise
  except Exception as e:  # TFDS raises many types; say which dataset and what to do.
    raise DatasetUnavailableError(
        f"Preparing {dataset} under {data_dir} from manual_dir={manual_dir} failed: "
        f"{type(e).__name__}: {e}") from e
  return builder


def _read_prepared(builder, split: str) -> ImageArrays:
  """Decodes a prepared split into arrays through `tfds.data_source` (no TensorFlow)."""
  image_key, label_key = builder.info.supervised_keys or ("image", "label")
  source = builder.as_data_source(split=split)
  images, labels, ids = [], [], []
  for start in tqdm(range(0, len(source), _READ_CHUNK), desc=f"read {builder.name}[{split}]",
                    leave=False):
    keys = range(start, min(start + _READ_CHUNK, len(source)))
    try:
      records = _read_records(source, keys)
    except Exception as e:  # the record readers raise RuntimeError and others
      corrupt = _records.corrupt_record_error(e, builder.data_dir, dataset=builder.name,
                                              data_dir=_data_dir_of(builder))
      if corrupt is None:
        raise
      raise corrupt from e
    images.extend(r[image_key] for r in records)
    labels.extend(r[label_key] for r in records)
    ids.extend(r.get("id", b"") for r in records)
  shapes = {im.shape for im in images[:1000]}
  if len(shapes) > 1:
    raise ValueError(f"{builder.name}[{split}] has images of several shapes ({sorted(shapes)[:3]} "
                     "...); stream it with `ltjax.data.streaming_batches` instead.")
  num_classes = builder.info.features[label_key].num_classes
  images, labels = np.stack(images).astype(np.uint8), np.asarray(labels, np.int64)
  order = official_order(builder.name, ids)
  if order is not None:
    images, labels = images[order], labels[order]
  return ImageArrays(images, labels, num_classes)


def _data_dir_of(builder):
  """The data_dir a builder was made with: its version folder's grandparent (or the folder of
  a builder config level above that)."""
  folder = pathlib.Path(builder.data_dir)
  levels = 3 if getattr(builder, "builder_config", None) is not None else 2
  return folder.parents[levels - 1] if len(folder.parents) >= levels else None


def _read_records(source, keys):
  try:  # Batched reads are about 4x faster than one by one.
    return source.__getitems__(keys)
  except TypeError:  # tfds.testing.mock_data's source lacks a working __getitems__.
    return [source[i] for i in keys]


def official_order(name: str, ids) -> np.ndarray | None:
  """TFDS stores records shuffled; CIFAR's "id" feature ("train_01234") gives the official file
  order back, the one LDAM-DRW's and LOS's indices refer to. None when not applicable."""
  if name not in ORDERED_BY_ID:
    return None
  texts = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
  numbers = [t.rsplit("_", 1)[-1] for t in texts]
  if not all(n.isdigit() for n in numbers):
    return None
  return np.argsort(np.asarray(numbers, np.int64), kind="stable")


def load_arrays(dataset: str, split: str = "train", *, data_dir=None, manual_dir=None,
                download: bool = False) -> ImageArrays:
  """One split of an image-classification dataset as host arrays, preparing it if needed.

  - "cifar10" / "cifar100": a prepared TFDS dataset under `data_dir` if present, else the official
    binary layout (archive or folder) in `manual_dir`, read directly and
    checked against the official member MD5s (about 3 s for CIFAR-10), else a TFDS download when
    `download=True`. Records come in the official file order on every path (TFDS's shuffled
    storage order is undone through the "id" feature), so split indices and fingerprints agree.
  - any other TFDS builder name: `prepare(...)` (offline from `manual_dir` unless `download`), then
    every record decoded through `tfds.data_source`, in TFDS's (deterministic) storage order,
    which for Fashion-MNIST is not the file order. Images must share one shape.

  Args:
    dataset: a TFDS builder name.
    split: a TFDS split ("train", "test", "train[:10%]" ...).
    data_dir, manual_dir, download: see `prepare`.

  Returns:
    `ImageArrays(images u8[N, H, W, channels], labels i64[N], num_classes)`.

  Raises:
    DatasetUnavailableError: the data is missing or corrupt (the message says what to fetch).
  """
  data_dir = pathlib.Path(data_dir or default_data_dir()).expanduser()
  if dataset == "cifar10" and not download and not is_prepared("cifar10", data_dir) and (
      is_prepared("cifar10_binary", data_dir)):
    dataset = "cifar10_binary"  # what `prepare("cifar10")` builds offline
  if (dataset in _cifar_binary.CIFAR_LAYOUTS and not download
      and not is_prepared(dataset, data_dir)):
    location = pathlib.Path(manual_dir or default_manual_dir(dataset, data_dir)).expanduser()
    if split not in _cifar_binary.CIFAR_LAYOUTS[dataset].members:
      raise ValueError(f"`split` must be 'train' or 'test' for {dataset}, got {split!r}.")
    images, labels = _cifar_binary.read_cifar_binary(dataset, location)[split]
    return ImageArrays(images, labels, _cifar_binary.CIFAR_LAYOUTS[dataset].num_classes)
  builder = prepare(dataset, data_dir=data_dir, manual_dir=manual_dir, download=download)
  return _read_prepared(builder, split)


def array_source(images, labels, *, num_classes: int | None = None) -> ImageArrays:
  """Plain arrays as a source: checks them and returns `ImageArrays` (images u8 NHWC or NHW)."""
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise ValueError(f"`images` must be [N, H, W] or [N, H, W, channels], got {images.shape}.")
  if labels.shape != images.shape[:1]:
    raise ValueError(f"`labels` shape {labels.shape} must be ({images.shape[0]},).")
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"`labels` must have an integer dtype, got {labels.dtype}.")
  num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"`labels` must lie in [0, {num_classes}), got values in "
                     f"[{labels.min()}, {labels.max()}].")
  return ImageArrays(images, labels.astype(np.int64), num_classes)
