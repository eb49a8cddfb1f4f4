"""`train_and_evaluate(config, workdir)`: one long-tailed experiment from config to results.json.

The layout follows the Flax examples (a thin `main.py`, the work here). Everything method-specific
comes from the registry (`ltjax.train.METHODS`); everything recipe-specific from the config.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import ltjax
from ltjax import checkpointing
from ltjax import train as lt
from ltjax.cli import shared_data
from ltjax.cli import training
from ltjax.data import load_arrays
from ltjax.recipes import large_scale
from ltjax.recipes import validation

CHECKPOINT_DIR = lt.CHECKPOINT_DIR
RESULTS_FILE = training.RESULTS_FILE
FAILURE_FILE = training.FAILURE_FILE  # written instead of results.json when a run fails
PLOT_FILE = training.PLOT_FILE
# The run, its evaluation and its report (`ltjax.cli.training`), under the names the CLI's
# callers use.
NonFiniteMetrics = lt.NonFiniteMetrics
RUN_ERRORS = training.RUN_ERRORS
describe_failure = training.describe_failure
check_workdir = training.check_workdir
finished_results = training.finished_results
latest_checkpoint_metadata = training.latest_checkpoint_metadata
split_logits = training.split_logits
evaluate = training.evaluate
epoch_metrics = training.epoch_metrics
evaluated_this_epoch = training.evaluated_this_epoch
guarded = training.guarded
write_failure = training.write_failure
train = training.train
check_metrics_finite = training.check_metrics_finite
write_json_atomic = training.write_json_atomic
write_report = training.write_report


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


# A configuration that cannot run (or cannot resume its workdir); raised before expensive work.
ConfigError = lt.ConfigError


# The recipes' presets live in the library (`ltjax.data`); these names stay for the CLI's callers.
AUGMENTATIONS = ltjax.data.AUGMENTATIONS
HOST_AUGMENTATIONS = ltjax.data.HOST_AUGMENTATIONS
NORMALIZATION = ltjax.data.NORMALIZATION
# Datasets whose long-tailed split is a list file (streamed by ltjax.cli.streaming).
LIST_DATASETS = ltjax.data.LIST_DATASETS


def _data_dirs(config):
  """`(data_dir, manual_dir)` of `config`; the manual dir defaults to this checkout's shared copy
  of the raw archives (`ltjax.cli.shared_data`)."""
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
        f"{manual_dir}: {shared_data.missing_hint(config.dataset)}, or prepare it with "
        "ltjax.data.prepare(..., download=True) on a machine with internet.")


def load_splits(config, *, source: Callable | None = None) -> Splits:
  """Reads `config.dataset` (preparing it offline if needed) and cuts the long-tailed training
  split (`config.split_protocol`, `config.imbalance_ratio`, `config.split_seed`) plus a balanced
  validation split of `config.val_per_class` discarded training images per class.

  `source(dataset, split, *, data_dir, manual_dir) -> ltjax.data.ImageArrays` reads one split
  (default `ltjax.data.load_arrays`); pass another to memoise the reads or serve arrays.
  """
  source = source or load_arrays
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


# Config validation lives beside the config schema (ltjax/recipes).
CONFIG_DOMAINS = validation.CONFIG_DOMAINS
validate_config = validation.validate_config


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
  `ltjax.cli.streaming.run` does the same after choosing the pipeline.)"""
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


def scaled_lr(config) -> dict:
  """`config.lr`, rescaled linearly to `config.batch_size` when the recipe has a
  `reference_batch_size` (the large recipes, `ltjax.recipes.large_scale.scaled_lr`)."""
  if config.get("reference_batch_size"):
    return large_scale.scaled_lr(dict(config.lr), batch_size=config.batch_size,
                                 reference_batch_size=config.reference_batch_size)
  return dict(config.lr)


def _lr_fn(config, steps_per_epoch, method: lt.Method | None = None):
  """The optax schedule the run of `config` trains with (`ltjax.train.lr_schedule_of`)."""
  return lt.lr_schedule_of(scaled_lr(config), steps_per_epoch=steps_per_epoch,
                           num_epochs=config.num_epochs,
                           method=lt.get_method(config.method) if method is None else method)


precision_kwargs = lt.precision_kwargs


@dataclasses.dataclass
class Experiment:
  """One run, built (`build_experiment` for array datasets, `ltjax.cli.streaming` for
  list datasets): what `train` feeds `ltjax.train.fit` and the report evaluates."""
  config: ml_collections.ConfigDict
  method: lt.Method
  hp: dict
  mesh: Any
  model: Any
  state: lt.TrainState
  train_step: Callable  # `(state, batch, stats) -> (state, metrics)`, compiled
  data: Any  # the input (`ltjax.data.DeviceArrays`, `HostArrays`, `ImageLists`)
  steps_per_epoch: int
  fingerprint: str  # the training split's
  class_counts: np.ndarray  # training counts per class
  # The evaluation: `eval_logits(params, batch_stats, images[split]) -> f32[N, C]` and each
  # split's labels ("val" when the data has one, then "test").
  eval_logits: Callable
  eval_images: dict
  eval_labels: dict
  input_name: str = "device"  # recorded in checkpoints ("device" or "streaming")
  splits: Splits | None = None  # the host arrays of an array dataset
  report_fields: dict = dataclasses.field(default_factory=dict)  # results.json overrides
  # The epoch's last step when it keeps a partial batch of `last_batch_size` (< batch_size)
  # examples: a second compiled shape (None when every step is full).
  last_step: Callable | None = None
  last_batch_size: int = 0
  # The arrays on the device: "stats" (`lt.ClassStats`, every run) and, for array datasets,
  # the labels and evaluation images (and the training images on the on-device pipeline).
  # Array datasets also keep the on-device pipeline, its jitted epoch order, and the uncompiled
  # step and order (vmapped over seeds by experiments.runner).
  pipeline: ltjax.data.DevicePipeline | None = None
  epoch_order: Callable | None = None
  step_fn: Callable | None = None
  order_fn: Callable | None = None
  last_step_fn: Callable | None = None
  device_data: dict = dataclasses.field(default_factory=dict)

  @property
  def stats(self) -> lt.ClassStats:
    """The training split's class statistics on the device (`device_data["stats"]`)."""
    return self.device_data["stats"]

  def step_at(self, index: int) -> Callable:
    """The compiled step to run as step `index` (0-based) of an epoch."""
    if self.last_step is not None and index == self.steps_per_epoch - 1:
      return self.last_step
    return self.train_step

  def device_batch(self, order) -> dict:
    """The batch the on-device steps take for an epoch's `order` (`ltjax.data.DeviceArrays`)."""
    d = self.device_data
    return {"images": d["train_images"], "labels": d["train_labels"], "order": order}


def build_train_step(config, method: lt.Method, hp: dict, **kwargs):
  """`ltjax.train.build_train_step` with the recipe's (rescaled) schedule, `scaled_lr`."""
  return lt.build_train_step(config, method, hp, lr=scaled_lr(config), **kwargs)


def build_experiment(config, splits: Splits, *, mesh=None, method: lt.Method | None = None,
                     train_on_device: bool = True) -> Experiment:
  """Builds model, optimizer, step-0 state, input and compiled steps for `config` on `splits`.

  Args:
    config: a recipe.
    splits: the prepared data (`load_splits`).
    mesh: the data mesh to shard the batch over (default `lt.data_mesh()`: every device).
    method: the `Method` to train (default the registry's `config.method`).
    train_on_device: put the training images on the device (input `ltjax.data.DeviceArrays`:
      gather and augmentation fused into the step); False streams them from the host arrays
      (`ltjax.data.HostArrays`: the same order and augmentation draws, so the same batches).
      The evaluation splits are on the device either way.
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
  # float32, or float64 under jax_enable_x64 (the float64 parity tests).
  stat_dtype = jax.dtypes.canonicalize_dtype(np.float64)
  counts = np.asarray(splits.class_counts, stat_dtype)
  host = {
      "train_labels": splits.train_labels.astype(np.int32), "test_images": splits.test_images,
      "stats": lt.ClassStats(class_counts=jnp.asarray(counts), log_prior=jnp.asarray(
          ltjax.priors.log_prior(counts), stat_dtype)),
  }
  if splits.val_images is not None:
    host["val_images"] = splits.val_images
  if train_on_device:
    host["train_images"] = splits.train_images
  device_data = lt.put_replicated(host, mesh)
  stats = device_data["stats"]
  epoch_order = jax.jit(pipeline.epoch_order, out_shardings=lt.replicated(mesh))
  if train_on_device:
    data = ltjax.data.DeviceArrays(pipeline=pipeline, images=device_data["train_images"],
                                   labels=device_data["train_labels"],
                                   class_counts=stats.class_counts, order=epoch_order)
  else:
    data = ltjax.data.HostArrays(pipeline=pipeline, images=splits.train_images,
                                 labels=host["train_labels"],
                                 device_labels=device_data["train_labels"],
                                 class_counts=stats.class_counts, mesh=mesh)
  model, tx, state, train_step, step_kwargs = build_train_step(
      config, method, hp, num_classes=splits.num_classes,
      image_shape=splits.train_images.shape[1:], steps_per_epoch=steps_per_epoch,
      batch_fn=data.batch_fn, mesh=mesh)
  last_step = last_step_fn = None
  if last_batch_size:
    # A remainder that does not split over the devices is gathered and computed unsharded
    # (replicated on every device, `ltjax.data.device_batch`): the same maths, once per epoch.
    last_kwargs: dict[str, Any] = dict(step_kwargs, batch_size=last_batch_size)
    last_step = lt.make_train_step(model, tx, method, hp, mesh=mesh, **last_kwargs)
    last_step_fn = lt.train_step_fn(model, tx, method, hp, **last_kwargs)
  preprocess = functools.partial(ltjax.data.normalize, mean=splits.mean, std=splits.std)
  eval_logits = lt.make_eval_logits(model, batch_size=config.eval_batch_size,
                                    preprocess=preprocess, mesh=mesh, flip_tta=config.flip_tta)
  eval_splits = ("val", "test") if splits.val_images is not None else ("test",)
  state = lt.put_replicated(jax.device_get(state), mesh)
  return Experiment(
      config=config, method=method, hp=hp, mesh=mesh, model=model, state=state,
      train_step=train_step, data=data, steps_per_epoch=steps_per_epoch,
      fingerprint=splits.fingerprint, class_counts=np.asarray(splits.class_counts),
      eval_logits=eval_logits,
      eval_images={k: device_data[f"{k}_images"] for k in eval_splits},
      eval_labels={k: getattr(splits, f"{k}_labels") for k in eval_splits},
      input_name="device" if train_on_device else "streaming", splits=splits,
      last_step=last_step, last_batch_size=last_batch_size, pipeline=pipeline,
      epoch_order=epoch_order, step_fn=lt.train_step_fn(model, tx, method, hp, **step_kwargs),
      order_fn=pipeline.epoch_order, last_step_fn=last_step_fn, device_data=device_data)


# The run state (one checkpoint schema, its save and restore, the same-run check) is the
# library's (`ltjax.train.RunCheckpoints`); these names stay for the callers of this module.
config_changes = lt.config_changes
check_same_run = lt.check_same_run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, splits: Splits,
                       resume: bool = False, stop_after_epoch: int | None = None,
                       max_steps: int | None = None, preemptible: bool = False,
                       progress: bool = True, extra: dict | None = None) -> dict:
  """Trains `config` on `splits` with the training images on the device, checkpoints into
  `workdir`, and writes the report (`train`, which says what the other arguments do).

  Args:
    config: a recipe (see `ltjax/recipes`).
    workdir: output folder: `checkpoints/`, `results.json`, `per_class_accuracy.png`.
    splits: the prepared long-tailed data (`load_splits(config)`).

  Returns:
    The results dict written to `workdir/results.json` (empty when stopped early).
  """
  return guarded(workdir, lambda: train(
      build_experiment(config, splits), workdir, resume=resume,
      stop_after_epoch=stop_after_epoch, max_steps=max_steps, preemptible=preemptible,
      progress=progress, extra=extra))


