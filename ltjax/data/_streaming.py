"""Streaming input for datasets that do not fit on the device: grain over `tfds.data_source`.

Each process reads only its share of every global batch: the epoch's permutation of the
long-tailed indices is computed identically on every process from `(seed, epoch)`, cut into
global batches (drop remainder), and process p keeps columns `[p * b, (p + 1) * b)` of each, with
`b = batch_size / process_count`. `global_batch` then assembles the per-process pieces into one
array sharded over the mesh's "data" axis (`jax.make_array_from_process_local_data`), and the
augmentation runs on the device with the same `augment` as the on-device pipeline.
"""
from __future__ import annotations

import jax
import numpy as np

from ltjax import _mesh
from ltjax.data import _sources

# grain is imported where a stream is built and TFDS where a source is opened (those imports are
# exempt from PLC0415): grain and the orbax it imports take ~1.4 s, TFDS ~0.4 s, and
# `import ltjax.data` stays light for the on-device pipeline.


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


def process_indices(indices, *, batch_size: int, epoch: int, seed: int = 0,
                    process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """This process's share of one epoch: i64[steps * batch_size / process_count] source indices.

  The permutation is `np.random.default_rng([seed, epoch]).permutation(len(indices))`, truncated
  to whole global batches (drop remainder).
  """
  indices = np.asarray(indices, np.int64)
  columns = process_columns(batch_size, process_index, process_count)
  steps = indices.size // batch_size
  if steps == 0:
    raise ValueError(f"`batch_size`={batch_size} exceeds the {indices.size} examples.")
  order = np.random.default_rng([seed, epoch]).permutation(indices.size)[:steps * batch_size]
  order = order.reshape(steps, batch_size)[:, columns]
  return indices[order.ravel()]


def _example(record, image_key: str, label_key: str):
  image = np.asarray(record[image_key])
  if image.ndim == 2:
    image = image[..., None]
  return {"image": image, "label": np.int32(record[label_key])}


def streaming_batches(source, indices, *, batch_size: int, epoch: int, seed: int = 0,
                      process_index: int | None = None, process_count: int | None = None,
                      image_key: str = "image", label_key: str = "label",
                      num_threads: int = 16, prefetch_buffer_size: int = 500):
  """One epoch of this process's batches, read and decoded by grain threads.

  Args:
    source: a random-access source of records (`tfds_source`, `tfds.data_source`, ...).
    indices: the long-tailed subset (indices into `source`).
    batch_size: the global batch size (a multiple of the process count).
    epoch, seed: select the epoch's permutation (see `process_indices`).
    process_index, process_count: default `jax.process_index()` / `jax.process_count()`.
    image_key, label_key: record fields.
    num_threads, prefetch_buffer_size: grain `ReadOptions`.

  Returns:
    A grain `IterDataset` of `{"image": u8[b, H, W, C], "label": i32[b]}` host batches,
    b = batch_size / process_count, `len(indices) // batch_size` of them.
  """
  import grain  # noqa: PLC0415 (lazy: see the imports)
  if process_index is None or process_count is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  mine = process_indices(indices, batch_size=batch_size, epoch=epoch, seed=seed,
                         process_index=process_index, process_count=process_count)
  dataset = (grain.MapDataset.source(IndexSubset(source, mine))
             .map(lambda record: _example(record, image_key, label_key))
             .batch(batch_size // process_count, drop_remainder=True))
  return dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                   prefetch_buffer_size=prefetch_buffer_size))


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
