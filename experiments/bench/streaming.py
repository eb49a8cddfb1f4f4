"""Benchmark: a streamed CIFAR-10-LT epoch against the on-device one, feeding one train step.

    python -m experiments.bench.streaming [--steps=8] [--batch_size=128] [--rounds=3] \
        [--out=experiments/results/bench_streaming]

Both input pipelines feed the same compiled ResNet-32 train step (forward, backward, SGD
momentum; `jax.jit`, buffers donated) with the same augmentation (random crop with 4-pixel
padding + flip + normalisation, compiled, on the device) on CIFAR-10-LT (IR 100, LDAM split):
- device: the training images live on the device (`ltjax.data.DevicePipeline`); each step gathers
  its batch there by index and augments it (one compiled call), then runs the train step;
- streaming: grain threads gather the batches from host arrays by the same epoch order
  (`ltjax.data.array_batches`, the streamed arrays' input `ltjax.data.HostArrays`),
  `ltjax.data.global_batch` transfers each u8 batch to the device, a compiled call augments it,
  then the train step.
A repetition is `--steps` consecutive steps from a fresh epoch (the streaming variant's iterator,
with its thread start-up, is created inside it), blocked on the last loss. The same two pipelines
are also timed without the train step ("alone"). Interleaved rounds in a random order
(`experiments/bench/_harness.py`); the first `--warmup` rounds compile and are not recorded.
Writes `<out>.json` and `<out>.md`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from absl import app
from absl import flags

from experiments import shared_data
from experiments.bench import _harness
from ltjax import data
from ltjax import models
from ltjax import train as lt

_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 8, "Steps per repetition (from the start of an epoch).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved timed rounds.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed rounds first (the first one compiles).")
_OUT = flags.DEFINE_string("out", "experiments/results/bench_streaming",
                           "Output path without suffix.")


def main(argv):
  del argv
  record = _harness.start_record("experiments.bench.streaming")
  arrays = data.load_arrays("cifar10", "train", manual_dir=shared_data.manual_dir("cifar10"))
  split = data.longtail_split(arrays.labels, imbalance_ratio=100)
  mesh = lt.data_mesh()
  batch_size, steps = _BATCH_SIZE.value, _STEPS.value
  augment = {"crop_padding": 4, "flip": True, "cutout_size": 0}
  # The pipeline training builds for the CIFAR recipes (instance sampler, its key scheme).
  pipe = data.DevicePipeline(num_examples=int(split.train_indices.size), batch_size=batch_size,
                             mesh=mesh, mean=data.CIFAR_MEAN, std=data.CIFAR_STD, **augment)
  if steps > pipe.steps_per_epoch:
    raise ValueError(f"--steps={steps} exceeds the epoch's {pipe.steps_per_epoch} steps.")
  images, labels = pipe.place(arrays.images[split.train_indices],
                              arrays.labels[split.train_indices])
  counts = lt.put_replicated(split.class_counts.astype("float32"), mesh)
  key = jax.random.key(0)
  host_images = arrays.images[split.train_indices]
  host_labels = arrays.labels[split.train_indices]

  # The on-device pipeline: gather by index + augment + normalise, one compiled call per step
  # (global steps of epoch 1).
  device_batch = jax.jit(lambda s, images, labels, order: pipe.batch(
      key, pipe.steps_per_epoch + s, images, labels, order))
  order_fn = jax.jit(pipe.epoch_order, out_shardings=lt.replicated(mesh))

  # The streaming pipeline's device half: the same augmentation on the transferred u8 batch.
  @jax.jit
  def stream_augment(s, images, labels):
    x = data.augment(jax.random.fold_in(key, s), images, **augment)
    return {"image": data.normalize(x, mean=data.CIFAR_MEAN, std=data.CIFAR_STD),
            "label": labels}

  def device_batches():
    order = order_fn(key, 1, labels, counts)
    for s in range(steps):
      yield device_batch(s, images, labels, order)

  def streamed_batches():
    order = jax.device_get(order_fn(key, 1, labels, counts))
    host = data.array_batches(host_images, host_labels, order, process_index=0,
                              process_count=1)
    for s in range(steps):
      glob = data.global_batch(next(host), mesh)
      yield stream_augment(s, glob["image"], glob["label"])

  model = models.build_classifier("resnet32", num_classes=10)
  variables = model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
  tx = optax.sgd(0.1, momentum=0.9)
  state = list(lt.put_replicated((variables["params"], variables["batch_stats"],
                                  tx.init(variables["params"])), mesh))

  def update(params, batch_stats, opt_state, images, labels):
    def loss_fn(p):
      logits, new_state = model.apply({"params": p, "batch_stats": batch_stats}, images,
                                      train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new_state
    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state["batch_stats"], opt_state, loss

  train_step = jax.jit(update, donate_argnums=(0, 1, 2))

  def train(batches):
    loss = None
    for batch in batches():
      *state[:], loss = train_step(*state, batch["image"], batch["label"])
    return loss

  def alone(batches):
    return [jnp.sum(b["image"]) for b in batches()]

  timings = _harness.interleaved(
      {"device + train step": lambda: train(device_batches),
       "streaming + train step": lambda: train(streamed_batches),
       "device alone": lambda: alone(device_batches),
       "streaming alone": lambda: alone(streamed_batches)},
      rounds=_ROUNDS.value, warmup=_WARMUP.value, baseline="device + train step")
  summary = _harness.summary(timings)
  images = steps * batch_size
  rates = {name: images / row["wall_median_s"] for name, row in summary.items()}
  record.update({
      "dataset": "cifar10", "imbalance_ratio": 100, "split_fingerprint": split.fingerprint,
      "num_train": int(split.train_indices.size), "batch_size": batch_size,
      "steps_per_repetition": steps, "steps_per_epoch": pipe.steps_per_epoch,
      "augment": "crop(pad 4) + flip, normalise (on the device in both)",
      "images_per_s": rates, "timings": summary, "rounds": _ROUNDS.value,
      "warmup_rounds": _WARMUP.value,
      "streaming_slowdown_paired": summary["streaming + train step"]["paired_ratio_median"] - 1,
      "timing": "interleaved rounds (random order per round) after warm-up rounds; median "
                "wall-clock and process CPU time per repetition of --steps steps; paired: median "
                "over rounds of streaming / device in the same round",
  })
  _harness.write(_OUT.value, _harness.finish_record(record), _markdown(record))


def _markdown(r: dict) -> str:
  t = r["timings"]
  lines = [
      "# Streamed vs on-device CIFAR-10-LT epoch (IR 100), ResNet-32 train step", "",
      *_harness.provenance_lines(r), "",
      (f"Training split {r['split_fingerprint'][:12]} ({r['num_train']} images, "
      f"{r['steps_per_epoch']} steps of {r['batch_size']} per epoch). Timed: "
      f"{r['steps_per_repetition']} consecutive steps from the start of an epoch per repetition "
      "(the streaming iterator and its grain threads are created inside it), blocked on the last "
      f"result; {r['rounds']} interleaved rounds after {r['warmup_rounds']} warm-up round(s). "
      "Both pipelines feed the same compiled train step and augment on the device (crop pad 4 + "
      "flip + normalise); they differ in where the batch is gathered: by index on the device, or "
      "by grain threads on the host followed by a host-to-device transfer."), "",
      "| variant | images/s (wall median) | s per repetition (wall) | CPU s per repetition |",
      "|---|---|---|---|"]
  for name, row in t.items():
    lines.append(f"| {name} | {r['images_per_s'][name]:,.0f} | {row['wall_median_s']:.3f} | "
                 f"{row['cpu_median_s']:.3f} |")
  paired = t["streaming + train step"]
  low, high = paired["paired_ratio_range"]
  lines += ["", (f"Streaming / device with the train step, paired per round: wall "
                 f"{100 * r['streaming_slowdown_paired']:+.1f} % (rounds {100 * (low - 1):+.1f} "
                 f".. {100 * (high - 1):+.1f} %), process CPU time "
                 f"{100 * (paired['cpu_paired_ratio_median'] - 1):+.1f} % (positive: streaming "
                 "slower)."),
            "", ("CPU-only host shared with other jobs: the train step and both pipelines compete "
                 "for the same cores, so the wall figures carry the host's load; the 'alone' rows "
                 "give each pipeline's own cost.")]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  app.run(main)
