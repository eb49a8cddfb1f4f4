"""The choice between the on-device and streamed inputs, and the streamed list datasets; every
pipeline trains through the one loop (`ltjax.train.fit`) and run (`ltjax.cli.experiment.train`).

`experiments.main` calls `run` for every dataset:
- list-defined datasets (ImageNet-LT, iNaturalist 2018, Places-LT: `LIST_DATASETS`) exist only as
  encoded records of many sizes and are always streamed (`train_and_evaluate`, input
  `ltjax.data.ImageLists`: decode + RandomResizedCrop + flip on the host, the step normalises);
  `config.pipeline="device"` is refused for them;
- array datasets (CIFAR, Fashion-MNIST) train on the device when their images fit in its memory
  (`choose_pipeline`, input `ltjax.data.DeviceArrays`), else (or with
  `config.pipeline="streaming"`) streamed from the host arrays (`train_arrays_streamed`, input
  `ltjax.data.HostArrays`: the same order and augmentation draws, so the same batches).

Per epoch the global order is `ltjax.data.epoch_order(state.rng, epoch, ...)` (instance
permutation, or cRT's class-balanced sampler), computed identically on every process; every
process streams its columns of it (`ltjax.data.process_columns`) and `ltjax.data.global_batch`
assembles the global batch over the "data" mesh axis.

Resuming. The data position is the train state's own step counter, restored from the checkpoint:
`(epoch, step_in_epoch) = divmod(state.step, steps_per_epoch)`, checked against the checkpoint's
recorded position (`ltjax.train.RunCheckpoints`). The order is a pure function of (state.rng,
epoch) and each example's augmentation of (seed, epoch, its place in the global batch) (lists) or
of (state.rng, state.step) (arrays), so rebuilding the input at that step replays exactly the
batches an uninterrupted run would see next, whatever the number of processes or grain workers.

Pre-emption (`ltjax.cli.preemption`): SIGTERM makes the run finish its current step, write a
checkpoint and exit with status 0; the same command continues. With several processes they
agree on the step through JAX's pre-emption sync point.
"""
# ml_collections types every ConfigDict value as the union of all value kinds, so each
# `int(config.x)` / `str(config.y)` of a validated recipe reads as a possible list or None here.
# pyright: reportArgumentType=false
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

import ltjax
from ltjax import _private
from ltjax import checkpointing
from ltjax import train as lt
from ltjax.cli import experiment
from ltjax.cli import training

LIST_DATASETS = experiment.LIST_DATASETS
PIPELINES = ("auto", "device", "streaming")
# The share of one device's memory that `auto` lets the on-device pipeline fill with images; the
# other half is left to the parameters, optimizer state, a batch's activations and gradients, and
# XLA's workspace (ResNet-50 at batch 256 in bf16 needs ~20 GB of an H100's 80).
DEVICE_DATA_FRACTION = 0.5


def is_streamed(config) -> bool:
  """Whether `config`'s dataset exists only as streamed records (a list-defined dataset)."""
  return config.dataset in LIST_DATASETS


def choose_pipeline(requested: str, *, data_bytes: int | None, memory_bytes: int,
                    fraction: float = DEVICE_DATA_FRACTION) -> str:
  """"device" or "streaming" for a run asked for `requested` ("auto", "device", "streaming").

  `auto` picks "device" when the arrays the on-device pipeline would place on every device
  (`data_bytes`, one replica) fit in `fraction` of one device's memory (`memory_bytes`, see
  `device_memory_bytes`), else "streaming".

  Args:
    requested: `config.pipeline`.
    data_bytes: bytes of one replica of the device-resident data (`device_data_bytes`), or None
      for a dataset that exists only as encoded records (it cannot be materialised as arrays).
    memory_bytes: the memory one device has for it.
    fraction: the share of `memory_bytes` the data may take.

  Raises:
    ConfigError: `requested` is unknown, or "device" for a dataset that cannot be materialised.
  """
  if requested not in PIPELINES:
    raise experiment.ConfigError(f"config.pipeline={requested!r} is not allowed: expected one "
                                   f"of {PIPELINES}.")
  if data_bytes is None:
    if requested == "device":
      raise experiment.ConfigError(
          "config.pipeline='device' is not possible for this dataset: it exists only as encoded "
          "records of many image sizes (augmented while decoding on the host), which cannot be "
          "held on the device as arrays; use 'streaming' or 'auto'.")
    return "streaming"
  if requested != "auto":
    return requested
  return "device" if data_bytes <= fraction * memory_bytes else "streaming"


def device_memory_bytes(devices=None) -> int:
  """The memory one device of this job has for data, in bytes, agreed by all processes (min).

  An accelerator reports it (`Device.memory_stats()["bytes_limit"]`, the smallest over this
  process's devices). CPU devices report none: they share the host's RAM and each holds its own
  replica of the data, so each gets the physical memory divided by the local device count.
  """
  devices = jax.local_devices() if devices is None else devices
  limits = [(d.memory_stats() or {}).get("bytes_limit") or 0 for d in devices]
  if all(limits):
    memory = min(int(x) for x in limits)
  else:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // len(devices)
  if jax.process_count() > 1:  # every process must take the same branch
    memory = int(np.min(multihost_utils.process_allgather(np.int64(memory))))
  return memory


def device_data_bytes(splits: experiment.Splits) -> int:
  """Bytes of the arrays the on-device pipeline places on every device (one replica): the
  training, validation and test images and the training labels."""
  arrays = (splits.train_images, splits.train_labels.astype(np.int32), splits.test_images,
            splits.val_images)
  return int(sum(x.nbytes for x in arrays if x is not None))


def validate(config, *, num_devices: int) -> lt.Method:
  """`ltjax.cli.experiment.validate_config` plus the checks of streamed list datasets."""
  method = experiment.validate_config(config, num_devices=num_devices)
  choose_pipeline(config.get("pipeline", "auto"), data_bytes=None, memory_bytes=0)
  if method.stage == "posthoc":
    raise experiment.ConfigError(f"Method {config.method!r} (post-hoc on a stage-1 checkpoint) "
                                   "is not supported on streamed datasets yet.")
  if method.posthoc is not None and method.posthoc.logits is None:
    raise experiment.ConfigError(f"Method {config.method!r} re-runs the network per tau "
                                   "(a post-hoc step on the weights): not supported on streamed "
                                   "datasets yet.")
  if config.eval_batch_size % num_devices:
    raise experiment.ConfigError(f"config.eval_batch_size={config.eval_batch_size} must be a "
                                   f"multiple of the {num_devices} devices.")
  if config.augment not in experiment.HOST_AUGMENTATIONS:
    raise experiment.ConfigError(f"Streamed datasets augment on the host: config.augment must "
                                   f"be one of {experiment.HOST_AUGMENTATIONS}.")
  return method


def run(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False,
        progress: bool = True, source: Callable | None = None) -> dict:
  """The CLI's run: validates, then trains `config` with the pipeline `config.pipeline` asks
  for (`choose_pipeline`) and writes the report. Returns the results ({} when pre-empted).

  With `resume`, a workdir holding checkpoints of this run continues from the latest (mid-epoch
  ones included, on either pipeline; `auto` picks the pipeline that wrote it, so that the run
  ends bit-identical to an uninterrupted one), and a workdir holding this run's results.json
  (`experiment.finished_results`) is finished: nothing is trained and its results are returned.
  Without, a workdir holding checkpoints is refused.

  `source` is `ltjax.cli.experiment.load_splits`'s (array datasets only).
  """
  streamed = is_streamed(config)
  if streamed:
    validate(config, num_devices=jax.device_count())
  else:
    experiment.validate_run(config, workdir, num_devices=jax.device_count())
  os.makedirs(workdir, exist_ok=True)
  with checkpointing.WorkdirLock(workdir):
    if (done := _finished_or_refused(config, workdir, resume, progress)) is not None:
      return done
    if streamed:
      return train_and_evaluate(config, workdir, resume=resume, progress=progress)
    splits = experiment.load_splits(config, source=source)
    requested = config.get("pipeline", "auto")
    if resume and requested == "auto":
      requested = _checkpoint_pipeline(workdir) or requested
    pipeline = choose_pipeline(requested, data_bytes=device_data_bytes(splits),
                               memory_bytes=device_memory_bytes())
    if pipeline == "device":
      results = experiment.train_and_evaluate(config, workdir, splits=splits, resume=resume,
                                                preemptible=True, progress=progress)
    else:
      results = train_arrays_streamed(config, workdir, splits=splits, resume=resume,
                                      progress=progress)
  if results and progress:
    print(f"Wrote {workdir}/{experiment.RESULTS_FILE} and {experiment.PLOT_FILE}", flush=True)
  return results


def _finished_or_refused(config, workdir: str, resume: bool, progress: bool) -> dict | None:
  """This run's results in `workdir` when it is finished (`experiment.finished_results`), before
  any data is read; without `resume`, a workdir holding checkpoints is refused here too."""
  folder = os.path.join(workdir, experiment.CHECKPOINT_DIR)
  if not resume:
    if os.path.isdir(folder):
      with checkpointing.Checkpointer(folder) as ckpt:
        if ckpt.all_steps():
          lt.refuse_existing_checkpoints(ckpt.directory)
    return None
  results = experiment.finished_results(config, workdir)
  if results is not None and progress:
    print(f"{workdir} holds this run, finished ({experiment.RESULTS_FILE}): nothing to train. "
          f"Delete {experiment.RESULTS_FILE} to evaluate its last checkpoint again, or use a "
          "fresh --workdir.", flush=True)
  return results


def _checkpoint_pipeline(workdir: str) -> str | None:
  """The pipeline ("device" / "streaming") that wrote the latest checkpoint in `workdir`, None
  when there is none or it does not say (a mid-epoch one without the key is the streamed one's:
  the on-device loop stopped only at epoch ends before it recorded its pipeline)."""
  meta = experiment.latest_checkpoint_metadata(workdir)
  if meta is None:
    return None
  return meta.get("pipeline") or ("streaming" if meta.get("step_in_epoch") else None)


def prepare(config):
  """The prepared `lt_lists` builder of `config.dataset` (preparing it from `config.image_root` /
  `config.list_dir` if needed)."""
  image_root = config.get("image_root") or str(
      ltjax.data.default_manual_dir(config.dataset, config.data_dir or None))
  return ltjax.data.prepare_lt_lists(
      config.dataset, image_root=image_root, list_dir=config.get("list_dir") or None,
      data_dir=config.data_dir or None, verify=config.get("verify_lists", True))


def _eval_logits_fn(model, mesh, mean, std):
  repl = lt.replicated(mesh)

  @functools.partial(jax.jit, out_shardings=repl)
  def logits(params, batch_stats, images):
    x = ltjax.data.normalize(images, mean=mean, std=std)
    return model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)

  return logits


def _split_logits_fn(builder, *, logits_fn, mesh, config, workers) -> Callable:
  """`(params, batch_stats, split) -> f32[N, C]`: the logits of a whole list split (by its TFDS
  name), streamed and sharded across processes (the `eval_logits` of `Experiment`)."""

  def split_logits(params, batch_stats, split):
    source, labels = ltjax.data.lt_lists_source(builder, split)
    chunks, masks = [], []
    for local in ltjax.data.eval_image_batches(source, len(labels),
                                               batch_size=config.eval_batch_size,
                                               size=config.image_size, worker_count=workers):
      glob = ltjax.data.global_batch({"image": local["image"], "mask": local["mask"]}, mesh)
      chunks.append(np.asarray(jax.device_get(logits_fn(params, batch_stats, glob["image"]))))
      masks.append(np.asarray(multihost_utils.process_allgather(
          glob["mask"], tiled=True)) if jax.process_count() > 1 else np.asarray(glob["mask"]))
    return np.concatenate(chunks)[np.concatenate(masks)]

  return split_logits


def build_list_experiment(config: ml_collections.ConfigDict) -> experiment.Experiment:
  """The run of `config` on its streamed list dataset (input `ltjax.data.ImageLists`), with
  the evaluation of its validation (when the family has one) and test lists."""
  mesh = lt.data_mesh()
  method = validate(config, num_devices=mesh.devices.size)
  hp = lt.hparams(config.hparams, method=method)
  builder = prepare(config)
  source, labels = ltjax.data.lt_lists_source(builder, "train")
  num_classes = int(config.get("num_classes") or builder.info.features["label"].num_classes)
  counts = np.bincount(labels, minlength=num_classes).astype(np.float32)
  steps_per_epoch = len(labels) // config.batch_size
  if config.get("max_steps_per_epoch"):  # smoke tests: a few steps of every epoch
    steps_per_epoch = min(steps_per_epoch, int(config.max_steps_per_epoch))
  if steps_per_epoch == 0:
    raise experiment.ConfigError(f"config.batch_size={config.batch_size} exceeds the "
                                   f"{len(labels)} training images.")
  size, workers = int(config.image_size), int(config.get("data_workers", 0))
  mean, std = tuple(config.mean), tuple(config.std)
  data = ltjax.data.ImageLists(
      source=source, labels=labels, class_counts=counts, batch_size=config.batch_size,
      steps_per_epoch=steps_per_epoch, sampler=method.sampler, seed=config.seed, size=size,
      mesh=mesh, mean=mean, std=std, worker_count=workers,
      color_jitter=tuple(config.get("color_jitter", ())))
  model, _, state, train_step, _ = experiment.build_train_step(
      config, method, hp, num_classes=num_classes, image_shape=(size, size, 3),
      steps_per_epoch=steps_per_epoch, batch_fn=data.batch_fn, mesh=mesh,
      load_weights=lt.torchvision_weights(config.get("init_weights")))
  stats = lt.put_replicated(lt.ClassStats(
      class_counts=counts, log_prior=np.asarray(ltjax.priors.log_prior(counts), np.float32)),
      mesh)
  # Lined up after compiling, as the train step is: its output gather is a cross-process
  # collective with Gloo's 30 s set-up timeout on CPU.
  logits_fn = compiled_in_step(_eval_logits_fn(model, mesh, mean, std), "ltjax_eval_logits")
  splits = {"val": "validation", "test": "test"}
  splits = {k: v for k, v in splits.items() if v in builder.info.splits}
  return experiment.Experiment(
      config=config, method=method, hp=hp, mesh=mesh, model=model,
      state=lt.put_replicated(jax.device_get(state), mesh),
      train_step=compiled_in_step(train_step, "ltjax_train_step"), data=data,
      steps_per_epoch=steps_per_epoch,
      fingerprint=builder.info.metadata["train"]["split_fingerprint"], class_counts=counts,
      eval_logits=_split_logits_fn(builder, logits_fn=logits_fn, mesh=mesh, config=config,
                                   workers=workers),
      eval_images=splits,
      eval_labels={k: ltjax.data.lt_lists_source(builder, v)[1] for k, v in splits.items()},
      input_name="streaming", device_data={"stats": stats},
      # The list's own imbalance ratio n_max / n_min (the split is the list, not a draw).
      report_fields={"imbalance_ratio": float(counts.max() / max(counts.min(), 1.0)),
                     "split_seed": None, "split_protocol": "list"})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False,
                       progress: bool = True, max_steps: int | None = None) -> dict:
  """Trains `config` on its streamed list dataset, checkpoints into `workdir`, writes the report
  (`experiment.train`: the post-hoc tau chosen on the validation list, the NaN check, the
  per-class plot and an atomic results.json, as for every pipeline).

  Args:
    config: a large recipe (e.g. ltjax/recipes/imagenet_lt_rx50.py).
    workdir: output folder (`checkpoints/`, `results.json`).
    resume: continue from the latest checkpoint (same batches as an uninterrupted run).
    progress: print one line per step and per epoch.
    max_steps: stop after this many optimizer steps of the whole run (tests; no report).

  Returns:
    The results dict (empty when stopped by `max_steps` or pre-empted).
  """

  def train():
    exp = build_list_experiment(config)
    wait_for_all_processes("ltjax_streaming_built")
    return training.train(exp, workdir, resume=resume, max_steps=max_steps,
                              preemptible=True, progress="lines" if progress else False)

  return training.guarded(workdir, train)


def wait_for_all_processes(name: str, *, timeout_s: int = 3600) -> None:
  """Blocks until every process of a multi-process run reaches the barrier `name` (a no-op in one
  process).

  A coordination-service barrier, not a collective: on CPU the first collective of each device
  group sets up a Gloo context with a fixed 30 s timeout, and the processes reach it that far
  apart when one compiles what another loads from the persistent cache (JAX writes entries from
  process 0 only, and process 1's cache keys differ, so process 1 compiles everything).
  Measured: ResNeXt-50's 2 x 4-device CLI run died in the Checkpointer's first sync ("Gloo context
  initialization failed: ... GetKeyValue() timed out") in 6 of 9 runs on 2 loaded cores. The
  train step's first all-reduce failed the same way when process 1 compiled the step > 30 s longer
  (on cores starved by other work): `compiled_in_step` lines the processes up after compiling.
  """
  _private.barrier(name, timeout_s=timeout_s)  # the coordination service's (a private piece)


def compiled_in_step(step: Any, name: str) -> Callable:
  """`step` (a jitted function), in a multi-process run compiled at its first call and run once
  every process has compiled it (barrier `name`); `step` itself in one process.

  Its first cross-process all-reduce sets up a Gloo context on CPU, which fails when the
  processes arrive > 30 s apart, as they do when process 1 compiles the step and process 0 loads
  it from the persistent cache (`wait_for_all_processes`).
  """
  if jax.process_count() == 1:
    return step
  compiled = None

  def call(*args):
    nonlocal compiled
    if compiled is None:
      compiled = step.lower(*args).compile()
      wait_for_all_processes(name)
    return compiled(*args)

  return call


def train_arrays_streamed(config: ml_collections.ConfigDict, workdir: str, *,
                          splits: experiment.Splits, resume: bool = False,
                          progress: bool = True, max_steps: int | None = None) -> dict:
  """Trains an array dataset with its training images streamed from the host (input
  `ltjax.data.HostArrays`) through the one loop and run (`experiment.train`), and writes the
  same report with `"pipeline": "streaming"`.

  The step is the on-device pipeline's with the gather done on the host: its augmentation draws
  (a function of state.rng, state.step and B) are the device pipeline's, so the two pipelines
  train the same batches. Checkpoints: every `config.checkpoint_every_epochs` epochs and on
  pre-emption / `max_steps` mid-epoch (`step_in_epoch` > 0).

  Returns:
    The results dict (empty when stopped by `max_steps` or pre-empted).
  """

  def train():
    exp = experiment.build_experiment(config, splits, train_on_device=False)
    exp = dataclasses.replace(
        exp, train_step=compiled_in_step(exp.train_step, "ltjax_train_step"),
        last_step=None if exp.last_step is None
        else compiled_in_step(exp.last_step, "ltjax_last_step"))
    return training.train(exp, workdir, resume=resume, max_steps=max_steps,
                              preemptible=True, progress="lines" if progress else False,
                              extra={"pipeline": "streaming"})

  return training.guarded(workdir, train)
