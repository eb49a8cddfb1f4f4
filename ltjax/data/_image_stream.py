"""Streaming encoded images (ImageNet-LT, iNaturalist, Places-LT) with grain: decode + augment on
the host, per-process shards, deterministic and resumable.

Order. An epoch is a global order `i[steps, B]` of record indices, one row per optimizer step,
computed identically on every process: the on-device pipeline's own `ltjax.train.epoch_order`
(instance permutation, or the class-balanced sampler of cRT) or `ltjax.data.epoch_order`. Process p
of P reads columns `[p * B / P, (p + 1) * B / P)` of every row, so the P processes together read
exactly the global batch, and `ltjax.data.global_batch` assembles it over the "data" mesh axis.

Randomness. Example (step s, column j) of epoch e is augmented with
`np.random.default_rng([seed, e, s, j])`: its crop and flip depend on its place in the global
batch only, not on the number of processes or workers, so 2 processes x 4 devices produce the
same global batches as 1 x 8.

Resuming. The returned grain iterator has `get_state()` / `set_state()` (a small JSON-able dict:
the position in the epoch) to store next to the model checkpoint; `start_step` does the same from a
step count.
"""
from __future__ import annotations

import jax
import numpy as np
from absl import flags

from ltjax.data import _decode
from ltjax.data import _records
from ltjax.data import _streaming

# grain is imported where a stream is built (those imports are exempt from PLC0415): it and the
# orbax it imports take ~1.4 s, and `import ltjax.data` stays light for the on-device pipeline.


def _default_processes(process_index, process_count):
  if process_index is None or process_count is None:
    return jax.process_index(), jax.process_count()
  return process_index, process_count


class _DecodeTrain:
  """Picklable map `local position -> {"image", "label"}` (grain worker processes pickle it)."""

  def __init__(self, source, records, steps, columns, *, seed, epoch, size, image_key,
               label_key, color_jitter=None):
    self.source, self.records, self.steps, self.columns = source, records, steps, columns
    self.seed, self.epoch, self.size = seed, epoch, size
    # All-zero strengths: no jitter (and no draws).
    self.color_jitter = tuple(color_jitter) if color_jitter and any(color_jitter) else None
    self.image_key, self.label_key = image_key, label_key

  def __call__(self, position):
    record = _records.read_record(self.source, int(self.records[position]))
    rng = np.random.default_rng([self.seed, self.epoch, int(self.steps[position]),
                                 int(self.columns[position])])
    image = _decode.decode_random_resized_crop(record[self.image_key], rng, size=self.size)
    if self.color_jitter is not None:  # after the flip, as torchvision's Compose has it
      b, c, s = self.color_jitter
      image = _decode.color_jitter(image, rng, brightness=b, contrast=c, saturation=s)
    return {"image": image, "label": np.int32(record[self.label_key])}


class _DecodeEval:
  """Picklable map for evaluation: resize + centre crop; padding positions (-1) are masked."""

  def __init__(self, source, records, *, size, image_key, label_key):
    self.source, self.records, self.size = source, records, size
    self.image_key, self.label_key = image_key, label_key

  def __call__(self, position):
    index = int(self.records[position])
    if index < 0:
      return {"image": np.zeros((self.size, self.size, 3), np.uint8), "label": np.int32(0),
              "mask": np.bool_(False)}
    record = _records.read_record(self.source, index)
    return {"image": _decode.decode_center_crop(record[self.image_key], size=self.size),
            "label": np.int32(record[self.label_key]), "mask": np.bool_(True)}


def _iterate(dataset, *, num_threads, prefetch_buffer_size, worker_count):
  import grain  # noqa: PLC0415 (lazy: see the imports)
  iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                       prefetch_buffer_size=prefetch_buffer_size))
  if worker_count:
    _check_flags_parsed(worker_count)
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(iterable)


def _check_flags_parsed(worker_count: int) -> None:
  """grain (0.2) reads its absl flags when it starts worker processes, and absl refuses to read
  unparsed flags: outside an absl app the first batch would fail deep inside grain. The library
  leaves the process's flags alone (they belong to the application), so the call fails here, in
  one line saying what to do."""
  if not flags.FLAGS.is_parsed():
    raise RuntimeError(
        f"worker_count={worker_count}: grain's worker processes read absl flags, which are "
        "parsed only inside an absl app; run under absl.app.run, call "
        "absl.flags.FLAGS.mark_as_parsed() once first, or pass worker_count=0.")


def train_image_batches(source, order, *, epoch: int, seed: int = 0, size: int = 224,
                        process_index: int | None = None, process_count: int | None = None,
                        start_step: int = 0, image_key: str = "image", label_key: str = "label",
                        num_threads: int = 16, prefetch_buffer_size: int = 256,
                        worker_count: int = 0, color_jitter=None):
  """One epoch of this process's training batches: decode + RandomResizedCrop(size) + flip
  (+ colour jitter).

  Args:
    source: random-access records with encoded image bytes under `image_key` (e.g. the source of
      `ltjax.data.lt_lists_source`) and an integer label.
    order: i[steps, B] the epoch's global order of record indices (see module doc).
    epoch, seed: select the augmentation draws.
    size: output side.
    process_index, process_count: default `jax.process_index()` / `jax.process_count()`.
    start_step: skip the first steps (resume).
    image_key, label_key: record fields.
    num_threads, prefetch_buffer_size: grain read options (threads of this process).
    worker_count: grain worker processes decoding in parallel (`mp_prefetch`); 0 = in-process.
      More than 0 needs parsed absl flags (an absl app, or `absl.flags.FLAGS.mark_as_parsed()`):
      grain reads its flags when it starts the workers.
    color_jitter: `(brightness, contrast, saturation)` strengths of torchvision's
      `ColorJitter(..., hue=0)` applied after the flip (`ltjax.data.color_jitter`); None or ()
      for none.

  Returns:
    A grain iterator of `{"image": u8[b, size, size, 3], "label": i32[b]}`, b = B / P, one per
    remaining step; it supports `get_state()` / `set_state()`.
  """
  import grain  # noqa: PLC0415 (lazy: see the imports)
  order = np.asarray(order)
  if order.ndim != 2:
    raise ValueError(f"`order` must be [steps, batch_size], got shape {order.shape}.")
  process_index, process_count = _default_processes(process_index, process_count)
  columns = _streaming.process_columns(order.shape[1], process_index, process_count)
  if color_jitter and len(color_jitter) != 3:
    raise ValueError("`color_jitter` must be (brightness, contrast, saturation), got "
                     f"{color_jitter!r}.")
  if not 0 <= start_step <= order.shape[0]:
    raise ValueError(f"`start_step`={start_step} must lie in [0, {order.shape[0]}].")
  local = order[start_step:, columns]
  steps, cols = np.meshgrid(np.arange(start_step, order.shape[0]),
                            np.arange(order.shape[1])[columns], indexing="ij")
  fn = _DecodeTrain(source, local.ravel(), steps.ravel(), cols.ravel(), seed=seed, epoch=epoch,
                    size=size, image_key=image_key, label_key=label_key,
                    color_jitter=color_jitter)
  dataset = (grain.MapDataset.range(local.size).map(fn)
             .batch(local.shape[1], drop_remainder=True))
  return _iterate(dataset, num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size,
                  worker_count=worker_count)


def eval_image_batches(source, num_records: int, *, batch_size: int, size: int = 224,
                       process_index: int | None = None, process_count: int | None = None,
                       image_key: str = "image", label_key: str = "label",
                       num_threads: int = 16, prefetch_buffer_size: int = 256,
                       worker_count: int = 0):
  """The whole split for evaluation, resize(size * 256 / 224) + centre crop(size), sharded.

  Records 0 .. N-1 are cut into ceil(N / B) global batches, the last padded with masked
  examples; process p reads its columns of each. Gathering every process's `mask`-ed rows in
  (step, process, column) order gives each record exactly once, in record order.

  Returns:
    A grain iterator of `{"image": u8[b, size, size, 3], "label": i32[b], "mask": bool[b]}`.
  """
  import grain  # noqa: PLC0415 (lazy: see the imports)
  process_index, process_count = _default_processes(process_index, process_count)
  columns = _streaming.process_columns(batch_size, process_index, process_count)
  steps = -(-int(num_records) // batch_size)
  padded = np.full(steps * batch_size, -1, np.int64)
  padded[:num_records] = np.arange(num_records)
  local = padded.reshape(steps, batch_size)[:, columns]
  fn = _DecodeEval(source, local.ravel(), size=size, image_key=image_key, label_key=label_key)
  dataset = grain.MapDataset.range(local.size).map(fn).batch(local.shape[1])
  return _iterate(dataset, num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size,
                  worker_count=worker_count)
