"""The on-device input pipeline for datasets that fit in accelerator memory (CIFAR, Fashion-MNIST).

The whole training split is placed on the device(s) once, replicated. Each epoch's order is drawn
from a PRNG key by a sampler; each step picks its row of that order, gathers the rows by index,
shards them over the mesh's "data" axis, augments and normalises them, all inside the caller's
compiled step, so the host only dispatches steps. Training (`ltjax.train.train_step_fn`), the
tests and the pipeline benchmark all run this one pipeline.

The key scheme, from the run's key `rng` (`TrainState.rng`):

    order of epoch e:          fold_in(fold_in(rng, 1), e)
    keys of global step s:     (augment_key, loss_key) = split(fold_in(fold_in(rng, 2), s))

Everything is a deterministic function of (rng, epoch, step), bit-identical across runs and
independent of the device count.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ltjax import _mesh
from ltjax.data import _augment

# "instance": a fresh permutation per epoch (a shuffled DataLoader); "class_balanced": a uniform
# class, then a uniform example of it (cRT's class-aware sampler).
SAMPLERS = ("instance", "class_balanced")
# Streams folded into the run's key, so that orders, augmentation and loss noise never collide.
_ORDER_STREAM, _STEP_STREAM = 1, 2


def order_key(rng, epoch):
  """The key of epoch `epoch`'s order: `fold_in(fold_in(rng, 1), epoch)`."""
  return jax.random.fold_in(jax.random.fold_in(rng, _ORDER_STREAM), epoch)


def step_keys(rng, step):
  """`(augment_key, loss_key)` of global step `step` (0-based, counted over all epochs):
  `split(fold_in(fold_in(rng, 2), step))`."""
  keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(rng, _STEP_STREAM), step))
  return keys[0], keys[1]


def epoch_steps(num_examples: int, *, batch_size: int, sampler: str = "instance",
                keep_last_batch: bool = False) -> tuple[int, int]:
  """`(steps_per_epoch, last_batch_size)` of an epoch over `num_examples` examples.

  With `keep_last_batch` and the instance sampler, an epoch is `ceil(N / B)` steps whose last
  one holds the `N % B` remaining examples (PyTorch's `DataLoader(drop_last=False)`, as in
  LDAM-DRW and LOS); otherwise `N // B` full steps (GALA's `int(N / B)`, and cRT's class-aware
  sampler whatever `keep_last_batch` says). `last_batch_size` is 0 when every step is full.

  Raises:
    ValueError: a non-positive batch, an unknown sampler, or an epoch without a step.
  """
  if batch_size <= 0:
    raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
  if sampler not in SAMPLERS:
    raise ValueError(f"Unknown sampler {sampler!r}; expected one of {SAMPLERS}.")
  remainder = num_examples % batch_size if keep_last_batch and sampler == "instance" else 0
  steps = num_examples // batch_size + (remainder > 0)
  if steps == 0:
    raise ValueError(f"`batch_size`={batch_size} exceeds the {num_examples} examples without "
                     "keep_last_batch: an epoch would have no step.")
  return steps, remainder


def _shuffled_rows(key, num_examples: int, *, batch_size: int, steps: int):
  """A permutation of `range(N)` cut into `steps` rows of `batch_size`: truncated when the rows
  hold fewer than N, padded with -1 when they hold more."""
  perm = jax.random.permutation(key, num_examples).astype(jnp.int32)
  total = steps * batch_size
  if total <= num_examples:
    perm = perm[:total]
  else:
    perm = jnp.concatenate([perm, jnp.full((total - num_examples,), -1, jnp.int32)])
  return perm.reshape(steps, batch_size)


def epoch_order(rng, epoch, labels, class_counts=None, *, batch_size: int,
                sampler: str = "instance", keep_last_batch: bool = False,
                steps: int | None = None):
  """The example indices of one epoch, `i32[steps, batch_size]`, one row per step; jittable
  (`epoch` may be traced) and vmappable over `(rng, labels, class_counts)`.

  "instance": a fresh permutation drawn with `order_key(rng, epoch)`. Without `keep_last_batch`
  the last partial batch is dropped (`N // B` rows, GALA); with it the last row holds the
  `N % B` remaining examples followed by -1 padding (`ceil(N / B)` rows), which the remainder
  step reads (the first `N % B` entries, `DevicePipeline.batch(..., last=True)` or
  `ltjax.train.train_step_fn(..., batch_size=N % B)`). The other rows are the same either way.
  "class_balanced": draws with replacement, each example with probability proportional to
  `1 / n_{y_i}`, i.e. a uniform class then a uniform example of it (the marginal of cRT's
  class-aware sampler); every row is full, `keep_last_batch` does not apply.

  Args:
    rng: the run's key.
    epoch: the 0-based epoch.
    labels: int[N], the training labels.
    class_counts: f[C] training counts per class (the class-balanced sampler reads them).
    batch_size: B, the global batch.
    sampler: one of `SAMPLERS`.
    keep_last_batch: keep the last partial batch (instance sampler).
    steps: the rows to return (default: `epoch_steps(...)[0]`); fewer truncates the epoch.

  Returns:
    i32[steps, B] indices into the training arrays (-1 = padding).
  """
  n = labels.shape[0]
  full, _ = epoch_steps(n, batch_size=batch_size, sampler=sampler,
                        keep_last_batch=keep_last_batch)
  steps = full if steps is None else steps
  if sampler == "instance" and steps > full:
    raise ValueError(f"{n} examples give {full} steps of {batch_size}, not {steps}.")
  key = order_key(rng, epoch)
  if sampler == "instance":
    return _shuffled_rows(key, n, batch_size=batch_size, steps=steps)
  if class_counts is None:
    raise ValueError("The class-balanced sampler needs `class_counts`.")
  p = 1.0 / class_counts[labels]
  flat = jax.random.choice(key, n, (steps * batch_size,), replace=True, p=p / p.sum())
  return flat.astype(jnp.int32).reshape(steps, batch_size)


def step_indices(order, step, *, steps_per_epoch: int, size: int | None = None):
  """The indices global step `step` trains on: row `step % steps_per_epoch` of its epoch's
  `order`, its first `size` entries (static; None: the whole row) for the remainder step."""
  indices = order[step % steps_per_epoch]
  return indices if size is None else indices[:size]


def device_batch(key, images, labels, indices, *, mesh=None, mean=None, std=None,
                 crop_padding: int = 4, flip: bool = True, cutout_size: int = 0,
                 autoaugment: bool = False) -> dict:
  """Gathers, augments and normalises one batch, each device working on its own shard; jittable.

  The random draws are made for the whole batch (so the result does not depend on the device
  count); with a mesh, a `shard_map` over "data" gathers each device's rows from its replica of
  `images` and augments them there, so no image crosses devices. A batch that does not split
  over the mesh's devices (the remainder of an epoch that keeps its last partial batch) is
  gathered unsharded, on every device: the same values, once per epoch.

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

  if mesh is None or indices.shape[0] % mesh.devices.size:
    return local(images, labels, indices, params)
  data = jax.P(_mesh.DATA_AXIS)
  if mesh.axis_types[mesh.axis_names.index(_mesh.DATA_AXIS)] == jax.sharding.AxisType.Explicit:
    # Explicit meshes type shardings: the (replicated) draws must be resharded by name.
    indices, params = jax.reshard((indices, params), _mesh.batch_sharded(mesh))
  return jax.shard_map(local, mesh=mesh, in_specs=(jax.P(), jax.P(), data, data),
                       out_specs=data)(images, labels, indices, params)


@dataclasses.dataclass(frozen=True)
class DevicePipeline:
  """The on-device pipeline of one training split: its sampler, epoch order and per-step batches.

  A static description (hashable, so it can be closed over by `jax.jit`); the arrays are passed
  to its methods, so they stay jit arguments (never baked-in constants) and can carry a leading
  replica axis under `jax.vmap`. Training runs it as::

      pipe = DevicePipeline(num_examples=N, batch_size=128, mesh=mesh, mean=CIFAR_MEAN,
                            std=CIFAR_STD, keep_last_batch=True)
      images, labels = pipe.place(host_images, host_labels)     # replicated, once
      order = jax.jit(pipe.epoch_order)(rng, epoch, labels, class_counts)  # i32[steps, B]
      # step s of the run (global), inside the compiled train step:
      batch = pipe.batch(rng, s, images, labels, order, last=...)

  with `last=True` at the epoch's last step when `last_batch_size` > 0 (a second compiled
  shape). `ltjax.train.train_step_fn(batch_fn=pipe.gather, ...)` is exactly that. `batches(...)`
  iterates over an epoch's batches outside a step (the benchmark, tests).

  Attributes:
    num_examples: N, the training examples.
    batch_size: the global batch size (a multiple of the mesh size).
    sampler: one of `SAMPLERS`.
    keep_last_batch: see `epoch_order`.
    mesh: the mesh (a "data" axis), or None for the default device.
    mean, std: normalisation constants (None: `x / 255`).
    crop_padding, flip, cutout_size, autoaugment: the augmentation (see `augment`).
  """
  num_examples: int
  batch_size: int
  sampler: str = "instance"
  keep_last_batch: bool = False
  mesh: jax.sharding.Mesh | None = None
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None
  crop_padding: int = 4
  flip: bool = True
  cutout_size: int = 0
  autoaugment: bool = False

  def __post_init__(self):
    if (self.mean is None) != (self.std is None):
      raise ValueError("Pass both `mean` and `std`, or neither.")
    for name in ("mean", "std"):  # tuples keep the pipeline hashable
      if getattr(self, name) is not None:
        object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
    if self.mesh is not None and self.batch_size % self.mesh.devices.size:
      raise ValueError(f"`batch_size`={self.batch_size} must be a multiple of the "
                       f"{self.mesh.devices.size} devices of the mesh.")
    epoch_steps(self.num_examples, batch_size=self.batch_size, sampler=self.sampler,
                keep_last_batch=self.keep_last_batch)

  @property
  def steps_per_epoch(self) -> int:
    return epoch_steps(self.num_examples, batch_size=self.batch_size, sampler=self.sampler,
                       keep_last_batch=self.keep_last_batch)[0]

  @property
  def last_batch_size(self) -> int:
    """The examples of the epoch's last step when it is partial, else 0."""
    return epoch_steps(self.num_examples, batch_size=self.batch_size, sampler=self.sampler,
                       keep_last_batch=self.keep_last_batch)[1]

  def place(self, images, labels):
    """Checks host arrays and places them on the mesh, replicated: `(u8[N, H, W, C], i32[N])`."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4:
      raise ValueError(f"`images` must be [N, H, W, C], got shape {images.shape}.")
    if labels.shape != (self.num_examples,) or images.shape[0] != self.num_examples:
      raise ValueError(f"`images` ({images.shape[0]}) and `labels` {labels.shape} must hold the "
                       f"pipeline's {self.num_examples} examples.")
    return _mesh.put_replicated((images, labels.astype(np.int32)), self.mesh)

  def epoch_order(self, rng, epoch, labels, class_counts=None):
    """i32[steps, B]: the order of epoch `epoch` (see `epoch_order`)."""
    return epoch_order(rng, epoch, labels, class_counts, batch_size=self.batch_size,
                       sampler=self.sampler, keep_last_batch=self.keep_last_batch,
                       steps=self.steps_per_epoch)

  def gather(self, key, images, labels, indices) -> dict:
    """`device_batch` with this pipeline's mesh, augmentation and normalisation (the `batch_fn`
    of `ltjax.train.train_step_fn`)."""
    return device_batch(key, images, labels, indices, mesh=self.mesh, mean=self.mean,
                        std=self.std, crop_padding=self.crop_padding, flip=self.flip,
                        cutout_size=self.cutout_size, autoaugment=self.autoaugment)

  def batch(self, rng, step, images, labels, order, *, last: bool = False) -> dict:
    """The batch of global step `step` (jittable; `step` may be traced): its row of `order`,
    augmented with `step_keys(rng, step)[0]`. `last` (static): the epoch's remainder step, the
    first `last_batch_size` examples of the row."""
    if last and not self.last_batch_size:
      raise ValueError("`last=True` needs an epoch that keeps a partial last batch.")
    indices = step_indices(order, step, steps_per_epoch=self.steps_per_epoch,
                           size=self.last_batch_size if last else None)
    return self.gather(step_keys(rng, step)[0], images, labels, indices)

  @functools.cached_property
  def _compiled(self):
    return jax.jit(self.epoch_order), jax.jit(self.batch, static_argnames="last")

  def batches(self, rng, epoch: int, images, labels, class_counts=None) -> Iterator[dict]:
    """Iterates over the batches of epoch `epoch`, each one compiled gather + augmentation:
    the very batches training draws from `rng` (`images`, `labels` from `place`)."""
    order_fn, batch_fn = self._compiled
    order = order_fn(rng, epoch, labels, class_counts)
    steps = self.steps_per_epoch
    for i in range(steps):
      last = bool(self.last_batch_size) and i == steps - 1
      yield batch_fn(rng, epoch * steps + i, images, labels, order, last=last)
