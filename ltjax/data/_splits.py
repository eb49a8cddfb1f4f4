"""Long-tailed subsets of a balanced training set, their fingerprints and validation splits.

Every CIFAR-LT paper uses the same per-class counts (docs/methods.md §1.1),

  n_c = floor(n_max * (1 / rho) ** (c / (C - 1))),   c = 0 .. C-1 (class 0 is the head),

with imbalance ratio rho = n_0 / n_{C-1}, but they keep different images: LDAM-DRW shuffles each
class with NumPy's legacy global RNG seeded once, LOS keeps the first n_c in file order, GALA/BALMS
draw unseeded. A split here is a deterministic index set into the source split, identified by the
SHA-256 of its indices.
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

PROFILES = ("exp", "step")
PROTOCOLS = ("ldam", "first", "random")
VAL_SHORTFALL = ("borrow", "partial", "error")


def _check_imbalance_ratio(imbalance_ratio) -> float:
  rho = float(imbalance_ratio)
  if not np.isfinite(rho) or rho < 1.0:
    raise ValueError(f"`imbalance_ratio` must be a finite number >= 1 (n_max / n_min), got "
                     f"{imbalance_ratio!r}.")
  return rho


def longtail_counts(max_per_class: int, num_classes: int, *, imbalance_ratio: float,
                    profile: str = "exp") -> np.ndarray:
  """Per-class image counts of a long-tailed subset, head class first.

  "exp" (Cui et al. 2019; LDAM-DRW `get_img_num_per_cls`):
  `n_c = int(max_per_class * (1 / imbalance_ratio) ** (c / (C - 1)))`, evaluated in float64 in
  exactly that order so the floors match the official code (CIFAR-10, n_max 5000: 20,431 / 13,996 /
  12,406 / 11,203 images at ratio 10 / 50 / 100 / 200). "step" (LDAM-DRW): the first `C // 2`
  classes keep `max_per_class`, the others `int(max_per_class / imbalance_ratio)`.

  Args:
    max_per_class: n_max, the head class's count (>= 1).
    num_classes: C (>= 1).
    imbalance_ratio: rho = n_max / n_min, >= 1 (1 gives a balanced subset).
    profile: "exp" or "step".

  Returns:
    i64[C] counts, non-increasing.

  Example (CIFAR-10-LT at imbalance ratio 100):

  >>> from ltjax.data import longtail_counts
  >>> longtail_counts(5000, 10, imbalance_ratio=100).tolist()
  [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
  """
  rho = _check_imbalance_ratio(imbalance_ratio)
  if int(max_per_class) != max_per_class or max_per_class < 1:
    raise ValueError(f"`max_per_class` must be a positive integer, got {max_per_class!r}.")
  if int(num_classes) != num_classes or num_classes < 1:
    raise ValueError(f"`num_classes` must be a positive integer, got {num_classes!r}.")
  if profile not in PROFILES:
    raise ValueError(f"`profile` must be one of {PROFILES}, got {profile!r}.")
  n_max, num_classes = float(max_per_class), int(num_classes)
  if profile == "step":
    head = num_classes // 2
    return np.array([int(n_max)] * head + [int(n_max / rho)] * (num_classes - head), np.int64)
  if num_classes == 1:
    return np.array([int(n_max)], np.int64)
  imb_factor = 1.0 / rho
  return np.array([int(n_max * imb_factor ** (c / (num_classes - 1.0)))
                   for c in range(num_classes)], np.int64)


def _check_labels(labels, num_classes: int | None) -> tuple[np.ndarray, int]:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"`labels` must be 1-D (one class index per image), got shape {labels.shape}.")
  if labels.size == 0:
    raise ValueError("`labels` is empty.")
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"`labels` must have an integer dtype (class indices), got {labels.dtype}.")
  if num_classes is None:
    num_classes = int(labels.max()) + 1
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"`labels` must lie in [0, {num_classes}), got values in "
                     f"[{labels.min()}, {labels.max()}].")
  return labels.astype(np.int64), int(num_classes)


def longtail_indices(labels, *, imbalance_ratio: float, protocol: str = "ldam", seed: int = 0,
                     max_per_class: int | None = None, profile: str = "exp",
                     num_classes: int | None = None) -> np.ndarray:
  """Indices of a long-tailed subset of `labels`, grouped by class (class 0 first).

  Per class c, with `idx_c` its indices in file order and n_c from `longtail_counts`:

  - "ldam": the LDAM-DRW code exactly (kaidic/LDAM-DRW `imbalance_cifar.py`):
    `np.random.seed(seed)` once, then for c = 0 .. C-1 `np.random.shuffle(idx_c)`, keep
    `idx_c[:n_c]` (in shuffled order). A private `np.random.RandomState(seed)` replays the same
    stream without touching NumPy's global RNG. Subsets at different ratios are nested.
  - "first": `idx_c[:n_c]`, the first n_c in file order (the LOS code).
  - "random": `n_c` indices drawn without replacement by `np.random.default_rng(seed)`, sorted.

  Args:
    labels: int[N] class indices of the full (balanced) training split.
    imbalance_ratio: rho >= 1.
    protocol: "ldam", "first" or "random".
    seed: the subsampling seed (LDAM-DRW's `rand_number`, 0 in its code).
    max_per_class: n_max; default: the smallest class size in `labels` (N / C when balanced,
      e.g. 5000 for CIFAR-10).
    profile: "exp" or "step" (see `longtail_counts`).
    num_classes: C; default `max(labels) + 1`.

  Returns:
    i64[sum n_c] indices into `labels`.
  """
  labels, num_classes = _check_labels(labels, num_classes)
  if protocol not in PROTOCOLS:
    raise ValueError(f"`protocol` must be one of {PROTOCOLS}, got {protocol!r}.")
  available = np.bincount(labels, minlength=num_classes)
  if max_per_class is None:
    max_per_class = int(available.min())
    if max_per_class == 0:
      raise ValueError(f"Class {int(np.argmin(available))} has no images in `labels`; pass "
                       "`max_per_class` and `num_classes` explicitly.")
  counts = longtail_counts(max_per_class, num_classes, imbalance_ratio=imbalance_ratio,
                           profile=profile)
  short = np.flatnonzero(counts > available)
  if short.size:
    c = int(short[0])
    raise ValueError(f"Class {c} has {available[c]} images but the long-tailed profile asks for "
                     f"{counts[c]} (max_per_class={max_per_class}).")
  legacy_rng = np.random.RandomState(seed)
  rng = np.random.default_rng(seed)
  kept = []
  for c in range(num_classes):
    idx = np.flatnonzero(labels == c)
    if protocol == "ldam":
      legacy_rng.shuffle(idx)
      kept.append(idx[:counts[c]])
    elif protocol == "first":
      kept.append(idx[:counts[c]])
    else:
      kept.append(np.sort(rng.choice(idx, size=counts[c], replace=False)))
  return np.concatenate(kept).astype(np.int64)


def split_fingerprint(indices) -> str:
  """SHA-256 (hex) of the indices as little-endian int64, in the given order."""
  indices = np.asarray(indices)
  if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
    raise ValueError(f"`indices` must be a 1-D integer array, got {indices.dtype}{indices.shape}.")
  return hashlib.sha256(indices.astype("<i8").tobytes()).hexdigest()


def validation_indices(labels, train_indices, *, per_class: int, seed: int = 0,
                       shortfall: str = "borrow", num_classes: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
  """A class-balanced validation split carved from the images a long-tailed subset discarded.

  For each class c, `per_class` images are drawn without replacement (sorted) by
  `np.random.default_rng([seed, 1])` from the class's images that are not in `train_indices`.
  When subsampling keeps every image of a class (with n_max equal to the class size, the head
  class never has spare images), the class has fewer than `per_class` spare images, and
  `shortfall` decides:

  - "borrow" (default): the missing images are moved from the end of that class's training
    subset to the validation split, so validation stays balanced and the training count of that
    class drops by the shortfall (CIFAR-10-LT, 20 per class: class 0 trains on 4,980 not 5,000).
  - "partial": the class keeps all its training images and gets fewer (maybe zero) validation
    images, so validation is not balanced.
  - "error": raise `ValueError`.

  Args:
    labels: int[N] class indices of the full training split.
    train_indices: int[M] the long-tailed subset (e.g. from `longtail_indices`).
    per_class: validation images per class (>= 0).
    seed: seeds the validation draw (independent of the subsampling draws).
    shortfall: "borrow", "partial" or "error".
    num_classes: C; default `max(labels) + 1`.

  Returns:
    `(train_indices, val_indices)`: the (possibly reduced) training subset in its original order
    and the validation indices grouped by class; disjoint.
  """
  labels, num_classes = _check_labels(labels, num_classes)
  train_indices = np.asarray(train_indices, np.int64)
  if int(per_class) != per_class or per_class < 0:
    raise ValueError(f"`per_class` must be a non-negative integer, got {per_class!r}.")
  if shortfall not in VAL_SHORTFALL:
    raise ValueError(f"`shortfall` must be one of {VAL_SHORTFALL}, got {shortfall!r}.")
  if train_indices.size and (train_indices.min() < 0 or train_indices.max() >= labels.size):
    raise ValueError(f"`train_indices` must lie in [0, {labels.size}).")
  in_train = np.zeros(labels.size, bool)
  in_train[train_indices] = True
  if per_class and shortfall != "partial":
    # Checked for every class at once, so that the message gives the largest value that works:
    # each class can give its images outside the training subset ("error") or all of them
    # ("borrow", taking the rest from its training images).
    given = labels if shortfall == "borrow" else labels[~in_train]
    available = np.bincount(given, minlength=num_classes)
    c = int(np.argmin(available))
    if available[c] < per_class:
      where = "in all" if shortfall == "borrow" else "outside the training subset"
      raise ValueError(f"Class {c} has only {available[c]} images {where}, fewer than the "
                       f"{per_class} validation images per class asked for; the largest "
                       f"possible value is {available[c]}.")
  rng = np.random.default_rng([seed, 1])
  val, dropped = [], []
  for c in range(num_classes):
    spare = np.flatnonzero((labels == c) & ~in_train)
    take = min(per_class, spare.size)
    val.append(np.sort(rng.choice(spare, size=take, replace=False)))
    missing = per_class - take
    if missing and shortfall == "borrow":  # enough images in all (checked above)
      train_c = train_indices[labels[train_indices] == c]
      moved = train_c[train_c.size - missing:]
      dropped.append(moved)
      val[-1] = np.concatenate([val[-1], np.sort(moved)])
  if dropped:
    train_indices = train_indices[~np.isin(train_indices, np.concatenate(dropped))]
  return train_indices, np.concatenate(val).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class LongTailSplit:
  """A long-tailed training subset and its validation split, as indices into one source split.

  Attributes:
    train_indices: i64[N_train] indices of the training images (grouped by class).
    val_indices: i64[N_val] indices of the validation images (grouped by class; may be empty).
    class_counts: i64[C] training images per class (after any validation borrowing).
    val_counts: i64[C] validation images per class.
    fingerprint: SHA-256 of `train_indices` (`split_fingerprint`).
    val_fingerprint: SHA-256 of `val_indices`.
    config: how the split was made (imbalance_ratio, protocol, seed, ...), JSON-ready.
  """
  train_indices: np.ndarray
  val_indices: np.ndarray
  class_counts: np.ndarray
  val_counts: np.ndarray
  fingerprint: str
  val_fingerprint: str
  config: dict

  @property
  def num_classes(self) -> int:
    return int(self.class_counts.size)

  def summary(self) -> dict:
    """A JSON-ready record of the split (no indices), for results files and checkpoints."""
    return dict(self.config, split_fingerprint=self.fingerprint,
                val_fingerprint=self.val_fingerprint, num_train=int(self.train_indices.size),
                num_val=int(self.val_indices.size), class_counts=self.class_counts.tolist(),
                val_counts=self.val_counts.tolist())


def longtail_split(labels, *, imbalance_ratio: float, protocol: str = "ldam", seed: int = 0,
                   max_per_class: int | None = None, profile: str = "exp", val_per_class: int = 0,
                   val_shortfall: str = "borrow", num_classes: int | None = None
                   ) -> LongTailSplit:
  """`longtail_indices` plus `validation_indices`, with counts and fingerprints, in one record.

  With `val_per_class=0` the training subset is exactly `longtail_indices(...)`. Arguments as in
  those two functions.
  """
  labels, num_classes = _check_labels(labels, num_classes)
  train = longtail_indices(labels, imbalance_ratio=imbalance_ratio, protocol=protocol, seed=seed,
                           max_per_class=max_per_class, profile=profile, num_classes=num_classes)
  train, val = validation_indices(labels, train, per_class=val_per_class, seed=seed,
                                  shortfall=val_shortfall, num_classes=num_classes)
  config = dict(imbalance_ratio=float(imbalance_ratio), split_protocol=protocol, split_seed=seed,
                max_per_class=max_per_class, profile=profile, val_per_class=val_per_class,
                val_shortfall=val_shortfall)
  return LongTailSplit(
      train_indices=train, val_indices=val,
      class_counts=np.bincount(labels[train], minlength=num_classes).astype(np.int64),
      val_counts=np.bincount(labels[val], minlength=num_classes).astype(np.int64),
      fingerprint=split_fingerprint(train), val_fingerprint=split_fingerprint(val), config=config)
