"""Properties of the one on-device pipeline (`ltjax.data.DevicePipeline`) that training, the tests
and the pipeline benchmark run: each epoch visits every example once (remainder included), the
order is a function of (key, epoch), the class-balanced sampler balances the classes, sharding
does not change a batch, and the train step consumes exactly the pipeline's batches."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import data
from ltjax import models
from ltjax import train as lt


def _arrays(n, num_classes=4, size=8, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(1, 256, (n, size, size, 3), dtype=np.uint8)
  labels = rng.integers(0, num_classes, n).astype(np.int32)
  return images, labels


def _trained_indices(pipe, order):
  """The example indices the steps of one epoch read: full rows, then the remainder's prefix."""
  order = np.asarray(order)
  rows = [data.step_indices(order, i, steps_per_epoch=pipe.steps_per_epoch)
          for i in range(pipe.steps_per_epoch)]
  if pipe.last_batch_size:
    rows[-1] = rows[-1][:pipe.last_batch_size]
  return np.concatenate(rows)


@pytest.mark.parametrize("n,batch", [(62, 16), (64, 16), (100, 128), (301, 8), (17, 1)])
@pytest.mark.parametrize("epoch", [0, 7])
def test_every_example_is_trained_on_exactly_once_per_epoch_with_the_remainder(n, batch, epoch):
  labels = np.zeros(n, np.int32)
  kept = data.DevicePipeline(num_examples=n, batch_size=batch, keep_last_batch=True)
  seen = _trained_indices(kept, kept.epoch_order(jax.random.key(3), epoch, labels))
  np.testing.assert_array_equal(np.sort(seen), np.arange(n))
  assert kept.steps_per_epoch == -(-n // batch) and kept.last_batch_size == n % batch
  if n >= batch:  # without the remainder: N // B full batches of distinct examples
    dropped = data.DevicePipeline(num_examples=n, batch_size=batch)
    seen = _trained_indices(dropped, dropped.epoch_order(jax.random.key(3), epoch, labels))
    assert seen.size == (n // batch) * batch == np.unique(seen).size and seen.min() >= 0
    assert dropped.last_batch_size == 0


@pytest.mark.parametrize("sampler", data.SAMPLERS)
def test_the_order_is_a_function_of_key_and_epoch(sampler):
  labels = np.repeat(np.arange(4), [40, 20, 10, 5]).astype(np.int32)
  counts = np.bincount(labels).astype(np.float32)
  pipe = data.DevicePipeline(num_examples=labels.size, batch_size=8, sampler=sampler)
  order = jax.jit(pipe.epoch_order)
  a = np.asarray(order(jax.random.key(1), 2, labels, counts))
  np.testing.assert_array_equal(a, np.asarray(order(jax.random.key(1), 2, labels, counts)))
  np.testing.assert_array_equal(a, np.asarray(pipe.epoch_order(jax.random.key(1), 2, labels,
                                                               counts)))  # jit == eager
  assert not np.array_equal(a, np.asarray(order(jax.random.key(1), 3, labels, counts)))
  assert not np.array_equal(a, np.asarray(order(jax.random.key(2), 2, labels, counts)))


def test_the_class_balanced_sampler_draws_each_class_equally_often():
  counts = np.array([500, 100, 20, 5])
  labels = np.repeat(np.arange(4), counts).astype(np.int32)
  pipe = data.DevicePipeline(num_examples=labels.size, batch_size=25, sampler="class_balanced",
                             keep_last_batch=True)  # no remainder step for this sampler
  assert (pipe.steps_per_epoch, pipe.last_batch_size) == (625 // 25, 0)
  draws = np.concatenate([np.ravel(pipe.epoch_order(jax.random.key(0), e, labels,
                                                    counts.astype(np.float32)))
                          for e in range(8)])
  assert draws.min() >= 0 and draws.max() < labels.size
  freq = np.bincount(labels[draws], minlength=4) / draws.size
  # 5000 draws: the binomial standard deviation of a 1/4 share is 0.006; allow 4 of them.
  np.testing.assert_allclose(freq, 0.25, atol=0.025)
  # Within a class the draw is uniform: the 5 examples of the rarest class all appear.
  assert set(draws[labels[draws] == 3].tolist()) == set(np.flatnonzero(labels == 3).tolist())


@pytest.mark.parametrize("n", [62, 56])  # remainders of 14 (unsharded) and 8 (split over 8)
@pytest.mark.parametrize("kind", [jax.sharding.AxisType.Auto, jax.sharding.AxisType.Explicit])
def test_sharded_batches_equal_single_device_ones_including_the_remainder(n, kind):
  assert jax.device_count() == 8
  images, labels = _arrays(n)
  kwargs = dict(num_examples=n, batch_size=16, keep_last_batch=True, mean=data.CIFAR_MEAN,
                std=data.CIFAR_STD, cutout_size=4)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(kind,))
  sharded = data.DevicePipeline(mesh=mesh, **kwargs)
  single = data.DevicePipeline(**kwargs)
  key = jax.random.key(4)
  got = list(sharded.batches(key, 1, *sharded.place(images, labels)))
  want = list(single.batches(key, 1, *single.place(images, labels)))
  assert [b["label"].shape[0] for b in got] == [16, 16, 16, n % 16]
  assert len(got[0]["image"].sharding.device_set) == 8
  for a, b in zip(got, want, strict=True):
    np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(b["label"]))


def test_the_train_step_consumes_exactly_the_pipelines_batches():
  """Training and `DevicePipeline.batches` (what the benchmark times) agree batch for batch:
  the train step, run eagerly with a batch_fn that records what it gathers, over two epochs
  whose last step is the remainder step."""
  n, batch, num_classes = 40, 16, 4
  images, labels = _arrays(n, num_classes)
  counts = np.bincount(labels, minlength=num_classes).astype(np.float32)
  pipe = data.DevicePipeline(num_examples=n, batch_size=batch, keep_last_batch=True,
                             crop_padding=2, cutout_size=4)
  d_images, d_labels = pipe.place(images, labels)
  method, hp = lt.get_method("ce"), lt.hparams()
  model = models.build_classifier("small_cnn", num_classes=num_classes, head=method.head,
                                  widths=(4,), features=8)
  params, batch_stats = lt.init_variables(model, jax.random.PRNGKey(1), images.shape[1:])
  lr_fn = lt.lr_schedule("constant", steps_per_epoch=pipe.steps_per_epoch, base_lr=0.1)
  tx = lt.sgd_coupled(lr_fn, momentum=0.9)
  state = lt.create_train_state(params, batch_stats, tx, loss_state=method.init_state(4, hp),
                                rng=jax.random.PRNGKey(2))
  stats = lt.ClassStats(class_counts=jnp.asarray(counts),
                        log_prior=jnp.log(jnp.asarray(counts) / n))
  seen = []

  def recording_gather(*args):
    seen.append(pipe.gather(*args))
    return seen[-1]

  batch_fn = data.order_batch_fn(recording_gather, steps_per_epoch=pipe.steps_per_epoch)
  kwargs = dict(steps_per_epoch=pipe.steps_per_epoch, batch_fn=batch_fn, lr_fn=lr_fn)
  full = lt.train_step_fn(model, tx, method, hp, **kwargs)
  last = lt.train_step_fn(model, tx, method, hp, batch_size=pipe.last_batch_size, **kwargs)
  expected = []
  for epoch in range(2):
    expected += list(pipe.batches(state.rng, epoch, d_images, d_labels, stats.class_counts))
    order = pipe.epoch_order(state.rng, epoch, d_labels, stats.class_counts)
    for i in range(pipe.steps_per_epoch):
      step = last if i == pipe.steps_per_epoch - 1 else full
      state, _ = step(state, {"images": d_images, "labels": d_labels, "order": order}, stats)
  assert len(seen) == len(expected) == 2 * 3 and int(state.step) == 6
  for got, want in zip(seen, expected, strict=True):
    # The same images and labels; the images' normalisation runs eagerly here and compiled in
    # `batches`, which jax 0.12.1's XLA rounds 1 ulp apart (6e-8; jax 0.10.2 and 0.12.0: equal).
    np.testing.assert_allclose(np.asarray(got["image"]), np.asarray(want["image"]), rtol=0,
                               atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got["label"]), np.asarray(want["label"]))


def test_the_key_scheme_is_the_documented_one():
  rng = jax.random.key(9)
  np.testing.assert_array_equal(
      jax.random.key_data(data.order_key(rng, 5)),
      jax.random.key_data(jax.random.fold_in(jax.random.fold_in(rng, 1), 5)))
  augment, loss = data.step_keys(rng, 11)
  want = jax.random.split(jax.random.fold_in(jax.random.fold_in(rng, 2), 11))
  np.testing.assert_array_equal(jax.random.key_data(augment), jax.random.key_data(want[0]))
  np.testing.assert_array_equal(jax.random.key_data(loss), jax.random.key_data(want[1]))
