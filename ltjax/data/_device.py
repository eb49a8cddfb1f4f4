"""On-device input pipeline for datasets that fit in accelerator memory (CIFAR, Fashion-MNIST).

The whole split is placed on the device(s) once, replicated. Each epoch's order is a permutation
drawn from a PRNG key; each step gathers its batch by index, shards it over the mesh's "data"
axis, augments and normalises it, all inside the caller's compiled step, so the host only
dispatches steps. Keys: `epoch_key = fold_in(key, epoch)`; the order uses `fold_in(epoch_key, 0)`,
step s augments with `fold_in(fold_in(epoch_key, 1), s)`. Everything is a deterministic function of
(key, epoch, step), bit-identical across runs and independent of the device count.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ltjax.data import _augment

DATA_AXIS = "data"


def num_steps(num_examples: int, *, batch_size: int, drop_remainder: bool = True) -> int:
  """Steps per epoch: `N // B` with drop-remainder (GALA, LA), else `ceil(N / B)` (PyTorch's
  default `DataLoader(drop_last=False)`, LDAM-DRW)."""
  if batch_size <= 0:
    raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
  steps = num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)
  if steps == 0:
    raise ValueError(f"`batch_size`={batch_size} exceeds the {num_examples} examples with "
                     "drop_remainder=True: an epoch would have no step.")
  return steps


def epoch_order(key, num_examples: int, *, batch_size: int, drop_remainder: bool = True):
  """The epoch's shuffled example indices, one row per step.

  Args:
    key: the epoch's PRNG key.
    num_examples: N.
    batch_size: B (global).
    drop_remainder: drop the last `N % B` examples of the permutation (static shapes, as the
      GALA/LA code does); otherwise the last row is padded with -1 (masked out by `device_batch`).

  Returns:
    i32[steps, B] indices into the training arrays (-1 = padding).
  """
  steps = num_steps(num_examples, batch_size=batch_size, drop_remainder=drop_remainder)
  perm = jax.random.permutation(key, num_examples).astype(jnp.int32)
  total = steps * batch_size
  if total <= num_examples:
    perm = perm[:total]
  else:
    perm = jnp.concatenate([perm, jnp.full((total - num_examples,), -1, jnp.int32)])
  return perm.reshape(steps, batch_size)


def device_batch(key, images, labels, indices, *, mesh=None, mean=None, std=None,
                 crop_padding: int = 4, flip: bool = True, cutout_size: int = 0,
                 autoaugment: bool = False) -> dict:
  """Gathers, augments and normalises one batch, each device working on its own shard; jittable.

  The random draws are made for the whole batch (so the result does not depend on the device
  count); with a mesh, a `shard_map` over "data" gathers each device's rows from its replica of
  `images` and augments them there, so no image crosses devices.

  Args:
    key: the step's augmentation key.
    images: u8[N, H, W, C] on the device (replicated over `mesh`).
    labels: int[N].
    indices: i32[B] one row of `epoch_order` (-1 = padding).
    mesh: a mesh with a "data" axis (Auto or Explicit) over which the batch is sharded, or None.
    mean, std: per-channel normalisation of `x / 255` (None: return `x / 255`).
    crop_padding, flip, cutout_size, autoaugment: see `augment`.

  Returns:
    `{"image": f32[B, H, W, C], "label": i32[B], "mask": bool[B]}`, sharded over "data".
  """
  params = _augment.augment_params(key, indices.shape[0], *images.shape[1:3],
                                   crop_padding=crop_padding, autoaugment=autoaugment)

  def local(images, labels, indices, params):
    mask = indices >= 0
    safe = jnp.where(mask, indices, 0)
    batch = _augment.apply_augment(jnp.take(images, safe, axis=0), params,
                                   crop_padding=crop_padding, flip=flip, cutout_size=cutout_size,
                                   autoaugment=autoaugment)
    if mean is None:
      batch = batch.astype(jnp.float32) / 255.0
    else:
      batch = _augment.normalize(batch, mean=mean, std=std)
    return {"image": batch, "label": jnp.take(labels, safe, axis=0).astype(jnp.int32),
            "mask": mask}

  if mesh is None:
    return local(images, labels, indices, params)
  data = jax.P(DATA_AXIS)
  if mesh.axis_types[mesh.axis_names.index(DATA_AXIS)] == jax.sharding.AxisType.Explicit:
    # Explicit meshes type shardings: the (replicated) draws must be resharded by name.
    indices, params = jax.reshard((indices, params), jax.NamedSharding(mesh, data))
  return jax.shard_map(local, mesh=mesh, in_specs=(jax.P(), jax.P(), data, data),
                       out_specs=data)(images, labels, indices, params)


@dataclasses.dataclass(frozen=True)
class DevicePipeline:
  """A training split held on the device(s), with its epoch order and per-step batches.

  Usage inside a compiled train step:

      pipe = DevicePipeline.create(images, labels, batch_size=128, mesh=mesh,
                                   mean=CIFAR_MEAN, std=CIFAR_STD)
      order = pipe.epoch_order(key, epoch)                  # i32[steps, B]
      @jax.jit
      def step(state, images, labels, order, step):
        batch = pipe.batch(key, epoch, step, images, labels, order)
        ...
      for s in range(pipe.steps_per_epoch): state = step(state, pipe.images, pipe.labels, order, s)

  `batches(key, epoch)` iterates over an epoch's batches with a compiled gather, for use outside
  a step (evaluation of the pipeline alone, benchmarks).

  Attributes:
    images: u8[N, H, W, C], replicated over `mesh`.
    labels: i32[N], replicated.
    batch_size: the global batch size (a multiple of the mesh size).
    mesh: the mesh (a "data" axis), or None for the default device.
    mean, std: normalisation constants (None: `x / 255`).
    crop_padding, flip, cutout_size, autoaugment: the augmentation (see `augment`).
    drop_remainder: see `epoch_order`.
  """
  images: jax.Array
  labels: jax.Array
  batch_size: int
  mesh: jax.sharding.Mesh | None = None
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None
  crop_padding: int = 4
  flip: bool = True
  cutout_size: int = 0
  drop_remainder: bool = True
  autoaugment: bool = False

  @classmethod
  def create(cls, images, labels, *, batch_size: int, mesh=None, **kwargs) -> DevicePipeline:
    """Checks the arguments and places host arrays on the mesh, replicated, once."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4:
      raise ValueError(f"`images` must be [N, H, W, C], got shape {images.shape}.")
    if labels.shape != images.shape[:1]:
      raise ValueError(f"`labels` shape {labels.shape} must be ({images.shape[0]},).")
    if mesh is not None and batch_size % mesh.devices.size:
      raise ValueError(f"`batch_size`={batch_size} must be a multiple of the "
                       f"{mesh.devices.size} devices of the mesh.")
    num_steps(len(labels), batch_size=batch_size, drop_remainder=kwargs.get("drop_remainder", True))
    if (kwargs.get("mean") is None) != (kwargs.get("std") is None):
      raise ValueError("Pass both `mean` and `std`, or neither.")
    if mesh is None:
      put = jax.device_put
    else:
      sharding = jax.NamedSharding(mesh, jax.P())
      def put(x):
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return cls(images=put(images), labels=put(labels.astype(np.int32)), batch_size=batch_size,
               mesh=mesh, **kwargs)

  @property
  def num_examples(self) -> int:
    return int(self.labels.shape[0])

  @property
  def steps_per_epoch(self) -> int:
    return num_steps(self.num_examples, batch_size=self.batch_size,
                     drop_remainder=self.drop_remainder)

  def epoch_order(self, key, epoch):
    """i32[steps, B]: the permutation of epoch `epoch` (jittable; `epoch` may be traced)."""
    return epoch_order(jax.random.fold_in(jax.random.fold_in(key, epoch), 0), self.num_examples,
                       batch_size=self.batch_size, drop_remainder=self.drop_remainder)

  def batch(self, key, epoch, step, images, labels, order) -> dict:
    """The batch of `step` (jittable; pass `self.images` / `self.labels` as jit arguments so they
    are not baked into the executable as constants)."""
    aug_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, epoch), 1), step)
    return device_batch(aug_key, images, labels, order[step], mesh=self.mesh, mean=self.mean,
                        std=self.std, crop_padding=self.crop_padding, flip=self.flip,
                        cutout_size=self.cutout_size, autoaugment=self.autoaugment)

  @functools.cached_property
  def _compiled(self):
    return jax.jit(self.epoch_order), jax.jit(self.batch)

  def batches(self, key, epoch: int) -> Iterator[dict]:
    """Iterates over the batches of one epoch (each one compiled gather + augmentation)."""
    order_fn, batch_fn = self._compiled
    order = order_fn(key, epoch)
    for step in range(self.steps_per_epoch):
      yield batch_fn(key, epoch, step, self.images, self.labels, order)
