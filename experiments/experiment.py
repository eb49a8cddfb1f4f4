"""`train_and_evaluate(config, workdir)`: one long-tailed experiment from config to results.json.

The layout follows the Flax examples (a thin `main.py`, the work here). Everything method-specific
comes from the registry (`ltjax.train.METHODS`); everything recipe-specific from the config.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

import ltjax
from experiments import epoch_log
from experiments import preemption
from experiments import provenance
from experiments import shared_data
from experiments.configs import large_scale
from ltjax import checkpointing
from ltjax import models
from ltjax import train as lt

CHECKPOINT_DIR = "checkpoints"
RESULTS_FILE = "results.json"
FAILURE_FILE = "failure.json"  # written instead of results.json when a run fails
PLOT_FILE = "per_class_accuracy.png"


@dataclasses.dataclass(frozen=True)
class Splits:
  """A prepared long-tailed dataset, as host arrays (images NHWC uint8 or float)."""
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  class_counts: np.ndarray  # training counts per class
  fingerprint: str  # SHA-256 of the long-tailed training indices
  val_images: np.ndarray | None = None
  val_labels: np.ndarray | None = None
  mean: tuple[float, ...] = (0.0,)  # per-channel normalisation of x / 255
  std: tuple[float, ...] = (1.0,)

  @property
  def num_classes(self) -> int:
    return len(self.class_counts)


class ConfigError(ValueError):
  """A configuration that cannot run; raised before any expensive work."""


# An evaluation metric came out NaN or infinite (raised by the library's evaluation too).
NonFiniteMetrics = lt.NonFiniteMetrics


# Every way a run can fail that the CLI reports as one line (exit status 1), by its label.
RUN_ERRORS = {
    ConfigError: "Configuration error",
    lt.TrainingDiverged: "Training diverged",
    checkpointing.CheckpointError: "Checkpoint error",
    checkpointing.WorkdirLocked: "Workdir locked",
    NonFiniteMetrics: "Evaluation error",
}


def describe_failure(error: BaseException) -> str | None:
  """The one-line report of a run failure (`RUN_ERRORS` or an OS error), None for others."""
  for kind, label in RUN_ERRORS.items():
    if isinstance(error, kind):
      return str(error) if str(error).startswith(label) else f"{label}: {error}"
  if isinstance(error, OSError):
    return f"I/O error: {error}"
  return None


# Training augmentations by name: arguments of `ltjax.data.augment` (torchvision's RandomCrop(32,
# padding=4), RandomHorizontalFlip, AutoAugment's CIFAR10Policy, Cutout, in that order).
AUGMENTATIONS = {
    "none": {"crop_padding": 0, "flip": False, "cutout_size": 0},
    "crop_flip": {"crop_padding": 4, "flip": True, "cutout_size": 0},
    "crop_flip_cutout": {"crop_padding": 4, "flip": True, "cutout_size": 16},
    "crop_flip_autoaugment": {"crop_padding": 4, "flip": True, "cutout_size": 0,
                              "autoaugment": True},
    # GALA / BALMS CIFAR: RandomCrop, RandomHorizontalFlip, CIFAR10Policy, Cutout(1, 16).
    "crop_flip_autoaugment_cutout": {"crop_padding": 4, "flip": True, "cutout_size": 16,
                                     "autoaugment": True},
}

# Augmentations of the large (list-defined) recipes, done while decoding on the host (torchvision's
# RandomResizedCrop(image_size) + RandomHorizontalFlip; `ltjax.data.decode_random_resized_crop`).
HOST_AUGMENTATIONS = ("random_resized_crop_flip",)
# Datasets whose long-tailed split is a list file (streamed by experiments.train_streaming).
LIST_DATASETS = ("imagenet_lt", "places_lt", "inat18")

# Per-channel mean / std of x / 255 that the recipes normalise with (CIFAR: the LDAM/GALA/LOS
# code's constants; Fashion-MNIST: its training set's statistics).
NORMALIZATION = {
    "cifar10": (ltjax.data.CIFAR_MEAN, ltjax.data.CIFAR_STD),
    "cifar100": (ltjax.data.CIFAR_MEAN, ltjax.data.CIFAR_STD),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}


def _data_dirs(config):
  """`(data_dir, manual_dir)` of `config`; the manual dir defaults to this checkout's shared copy
  of the raw archives (`experiments.shared_data`)."""
  data_dir = pathlib.Path(config.data_dir or ltjax.data.default_data_dir()).expanduser()
  manual = config.manual_dir or shared_data.manual_dir(config.dataset, data_dir)
  return data_dir, pathlib.Path(manual).expanduser()


def check_prepared(config) -> None:
  """Fails fast (without importing TFDS) unless `config.dataset` is either prepared under
  `config.data_dir` or has its raw files in `config.manual_dir` to be prepared from."""
  data_dir, manual_dir = _data_dirs(config)
  raw = manual_dir.is_dir() and any(manual_dir.iterdir())
  if not (ltjax.data.is_prepared(config.dataset, data_dir) or raw):
    raise ConfigError(
        f"Dataset {config.dataset!r} is not prepared under {data_dir} and no raw files are in "
        f"{manual_dir}. Put the official archives there (or set --config.manual_dir), or prepare "
        "it with ltjax.data.prepare(..., download=True) on a machine with internet.")


def load_splits(config, *, source: Callable | None = None) -> Splits:
  """Reads `config.dataset` (preparing it offline if needed) and cuts the long-tailed training
  split (`config.split_protocol`, `config.imbalance_ratio`, `config.split_seed`) plus a balanced
  validation split of `config.val_per_class` discarded training images per class.

  `source(dataset, split, *, data_dir, manual_dir) -> ltjax.data.ImageArrays` reads one split
  (default `ltjax.data.load_arrays`); pass another to memoise the reads or serve arrays.
  """
  source = ltjax.data.load_arrays if source is None else source
  data_dir, manual_dir = _data_dirs(config)
  train_set = source(config.dataset, "train", data_dir=data_dir, manual_dir=manual_dir)
  test_set = source(config.dataset, "test", data_dir=data_dir, manual_dir=manual_dir)
  try:
    split = ltjax.data.longtail_split(
        train_set.labels, imbalance_ratio=config.imbalance_ratio, protocol=config.split_protocol,
        seed=config.split_seed, val_per_class=config.val_per_class,
        num_classes=train_set.num_classes)
  except ValueError as e:  # e.g. more validation images per class than a class has (one line)
    raise ConfigError(f"config.val_per_class={config.val_per_class} (config.imbalance_ratio="
                      f"{config.imbalance_ratio:g}) on {config.dataset}: {e}") from None
  has_val = split.val_indices.size > 0
  if config.dataset in NORMALIZATION:
    mean, std = NORMALIZATION[config.dataset]
  else:  # statistics of the long-tailed training images themselves
    x = train_set.images[split.train_indices].astype(np.float64) / 255.0
    mean, std = tuple(x.mean((0, 1, 2))), tuple(x.std((0, 1, 2)))
  return Splits(
      train_images=train_set.images[split.train_indices],
      train_labels=train_set.labels[split.train_indices],
      test_images=test_set.images, test_labels=test_set.labels,
      class_counts=split.class_counts, fingerprint=split.fingerprint,
      val_images=train_set.images[split.val_indices] if has_val else None,
      val_labels=train_set.labels[split.val_indices] if has_val else None,
      mean=tuple(mean), std=tuple(std))


# Domains of the recipe keys every config has (see experiments/configs/common.py); a key a recipe
# lacks is not checked. Names (method, model, augment, schedule, split protocol) are checked
# against their registries in `validate_config`.
_BOOL = lt.OneOf((True, False))
CONFIG_DOMAINS = {
    "imbalance_ratio": lt.Real(lo=1.0),
    "num_epochs": lt.Integer(lo=0),
    "batch_size": lt.Integer(lo=1),
    "eval_batch_size": lt.Integer(lo=1),
    "seed": lt.Integer(lo=0),
    "split_seed": lt.Integer(lo=0),
    "val_per_class": lt.Integer(lo=0),
    # "list": the split is the dataset's list file (ImageNet-LT, iNat18, Places-LT; streamed).
    "split_protocol": lt.OneOf(ltjax.data.PROTOCOLS + ("list",)),
    "augment": lt.OneOf(tuple(AUGMENTATIONS) + HOST_AUGMENTATIONS),
    "head_init": lt.OneOf(("torch", "kaiming")),
    "momentum": lt.Real(lo=0.0, hi=1.0, hi_open=True),
    "weight_decay": lt.Real(lo=0.0),
    "nesterov": _BOOL,
    "flip_tta": _BOOL,
    "stage2_bn_train": _BOOL,
    "checkpoint_every_epochs": lt.Integer(lo=1),
    # (brightness, contrast, saturation) of the streamed datasets' ColorJitter; zeros = none.
    "color_jitter": lt.Grid(lt.Real(lo=0.0)),
    # None: automatic (bfloat16 compute on accelerators, float32 on CPU).
    "mixed_precision": lt.OneOf((None, True, False)),
    # Where the training images live: "device" (whole on the accelerator), "streaming" (read from
    # the host batch by batch) or "auto" (device when it fits; experiments.train_streaming).
    "pipeline": lt.OneOf(("auto", "device", "streaming")),
}


def _check(key: str, value, domain) -> None:
  if not domain.contains(value):
    raise ConfigError(f"config.{key}={value!r} is not allowed: expected {domain}.")


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int,
                    method: lt.Method | None = None) -> lt.Method:
  """Checks every config value checkable without data; returns the method (`method` when given,
  else the registry's `config.method`).

  Raises `ConfigError` with one line naming the key, its value and the allowed values.
  """
  try:
    method = lt.get_method(config.method) if method is None else method
    lt.hparams(config.hparams, method=method)
  except ValueError as e:
    raise ConfigError(str(e).replace("hparams.", "config.hparams.", 1)) from None
  if config.model not in models.BACKBONES:
    raise ConfigError(f"Unknown config.model {config.model!r}; expected one of "
                      f"{sorted(models.BACKBONES)}.")
  if config.lr.name not in lt.EPOCH_SCHEDULES:
    raise ConfigError(f"Unknown config.lr.name {config.lr.name!r}; expected one of "
                      f"{sorted(lt.EPOCH_SCHEDULES)}.")
  for key, domain in CONFIG_DOMAINS.items():
    if key in config:
      _check(key, config[key], domain)
  _check("lr.base_lr", config.lr.get("base_lr"), lt.Real(lo=0.0, lo_open=True))
  for key, value in config.lr.items():  # the schedule's other numbers: finite
    if isinstance(value, (tuple, list)):
      _check(f"lr.{key}", tuple(value), lt.Grid(lt.Real()))
    elif key != "name" and not isinstance(value, str):
      _check(f"lr.{key}", value, lt.Real())
  list_defined = config.dataset in LIST_DATASETS
  if (config.split_protocol == "list") != list_defined:
    raise ConfigError(
        f"config.split_protocol={config.split_protocol!r} is not allowed for "
        f"config.dataset={config.dataset!r}: expected "
        + ("'list' (its split is the list file)" if list_defined
           else f"one of {ltjax.data.PROTOCOLS}") + ".")
  if config.batch_size % num_devices:
    raise ConfigError(
        f"config.batch_size={config.batch_size} must be a positive multiple of the number of "
        f"devices ({num_devices}).")
  if method.stage != "joint" and not config.init_checkpoint:
    raise ConfigError(
        f"Method {config.method!r} is a decoupled {method.stage} method: set "
        "config.init_checkpoint to the workdir of a finished stage-1 run.")
  if method.stage != "joint" and not os.path.isdir(
      os.path.join(config.init_checkpoint, CHECKPOINT_DIR)):
    raise ConfigError(f"config.init_checkpoint={config.init_checkpoint!r} holds no "
                      f"'{CHECKPOINT_DIR}/' folder of a stage-1 run.")
  if method.stage == "posthoc" and config.num_epochs != 0:
    raise ConfigError(f"Method {config.method!r} trains nothing (post-hoc on a stage-1 "
                      "checkpoint): set config.num_epochs=0.")
  if method.stage != "posthoc" and config.num_epochs == 0:
    raise ConfigError(f"config.num_epochs=0 is not allowed for method {config.method!r}, which "
                      "trains: expected an integer >= 1 (0 only for post-hoc methods).")
  return method


def check_workdir(workdir) -> None:
  """Raises `ConfigError` unless `workdir` is a writable folder or can be created as one.

  Probes by creating (and removing) a file in the folder or its nearest existing ancestor, as
  permission bits alone do not tell (root, read-only mounts); nothing is left behind.
  """
  if not workdir:
    raise ConfigError("--workdir is empty: expected a folder to write the run into.")
  path = os.path.abspath(os.fspath(workdir))
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    what = ("exists and is not a folder" if probe == path
            else f"cannot be created: {probe} is a file")
    raise ConfigError(f"--workdir={workdir} {what}; expected a writable folder.")
  try:
    with tempfile.TemporaryFile(dir=probe, prefix=".ltjax-write-probe-"):
      pass
  except OSError as e:
    where = "" if probe == path else f" (its existing parent {probe} is not writable)"
    raise ConfigError(f"--workdir={workdir} is not writable{where}: {e.strerror or e}; expected "
                      "a writable folder.") from None


def validate_run(config: ml_collections.ConfigDict, workdir, *, num_devices: int) -> lt.Method:
  """The CLI's checks before any data is read: `validate_config`, `check_workdir` and that the
  dataset is prepared (`check_prepared`). Raises `ConfigError`; returns the method."""
  method = validate_config(config, num_devices=num_devices)
  check_workdir(workdir)
  check_prepared(config)
  return method


def run(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = False,
        progress: bool = True, source: Callable | None = None) -> dict:
  """An on-device run of an array dataset: validates before any data is read (`validate_run`),
  locks `workdir`, reads the data (`load_splits(config, source=source)`), trains, evaluates and
  writes the report. Raises what `train_and_evaluate` raises; returns the results. (The CLI's
  `experiments.train_streaming.run` does the same after choosing the pipeline.)"""
  validate_run(config, workdir, num_devices=jax.device_count())
  os.makedirs(workdir, exist_ok=True)
  # Locked before the data is read, so a second run on this workdir refuses at once.
  with checkpointing.WorkdirLock(workdir):
    splits = load_splits(config, source=source)
    return train_and_evaluate(config, workdir, splits=splits, resume=resume, progress=progress)


def epoch_steps(num_train: int, batch_size: int, *, keep_last_batch: bool,
                sampler: str = "instance") -> tuple[int, int]:
  """`(steps_per_epoch, last_batch_size)` of an epoch over `num_train` examples
  (`ltjax.data.epoch_steps`, its ValueError as a `ConfigError`)."""
  try:
    return ltjax.data.epoch_steps(num_train, batch_size=batch_size, sampler=sampler,
                                  keep_last_batch=keep_last_batch)
  except ValueError as e:
    raise ConfigError(f"config.batch_size: {e}") from None


def _lr_fn(config, steps_per_epoch):
  lr = dict(config.lr)
  if config.get("reference_batch_size"):  # the large recipes' linear lr scaling
    lr = large_scale.scaled_lr(lr, batch_size=config.batch_size,
                               reference_batch_size=config.reference_batch_size)
  kwargs = {k: v for k, v in lr.items() if k != "name"}
  if config.lr.name in ("gala", "cosine"):
    kwargs.setdefault("num_epochs", config.num_epochs)
  return lt.lr_schedule(config.lr.name, steps_per_epoch=steps_per_epoch, **kwargs)


def precision_kwargs(config) -> dict:
  """`{"dtype": jnp.bfloat16}` for the backbone when `config.mixed_precision` (None: on
  accelerators, off on CPU, where XLA's bf16 convolutions are slow), else `{}`. Only the compute
  dtype changes: parameters, optimizer state, BatchNorm statistics, the logits the loss sees and
  the loss state (GALA) stay float32 (`ltjax.models.ImageNetResNet`)."""
  wanted = config.get("mixed_precision", False)
  if wanted is None:
    wanted = jax.default_backend() != "cpu"
  if not wanted:
    return {}
  backbone = models.BACKBONES[config.model]
  fields = getattr(getattr(backbone, "func", backbone), "__dataclass_fields__", {})
  if "dtype" not in fields:
    raise ConfigError(f"config.mixed_precision needs a backbone with a compute dtype; "
                      f"{config.model!r} has none (use resnet50 / resnext50_32x4d / resnet152).")
  return {"dtype": jax.numpy.bfloat16}


def _restore_stage1(workdir: str):
  """The params and batch_stats of the latest checkpoint of a stage-1 run."""
  with checkpointing.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR)) as ckpt:
    step = ckpt.latest_step()
    if step is None:
      raise ConfigError(f"config.init_checkpoint={workdir!r} holds no checkpoint of a stage-1 "
                        "run.")
    try:
      tree, meta = ckpt.restore_tree()
    except Exception as e:  # noqa: BLE001 (Orbax/TensorStore raise many kinds)
      # No fall-back here: an older checkpoint is not the finished stage 1 this run asks for.
      raise checkpointing.CheckpointError(
          f"the stage-1 checkpoint (step {step}) in {ckpt.directory} is unreadable "
          f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); re-run or "
          "resume stage 1.") from None
  return tree["params"], tree["batch_stats"], meta


@dataclasses.dataclass
class Experiment:
  """The compiled pieces of one run (built by `build_experiment`)."""
  config: ml_collections.ConfigDict
  method: lt.Method
  hp: dict
  splits: Splits
  mesh: Any
  model: Any
  state: lt.TrainState
  train_step: Callable
  epoch_order: Callable
  eval_logits: Callable
  pipeline: ltjax.data.DevicePipeline  # the on-device pipeline the steps and orders run
  step_fn: Callable  # the uncompiled train step (vmapped over seeds by experiments.reproduce)
  order_fn: Callable  # the uncompiled epoch order (`pipeline.epoch_order`)
  steps_per_epoch: int
  device_data: dict
  # The epoch's last step when it keeps a partial batch of `last_batch_size` (< batch_size)
  # examples: a second compiled shape (None when every step is full).
  last_step: Callable | None = None
  last_step_fn: Callable | None = None  # its uncompiled form
  last_batch_size: int = 0

  def step_at(self, index: int) -> Callable:
    """The compiled step to run as step `index` (0-based) of an epoch."""
    if self.last_step is not None and index == self.steps_per_epoch - 1:
      return self.last_step
    return self.train_step


def build_train_step(config, method: lt.Method, hp: dict, *, num_classes: int, image_shape,
                     steps_per_epoch: int, batch_fn: Callable, mesh,
                     load_weights: Callable | None = None):
  """The model, optimizer, step-0 state and compiled train step of `config`, shared by every
  pipeline: the on-device one (`build_experiment`, whose `batch_fn` gathers and augments on the
  device) and the streamed list datasets (`experiments.train_streaming`, whose `batch_fn` only
  normalises the host-augmented batch).

  Args:
    config, method, hp: the recipe, its method and hyperparameters.
    num_classes: C.
    image_shape: (H, W, channels) of the model's input.
    steps_per_epoch: optimizer steps per epoch (the schedule's unit).
    batch_fn: the step's `(key, images, labels, indices) -> batch` (see `lt.train_step_fn`).
    mesh: the data mesh.
    load_weights: `(params, batch_stats) -> (params, batch_stats)` applied to the initial
      variables (pre-trained backbones), or None.

  Returns:
    `(model, tx, state, train_step, step_kwargs)`; `step_kwargs` are `lt.train_step_fn`'s.
  """
  model = models.build_classifier(config.model, num_classes=num_classes,
                                  head=method.head, head_init=config.head_init,
                                  **config.model_kwargs, **precision_kwargs(config))
  lr_fn = _lr_fn(config, steps_per_epoch)
  key = jax.random.PRNGKey(config.seed)
  params, batch_stats = lt.init_variables(model, jax.random.fold_in(key, 0), tuple(image_shape))
  if load_weights is not None:
    params, batch_stats = load_weights(params, batch_stats)
  tx = lt.sgd_coupled(lr_fn, momentum=config.momentum, weight_decay=config.weight_decay,
                      nesterov=config.nesterov)
  if method.stage != "joint":
    stage1_params, batch_stats, _ = _restore_stage1(config.init_checkpoint)
    head = params["head"] if method.reinit_head else stage1_params["head"]
    params = {**stage1_params, "head": head}
    tx = lt.freeze_backbone(tx, params)
  state = lt.create_train_state(
      params, batch_stats, tx, loss_state=method.init_state(num_classes, hp),
      rng=jax.random.fold_in(key, 1))
  step_kwargs = dict(steps_per_epoch=steps_per_epoch, batch_fn=batch_fn, lr_fn=lr_fn,
                     bn_train=config.stage2_bn_train or method.stage == "joint")
  train_step = lt.make_train_step(model, tx, method, hp, mesh=mesh, **step_kwargs)
  return model, tx, state, train_step, step_kwargs


def build_experiment(config, splits: Splits, *, mesh=None, method: lt.Method | None = None,
                     train_on_device: bool = True) -> Experiment:
  """Builds model, optimizer, step-0 state and compiled steps for `config` on `splits`.

  Args:
    config: a recipe.
    splits: the prepared data (`load_splits`).
    mesh: the data mesh to shard the batch over (default `lt.data_mesh()`: every device).
    method: the `Method` to train (default the registry's `config.method`).
    train_on_device: put the training images on the device (the on-device pipeline); False
      leaves them on the host for `experiments.train_streaming` to stream (`device_data` then
      has no "train_images"; the evaluation splits are still on the device).
  """
  mesh = lt.data_mesh() if mesh is None else mesh
  method = validate_config(config, num_devices=mesh.devices.size, method=method)
  hp = lt.hparams(config.hparams, method=method)
  num_train = len(splits.train_labels)
  keep_last_batch = bool(config.get("keep_last_batch", False))
  steps_per_epoch, last_batch_size = epoch_steps(
      num_train, config.batch_size, keep_last_batch=keep_last_batch, sampler=method.sampler)
  pipeline = ltjax.data.DevicePipeline(
      num_examples=num_train, batch_size=config.batch_size, sampler=method.sampler,
      keep_last_batch=keep_last_batch, mesh=mesh, mean=splits.mean, std=splits.std,
      **AUGMENTATIONS[config.augment])
  model, tx, state, train_step, step_kwargs = build_train_step(
      config, method, hp, num_classes=splits.num_classes,
      image_shape=splits.train_images.shape[1:], steps_per_epoch=steps_per_epoch,
      batch_fn=pipeline.gather, mesh=mesh)
  last_step = last_step_fn = None
  if last_batch_size:
    # A remainder that does not split over the devices is gathered and computed unsharded
    # (replicated on every device, `ltjax.data.device_batch`): the same maths, once per epoch.
    last_kwargs = dict(step_kwargs, batch_size=last_batch_size)
    last_step = lt.make_train_step(model, tx, method, hp, mesh=mesh, **last_kwargs)
    last_step_fn = lt.train_step_fn(model, tx, method, hp, **last_kwargs)
  epoch_order = jax.jit(pipeline.epoch_order, out_shardings=lt.replicated(mesh))
  preprocess = functools.partial(ltjax.data.normalize, mean=splits.mean, std=splits.std)
  eval_logits = lt.make_eval_logits(model, batch_size=config.eval_batch_size,
                                    preprocess=preprocess, mesh=mesh, flip_tta=config.flip_tta)
  # float32, or float64 under jax_enable_x64 (the float64 parity tests).
  stat_dtype = jax.dtypes.canonicalize_dtype(np.float64)
  counts = np.asarray(splits.class_counts, stat_dtype)
  host = {
      "train_labels": splits.train_labels.astype(np.int32), "test_images": splits.test_images,
      "stats": lt.ClassStats(class_counts=counts, log_prior=np.asarray(
          ltjax.priors.log_prior(counts), stat_dtype)),
  }
  if splits.val_images is not None:
    host["val_images"] = splits.val_images
  if train_on_device:
    host["train_images"] = splits.train_images
  device_data = lt.put_replicated(host, mesh)
  state = lt.put_replicated(jax.device_get(state), mesh)
  return Experiment(config=config, method=method, hp=hp, splits=splits, mesh=mesh, model=model,
                    state=state, train_step=train_step, epoch_order=epoch_order,
                    eval_logits=eval_logits, pipeline=pipeline, steps_per_epoch=steps_per_epoch,
                    device_data=device_data,
                    step_fn=lt.train_step_fn(model, tx, method, hp, **step_kwargs),
                    order_fn=pipeline.epoch_order,
                    last_step=last_step, last_step_fn=last_step_fn,
                    last_batch_size=last_batch_size)


def _checkpoint_metadata(exp: Experiment, epoch: int, *, pipeline: str = "device") -> dict:
  return {"config": exp.config.to_dict(), "split_fingerprint": exp.splits.fingerprint,
          "epoch": epoch, "pipeline": pipeline}


# Config keys that may differ between a run and the run resuming it: where data are read from,
# how it is fed (the pipelines train the same batches), what is evaluated when, how often it is
# checkpointed, and where the initial weights came from (a resume restores the state). None of
# them changes a training step.
RESUMABLE_CHANGES = frozenset({
    "recipe", "data_dir", "manual_dir", "image_root", "list_dir", "verify_lists", "data_workers",
    "pipeline", "eval_batch_size", "eval_every_epochs", "flip_tta", "checkpoint_every_epochs",
    "init_checkpoint", "init_weights"})


def _flat(tree: dict, prefix: str = "") -> dict:
  """`{"lr.base_lr": 0.1, ...}`: a nested config dict by dotted key, values as JSON stores them
  (tuples as lists)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = json.loads(json.dumps(value))
  return out


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """`"config.<key>: <saved> -> <now>"` for each key whose value in `config` differs from the one
  a run saved (`saved`, its checkpoint's or results.json's `config`), the keys of
  `RESUMABLE_CHANGES` aside. A key only one of them has (added to the recipes since) is not
  compared."""
  before, now = _flat(saved), _flat(config.to_dict())
  return [f"config.{key}: {before[key]!r} -> {now[key]!r}"
          for key in sorted(before.keys() & now.keys())
          if key.split(".")[0] not in RESUMABLE_CHANGES and before[key] != now[key]]


def latest_checkpoint_metadata(workdir: str) -> dict | None:
  """The metadata of the latest checkpoint in `workdir/checkpoints`; None when there is none or
  it cannot be read (a resume falls back past an unreadable one)."""
  folder = os.path.join(workdir, CHECKPOINT_DIR)
  if not os.path.isdir(folder):
    return None
  with checkpointing.Checkpointer(folder) as ckpt:
    if ckpt.latest_step() is None:
      return None
    try:
      return ckpt.restore_metadata()
    except Exception:  # noqa: BLE001 (unreadable: the loop's restore falls back past it)
      return None


def check_same_run(meta: dict, config: ml_collections.ConfigDict, fingerprint: str) -> None:
  """Raises `ConfigError` unless a checkpoint's metadata `meta` is of this run: the same split
  (fingerprint), method and configuration (`config_changes`)."""
  if meta["split_fingerprint"] != fingerprint:
    raise ConfigError(f"Cannot resume: the checkpoint's split fingerprint "
                      f"{meta['split_fingerprint'][:12]} differs from this data's "
                      f"{fingerprint[:12]}.")
  if meta["config"]["method"] != config.method:
    raise ConfigError(f"Cannot resume a {meta['config']['method']!r} run as {config.method!r}.")
  changes = config_changes(meta["config"], config)
  if changes:
    raise ConfigError("Cannot resume: the workdir's checkpoint is of another configuration ("
                      + "; ".join(changes) + "); use a fresh --workdir, or the checkpoint's "
                      "values.")


def finished_results(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """The results of `workdir`'s finished run (its results.json, status ok) when it is `config`'s
  run, None when it has no (readable, successful) results.json.

  Raises:
    ConfigError: the finished run is of another configuration (`config_changes`).
  """
  try:
    with open(os.path.join(workdir, RESULTS_FILE)) as f:
      results = json.load(f)
  except (OSError, ValueError):  # none, or unreadable: the run re-evaluates its checkpoint
    return None
  if not isinstance(results, dict) or results.get("status", "ok") != "ok" or (
      "config" not in results):
    return None
  changes = config_changes(results["config"], config)
  if changes:
    raise ConfigError(f"{workdir} holds a finished run of another configuration ("
                      + "; ".join(changes) + "); use a fresh --workdir.")
  return results


def refuse_existing_checkpoints(directory: str) -> None:
  """The error of a run told not to resume (`resume=False`, the CLI's `--noresume`) whose
  checkpoint folder already holds checkpoints."""
  raise ConfigError(f"{directory} already holds checkpoints: resume them (--resume, the CLI's "
                    "default) or use a fresh --workdir.")


def check_position(meta: dict, step: int, steps_per_epoch: int) -> tuple[int, int]:
  """The position `(epoch, step_in_epoch)` a checkpoint of the array datasets resumes at, from
  its metadata (`"epoch"`: the last finished epoch, `"step_in_epoch"`: the steps done of the next
  one). Raises `ConfigError` unless it is its step counter's `divmod(step, steps_per_epoch)`
  (it is not when the steps per epoch changed, which would shift every later batch)."""
  position = int(meta["epoch"]) + 1, int(meta.get("step_in_epoch", 0))
  if "step_in_epoch" in meta and divmod(step, steps_per_epoch) != position:
    raise ConfigError(
        f"Cannot resume: the checkpoint's position (epoch {position[0]}, step {position[1]}) is "
        f"not its step counter's {divmod(step, steps_per_epoch)} at {steps_per_epoch} steps per "
        "epoch (the batch size or the data changed).")
  return position


def restore_for_resume(ckpt: checkpointing.Checkpointer, state, config, fingerprint: str,
                       steps_per_epoch: int, *, resume: bool) -> tuple:
  """Where a run of the array datasets starts: `(state, meta, (epoch, step_in_epoch),
  loss_sum)` from the latest readable checkpoint in `ckpt` (checked as this run's,
  `check_same_run`, at its step counter's position, `check_position`; `loss_sum` the cut epoch's,
  `epoch_loss_sum`), or `(state, {}, (0, 0), 0.0)` when there is none.

  Raises:
    ConfigError: `ckpt` holds checkpoints and `resume` is False, or they are of another run.
  """
  if not ckpt.all_steps():
    return state, {}, (0, 0), 0.0
  if not resume:
    refuse_existing_checkpoints(ckpt.directory)
  state, meta, _ = ckpt.restore_latest_readable(state)
  check_same_run(meta, config, fingerprint)
  position = check_position(meta, int(jax.device_get(state.step)), steps_per_epoch)
  return state, meta, position, epoch_loss_sum(meta)


def epoch_loss_sum(meta: dict):
  """The loss summed over the steps a mid-epoch checkpoint did of its epoch ("epoch_loss_sum",
  a list for a vmapped step; 0 at an epoch boundary and for checkpoints that did not record it),
  so that the resumed epoch's record is the whole epoch's mean."""
  return meta.get("epoch_loss_sum", 0.0) if meta.get("step_in_epoch") else 0.0


def split_logits(exp: Experiment, state) -> lt.SplitLogits:
  """The post-hoc-adjusted logits of `state` per split ("val" when the data has one, "test")."""
  images = {split: exp.device_data[f"{split}_images"] for split in _eval_splits(exp.splits)}
  return lt.SplitLogits(eval_logits=exp.eval_logits, state=state, images=images,
                        log_prior=exp.device_data["stats"].log_prior, method=exp.method)


def _eval_splits(splits: Splits) -> tuple:
  return ("val", "test") if splits.val_images is not None else ("test",)


def evaluate(exp: Experiment, state) -> dict:
  """Validation and test metrics of `state`, with tau chosen on validation (`lt.evaluate`)."""
  labels = {split: getattr(exp.splits, f"{split}_labels") for split in _eval_splits(exp.splits)}
  return lt.evaluate(split_logits(exp, state), exp.method, exp.hp, labels=labels,
                     class_counts=exp.splits.class_counts)


def _shots(metrics: dict) -> dict:
  return {k: metrics.get(k) for k in epoch_log.SHOT_KEYS}


def epoch_metrics(exp: Experiment, state, *, also: tuple = ()) -> dict:
  """The evaluation part of a per-epoch record: validation and test top-1 / many / medium / few
  of `state` (post-hoc tau chosen on validation, as in the final report), and under `also` the
  same for other methods evaluated on this state (e.g. post-hoc LA on a CE run). The test
  numbers serve only the best-epoch-on-test column (`epoch_log.best_test_epoch`)."""

  def compact(e):
    r = evaluate(e, state)
    out = {split: _shots(r[split]) for split in ("val", "test") if split in r}
    if "posthoc" in r:
      out["tau"] = r["posthoc"]["tau"]
    return out

  record = compact(exp)
  if also:
    record["also"] = {m: compact(dataclasses.replace(exp, method=lt.get_method(m)))
                      for m in also}
  return record


def _evaluated_this_epoch(config, epoch: int, last: int) -> bool:
  every = int(config.get("eval_every_epochs", 1))
  return epoch == last or (every > 0 and (epoch + 1) % every == 0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, splits: Splits,
                       resume: bool = False, stop_after_epoch: int | None = None,
                       max_steps: int | None = None, preemptible: bool = False,
                       progress: bool = True, extra: dict | None = None) -> dict:
  """Trains `config` on `splits`, checkpoints into `workdir`, and writes the report.

  The workdir is locked for the whole run (a second run on it raises `WorkdirLocked`). A run
  that fails (diverged, NaN metrics, unreadable checkpoints) raises, writes no `results.json`,
  and leaves `failure.json` (`{"status": "diverged" | "failed", "message", ...}`) plus the last
  good checkpoint; a later successful run removes `failure.json`.

  Pre-emption (`preemptible`, the CLI's runs): SIGTERM makes the run finish its current step,
  checkpoint it (mid-epoch) and return {} (`experiments.preemption`); resuming continues at the
  next step, bit-identically, and the epoch's record in metrics.jsonl is the uninterrupted run's
  (loss included).

  Args:
    config: a recipe (see `experiments/configs`).
    workdir: output folder: `checkpoints/`, `results.json`, `per_class_accuracy.png`.
    splits: the prepared long-tailed data (`load_splits(config)`).
    resume: continue from the newest readable checkpoint in `workdir` (bit-identically, also
      from one written mid-epoch), which must be of this run (`check_same_run`); unreadable newer
      ones are skipped with a warning. False: a workdir holding checkpoints is refused.
    stop_after_epoch: stop after this many epochs as if killed (for tests): the checkpoint is
      written and no report is made.
    max_steps: stop after this many optimizer steps of the whole run, checkpointed mid-epoch as
      on pre-emption (for tests; no report).
    preemptible: stop on SIGTERM as described above (False: SIGTERM keeps its usual effect).
    progress: show the progress bar.
    extra: fields added to the results (e.g. the table a run belongs to).

  Returns:
    The results dict written to `workdir/results.json` (empty when stopped early).
  """
  check_workdir(workdir)
  os.makedirs(workdir, exist_ok=True)
  with checkpointing.WorkdirLock(workdir):
    try:
      return _train_and_evaluate(config, workdir, splits=splits, resume=resume,
                                 stop_after_epoch=stop_after_epoch, max_steps=max_steps,
                                 preemptible=preemptible, progress=progress, extra=extra)
    except tuple(RUN_ERRORS) as e:
      if not isinstance(e, (ConfigError, checkpointing.WorkdirLocked)):
        write_failure(workdir, e)
      raise


def write_failure(workdir: str, error: BaseException) -> dict:
  """Writes `workdir/failure.json` for a failed run: status, message and, for a divergence, the
  epoch, step and last finite loss."""
  record = {"status": "diverged" if isinstance(error, lt.TrainingDiverged) else "failed",
            "message": describe_failure(error) or str(error),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
  if isinstance(error, lt.TrainingDiverged):
    record.update(epoch=error.epoch, step=error.step, last_finite_loss=error.last_finite_loss,
                  history=error.history)
  if jax.process_index() == 0:
    try:
      checkpointing.atomic_write_text(os.path.join(workdir, FAILURE_FILE),
                                      json.dumps(record, indent=1))
    except OSError as e:  # best effort: the failure itself is what must be reported
      logging.getLogger("ltjax").warning("Could not write %s: %s", FAILURE_FILE, e)
  return record


def _train_and_evaluate(config, workdir, *, splits, resume, stop_after_epoch, max_steps,
                        preemptible, progress, extra):
  exp = build_experiment(config, splits)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR))
  log = None
  try:
    state, _, (start_epoch, start_step), loss_sum = restore_for_resume(
        ckpt, exp.state, config, splits.fingerprint, exp.steps_per_epoch, resume=resume)

    every = max(int(config.checkpoint_every_epochs), 1)
    last = config.num_epochs - 1
    # One writer (process 0) for the workdir's metrics.jsonl and event files. A mid-epoch
    # checkpoint's epoch has no record yet: the records kept are those of the finished epochs.
    if jax.process_index() == 0:
      log = epoch_log.EpochLog(workdir, start_epoch=start_epoch)

    def on_epoch_end(epoch, state, record):
      if _evaluated_this_epoch(config, epoch, last):
        record.update(epoch_metrics(exp, state))
      if log is not None:
        log.write(record)
      if (epoch + 1) % every == 0 or epoch == last or epoch + 1 == stop_after_epoch:
        save(state, epoch, 0, 0.0)

    def save(state, epoch, step_in_epoch, loss_sum):
      # "epoch": the last finished epoch; the checkpoint resumes at step `step_in_epoch` of the
      # next one, whose loss summed so far is "epoch_loss_sum" (the streamed arrays' format).
      if ckpt.latest_step() == int(jax.device_get(state.step)):
        return  # the epoch's checkpoint is this step's
      ckpt.save(state, metadata={**_checkpoint_metadata(exp, epoch), "step_in_epoch": step_in_epoch,
                                 "epoch_loss_sum": loss_sum})

    stopped = []

    def stop(global_step):
      why = sigterm.stop_reason(global_step, max_steps=max_steps)
      if why:
        stopped.append((why, global_step))
      return why is not None

    def on_stop(epoch, step_in_epoch, state, loss_sum):
      save(state, epoch - 1, step_in_epoch, loss_sum)

    num_epochs = config.num_epochs if stop_after_epoch is None else stop_after_epoch
    started = time.perf_counter()
    with preemption.Preemption(listen=preemptible) as sigterm:
      state, history = lt.train_epochs(
          state, train_step=exp.train_step, epoch_order=exp.epoch_order,
          images=exp.device_data["train_images"], labels=exp.device_data["train_labels"],
          stats=exp.device_data["stats"], start_epoch=start_epoch, num_epochs=num_epochs,
          steps_per_epoch=exp.steps_per_epoch, batch_size=config.batch_size,
          on_epoch_end=on_epoch_end, progress=progress, desc=config.method,
          last_step=exp.last_step, examples_per_epoch=len(splits.train_labels),
          start_step=start_step, start_loss_sum=loss_sum, stop=stop, on_stop=on_stop)
    train_seconds = time.perf_counter() - started
    per_epoch = log.records() if log is not None else history
    if stopped:
      preemption.announce(*stopped[0])
      return {}
    if stop_after_epoch is not None and stop_after_epoch < config.num_epochs:
      return {}
  finally:
    ckpt.close()
    if log is not None:
      log.close()
  return write_report(exp, state, workdir, train_seconds=train_seconds, history=history,
                      per_epoch=per_epoch, extra=extra)


def _non_finite_metrics(tree, prefix="") -> list[str]:
  """The dotted names of the NaN / infinite numbers in a nested dict/list of metrics."""
  if isinstance(tree, dict):
    return [n for k, v in tree.items() for n in _non_finite_metrics(v, f"{prefix}{k}.")]
  if isinstance(tree, (list, tuple)):
    return [n for i, v in enumerate(tree) for n in _non_finite_metrics(v, f"{prefix}{i}.")]
  if isinstance(tree, float) and not math.isfinite(tree):
    return [prefix[:-1]]
  return []


def check_metrics_finite(metrics: dict) -> None:
  """Raises `NonFiniteMetrics` naming every NaN / infinite evaluation number."""
  bad = _non_finite_metrics(metrics)
  if bad:
    shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
    raise NonFiniteMetrics(f"evaluation produced non-finite metrics ({shown}); no results "
                           "written.")


def write_json_atomic(path, record: dict) -> None:
  """`json.dump(record)` to `path` through a temp file + rename (never half a file)."""
  checkpointing.atomic_write_text(path, json.dumps(record, indent=1))


def write_report(exp: Experiment, state, workdir: str, *, train_seconds: float,
                 history: list, extra: dict | None = None,
                 per_epoch: list | None = None) -> dict:
  """Evaluates `state` (validation, then test) and writes `workdir/results.json` (with
  `"status": "ok"` and `extra`) and the per-class plot, each atomically; returns the results.

  `per_epoch` (default `history`) is the run's whole per-epoch record, resumed epochs included;
  `best_test_epoch` is the official codes' protocol computed from it (never used to select).

  Raises:
    NonFiniteMetrics: an evaluation metric is NaN or infinite (nothing is written).
  """
  config, splits = exp.config, exp.splits
  results = {
      "status": "ok",
      "method": config.method, "dataset": config.dataset,
      "imbalance_ratio": config.imbalance_ratio, "recipe": config.recipe, "seed": config.seed,
      "split_seed": config.split_seed,
      "num_epochs": config.num_epochs, "split_protocol": config.split_protocol,
      "split_fingerprint": splits.fingerprint, "class_counts": np.asarray(
          splits.class_counts).tolist(),
      "device": provenance.device_description(), "versions": provenance.library_versions(),
      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "train_seconds_this_run": train_seconds, "history": history,
      "config": config.to_dict(),
  }
  metrics = evaluate(exp, state)
  check_metrics_finite(metrics)
  results.update(metrics)
  results.update(extra or {})
  results["per_epoch"] = history if per_epoch is None else per_epoch
  results["best_test_epoch"] = epoch_log.best_test_epoch(results["per_epoch"], results["test"])
  if jax.process_index() == 0:
    with checkpointing.atomic_path(os.path.join(workdir, PLOT_FILE)) as tmp:
      lt.plot_per_class(results["test"]["per_class"], splits.class_counts, tmp,
                        title=f"{config.method}, {config.dataset} IR {config.imbalance_ratio}")
    # results.json last: its presence means the whole report is there.
    write_json_atomic(os.path.join(workdir, RESULTS_FILE), results)
    failure = os.path.join(workdir, FAILURE_FILE)
    if os.path.exists(failure):
      os.remove(failure)
  return results
