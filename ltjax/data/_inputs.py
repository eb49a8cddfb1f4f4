"""The inputs of the one training loop (`ltjax.train.fit`): device-resident arrays, arrays
streamed from the host, and streamed image lists.

An input is two things, one per side of the compiled step:

- `batch_fn(key, batch, step, size) -> {"image": f[b, ...], "label": i32[b]}`, traced inside
  the step at build time (`ltjax.train.train_step_fn(batch_fn=input.batch_fn, ...)`): it turns
  what the loop hands the step into the model's batch (for device arrays: the gather by the
  step's row of the epoch order plus augmentation and normalisation, fused into the compiled
  step, so nothing crosses to the host during an epoch). `key` is the step's augmentation key,
  `step` the global step counter (traced) and `size` the examples of the epoch's partial last
  batch (static; None: a full batch).
- `epoch_batches(rng, epoch, start_step)`, run by the loop on the host: an iterator over the
  batches of steps `start_step, ..., steps_per_epoch - 1` of epoch `epoch` (`rng` is the run's
  key, `TrainState.rng`).

plus `steps_per_epoch` and `examples_per_epoch`. The epoch's order is always
`ltjax.data.epoch_order` of (rng, epoch), so an input restarted at any step yields exactly the
batches an uninterrupted run would (mid-epoch resume); each process reads its columns of the
global order (`ltjax.data.process_columns`) and `global_batch` assembles them over the "data" axis.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ltjax import _mesh
from ltjax.data import _augment
from ltjax.data import _device
from ltjax.data import _image_stream
from ltjax.data import _streaming


@dataclasses.dataclass(frozen=True)
class _OnPipelineOrder:
  """An array input whose epoch is the on-device pipeline's order: its shape is the pipeline's."""
  pipeline: _device.DevicePipeline

  @property
  def steps_per_epoch(self) -> int:
    return self.pipeline.steps_per_epoch

  @property
  def examples_per_epoch(self) -> int:
    return self.pipeline.num_examples


@dataclasses.dataclass(frozen=True)
class DeviceArrays(_OnPipelineOrder):
  """The training split held on the device whole (replicated); each step gathers and augments
  its row of the epoch's order inside the compiled step (`DevicePipeline.gather`).

  The batch handed to the step is `{"images", "labels", "order"}`: the resident arrays and the
  epoch's order `i32[steps, B]` (one device computation per epoch). With a leading replica axis
  on every array and a vmapped `order` (`ltjax.train.make_replica_epoch_order`), the same input
  feeds vmapped replicas.

  Attributes:
    pipeline: the static pipeline (sampler, batch, augmentation, mesh).
    images: the training images on the device (`DevicePipeline.place`).
    labels: their labels on the device.
    class_counts: the training class counts on the device.
    order: `(rng, epoch, labels, class_counts) -> i32[steps, B]` (default: the jitted
      `pipeline.epoch_order`, replicated on the mesh).
  """
  images: Any
  labels: Any
  class_counts: Any
  order: Callable | None = None

  def batch_fn(self, key, batch, step, size=None) -> dict:
    return order_batch_fn(self.pipeline.gather, steps_per_epoch=self.steps_per_epoch)(
        key, batch, step, size)

  def epoch_batches(self, rng, epoch: int, start_step: int = 0) -> Iterator[dict]:
    order_fn = self.order or _compiled_order(self.pipeline)
    order = order_fn(rng, jnp.int32(epoch), self.labels, self.class_counts)
    batch = {"images": self.images, "labels": self.labels, "order": order}
    for _ in range(start_step, self.steps_per_epoch):
      yield batch


def order_batch_fn(gather: Callable, *, steps_per_epoch: int) -> Callable:
  """The `batch_fn(key, batch, step, size)` of device-resident data: `gather(key, images, labels,
  indices)` (`DevicePipeline.gather`, `device_batch`) of the indices of global step `step`,
  row `step % steps_per_epoch` of `batch["order"]` (its first `size`: the partial last batch),
  from `batch["images"]` and `batch["labels"]`."""

  def batch_fn(key, batch, step, size=None):
    indices = _device.step_indices(batch["order"], step, steps_per_epoch=steps_per_epoch,
                                   size=size)
    return gather(key, batch["images"], batch["labels"], indices)

  return batch_fn


@functools.lru_cache(maxsize=64)
def _compiled_order(pipeline: _device.DevicePipeline):
  out = None if pipeline.mesh is None else _mesh.replicated(pipeline.mesh)
  return jax.jit(pipeline.epoch_order, out_shardings=out)


def array_batches(images, labels, order, *, start_step: int = 0,
                  process_index: int | None = None, process_count: int | None = None,
                  num_threads: int = 2, prefetch_buffer_size: int = 4):
  """This process's columns of the global batches `images[order[s]]`, `s >= start_step`,
  gathered from host arrays by grain threads (prefetched). Padding (-1, the kept last partial
  batch) reads image 0; the step never uses those rows.

  Returns:
    An iterator of `{"image": images.dtype[b, ...], "label": i32[b]}`, b = B / process_count.
  """
  import grain  # noqa: PLC0415 (lazy: grain and the orbax it imports take ~1.4 s)
  order = np.asarray(order)
  mine = order[:, _streaming.process_columns(order.shape[1], process_index, process_count)]

  def batch(step):
    rows = np.maximum(mine[step], 0)
    return {"image": images[rows], "label": np.asarray(labels[rows], np.int32)}

  dataset = grain.MapDataset.range(start_step, order.shape[0]).map(batch)
  return iter(dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)))


@dataclasses.dataclass(frozen=True)
class HostArrays(_OnPipelineOrder):
  """A training split too big for the device, streamed from host arrays batch by batch
  (`array_batches`), gathered by the on-device pipeline's epoch order; the step augments and
  normalises the gathered global batch with the on-device pipeline's draws (its gather is then
  the identity), so both array inputs train the same batches.

  Attributes:
    pipeline: the on-device pipeline whose order and augmentation are used.
    images: the host images.
    labels: the host labels.
    device_labels: the labels on the device (the order's sampler).
    class_counts: the class counts on the device.
    mesh: the data mesh the global batch is assembled over.
  """
  images: Any
  labels: Any
  device_labels: Any
  class_counts: Any
  mesh: Any

  def batch_fn(self, key, batch, step, size=None) -> dict:
    del step
    rows = batch["image"].shape[0] if size is None else size
    return self.pipeline.gather(key, batch["image"], batch["label"],
                                jnp.arange(rows, dtype=jnp.int32))

  def epoch_batches(self, rng, epoch: int, start_step: int = 0) -> Iterator[dict]:
    order = np.asarray(jax.device_get(_compiled_order(self.pipeline)(
        rng, jnp.int32(epoch), self.device_labels, self.class_counts)))
    for local in array_batches(self.images, self.labels, order, start_step=start_step):
      yield _streaming.global_batch(local, self.mesh)


@dataclasses.dataclass(frozen=True)
class ImageLists:
  """Encoded images of a list-defined split (ImageNet-LT, iNaturalist 2018, Places-LT),
  decoded and augmented on the host by grain (`train_image_batches`); the step only normalises.

  Attributes:
    source: random-access records (`lt_lists_source`).
    labels: i[N] host labels.
    class_counts: f32[C].
    batch_size: the global batch.
    steps_per_epoch: the steps of an epoch (a smoke test may truncate the epoch).
    sampler: the epoch order's sampler (`SAMPLERS`).
    seed: the augmentation draws' seed.
    size: the crop side.
    mesh: the data mesh.
    mean: normalisation mean of x / 255.
    std: normalisation standard deviation of x / 255.
    worker_count: grain worker processes (> 0 needs parsed absl flags; see
      `train_image_batches`).
    color_jitter: `(brightness, contrast, saturation)`.
  """
  source: Any
  labels: Any
  class_counts: Any
  batch_size: int
  steps_per_epoch: int
  sampler: str
  seed: int
  size: int
  mesh: Any
  mean: tuple
  std: tuple
  worker_count: int = 0
  color_jitter: tuple = ()

  @property
  def examples_per_epoch(self) -> int:
    return self.steps_per_epoch * self.batch_size

  def batch_fn(self, key, batch, step, size=None) -> dict:
    del key, step, size  # decoded and augmented on the host
    return {"image": _augment.normalize(batch["image"], mean=self.mean, std=self.std),
            "label": batch["label"]}

  def epoch_batches(self, rng, epoch: int, start_step: int = 0) -> Iterator[dict]:
    order = np.asarray(jax.device_get(_device.epoch_order(
        jax.device_get(rng), np.int32(epoch), self.labels, self.class_counts,
        sampler=self.sampler, steps=self.steps_per_epoch, batch_size=self.batch_size)))
    for local in _image_stream.train_image_batches(
        self.source, order, epoch=epoch, seed=self.seed, size=self.size, start_step=start_step,
        worker_count=self.worker_count, color_jitter=self.color_jitter):
      yield _streaming.global_batch(local, self.mesh)
