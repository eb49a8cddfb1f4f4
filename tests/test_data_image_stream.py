"""Streaming encoded images: per-process shards that add up to the global batch, augmentation
independent of the process count, resumable iterators, worker processes, sharded evaluation."""
import io

import jax
import numpy as np
import pytest
from PIL import Image

from ltjax import data
from ltjax import train as lt

N, C = 40, 4


@pytest.fixture(scope="module")
def source():
  rng = np.random.default_rng(0)
  records = []
  for i in range(N):
    buf = io.BytesIO()
    pixels = rng.integers(0, 256, (int(rng.integers(40, 60)), int(rng.integers(40, 60)), 3))
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=90)
    records.append({"image": buf.getvalue(), "label": i % C})
  return records


def _order(seed=0, steps=4, batch=8):
  return np.random.default_rng(seed).permutation(N)[:steps * batch].reshape(steps, batch)


def _collect(iterator):
  return [dict(b) for b in iterator]


def test_process_shards_concatenate_to_the_single_process_batches(source):
  order = _order()
  one = _collect(data.train_image_batches(source, order, epoch=1, size=16, process_index=0,
                                          process_count=1))
  two = [_collect(data.train_image_batches(source, order, epoch=1, size=16, process_index=p,
                                           process_count=2)) for p in range(2)]
  assert len(one) == 4 and one[0]["image"].shape == (8, 16, 16, 3)
  for step, batch in enumerate(one):
    np.testing.assert_array_equal(
        batch["image"], np.concatenate([two[0][step]["image"], two[1][step]["image"]]))
    np.testing.assert_array_equal(batch["label"], [source[i]["label"] for i in order[step]])


def test_augmentation_is_deterministic_and_varies_with_epoch(source):
  order = _order()
  a = _collect(data.train_image_batches(source, order, epoch=0, size=16, process_count=1,
                                        process_index=0))
  b = _collect(data.train_image_batches(source, order, epoch=0, size=16, process_count=1,
                                        process_index=0))
  c = _collect(data.train_image_batches(source, order, epoch=1, size=16, process_count=1,
                                        process_index=0))
  np.testing.assert_array_equal(a[2]["image"], b[2]["image"])
  assert not np.array_equal(a[2]["image"], c[2]["image"])


def test_resume_from_iterator_state_or_start_step_continues_the_same_batches(source):
  order = _order()
  kwargs = dict(epoch=3, size=16, process_index=0, process_count=1)
  full = _collect(data.train_image_batches(source, order, **kwargs))
  it = data.train_image_batches(source, order, **kwargs)
  next(it), next(it)
  state = it.get_state()
  resumed = data.train_image_batches(source, order, **kwargs)
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["image"], full[2]["image"])
  skipped = _collect(data.train_image_batches(source, order, start_step=2, **kwargs))
  assert len(skipped) == 2
  np.testing.assert_array_equal(skipped[1]["image"], full[3]["image"])


@pytest.fixture
def absl_flags_parsed():
  """As inside an absl app (the CLI): grain's workers read absl flags."""
  from absl import flags  # noqa: PLC0415
  was_parsed = flags.FLAGS.is_parsed()
  flags.FLAGS.mark_as_parsed()
  yield
  if not was_parsed:
    flags.FLAGS.unparse_flags()


def test_worker_processes_outside_an_absl_app_fail_in_one_line_and_leave_flags_alone(source):
  from absl import flags  # noqa: PLC0415
  if flags.FLAGS.is_parsed():
    pytest.skip("this process's absl flags are parsed")
  with pytest.raises(RuntimeError, match=r"^worker_count=2: grain's worker processes read absl"):
    data.train_image_batches(source, _order(), epoch=0, size=16, process_index=0,
                             process_count=1, worker_count=2)
  assert not flags.FLAGS.is_parsed()


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(source, absl_flags_parsed):
  order = _order()
  kwargs = dict(epoch=0, size=16, process_index=0, process_count=1)
  local = _collect(data.train_image_batches(source, order, **kwargs))
  it = data.train_image_batches(source, order, worker_count=2, **kwargs)
  workers = _collect(it)
  it.close()
  for a, b in zip(local, workers, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_class_balanced_order_from_the_train_sampler_streams_balanced_labels(source):
  labels = np.array([r["label"] for r in source])
  labels[:30] = 0  # a head class
  skewed = [dict(r, label=int(y)) for r, y in zip(source, labels)]
  counts = np.bincount(labels, minlength=C).astype(np.float32)
  order = np.asarray(lt.epoch_order(jax.random.PRNGKey(0), 0, labels, counts,
                                    sampler="class_balanced", steps=50, batch_size=8))
  streamed = np.concatenate([b["label"] for b in data.train_image_batches(
      skewed, order, epoch=0, size=8, process_index=0, process_count=1)])
  share = np.bincount(streamed, minlength=C) / streamed.size
  np.testing.assert_allclose(share, 1 / C, atol=0.08)


def test_eval_batches_cover_every_record_once_across_processes(source):
  gathered = {}
  for p in range(2):
    for step, batch in enumerate(data.eval_image_batches(
        source, N - 3, batch_size=8, size=16, process_index=p, process_count=2)):
      for col in range(4):
        if batch["mask"][col]:
          gathered[(step, p, col)] = (batch["image"][col], batch["label"][col])
  keys = sorted(gathered)
  assert len(keys) == N - 3
  first = data.decode_center_crop(source[0]["image"], size=16)
  np.testing.assert_array_equal(gathered[keys[0]][0], first)
  assert [int(gathered[k][1]) for k in keys] == [source[i]["label"] for i in range(N - 3)]


def test_bad_arguments_are_rejected(source):
  with pytest.raises(ValueError, match="multiple"):
    data.train_image_batches(source, _order(batch=6), epoch=0, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="start_step"):
    data.train_image_batches(source, _order(), epoch=0, start_step=9, process_index=0,
                             process_count=1)


def test_colour_jitter_follows_crop_and_flip_with_the_examples_own_generator(source):
  order, seed, epoch, size, jitter = _order(steps=1), 3, 2, 16, (0.4, 0.4, 0.4)
  kwargs = dict(epoch=epoch, seed=seed, size=size, process_index=0, process_count=1)
  plain = _collect(data.train_image_batches(source, order, **kwargs))[0]["image"]
  jittered = _collect(data.train_image_batches(source, order, color_jitter=jitter,
                                               **kwargs))[0]["image"]
  for j, record in enumerate(order[0]):
    # The worker's transform: the same per-example generator draws crop, flip, then the jitter.
    rng = np.random.default_rng([seed, epoch, 0, j])
    crop = data.decode_random_resized_crop(source[record]["image"], rng, size=size)
    np.testing.assert_array_equal(plain[j], crop)
    np.testing.assert_array_equal(
        jittered[j], data.color_jitter(crop, rng, brightness=0.4, contrast=0.4, saturation=0.4))
  assert not np.array_equal(plain, jittered)
  zeros = _collect(data.train_image_batches(source, order, color_jitter=(0.0, 0.0, 0.0),
                                            **kwargs))[0]["image"]
  np.testing.assert_array_equal(zeros, plain)
  with pytest.raises(ValueError, match="color_jitter"):
    data.train_image_batches(source, order, color_jitter=(0.4, 0.4), **kwargs)
