"""The streaming pipeline and the choice between it and the on-device one, with the same train
step, mid-epoch resume and pre-emption safety.

`experiments.main` calls `run` for every dataset:
- list-defined datasets (ImageNet-LT, iNaturalist 2018, Places-LT: `LIST_DATASETS`) exist only as
  encoded records of many sizes and are always streamed (`train_and_evaluate`;
  `config.pipeline="device"` is refused for them);
- array datasets (CIFAR, Fashion-MNIST) train on the device when their images fit in its memory
  (`choose_pipeline`), else (or with `config.pipeline="streaming"`) streamed from the host arrays
  (`train_arrays_streamed`).

Same train step. Both streaming paths call `ltjax.train.make_train_step`'s step: array datasets
the very compiled step `experiments.experiment.build_experiment` builds for the on-device
pipeline, fed the global batch `images[order[s]]` with the order row `arange(B)` (its gather is
then the identity and its augmentation draws are the device path's, so the two pipelines train
the same batches); list datasets the same step function with a `batch_fn` that only normalises
(decode + RandomResizedCrop + flip ran on the host, `ltjax.data.train_image_batches`).

Per epoch the global order of record indices is `ltjax.train.epoch_order(state.rng, epoch, ...)`
(instance permutation, or cRT's class-balanced sampler), computed identically on every process;
every process streams its columns of it and `ltjax.data.global_batch` assembles the global batch
over the "data" mesh axis.

Resuming. The data position is the train state's own step counter, restored from the Orbax
checkpoint: `(epoch, step_in_epoch) = divmod(state.step, steps_per_epoch)`. The order is a pure
function of (state.rng, epoch) and each example's augmentation of (seed, epoch, its place in the
global batch) (lists) or of (state.rng, state.step) (arrays), so rebuilding the iterator at that
step replays exactly the batches an uninterrupted run would see next, whatever the number of
processes or grain workers. grain's own iterator state (`get_state()`) would tie the resume to
the process count (one state per process) and adds nothing a step count does not give. The
checkpoint metadata also records the position, and a resume checks that it agrees with the step.

Pre-emption (`experiments.preemption`, shared with the on-device loop): SIGTERM makes the run
finish its current step, write a checkpoint and exit with status 0; the same command continues
(the CLI resumes by default). With several processes they agree on the step through JAX's
pre-emption sync point (`multihost_utils.reached_preemption_sync_point`, the mechanism Orbax's
pre-emption support uses), so all of them save the same step.
"""
from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

import ltjax
from experiments import experiment as device_train
from experiments import preemption
from experiments import provenance
from ltjax import _private
from ltjax import checkpointing
from ltjax import models
from ltjax import train as lt

LIST_DATASETS = device_train.LIST_DATASETS
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
    raise device_train.ConfigError(f"config.pipeline={requested!r} is not allowed: expected one "
                                   f"of {PIPELINES}.")
  if data_bytes is None:
    if requested == "device":
      raise device_train.ConfigError(
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


def device_data_bytes(splits: device_train.Splits) -> int:
  """Bytes of the arrays the on-device pipeline places on every device (one replica): the
  training, validation and test images and the training labels."""
  arrays = (splits.train_images, splits.train_labels.astype(np.int32), splits.test_images,
            splits.val_images)
  return int(sum(x.nbytes for x in arrays if x is not None))


def validate(config, *, num_devices: int) -> lt.Method:
  """`experiments.experiment.validate_config` plus the checks of streamed list datasets."""
  method = device_train.validate_config(config, num_devices=num_devices)
  choose_pipeline(config.get("pipeline", "auto"), data_bytes=None, memory_bytes=0)
  if method.stage == "posthoc":
    raise device_train.ConfigError(f"Method {config.method!r} (post-hoc on a stage-1 checkpoint) "
                                   "is not supported on streamed datasets yet.")
  if method.posthoc is not None and method.posthoc.logits is None:
    raise device_train.ConfigError(f"Method {config.method!r} re-runs the network per tau "
                                   "(a post-hoc step on the weights): not supported on streamed "
                                   "datasets yet.")
  if config.eval_batch_size % num_devices:
    raise device_train.ConfigError(f"config.eval_batch_size={config.eval_batch_size} must be a "
                                   f"multiple of the {num_devices} devices.")
  if config.augment not in device_train.HOST_AUGMENTATIONS:
    raise device_train.ConfigError(f"Streamed datasets augment on the host: config.augment must "
                                   f"be one of {device_train.HOST_AUGMENTATIONS}.")
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

  `source` is `experiments.experiment.load_splits`'s (array datasets only).
  """
  streamed = is_streamed(config)
  if streamed:
    validate(config, num_devices=jax.device_count())
  else:
    device_train.validate_run(config, workdir, num_devices=jax.device_count())
  os.makedirs(workdir, exist_ok=True)
  with checkpointing.WorkdirLock(workdir):
    if (done := _finished_or_refused(config, workdir, resume, progress)) is not None:
      return done
    if streamed:
      return train_and_evaluate(config, workdir, resume=resume, progress=progress)
    splits = device_train.load_splits(config, source=source)
    requested = config.get("pipeline", "auto")
    if resume and requested == "auto":
      requested = _checkpoint_pipeline(workdir) or requested
    pipeline = choose_pipeline(requested, data_bytes=device_data_bytes(splits),
                               memory_bytes=device_memory_bytes())
    if pipeline == "device":
      results = device_train.train_and_evaluate(config, workdir, splits=splits, resume=resume,
                                                preemptible=True, progress=progress)
    else:
      results = train_arrays_streamed(config, workdir, splits=splits, resume=resume,
                                      progress=progress)
  if results and progress:
    print(f"Wrote {workdir}/{device_train.RESULTS_FILE} and {device_train.PLOT_FILE}", flush=True)
  return results


def _finished_or_refused(config, workdir: str, resume: bool, progress: bool) -> dict | None:
  """This run's results in `workdir` when it is finished (`experiment.finished_results`), before
  any data is read; without `resume`, a workdir holding checkpoints is refused here too."""
  folder = os.path.join(workdir, device_train.CHECKPOINT_DIR)
  if not resume:
    if os.path.isdir(folder):
      with checkpointing.Checkpointer(folder) as ckpt:
        if ckpt.all_steps():
          device_train.refuse_existing_checkpoints(ckpt.directory)
    return None
  results = device_train.finished_results(config, workdir)
  if results is not None and progress:
    print(f"{workdir} holds this run, finished ({device_train.RESULTS_FILE}): nothing to train. "
          f"Delete {device_train.RESULTS_FILE} to evaluate its last checkpoint again, or use a "
          "fresh --workdir.", flush=True)
  return results


def _checkpoint_pipeline(workdir: str) -> str | None:
  """The pipeline ("device" / "streaming") that wrote the latest checkpoint in `workdir`, None
  when there is none or it does not say (a mid-epoch one without the key is the streamed one's:
  the on-device loop stopped only at epoch ends before it recorded its pipeline)."""
  meta = device_train.latest_checkpoint_metadata(workdir)
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


def _init_weights(config, params, batch_stats):
  """Loads `config.init_weights` (a torchvision state dict saved as .npz) into the backbone."""
  path = config.get("init_weights")
  if not path:
    return params, batch_stats
  if not os.path.isfile(path):
    raise device_train.ConfigError(f"config.init_weights={path!r} does not exist (a torchvision "
                                   "state dict saved with numpy.savez).")
  with np.load(path) as state_dict:
    loaded = models.load_torchvision_state_dict(
        {"params": params, "batch_stats": batch_stats}, dict(state_dict), head=False)
  return loaded["params"], loaded["batch_stats"]


def _eval_logits_fn(model, mesh, mean, std):
  repl = lt.replicated(mesh)

  @functools.partial(jax.jit, out_shardings=repl)
  def logits(params, batch_stats, images):
    x = ltjax.data.normalize(images, mean=mean, std=std)
    return model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)

  return logits


def _gather_split(builder, split, *, state, logits_fn, mesh, config, workers):
  """Logits f32[N, C] and labels of a whole split, streamed, sharded across processes."""
  source, labels = ltjax.data.lt_lists_source(builder, split)
  batch = config.eval_batch_size
  chunks, masks = [], []
  for local in ltjax.data.eval_image_batches(source, len(labels), batch_size=batch,
                                             size=config.image_size, worker_count=workers):
    glob = ltjax.data.global_batch({"image": local["image"], "mask": local["mask"]}, mesh)
    chunks.append(np.asarray(jax.device_get(logits_fn(state.params, state.batch_stats,
                                                      glob["image"]))))
    masks.append(np.asarray(multihost_utils.process_allgather(
        glob["mask"], tiled=True)) if jax.process_count() > 1 else np.asarray(glob["mask"]))
  logits = np.concatenate(chunks)[np.concatenate(masks)]
  return logits, labels


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False,
                       progress: bool = True, max_steps: int | None = None) -> dict:
  """Trains `config` on its streamed list dataset, checkpoints into `workdir`, writes the report.

  Args:
    config: a large recipe (e.g. experiments/configs/imagenet_lt_rx50.py).
    workdir: output folder (`checkpoints/`, `results.json`).
    resume: continue from the latest checkpoint (same batches as an uninterrupted run).
    progress: print one line per epoch.
    max_steps: stop after this many optimizer steps of the whole run (tests; no report).

  Returns:
    The results dict (empty when stopped by `max_steps` or pre-empted).
  """
  os.makedirs(workdir, exist_ok=True)
  mesh = lt.data_mesh()
  method = validate(config, num_devices=mesh.devices.size)
  hp = lt.hparams(config.hparams, method=method)
  builder = prepare(config)
  source, labels = ltjax.data.lt_lists_source(builder, "train")
  num_classes = int(config.get("num_classes") or builder.info.features["label"].num_classes)
  counts = np.bincount(labels, minlength=num_classes).astype(np.float32)
  fingerprint = builder.info.metadata["train"]["split_fingerprint"]
  steps_per_epoch = len(labels) // config.batch_size
  if config.get("max_steps_per_epoch"):  # smoke tests: a few steps of every epoch
    steps_per_epoch = min(steps_per_epoch, int(config.max_steps_per_epoch))
  if steps_per_epoch == 0:
    raise device_train.ConfigError(f"config.batch_size={config.batch_size} exceeds the "
                                   f"{len(labels)} training images.")
  size = int(config.image_size)
  mean, std = tuple(config.mean), tuple(config.std)
  # The host already gathered and augmented the batch: the step only normalises it.
  def batch_fn(key, images, labels, indices):
    del key, indices
    return {"image": ltjax.data.normalize(images, mean=mean, std=std), "label": labels}

  model, _, state, train_step, _ = device_train.build_train_step(
      config, method, hp, num_classes=num_classes, image_shape=(size, size, 3),
      steps_per_epoch=steps_per_epoch, batch_fn=batch_fn, mesh=mesh,
      load_weights=functools.partial(_init_weights, config))
  stats = lt.put_replicated(lt.ClassStats(
      class_counts=counts, log_prior=np.asarray(ltjax.priors.log_prior(counts), np.float32)),
      mesh)
  no_order = lt.put_replicated(np.zeros((steps_per_epoch, 1), np.int32), mesh)
  state = lt.put_replicated(jax.device_get(state), mesh)
  workers = int(config.get("data_workers", 0))

  wait_for_all_processes("ltjax_streaming_built")
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, device_train.CHECKPOINT_DIR))
  history, results = [], {}
  try:
    latest = ckpt.latest_step()
    if latest is not None and not resume:
      device_train.refuse_existing_checkpoints(ckpt.directory)
    loss_sum = 0.0
    if latest is not None:
      meta = ckpt.restore_metadata()
      device_train.check_same_run(meta, config, fingerprint)
      state, meta = ckpt.restore(state)
      _check_position(meta, state, steps_per_epoch)
      history = list(meta.get("history", []))
      loss_sum = float(device_train.epoch_loss_sum(meta))

    def save(state, epoch, step_in_epoch, loss_sum):
      if ckpt.latest_step() == int(jax.device_get(state.step)):
        return  # the epoch's checkpoint is this step's
      ckpt.save(state, metadata={
          "config": config.to_dict(), "split_fingerprint": fingerprint, "epoch": epoch,
          "step_in_epoch": step_in_epoch, "epoch_loss_sum": loss_sum, "history": history})

    def order_fn(state, epoch):
      return np.asarray(jax.device_get(lt.epoch_order(
          jax.device_get(state.rng), np.int32(epoch), labels, counts, sampler=method.sampler,
          steps=steps_per_epoch, batch_size=config.batch_size)))

    def batches_fn(order, epoch, start_step):
      return ltjax.data.train_image_batches(
          source, order, epoch=epoch, seed=config.seed, size=size, start_step=start_step,
          worker_count=workers, color_jitter=tuple(config.get("color_jitter", ())))

    def on_epoch_end(epoch, state, record):
      history.append(record)
      if (epoch + 1) % max(int(config.checkpoint_every_epochs), 1) == 0 or (
          epoch + 1 == config.num_epochs):
        save(state, epoch + 1, 0, 0.0)

    started = time.perf_counter()
    state, stopped = stream_epochs(
        state, train_step=train_step, stats=stats, positions=no_order, mesh=mesh,
        order_fn=order_fn, batches_fn=batches_fn, steps_per_epoch=steps_per_epoch,
        num_epochs=config.num_epochs, batch_size=config.batch_size, save=save,
        on_epoch_end=on_epoch_end, progress=progress, max_steps=max_steps,
        start_loss_sum=loss_sum)
    if stopped:
      return {}
    train_seconds = time.perf_counter() - started
    results = _report(config, method, hp, builder, state, model, mesh, counts, fingerprint,
                      history, train_seconds, workers)
  finally:
    ckpt.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, device_train.RESULTS_FILE), "w") as f:
      json.dump(results, f, indent=1)
  return results


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


def compiled_in_step(step: Callable, name: str) -> Callable:
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


def _check_position(meta: dict, state, steps_per_epoch: int) -> None:
  """Raises `ConfigError` unless the checkpoint's recorded position is its step's (it is not when
  the steps per epoch changed, e.g. another batch size, which would shift every later batch)."""
  position = divmod(int(jax.device_get(state.step)), steps_per_epoch)
  recorded = meta.get("epoch"), meta.get("step_in_epoch")
  if recorded[1] is not None and tuple(recorded) != position:
    raise device_train.ConfigError(
        f"Cannot resume: the checkpoint stopped at epoch {recorded[0]}, step {recorded[1]}, but "
        f"its step counter {int(jax.device_get(state.step))} gives epoch {position[0]}, step "
        f"{position[1]} at {steps_per_epoch} steps per epoch (the batch size or the data "
        "changed).")


def stream_epochs(state, *, train_step: Callable, stats, positions, mesh, order_fn: Callable,
                  batches_fn: Callable, steps_per_epoch: int, num_epochs: int, batch_size: int,
                  save: Callable, on_epoch_end: Callable, progress: bool = True,
                  max_steps: int | None = None, last_step: Callable | None = None,
                  start_loss_sum: float = 0.0):
  """The streamed training loop from `state.step` to the end of epoch `num_epochs - 1`.

  Starts at `(epoch, step_in_epoch) = divmod(state.step, steps_per_epoch)`; each step reads this
  process's share of the global batch from the host iterator, assembles it over "data" and runs
  the compiled `train_step(state, images, labels, positions, stats)`.

  Args:
    state: the (restored) `TrainState`.
    train_step: the compiled step; `last_step` the epoch's last one when it differs.
    stats: `ClassStats` (replicated).
    positions: i32[steps_per_epoch, B] the order rows the step reads its batch with (replicated).
    mesh: the data mesh.
    order_fn: `(state, epoch) -> i[steps, B]` the epoch's global order (host array).
    batches_fn: `(order, epoch, start_step) -> iterator` of this process's host batches
      `{"image", "label"}` from step `start_step` on.
    steps_per_epoch, num_epochs, batch_size: the run's shape.
    save: `(state, epoch, step_in_epoch, loss_sum)` writes a mid-epoch checkpoint (pre-emption,
      max_steps); `loss_sum` is the loss summed over that epoch's steps so far.
    on_epoch_end: `(epoch, state, record)` after each epoch (`{"epoch", "loss", "lr",
      "images_per_s"}`): evaluation, checkpoints.
    progress: print a line per step and per epoch.
    max_steps: stop (checkpointed) after this many optimizer steps of the whole run (tests).
    start_loss_sum: the loss summed over the steps of the start epoch done before a mid-epoch
      stop (the checkpoint's "epoch_loss_sum"), so that its record is the whole epoch's mean.

  Returns:
    `(state, stopped)`: stopped is True when pre-empted or stopped by `max_steps`.
  """
  start_epoch, start_step = divmod(int(jax.device_get(state.step)), steps_per_epoch)
  train_step = compiled_in_step(train_step, "ltjax_train_step")
  if last_step is not None:
    last_step = compiled_in_step(last_step, "ltjax_last_step")
  # A step stuck in a cross-process collective ends the run with one line
  # (LTJAX_COLLECTIVE_TIMEOUT_S; ltjax.train.StepDeadline).
  deadline = lt.StepDeadline.from_env(
      process_index=jax.process_index(), process_count=jax.process_count(),
      backend=jax.default_backend(), local_devices=jax.local_device_count())
  with preemption.Preemption() as sigterm, deadline:
    for epoch in range(start_epoch, num_epochs):
      order = order_fn(state, epoch)
      first = start_step if epoch == start_epoch else 0
      iterator = batches_fn(order, epoch, first)
      epoch_started, done, why = time.perf_counter(), 0, None
      loss_sum = start_loss_sum if first else 0.0
      metrics, global_step = {}, epoch * steps_per_epoch + first  # first < steps_per_epoch
      for step_in_epoch in range(first, steps_per_epoch):
        glob = ltjax.data.global_batch(next(iterator), mesh)
        step = (last_step if last_step is not None and step_in_epoch == steps_per_epoch - 1
                else train_step)
        state, metrics = deadline.call(epoch * steps_per_epoch + step_in_epoch + 1, step, state,
                                       glob["image"], glob["label"], positions, stats)
        loss_sum, done = loss_sum + metrics["loss"], done + 1
        global_step = epoch * steps_per_epoch + step_in_epoch + 1
        if progress:
          print(f"step {global_step}", flush=True)
        why = sigterm.stop_reason(global_step, max_steps=max_steps)
        if why and step_in_epoch + 1 < steps_per_epoch:
          return _stop(state, save, why, epoch, step_in_epoch + 1, loss_sum, global_step), True
      record = {"epoch": epoch, "loss": float(loss_sum) / steps_per_epoch,
                "lr": float(metrics["lr"]),
                "images_per_s": done * batch_size / (time.perf_counter() - epoch_started)}
      if progress:
        print(f"epoch {epoch + 1}/{num_epochs} loss {record['loss']:.4f} "
              f"lr {record['lr']:.4g} {record['images_per_s']:.0f} images/s", flush=True)
      on_epoch_end(epoch, state, record)
      if why:  # at an epoch's last step the epoch ends (record, evaluation) before the stop
        return _stop(state, save, why, epoch + 1, 0, 0.0, global_step), True
  return state, False


def _stop(state, save, why, epoch, step_in_epoch, loss_sum, global_step):
  # The notice is printed on process 0 whatever the progress setting.
  save(state, epoch, step_in_epoch, float(jax.device_get(loss_sum)))
  preemption.announce(why, global_step)
  return state


def array_batches(images, labels, order, *, start_step: int = 0,
                  process_index: int | None = None, process_count: int | None = None,
                  num_threads: int = 2, prefetch_buffer_size: int = 4):
  """This process's columns of the global batches `images[order[s]]`, `s >= start_step`, gathered
  from host arrays by grain threads (prefetched). Padding (-1, the kept last partial batch) reads
  image 0; the step never uses those rows.

  Returns:
    An iterator of `{"image": images.dtype[b, ...], "label": i32[b]}`, b = B / process_count.
  """
  import grain  # noqa: PLC0415 (lazy, as in ltjax.data._image_stream)
  if process_index is None or process_count is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  order = np.asarray(order)
  if order.shape[1] % process_count:
    raise ValueError(f"The global batch ({order.shape[1]}) must be a multiple of the "
                     f"{process_count} processes.")
  local = order.shape[1] // process_count
  mine = order[:, process_index * local:(process_index + 1) * local]

  def batch(step):
    rows = np.maximum(mine[step], 0)
    return {"image": images[rows], "label": np.asarray(labels[rows], np.int32)}

  dataset = grain.MapDataset.range(start_step, order.shape[0]).map(batch)
  return iter(dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)))


def train_arrays_streamed(config: ml_collections.ConfigDict, workdir: str, *,
                          splits: device_train.Splits, resume: bool = False,
                          progress: bool = True, max_steps: int | None = None) -> dict:
  """Trains an array dataset with its training images streamed from the host, through the
  on-device pipeline's compiled step, and writes the same report (`experiment.write_report`).

  The step is `build_experiment(...).train_step`, given the global batch `images[order[s]]` and
  the order row `arange(B)`: its gather is the identity and its augmentation draws (a function of
  state.rng, state.step and B) are the device pipeline's, so the two pipelines train the same
  batches. Checkpoints: every `config.checkpoint_every_epochs` epochs (the device path's
  metadata) and on pre-emption / `max_steps` mid-epoch (`step_in_epoch` > 0).

  Returns:
    The results dict (empty when stopped by `max_steps` or pre-empted).
  """
  exp = device_train.build_experiment(config, splits, train_on_device=False)
  mesh, steps = exp.mesh, exp.steps_per_epoch
  rows = np.tile(np.arange(config.batch_size, dtype=np.int32), (steps, 1))
  if exp.last_batch_size:  # the kept partial batch: its first N % B rows
    rows[-1, exp.last_batch_size:] = -1
  positions = lt.put_replicated(rows, mesh)
  labels, counts = splits.train_labels.astype(np.int32), exp.device_data["stats"].class_counts
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, device_train.CHECKPOINT_DIR))
  try:
    state, meta, _, loss_sum = device_train.restore_for_resume(
        ckpt, exp.state, config, splits.fingerprint, steps, resume=resume)
    history, loss_sum = list(meta.get("history", [])), float(loss_sum)
    every = max(int(config.checkpoint_every_epochs), 1)
    last = config.num_epochs - 1

    def save(state, epoch, step_in_epoch, loss_sum):
      # The device path's metadata ("epoch": the last finished epoch) plus the step within the
      # next one (0 at an epoch boundary, which the on-device loop can also resume from) and
      # that epoch's loss summed so far.
      if ckpt.latest_step() == int(jax.device_get(state.step)):
        return  # the epoch's checkpoint is this step's
      meta = device_train._checkpoint_metadata(exp, epoch - 1, pipeline="streaming")  # pylint: disable=protected-access
      ckpt.save(state, metadata={**meta, "step_in_epoch": step_in_epoch,
                                 "epoch_loss_sum": loss_sum, "history": history})

    def order_fn(state, epoch):
      return np.asarray(jax.device_get(exp.epoch_order(state.rng, np.int32(epoch),
                                                       exp.device_data["train_labels"], counts)))

    def batches_fn(order, epoch, start_step):
      del epoch
      return array_batches(splits.train_images, labels, order, start_step=start_step)

    def on_epoch_end(epoch, state, record):
      if device_train._evaluated_this_epoch(config, epoch, last):  # pylint: disable=protected-access
        record.update(device_train.epoch_metrics(exp, state))
      history.append(record)
      if (epoch + 1) % every == 0 or epoch == last:
        save(state, epoch + 1, 0, 0.0)

    started = time.perf_counter()
    state, stopped = stream_epochs(
        state, train_step=exp.train_step, last_step=exp.last_step,
        stats=exp.device_data["stats"], positions=positions, mesh=mesh, order_fn=order_fn,
        batches_fn=batches_fn, steps_per_epoch=steps, num_epochs=config.num_epochs,
        batch_size=config.batch_size, save=save, on_epoch_end=on_epoch_end, progress=progress,
        max_steps=max_steps, start_loss_sum=loss_sum)
    train_seconds = time.perf_counter() - started
  finally:
    ckpt.close()
  if stopped:
    return {}
  return device_train.write_report(exp, state, workdir, train_seconds=train_seconds,
                                   history=history, extra={"pipeline": "streaming"})


def _report(config, method, hp, builder, state, model, mesh, counts, fingerprint, history,
            train_seconds, workers) -> dict:
  # Lined up after compiling, as the train step is: its output gather is a cross-process
  # collective with Gloo's 30 s set-up timeout on CPU.
  logits_fn = compiled_in_step(_eval_logits_fn(model, mesh, tuple(config.mean), tuple(config.std)),
                               "ltjax_eval_logits")
  posthoc = method.posthoc
  tau = hp[posthoc.tau.name] if posthoc is not None else None
  log_prior = np.asarray(ltjax.priors.log_prior(counts), np.float32)
  results = {
      "method": config.method, "dataset": config.dataset, "recipe": config.recipe,
      # The list's own imbalance ratio n_max / n_min (the split is the list, not a draw).
      "imbalance_ratio": float(counts.max() / max(counts.min(), 1.0)),
      "seed": config.seed, "split_seed": None, "num_epochs": config.num_epochs,
      "split_protocol": "list",
      "split_fingerprint": fingerprint, "class_counts": counts.astype(int).tolist(),
      "device": provenance.device_description(), "versions": provenance.library_versions(),
      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "train_seconds_this_run": train_seconds, "history": history, "config": config.to_dict(),
  }
  if posthoc is not None:
    # No validation sweep on streamed data yet: the recipe's tau (GALA's PRS tau per dataset).
    results["posthoc"] = {"step": posthoc.name, "tau": tau, "val_sweep": {}}
  for split, name in (("validation", "val"), ("test", "test")):
    if split not in builder.info.splits:
      continue
    logits, labels = _gather_split(builder, split, state=state, logits_fn=logits_fn, mesh=mesh,
                                   config=config, workers=workers)
    adjusted = (logits if posthoc is None
                else posthoc.logits(logits, log_prior=log_prior, tau=tau))
    results[name] = lt.evaluate_logits(adjusted, labels, class_counts=counts)
  return results
