"""Augmentations, the on-device pipeline (8 simulated devices) and grain streaming."""
import functools
import itertools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import shared_data
from ltjax import data

_CACHE = pathlib.Path(os.environ.get("LTJAX_TEST_TFDS_DIR",
                                     "~/.cache/ltjax/tfds-tests")).expanduser()
_SHARED = shared_data.shared_data_dir()


def _images(n=6, size=8, channels=3, seed=0):
  # Strictly positive pixels, so zero padding and Cutout holes are recognisable.
  return np.random.default_rng(seed).integers(1, 256, (n, size, size, channels), dtype=np.uint8)


def test_random_crop_is_a_window_of_the_zero_padded_image():
  x = _images()
  out = np.asarray(jax.jit(lambda k, x: data.random_crop(k, x, padding=2))(jax.random.key(1), x))
  assert out.shape == x.shape and out.dtype == np.uint8
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for image, result in zip(padded, out):
    windows = [image[i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
    assert any(np.array_equal(w, result) for w in windows)


def test_random_crop_offsets_cover_the_range():
  x = np.ones((400, 4, 4, 1), np.uint8)
  out = np.asarray(data.random_crop(jax.random.key(0), x, padding=4))
  # The zero rows show the vertical offset: 0..8 -> top padding rows visible 4..0 or bottom ones.
  visible_rows = out[:, :, 0, 0].sum(axis=1)
  assert set(visible_rows.tolist()) == {0, 1, 2, 3, 4}


def test_random_flip_mirrors_about_half():
  x = _images(n=200)
  out = np.asarray(data.random_flip(jax.random.key(2), x))
  same = np.all(out == x, axis=(1, 2, 3))
  mirrored = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored)
  assert 60 < mirrored.sum() < 140


def test_cutout_zeroes_one_clipped_square():
  x = _images(n=50, size=32)
  out = np.asarray(data.cutout(jax.random.key(3), x, size=16))
  for image, result in zip(x, out):
    hole = np.all(result == 0, axis=-1)
    rows, cols = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
    assert 8 <= rows.size <= 16 and 8 <= cols.size <= 16
    assert hole.sum() == rows.size * cols.size  # a rectangle
    np.testing.assert_array_equal(result[~hole], image[~hole])


def test_augment_is_deterministic_and_composes_the_parts():
  x = _images(n=16, size=32)
  key = jax.random.key(7)
  f = jax.jit(lambda k, x: data.augment(k, x, crop_padding=4, flip=True, cutout_size=16))
  a, b = np.asarray(f(key, x)), np.asarray(f(key, x))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, np.asarray(f(jax.random.key(8), x)))
  k1, k2, k3 = jax.random.split(key, 3)
  composed = data.cutout(k3, data.random_flip(k2, data.random_crop(k1, x, padding=4)), size=16)
  np.testing.assert_array_equal(a, np.asarray(composed))
  identity = data.augment(key, x, crop_padding=0, flip=False, cutout_size=0)
  np.testing.assert_array_equal(np.asarray(identity), x)


def test_augment_rejects_bad_shapes():
  with pytest.raises(ValueError, match=r"\[batch, height, width, channels\]"):
    data.augment(jax.random.key(0), jnp.zeros((4, 8, 8)))
  with pytest.raises(ValueError, match="crop_padding"):
    data.augment(jax.random.key(0), jnp.zeros((4, 8, 8, 3)), crop_padding=-1)


def test_normalize_uses_the_cifar_constants():
  x = np.full((1, 2, 2, 3), 255, np.uint8)
  out = np.asarray(data.normalize(x, mean=data.CIFAR_MEAN, std=data.CIFAR_STD))
  expected = (1.0 - np.array([0.4914, 0.4822, 0.4465])) / np.array([0.2023, 0.1994, 0.2010])
  np.testing.assert_allclose(out[0, 0, 0], expected, rtol=1e-6)
  assert out.dtype == np.float32


def test_epoch_order_is_a_permutation_with_drop_remainder():
  labels = np.arange(1000) % 10
  order = np.asarray(data.epoch_order(jax.random.key(0), 0, labels, batch_size=128))
  assert order.shape == (7, 128)
  assert np.unique(order).size == 896 and order.min() >= 0 and order.max() < 1000
  padded = np.asarray(data.epoch_order(jax.random.key(0), 0, labels, batch_size=128,
                                       keep_last_batch=True))
  assert padded.shape == (8, 128) and np.sum(padded == -1) == 24
  np.testing.assert_array_equal(np.sort(padded[padded >= 0]), np.arange(1000))
  with pytest.raises(ValueError, match="no step"):
    data.epoch_order(jax.random.key(0), 0, labels[:10], batch_size=16)


def _mesh(kind):
  return jax.make_mesh((8,), ("data",), axis_types=(kind,))


def _pipeline(mesh, **kwargs):
  """A pipeline over 300 examples at batch 64, its arrays placed on `mesh`, and the host labels."""
  n = 300
  images = _images(n=n, size=8)
  images[:, 0, 0, 0] = np.arange(n) % 256  # row id in a pixel the crop may move; labels check ids
  labels = np.arange(n) % 10
  pipe = data.DevicePipeline(num_examples=n, batch_size=64, mesh=mesh, mean=data.CIFAR_MEAN,
                             std=data.CIFAR_STD, cutout_size=4, **kwargs)
  return pipe, pipe.place(images, labels), labels


@pytest.mark.parametrize("kind", [jax.sharding.AxisType.Auto, jax.sharding.AxisType.Explicit])
def test_device_pipeline_shards_over_8_devices_and_equals_single_device(kind):
  assert jax.device_count() == 8
  pipe, arrays, labels = _pipeline(_mesh(kind))
  single, single_arrays, _ = _pipeline(None)
  key = jax.random.key(0)
  batches = list(pipe.batches(key, 3, *arrays))
  reference = list(single.batches(key, 3, *single_arrays))
  assert len(batches) == pipe.steps_per_epoch == 300 // 64
  order = np.asarray(jax.jit(pipe.epoch_order)(key, 3, arrays[1]))
  for step, (batch, ref) in enumerate(zip(batches, reference)):
    image = batch["image"]
    assert image.shape == (64, 8, 8, 3) and image.dtype == jnp.float32
    assert image.sharding.spec[0] == "data" and len(image.sharding.device_set) == 8
    assert {s.data.shape[0] for s in image.addressable_shards} == {8}
    np.testing.assert_array_equal(np.asarray(image), np.asarray(ref["image"]))
    np.testing.assert_array_equal(np.asarray(batch["label"]), labels[order[step]])
    assert bool(np.all(np.asarray(batch["mask"])))
  seen = order.ravel()
  assert np.unique(seen).size == seen.size


def test_device_pipeline_is_deterministic_and_epochs_differ():
  pipe, arrays, _ = _pipeline(_mesh(jax.sharding.AxisType.Auto))
  again, again_arrays, _ = _pipeline(_mesh(jax.sharding.AxisType.Auto))
  key = jax.random.key(5)
  a = [np.asarray(b["image"]) for b in pipe.batches(key, 0, *arrays)]
  b = [np.asarray(b["image"]) for b in again.batches(key, 0, *again_arrays)]
  c = [np.asarray(b["image"]) for b in pipe.batches(key, 1, *arrays)]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])
  x = a[0]
  lo = (0 - np.array(data.CIFAR_MEAN)) / np.array(data.CIFAR_STD)
  hi = (1 - np.array(data.CIFAR_MEAN)) / np.array(data.CIFAR_STD)
  assert np.all(x >= lo - 1e-5) and np.all(x <= hi + 1e-5)


def test_device_pipeline_inside_a_compiled_step():
  pipe, (images, device_labels), labels = _pipeline(_mesh(jax.sharding.AxisType.Auto),
                                                    keep_last_batch=True)
  key = jax.random.key(0)

  @functools.partial(jax.jit, static_argnames="last")
  def step(total, images, labels, order, s, last=False):
    batch = pipe.batch(key, s, images, labels, order, last=last)
    return total + jnp.sum(jnp.where(batch["mask"], batch["label"], 0)), jnp.sum(batch["mask"])

  order = pipe.epoch_order(key, 0, device_labels)
  total, count = jnp.zeros((), jnp.int32), 0
  for s in range(pipe.steps_per_epoch):
    total, n = step(total, images, device_labels, order, s, last=s == pipe.steps_per_epoch - 1)
    count += int(n)
  assert pipe.steps_per_epoch == 5 and count == 300  # the last step reads the 44 remaining
  assert int(total) == labels.sum()


def test_device_pipeline_rejects_bad_arguments():
  images, labels = _images(n=64), np.arange(64) % 3
  with pytest.raises(ValueError, match="multiple of the 8 devices"):
    data.DevicePipeline(num_examples=64, batch_size=12, mesh=_mesh(jax.sharding.AxisType.Auto))
  with pytest.raises(ValueError, match="labels"):
    data.DevicePipeline(num_examples=64, batch_size=8).place(images, labels[:10])
  with pytest.raises(ValueError, match="both `mean` and `std`"):
    data.DevicePipeline(num_examples=64, batch_size=8, mean=(0.5,))
  with pytest.raises(ValueError, match="Unknown sampler"):
    data.DevicePipeline(num_examples=64, batch_size=8, sampler="balanced")


def test_process_columns_split_each_global_batch():
  order = np.arange(1000, 1300)[:256].reshape(4, 64)
  parts = [order[:, data.process_columns(64, p, 4)] for p in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts, axis=1), order)
  assert all(part.shape == (4, 16) for part in parts)
  with pytest.raises(ValueError, match="multiple of the 3 processes"):
    data.process_columns(64, 0, 3)
  with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
    data.process_columns(64, 4, 4)


@pytest.mark.slow
def test_streaming_fashion_mnist_lt_per_process_and_on_8_devices():
  arrays = data.load_arrays("fashion_mnist", "train", data_dir=_CACHE,
                            manual_dir=_SHARED / "fashion-mnist")
  split = data.longtail_split(arrays.labels, imbalance_ratio=100, val_per_class=20)
  # The TFDS source reads the records in `load_arrays`' order.
  source = data.tfds_source("fashion_mnist", "train", data_dir=_CACHE)
  for i in split.train_indices[:8]:
    np.testing.assert_array_equal(np.asarray(source[int(i)]["image"]).reshape(28, 28, 1),
                                  arrays.images[i])
  images, labels = arrays.images[split.train_indices], arrays.labels[split.train_indices]
  order = np.asarray(data.epoch_order(jax.random.key(1), 1, labels, batch_size=256))
  shards = [list(itertools.islice(data.array_batches(images, labels, order, process_index=p,
                                                     process_count=2, num_threads=4), 4))
            for p in range(2)]  # the first 4 of 57 batches
  for p in range(2):
    rows = order[:4, p * 128:(p + 1) * 128].ravel()
    got = np.concatenate([b["image"] for b in shards[p]])
    assert got.shape[1:] == (28, 28, 1) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, images[rows])
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in shards[p]]), labels[rows])
  assert order.shape == (split.train_indices.size // 256, 256)
  # One process, 8 devices: the host batch becomes a sharded global batch; augment on device.
  mesh = _mesh(jax.sharding.AxisType.Auto)
  host = next(data.array_batches(images, labels, order[:, :64], process_index=0,
                                 process_count=1, num_threads=4))
  batch = data.global_batch(host, mesh)
  out = jax.jit(lambda k, x: data.augment(k, x, crop_padding=4))(jax.random.key(0),
                                                                 batch["image"])
  assert out.shape == (64, 28, 28, 1) and len(out.sharding.device_set) == 8
  assert out.sharding.spec[0] == "data"
