"""Training the list-defined datasets (ImageNet-LT, iNaturalist 2018, Places-LT) from streamed
records, with the same train step as the on-device pipeline, and pre-emption safety.

`experiments.main` sends a config here when `config.dataset` is one of `LIST_DATASETS` (images of
many sizes that do not fit on the accelerator; `config.pipeline="device"` is refused for them).
Per epoch:
- the global order of record indices is `ltjax.train.epoch_order(state.rng, epoch, ...)`, the very
  order the on-device pipeline draws (instance permutation, or cRT's class-balanced sampler);
- every process streams its columns of it through grain (`ltjax.data.train_image_batches`: JPEG
  decode + RandomResizedCrop(image_size) + flip in `config.data_workers` worker processes,
  prefetched), and `ltjax.data.global_batch` assembles the global batch over the "data" mesh axis;
- the compiled step is `ltjax.train.make_train_step` with a `batch_fn` that only normalises (the
  gather and augmentation already happened on the host).
Evaluation streams the whole test (and validation) split with resize(image_size * 256 / 224) +
centre crop, sharded across processes, and gathers the logits.

Checkpoints hold the train state plus, in their metadata, the epoch and the step within it: the
order is a function of (state.rng, epoch) and each example's augmentation of (seed, epoch, its
place in the global batch), so resuming at that step replays exactly the batches an uninterrupted
run would have seen (the grain iterator's own state is stored too, for inspection).

Pre-emption: SIGTERM makes the run finish its current step, write a checkpoint and exit with
status 0; the same command with `--resume` continues. With several processes they agree on the step
through JAX's pre-emption sync point (`multihost_utils.reached_preemption_sync_point`, the
mechanism Orbax's pre-emption support uses), so all of them save the same step.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import time

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

import ltjax
from experiments import experiment as device_train
from experiments import provenance
from ltjax import checkpointing
from ltjax import models
from ltjax import train as lt

LIST_DATASETS = device_train.LIST_DATASETS
PREEMPTED_EXIT_CODE = 0


def is_streamed(config) -> bool:
  """Whether `config` trains through this module (a list-defined dataset)."""
  return config.dataset in LIST_DATASETS


def validate(config, *, num_devices: int) -> lt.Method:
  """`experiments.experiment.validate_config` plus the streaming-specific checks."""
  method = device_train.validate_config(config, num_devices=num_devices)
  if config.get("pipeline", "auto") == "device":
    raise device_train.ConfigError(
        f"{config.dataset} is streamed (images of many sizes, larger than device memory); "
        "config.pipeline='device' is for array datasets.")
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


def prepare(config):
  """The prepared `lt_lists` builder of `config.dataset` (preparing it from `config.image_root` /
  `config.list_dir` if needed)."""
  image_root = config.get("image_root") or str(
      ltjax.data.default_manual_dir(config.dataset, config.data_dir or None))
  return ltjax.data.prepare_lt_lists(
      config.dataset, image_root=image_root, list_dir=config.get("list_dir") or None,
      data_dir=config.data_dir or None, verify=config.get("verify_lists", True))


class _Preemption:
  """SIGTERM -> finish the step, checkpoint, exit 0. Multi-process: JAX's sync point."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


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
  hp = lt.hparams(config.hparams)
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
  model = models.build_classifier(config.model, num_classes=num_classes, head=method.head,
                                  head_init=config.head_init, **config.model_kwargs,
                                  **device_train.precision_kwargs(config))
  lr_fn = device_train._lr_fn(config, steps_per_epoch)  # pylint: disable=protected-access
  key = jax.random.PRNGKey(config.seed)
  size = int(config.image_size)
  params, batch_stats = lt.init_variables(model, jax.random.fold_in(key, 0), (size, size, 3))
  params, batch_stats = _init_weights(config, params, batch_stats)
  tx = lt.sgd_coupled(lr_fn, momentum=config.momentum, weight_decay=config.weight_decay,
                      nesterov=config.nesterov)
  if method.stage != "joint":
    stage1_params, batch_stats, _ = device_train._restore_stage1(  # pylint: disable=protected-access
        config.init_checkpoint)
    params = {**stage1_params, "head": params["head"] if method.reinit_head else
              stage1_params["head"]}
    tx = lt.freeze_backbone(tx, params)
  state = lt.create_train_state(params, batch_stats, tx,
                                loss_state=method.init_state(num_classes, hp),
                                rng=jax.random.fold_in(key, 1))
  mean, std = tuple(config.mean), tuple(config.std)
  # The host already gathered and augmented the batch: the step only normalises it.
  def batch_fn(key, images, labels, indices):
    del key, indices
    return {"image": ltjax.data.normalize(images, mean=mean, std=std), "label": labels}

  train_step = lt.make_train_step(model, tx, method, hp, mesh=mesh,
                                  steps_per_epoch=steps_per_epoch, batch_fn=batch_fn,
                                  lr_fn=lr_fn,
                                  bn_train=config.stage2_bn_train or method.stage == "joint")
  stats = lt.put_replicated(lt.ClassStats(
      class_counts=counts, log_prior=np.asarray(ltjax.priors.log_prior(counts), np.float32)),
      mesh)
  no_order = lt.put_replicated(np.zeros((steps_per_epoch, 1), np.int32), mesh)
  state = lt.put_replicated(jax.device_get(state), mesh)
  workers = int(config.get("data_workers", 0))

  ckpt = checkpointing.Checkpointer(os.path.join(workdir, device_train.CHECKPOINT_DIR))
  start_epoch = start_step = 0
  history, results = [], {}
  try:
    if resume and ckpt.latest_step() is not None:
      meta = ckpt.restore_metadata()
      if meta["split_fingerprint"] != fingerprint:
        raise device_train.ConfigError("Cannot resume: the checkpoint's split fingerprint "
                                       "differs from this dataset's.")
      state, meta = ckpt.restore(state)
      start_epoch, start_step = int(meta["epoch"]), int(meta["step_in_epoch"])
      history = list(meta.get("history", []))
    elif not resume and ckpt.latest_step() is not None:
      raise device_train.ConfigError(f"{ckpt.directory} already holds checkpoints: pass "
                                     "--resume to continue or use a fresh --workdir.")

    def save(epoch, step_in_epoch, iterator_state=None):
      ckpt.save(state, metadata={
          "config": config.to_dict(), "split_fingerprint": fingerprint, "epoch": epoch,
          "step_in_epoch": step_in_epoch, "history": history,
          "data_iterator": json.loads(json.dumps(iterator_state, default=str))})

    started = time.perf_counter()
    with _Preemption() as preemption:
      for epoch in range(start_epoch, config.num_epochs):
        order = np.asarray(jax.device_get(lt.epoch_order(
            jax.device_get(state.rng), np.int32(epoch), labels, counts, sampler=method.sampler,
            steps=steps_per_epoch, batch_size=config.batch_size)))
        first = start_step if epoch == start_epoch else 0
        iterator = ltjax.data.train_image_batches(
            source, order, epoch=epoch, seed=config.seed, size=size, start_step=first,
            worker_count=workers, color_jitter=tuple(config.get("color_jitter", ())))
        epoch_started, loss_sum, done = time.perf_counter(), 0.0, 0
        for step_in_epoch in range(first, steps_per_epoch):
          glob = ltjax.data.global_batch(next(iterator), mesh)
          state, metrics = train_step(state, glob["image"], glob["label"], no_order, stats)
          loss_sum, done = loss_sum + metrics["loss"], done + 1
          global_step = epoch * steps_per_epoch + step_in_epoch + 1
          if progress:
            print(f"step {global_step}", flush=True)
          stop = max_steps is not None and global_step >= max_steps
          if preemption.reached(global_step) or stop:
            save(epoch, step_in_epoch + 1, iterator.get_state())
            if progress:
              print(f"{'Stopped' if stop else 'Pre-empted'} at step {global_step}; checkpoint "
                    "written, rerun with --resume to continue.", flush=True)
            return {}
        record = {"epoch": epoch, "loss": float(loss_sum) / max(done, 1),
                  "lr": float(metrics["lr"]),
                  "images_per_s": done * config.batch_size / (time.perf_counter() -
                                                              epoch_started)}
        history.append(record)
        if progress:
          print(f"epoch {epoch + 1}/{config.num_epochs} loss {record['loss']:.4f} "
                f"lr {record['lr']:.4g} {record['images_per_s']:.0f} images/s", flush=True)
        if (epoch + 1) % max(int(config.checkpoint_every_epochs), 1) == 0 or (
            epoch + 1 == config.num_epochs):
          save(epoch + 1, 0)
    train_seconds = time.perf_counter() - started
    results = _report(config, method, hp, builder, state, model, mesh, counts, fingerprint,
                      history, train_seconds, workers)
  finally:
    ckpt.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, device_train.RESULTS_FILE), "w") as f:
      json.dump(results, f, indent=1)
  return results


def _report(config, method, hp, builder, state, model, mesh, counts, fingerprint, history,
            train_seconds, workers) -> dict:
  logits_fn = _eval_logits_fn(model, mesh, tuple(config.mean), tuple(config.std))
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
