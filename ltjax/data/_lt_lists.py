"""Splits defined by list files: ImageNet-LT, Places-LT and iNaturalist 2018.

The long-tailed ImageNet / Places / iNaturalist benchmarks (OLTR, Liu et al. 2019; decoupling, Kang
et al. 2020) are fixed by text lists, one image per line, `<relative image path> <class index>`
(facebookresearch/classifier-balancing `data/`). A list is the split: no subsampling draw is left,
so the split's fingerprint is the SHA-256 of the list's lines in canonical form
(`"<path> <label>\\n"` each), which equals the SHA-256 of the published file.

Pure NumPy; nothing here reads images.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib

import numpy as np

# The list-defined datasets (members of the `lt_lists` TFDS family, `ltjax.data._tfds_lt`).
LIST_DATASETS = ("imagenet_lt", "places_lt", "inat18")

# Many / medium / few by *training* count (OLTR `shot_acc`, GALA, LOS; docs/methods.md §6):
# many n > 100, few n < 20, medium 20 <= n <= 100.
MANY_SHOT = 100
FEW_SHOT = 20


@dataclasses.dataclass(frozen=True)
class ListSplit:
  """One split read from a list file.

  Attributes:
    paths: the N relative image paths, in file order.
    labels: i64[N] class indices, in file order.
    num_classes: C.
    class_counts: i64[C] images per class.
    fingerprint: SHA-256 of the canonical lines (the file's SHA-256 for a canonical file).
  """
  paths: tuple[str, ...]
  labels: np.ndarray
  num_classes: int
  class_counts: np.ndarray
  fingerprint: str

  def __len__(self) -> int:
    return len(self.paths)

  def summary(self) -> dict:
    """A JSON-ready record of the split (no paths), for results files and checkpoints."""
    groups = shot_groups(self.class_counts)
    return dict(split_fingerprint=self.fingerprint, num_images=len(self.paths),
                num_classes=self.num_classes, class_counts=self.class_counts.tolist(),
                **{f"num_{name}": int(mask.sum()) for name, mask in groups.items()})


def parse_list(lines, *, num_classes: int | None = None, source: str = "<list>") -> ListSplit:
  """A `ListSplit` from the lines of a list (`<relative path> <class index>` each).

  Args:
    lines: an iterable of strings; blank lines are skipped; the path may not contain whitespace.
    num_classes: C; default `max(label) + 1`. Classes without images get count 0.
    source: a name for error messages.

  Raises:
    ValueError: a malformed line (with its number), a negative or out-of-range label, a path that
      is absolute or leaves the image root, a duplicated path, or an empty list.
  """
  paths, labels, seen = [], [], set()
  for number, line in enumerate(lines, start=1):
    fields = line.split()
    if not fields:
      continue
    if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
      raise ValueError(f"{source}:{number}: expected '<relative path> <class index>', got "
                       f"{line.rstrip()!r}.")
    path, label = fields[0], int(fields[1])
    if path.startswith("/") or ".." in pathlib.PurePosixPath(path).parts:
      raise ValueError(f"{source}:{number}: {path!r} must be relative to the image root.")
    if label < 0:
      raise ValueError(f"{source}:{number}: negative class index {label}.")
    if path in seen:
      raise ValueError(f"{source}:{number}: {path!r} is listed twice.")
    seen.add(path)
    paths.append(path)
    labels.append(label)
  if not paths:
    raise ValueError(f"{source} lists no images.")
  labels = np.asarray(labels, np.int64)
  if num_classes is None:
    num_classes = int(labels.max()) + 1
  if labels.max() >= num_classes:
    raise ValueError(f"{source}: class index {int(labels.max())} is outside [0, {num_classes}).")
  digest = hashlib.sha256()
  for path, label in zip(paths, labels):
    digest.update(f"{path} {label}\n".encode())
  return ListSplit(paths=tuple(paths), labels=labels, num_classes=int(num_classes),
                   class_counts=np.bincount(labels, minlength=num_classes).astype(np.int64),
                   fingerprint=digest.hexdigest())


def read_list(path, *, num_classes: int | None = None) -> ListSplit:
  """`parse_list` of a list file (UTF-8)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"List file {path} does not exist.")
  with open(path, encoding="utf-8") as f:
    return parse_list(f, num_classes=num_classes, source=str(path))


def shot_groups(class_counts, *, many: int = MANY_SHOT, few: int = FEW_SHOT) -> dict:
  """Boolean masks `{"many", "medium", "few"}` over classes by training count: many `n > many`,
  medium `few <= n <= many`, few `n < few` (the thresholds of `ltjax.metrics.shot_accuracy`)."""
  counts = np.asarray(class_counts)
  if counts.ndim != 1:
    raise ValueError(f"`class_counts` must be 1-D, got shape {counts.shape}.")
  return {"many": counts > many, "medium": (counts >= few) & (counts <= many),
          "few": counts < few}
