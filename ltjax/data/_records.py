"""A corrupted prepared record file as one clear error instead of a reader's traceback.

TFDS stores prepared datasets as array_record (or tfrecord) files, both Riegeli-framed with a
hash per chunk. A flipped byte surfaces at read time as, e.g.,

    RuntimeError: Corrupted Riegeli/records file: chunk data hash mismatch (computed ..., stored
    ...), chunk at 2999874 with length 393; at byte 3000267

with no file name. `corrupt_record_error` turns such an error into a `DatasetUnavailableError`
naming the prepared folder and how to prepare it again.
"""
from __future__ import annotations

import os

from ltjax.data._cifar_binary import DatasetUnavailableError

# Fragments of the messages of Riegeli / array_record / TFRecord readers on a corrupted file.
_CORRUPTION_MARKS = ("Riegeli", "hash mismatch", "corrupted record", "Corrupted record",
                     "DataLossError", "truncated record")


def is_corrupt_record(error: BaseException) -> bool:
  """Whether `error` (or an error it was raised from) is a record reader's corruption report."""
  seen, current = set(), error
  while current is not None and id(current) not in seen:
    seen.add(id(current))
    text = f"{type(current).__name__}: {current}"
    if any(mark in text for mark in _CORRUPTION_MARKS):
      return True
    current = current.__cause__ or current.__context__
  return False


def corrupt_record_error(error: BaseException, folder, *, dataset: str | None = None,
                         data_dir=None) -> DatasetUnavailableError | None:
  """A `DatasetUnavailableError` for a corrupted record file under `folder` (the prepared
  dataset's version folder), or None when `error` is not one. The message is one line: the
  folder, the reader's first line, and the command that prepares the dataset again."""
  if not is_corrupt_record(error):
    return None
  reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
  folder = os.fspath(folder)
  command = "python -m experiments.prepare_data"
  if dataset:
    command += f" --dataset={dataset}"
  if data_dir is not None:
    command += f" --data_dir={os.fspath(data_dir)}"
  return DatasetUnavailableError(
      f"A prepared record file in {folder} is corrupt ({reason}). Delete that folder and "
      f"prepare the dataset again ({command}, or ltjax.data.prepare).")


def read_record(source, index: int):
  """`source[index]` (a TFDS data source), a corrupted record file raised as
  `corrupt_record_error` naming the source's prepared folder (the streamed paths' reads, which
  run in grain's threads or worker processes)."""
  try:
    return source[index]
  except Exception as e:  # the record readers raise RuntimeError and others
    info = getattr(source, "dataset_info", None)
    folder = getattr(info, "data_dir", None) or "the prepared dataset's folder"
    corrupt = corrupt_record_error(e, folder, dataset=getattr(info, "name", None))
    if corrupt is None:
      raise
    raise corrupt from e
