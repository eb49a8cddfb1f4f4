"""Benchmark: the on-device input pipeline on one CIFAR-10-LT (IR 100) epoch, next to ResNet-32.

    python -m experiments.bench.pipeline [--train_steps=10] [--cutout=16] [--rounds=3] \
        [--out=experiments/results/bench_pipeline]

First times each real-data source (CIFAR-10 from the binary archive; stock TFDS Fashion-MNIST,
prepared offline into `--data_dir` when cold; a grain streaming epoch of Fashion-MNIST-LT). Then
measures, on the default devices (all of them form the "data" mesh), interleaved round by round
in a random order (`experiments/bench/_harness.py`):
- pipeline alone: one epoch of per-step compiled gather + crop/flip(/Cutout) + normalise, images/s,
  through `ltjax.data.DevicePipeline`, the pipeline training runs (its epoch order, key scheme
  and row selection; the instance sampler without the last partial batch, as the GALA recipe);
- ResNet-32 train step (forward, backward, SGD momentum) on a fixed, already-augmented batch;
- the same train step fused with the pipeline (batch gathered and augmented inside the step).
The pipeline's cost is reported as the train step's slowdown from fusing it in (paired per round
and as a ratio of medians), and as the ratio of the standalone pipeline time to the train step
time per image. Writes `<out>.json` and `<out>.md`.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import optax
from absl import app
from absl import flags

from experiments import shared_data
from experiments.bench import _harness
from ltjax import data
from ltjax import models
from ltjax import train

_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_CUTOUT = flags.DEFINE_integer("cutout", 0, "Cutout side (0: crop + flip only).")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 0, "Train steps per repetition (0: an epoch).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved timed rounds.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed rounds first (the first one compiles).")
_TIME_SOURCES = flags.DEFINE_bool("time_sources", True, "Also time loading the real sources.")
_OUT = flags.DEFINE_string("out", "experiments/results/bench_pipeline",
                           "Output path without suffix.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: LTJAX_DATA_DIR).")


def _time_sources(data_dir) -> dict:
  """Seconds to load each real source, and a streaming epoch's images/s."""
  out = {}
  out["cifar10 train, binary archive + MD5 (s)"] = _harness.timed(
      lambda: data.load_arrays("cifar10", "train",
                               manual_dir=shared_data.manual_dir("cifar10"))).wall
  data_dir = pathlib.Path(data_dir or data.default_data_dir()).expanduser()
  cold = not (data_dir / "fashion_mnist").is_dir()
  what = "prepare offline + read" if cold else "read prepared"
  loaded = []
  out[f"fashion_mnist train, stock TFDS builder, {what} (s)"] = _harness.timed(
      lambda: loaded.append(data.load_arrays(
          "fashion_mnist", "train", data_dir=data_dir,
          manual_dir=shared_data.manual_dir("fashion_mnist", data_dir)))).wall
  fmnist = loaded[0]
  split = data.longtail_split(fmnist.labels, imbalance_ratio=100)
  images, labels = fmnist.images[split.train_indices], fmnist.labels[split.train_indices]
  order = jax.device_get(data.epoch_order(jax.random.key(0), 0, labels, batch_size=128))
  count = []
  seconds = _harness.timed(lambda: count.append(sum(
      b["image"].shape[0] for b in data.array_batches(images, labels, order, process_index=0,
                                                      process_count=1)))).wall
  out["fashion_mnist-LT (IR 100) streamed epoch from host arrays, grain (images/s)"] = (
      count[0] / seconds)
  return out


def main(argv):
  del argv
  record = _harness.start_record("experiments.bench.pipeline")
  sources = _time_sources(_DATA_DIR.value) if _TIME_SOURCES.value else {}
  arrays = data.load_arrays("cifar10", "train", manual_dir=shared_data.manual_dir("cifar10"))
  split = data.longtail_split(arrays.labels, imbalance_ratio=100)
  mesh = train.data_mesh()
  batch_size = _BATCH_SIZE.value
  labels = arrays.labels[split.train_indices]
  # The pipeline training builds for the CIFAR recipes (experiments.experiment.build_experiment):
  # the instance sampler, the training key scheme and row selection, the recipe's augmentation.
  pipe = data.DevicePipeline(
      num_examples=labels.size, batch_size=batch_size, mesh=mesh, mean=data.CIFAR_MEAN,
      std=data.CIFAR_STD, crop_padding=4, flip=True, cutout_size=_CUTOUT.value)
  images, labels = pipe.place(arrays.images[split.train_indices], labels)
  counts = train.put_replicated(split.class_counts.astype("float32"), mesh)
  rng = jax.random.key(0)
  steps = pipe.steps_per_epoch

  # 1. The pipeline alone, per-step dispatch as in a train loop; the sum keeps the work alive.
  batch_fn = jax.jit(lambda s, images, labels, order: jnp.sum(
      pipe.batch(rng, s, images, labels, order)["image"]))
  order_fn = jax.jit(pipe.epoch_order, out_shardings=train.replicated(mesh))

  def pipeline_epoch():
    order = order_fn(rng, 1, labels, counts)
    return [batch_fn(steps + s, images, labels, order) for s in range(steps)]

  # 2./3. ResNet-32 train step, without and with the pipeline fused in.
  model = models.build_classifier("resnet32", num_classes=10)
  variables = model.init(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), train=False)
  tx = optax.sgd(0.1, momentum=0.9)
  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  params, batch_stats, opt_state = train.put_replicated((params, batch_stats, opt_state), mesh)

  def update(params, batch_stats, opt_state, images, labels):
    def loss_fn(p):
      logits, new_state = model.apply({"params": p, "batch_stats": batch_stats}, images,
                                      train=True, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, new_state["batch_stats"]
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  plain_step = jax.jit(update, donate_argnums=(0, 1, 2))

  def fused(params, batch_stats, opt_state, s, images, labels, order):
    batch = pipe.batch(rng, s, images, labels, order)
    return update(params, batch_stats, opt_state, batch["image"], batch["label"])

  fused_step = jax.jit(fused, donate_argnums=(0, 1, 2))
  order = order_fn(rng, 1, labels, counts)
  fixed = jax.jit(pipe.batch)(rng, steps, images, labels, order)
  train_steps = _TRAIN_STEPS.value or steps
  state = [params, batch_stats, opt_state]

  def run(fused: bool):
    p, b, o = state
    loss = None
    for s in range(train_steps):
      if fused:
        p, b, o, loss = fused_step(p, b, o, steps + s % steps, images, labels, order)
      else:
        p, b, o, loss = plain_step(p, b, o, fixed["image"], fixed["label"])
    state[:] = [p, b, o]
    return loss

  engine = _engine_runs(model, tx, variables, pipe, images, labels, counts, fixed,
                       train_steps=train_steps, mesh=mesh)
  timings = _harness.interleaved(
      {"pipeline": pipeline_epoch, "plain": lambda: run(False), "fused": lambda: run(True),
       **engine},
      rounds=_ROUNDS.value, warmup=_WARMUP.value, baseline="plain")
  summary = _harness.summary(timings)
  pipeline_s = summary["pipeline"]["wall_median_s"]
  plain_s, fused_s = summary["plain"]["wall_median_s"], summary["fused"]["wall_median_s"]
  images_per_epoch = steps * batch_size
  train_images = train_steps * batch_size
  engine_ips = train_images / summary["engine"]["wall_median_s"]
  engine_fixed_ips = train_images / summary["engine_fixed"]["wall_median_s"]
  engine_paired = (summary["engine"]["paired_ratio_median"]
                   / summary["engine_fixed"]["paired_ratio_median"])
  pipeline_ips = images_per_epoch / pipeline_s
  plain_ips, fused_ips = train_images / plain_s, train_images / fused_s
  record.update({
      "dataset": "cifar10", "imbalance_ratio": 100, "split_fingerprint": split.fingerprint,
      "num_train": int(split.train_indices.size), "batch_size": batch_size,
      "steps_per_epoch": steps, "augment": f"crop(pad 4) + flip + cutout({_CUTOUT.value})",
      "pipeline_epoch_s": pipeline_s, "pipeline_images_per_s": pipeline_ips,
      "train_steps_timed": train_steps, "train_step_images_per_s": plain_ips,
      "train_step_with_pipeline_images_per_s": fused_ips,
      "pipeline_share_standalone": plain_ips / pipeline_ips,
      "fused_slowdown": plain_ips / fused_ips - 1,
      "fused_slowdown_paired": summary["fused"]["paired_ratio_median"] - 1,
      "engine_step_images_per_s": engine_ips,
      "engine_step_fixed_batch_images_per_s": engine_fixed_ips,
      "engine_input_slowdown": engine_fixed_ips / engine_ips - 1,
      "engine_input_slowdown_paired": engine_paired - 1,
      "engine_vs_fused": summary["engine"]["wall_median_s"] / fused_s - 1,
      "timings": summary, "rounds": _ROUNDS.value,
      "timing": "interleaved rounds (random order per round) after warm-up rounds; median "
                "wall-clock and process CPU time per repetition; paired: median over rounds of "
                "fused / plain in the same round",
      "sources": sources,
  })
  _harness.write(_OUT.value, _harness.finish_record(record), _markdown(record))


def _engine_runs(model, tx, variables, pipe, images, labels, counts, fixed, *, train_steps,
                 mesh) -> dict:
  """The step `ltjax.train.fit` dispatches (`make_train_step`, method CE): fed by the
  `DeviceArrays` input (its gather + augmentation fused into the step at build time) and, as
  its reference, fed the fixed, already-augmented batch (`batch_fn` the identity)."""
  device_input = data.DeviceArrays(pipeline=pipe, images=images, labels=labels,
                                   class_counts=counts)
  method, steps = train.METHODS["ce"], pipe.steps_per_epoch
  hp = train.hparams(method=method)
  num_classes = int(counts.shape[0])
  stats = train.put_replicated(train.ClassStats(
      class_counts=counts, log_prior=jnp.log(counts / counts.sum())), mesh)
  feeds = {"engine": (device_input.batch_fn,
                      next(device_input.epoch_batches(jax.random.PRNGKey(0), 1))),
           "engine_fixed": (lambda key, batch, step, size=None: batch, fixed)}
  runs = {}
  for name, (batch_fn, batch) in feeds.items():
    step = train.make_train_step(model, tx, method, hp, steps_per_epoch=steps,
                                 batch_fn=batch_fn, lr_fn=lambda s: 0.1, mesh=mesh)
    holder = [train.put_replicated(train.create_train_state(
        variables["params"], variables["batch_stats"], tx,
        loss_state=method.init_state(num_classes, hp), rng=jax.random.PRNGKey(0)), mesh)]

    def run(step=step, holder=holder, batch=batch):
      metrics = None
      for _ in range(train_steps):
        holder[0], metrics = step(holder[0], batch, stats)
      return metrics["loss"]

    runs[name] = run
  return runs


def _markdown(r: dict) -> str:
  cpu = {name: row["cpu_median_s"] for name, row in r["timings"].items()}
  lines = [
      "# On-device input pipeline, CIFAR-10-LT (IR 100), ResNet-32", "",
      *_harness.provenance_lines(r), "",
      "| measure | value |", "|---|---|",
      f"| training images (split {r['split_fingerprint'][:12]}) | {r['num_train']} |",
      f"| augmentation | {r['augment']} |",
      (f"| pipeline alone, one epoch ({r['steps_per_epoch']} steps of {r['batch_size']}) | "
      f"{r['pipeline_epoch_s']:.3f} s ({cpu['pipeline']:.3f} CPU s), "
      f"{r['pipeline_images_per_s']:,.0f} images/s |"),
      (f"| ResNet-32 train step, fixed batch ({r['train_steps_timed']} steps) | "
      f"{r['train_step_images_per_s']:,.0f} images/s ({cpu['plain']:.2f} CPU s) |"),
      (f"| ResNet-32 train step with the pipeline fused in | "
      f"{r['train_step_with_pipeline_images_per_s']:,.0f} images/s ({cpu['fused']:.2f} CPU s) |"),
      (f"| pipeline time / train-step time per image (standalone) | "
      f"{100 * r['pipeline_share_standalone']:.2f} % |"),
      (f"| train-step slowdown from fusing the pipeline (medians; paired per round) | "
      f"{100 * r['fused_slowdown']:.2f} %; {100 * r['fused_slowdown_paired']:.2f} % |"),
      (f"| ltjax.train step (fit's), `DeviceArrays` input fused in | "
      f"{r['engine_step_images_per_s']:,.0f} images/s ({cpu['engine']:.2f} CPU s) |"),
      (f"| ltjax.train step, fixed batch (identity `batch_fn`) | "
      f"{r['engine_step_fixed_batch_images_per_s']:,.0f} images/s "
      f"({cpu['engine_fixed']:.2f} CPU s) |"),
      (f"| ltjax.train step slowdown from its input (medians; paired per round) | "
      f"{100 * r['engine_input_slowdown']:.2f} %; "
      f"{100 * r['engine_input_slowdown_paired']:.2f} % |"),
      (f"| ltjax.train step with its input / hand-written fused step (medians) | "
      f"{100 * r['engine_vs_fused']:+.2f} % |"),
      "",
      ("On a shared CPU the two train-step rows differ by run-to-run noise larger than the "
      "pipeline's cost; the standalone ratio is the meaningful one."), "",
      "Target: the pipeline costs <= 5 % of a ResNet-32 epoch."]
  if r["sources"]:
    lines += ["", "## Real-data sources", "", "| source | value |", "|---|---|"]
    lines += [f"| {k} | {v:,.1f} |" for k, v in r["sources"].items()]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  app.run(main)
