"""Streaming pieces shared by the streamed inputs (`ltjax.data.HostArrays`, `ImageLists`):
a random-access TFDS source, the columns of a global batch each process reads, and the assembly
of every process's piece into one global batch.

Each process reads only its share of every global batch: the epoch's order (`epoch_order`, the
same on every process) is cut into global batches of B, and process p of P keeps columns
`[p * B / P, (p + 1) * B / P)` of each (`process_columns`). `global_batch` then assembles the
per-process pieces into one array sharded over the mesh's "data" axis
(`jax.make_array_from_process_local_data`).
"""
from __future__ import annotations

import jax
import numpy as np

from ltjax import _mesh
from ltjax.data import _sources

# TFDS is imported where a source is opened (exempt from PLC0415, ~0.4 s): `import ltjax.data`
# stays light for the on-device pipeline.


class IndexSubset:
  """A random-access source restricted to (and reordered by) `indices`; grain-compatible."""

  def __init__(self, source, indices):
    self._source = source
    self._indices = np.asarray(indices, np.int64)
    if self._indices.ndim != 1:
      raise ValueError(f"`indices` must be 1-D, got shape {self._indices.shape}.")
    if self._indices.size and (self._indices.min() < 0 or self._indices.max() >= len(source)):
      raise ValueError(f"`indices` must lie in [0, {len(source)}).")

  def __len__(self) -> int:
    return int(self._indices.size)

  def __getitem__(self, index):
    return self._source[int(self._indices[index])]

  def __repr__(self) -> str:
    return f"IndexSubset({len(self)} of {self._source!r})"


def tfds_source(dataset: str, split: str = "train", *, data_dir=None, manual_dir=None,
                download: bool = False):
  """A random-access source of a prepared TFDS split (preparing it first if needed).

  Record i is the i-th record in the order `load_arrays` uses, so indices from
  `longtail_indices(load_arrays(...).labels, ...)` address the same images here (for CIFAR, the
  official file order, recovered from the "id" feature).
  """
  builder = _sources.prepare(dataset, data_dir=data_dir, manual_dir=manual_dir, download=download)
  # tfds wraps `as_data_source` in a wrapt decorator whose type drops its first parameter.
  source = builder.as_data_source(split=split)  # pyright: ignore[reportCallIssue]
  if builder.name in _sources.ORDERED_BY_ID:
    import tensorflow_datasets as tfds  # noqa: PLC0415 (lazy: see the imports)
    ids = builder.as_data_source(split=split,  # pyright: ignore[reportCallIssue]
                                 decoders={"image": tfds.decode.SkipDecoding()})
    order = _sources.official_order(builder.name, [ids[i]["id"] for i in range(len(ids))])
    if order is not None:
      source = IndexSubset(source, order)
  return source


def process_columns(batch_size: int, process_index: int | None = None,
                    process_count: int | None = None) -> slice:
  """The columns `[p * B / P, (p + 1) * B / P)` of a global batch of `batch_size` that process
  p of P reads (default: this process of this job); `global_batch` puts them back together.

  Raises:
    ValueError: the batch is not a positive multiple of P, or p is not in [0, P).
  """
  if process_index is None or process_count is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"The global batch ({batch_size}) must be a positive multiple of the "
                     f"{process_count} processes.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"`process_index`={process_index} must lie in [0, {process_count}).")
  local = batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def global_batch(local_batch: dict, mesh) -> dict:
  """Assembles every process's host batch into global arrays sharded over the "data" axis."""
  sharding = _mesh.batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
