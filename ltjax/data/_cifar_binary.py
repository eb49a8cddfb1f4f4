"""CIFAR-10/100 in the official *binary* layout, read from a directory or a `.tar.gz`.

The official archives (`cifar-10-binary.tar.gz`, `cifar-100-binary.tar.gz`) hold fixed-size
records: CIFAR-10 `label u8, image u8[3072]`, CIFAR-100 `coarse u8, fine u8, image u8[3072]`, the
image channel-major (3, 32, 32). TFDS's stock `cifar10` builder pins the archive's SHA-256, so a
repacked but pixel-identical copy (the one in `../shared/data/cifar10`) is refused; here the
*members* are checked against the official MD5s instead, which accepts both.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import tarfile

import numpy as np


class DatasetUnavailableError(FileNotFoundError):
  """A dataset is missing or corrupt; the message says what to download and where to put it."""


@dataclasses.dataclass(frozen=True)
class CifarLayout:
  archive: str
  folder: str
  url: str
  members: dict  # split -> tuple of member file names, in record order
  md5: dict  # member file name -> official MD5
  label_bytes: int  # bytes before the image in each record; the fine label is the last of them
  num_classes: int


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout(
        archive="cifar-10-binary.tar.gz", folder="cifar-10-batches-bin",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        members={"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
                 "test": ("test_batch.bin",)},
        md5={"data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
             "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
             "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
             "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
             "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
             "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d"},
        label_bytes=1, num_classes=10),
    # MD5s from a public loader registry, not yet checked against a real copy (shared README).
    "cifar100": CifarLayout(
        archive="cifar-100-binary.tar.gz", folder="cifar-100-binary",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        members={"train": ("train.bin",), "test": ("test.bin",)},
        md5={"train.bin": "6172c7755cfe09b2fe270c85cebc1b15",
             "test.bin": "4499cfba6c016c1be1438163640a0898"},
        label_bytes=2, num_classes=100),
}
_RECORD_IMAGE_BYTES = 3 * 32 * 32
# batches.meta.txt of the official release, in label order.
CIFAR10_CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                       "ship", "truck"]


def _layout(dataset: str) -> CifarLayout:
  if dataset not in CIFAR_LAYOUTS:
    raise ValueError(f"`dataset` must be one of {sorted(CIFAR_LAYOUTS)}, got {dataset!r}.")
  return CIFAR_LAYOUTS[dataset]


def find_cifar_binary(dataset: str, location) -> pathlib.Path | None:
  """The archive or extracted folder of `dataset` at `location` (a file, or a folder holding the
  archive, the extracted folder, or the members themselves); None when absent."""
  layout, location = _layout(dataset), pathlib.Path(location).expanduser()
  candidates = [location, location / layout.archive, location / layout.folder]
  for path in candidates:
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
      return path
    if path.is_dir() and all((path / m).is_file() for m in layout.md5):
      return path
  return None


def unavailable_message(dataset: str, location) -> str:
  layout = _layout(dataset)
  return (f"{dataset} (official binary layout) not found at {location}. Download {layout.url} "
          f"and put `{layout.archive}` (or its extracted `{layout.folder}/` folder) there, or "
          f"pass its folder as `manual_dir`.")


def _read_members(dataset: str, path: pathlib.Path) -> dict[str, bytes]:
  layout = _layout(dataset)
  if path.is_dir():
    return {name: (path / name).read_bytes() for name in layout.md5}
  found = {}
  try:
    with tarfile.open(path) as tar:
      for member in tar.getmembers():
        name = pathlib.PurePosixPath(member.name).name
        fileobj = tar.extractfile(member) if member.isfile() and name in layout.md5 else None
        if fileobj is not None:  # None for anything but a regular file
          found[name] = fileobj.read()
  except (tarfile.TarError, OSError, EOFError) as e:
    raise DatasetUnavailableError(f"{path} is not a readable archive ({e}). "
                                  + unavailable_message(dataset, path.parent)) from e
  missing = sorted(set(layout.md5) - set(found))
  if missing:
    raise DatasetUnavailableError(f"{path} lacks {missing}. " +
                                  unavailable_message(dataset, path.parent))
  return found


def _verify_md5(dataset: str, path, members: dict[str, bytes]) -> None:
  layout = _layout(dataset)
  for name, data in members.items():
    digest = hashlib.md5(data).hexdigest()
    if digest != layout.md5[name]:
      raise DatasetUnavailableError(
          f"{dataset} member {name} in {path} is corrupt: MD5 {digest}, official "
          f"{layout.md5[name]}. Re-download {layout.url}.")


def _decode(dataset: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
  layout = _layout(dataset)
  record = layout.label_bytes + _RECORD_IMAGE_BYTES
  if len(data) % record:
    raise DatasetUnavailableError(f"{dataset}: a member's size {len(data)} is not a multiple of "
                                  f"the {record}-byte record.")
  records = np.frombuffer(data, np.uint8).reshape(-1, record)
  labels = records[:, layout.label_bytes - 1].astype(np.int64)
  images = records[:, layout.label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def read_cifar_binary(dataset: str, location, *, verify: bool = True
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads CIFAR-10/100 from the official binary layout, checking each member's official MD5.

  Args:
    dataset: "cifar10" or "cifar100" (CIFAR-100 labels are the fine labels).
    location: the archive, or a folder holding the archive, `cifar-10-batches-bin/` or the members.
    verify: check the members' MD5s (about 0.3 s for CIFAR-10).

  Returns:
    `{"train": (images, labels), "test": (images, labels)}` with images u8[N, 32, 32, 3] (HWC)
    and labels i64[N], in the official record order (the order TFDS's builder also uses).

  Raises:
    DatasetUnavailableError: the data is missing, truncated or fails its MD5 check.
  """
  path = find_cifar_binary(dataset, location)
  if path is None:
    raise DatasetUnavailableError(unavailable_message(dataset, location))
  members = _read_members(dataset, path)
  if verify:
    _verify_md5(dataset, path, members)
  layout = _layout(dataset)
  out = {}
  for split, names in layout.members.items():
    parts = [_decode(dataset, members[name]) for name in names]
    out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
  return out
