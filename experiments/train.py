"""`train_and_evaluate(config, workdir)`: one long-tailed experiment from config to results.json.

The layout follows the Flax examples (a thin `main.py`, the work here). Everything method-specific
comes from the registry (`ltjax.train.METHODS`); everything recipe-specific from the config.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

import ltjax
from ltjax import checkpointing
from ltjax import models
from ltjax import train as lt

from experiments import epoch_log
from experiments import provenance

CHECKPOINT_DIR = "checkpoints"
RESULTS_FILE = "results.json"
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
    return int(len(self.class_counts))


class ConfigError(ValueError):
  """A configuration that cannot run; raised before any expensive work."""


# Training augmentations by name: arguments of `ltjax.data.augment` (torchvision's RandomCrop(32,
# padding=4), RandomHorizontalFlip, Cutout).
AUGMENTATIONS = {
    "none": {"crop_padding": 0, "flip": False, "cutout_size": 0},
    "crop_flip": {"crop_padding": 4, "flip": True, "cutout_size": 0},
    "crop_flip_cutout": {"crop_padding": 4, "flip": True, "cutout_size": 16},
}

# Per-channel mean / std of x / 255 that the recipes normalise with (CIFAR: the LDAM/GALA/LOS
# code's constants; Fashion-MNIST: its training set's statistics).
NORMALIZATION = {
    "cifar10": (ltjax.data.CIFAR_MEAN, ltjax.data.CIFAR_STD),
    "cifar100": (ltjax.data.CIFAR_MEAN, ltjax.data.CIFAR_STD),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}


def _data_dirs(config):
  data_dir = pathlib.Path(config.data_dir or ltjax.data.default_data_dir()).expanduser()
  manual = config.manual_dir or ltjax.data.default_manual_dir(config.dataset, data_dir)
  return data_dir, pathlib.Path(manual).expanduser()


def check_prepared(config) -> None:
  """Fails fast (without importing TFDS) unless `config.dataset` is either prepared under
  `config.data_dir` or has its raw files in `config.manual_dir` to be prepared from."""
  data_dir, manual_dir = _data_dirs(config)
  # TFDS lays builders out as <name>/<version>/ or <name>/<config>/<version>/.
  prepared = any((data_dir / config.dataset).glob("**/dataset_info.json"))
  raw = manual_dir.is_dir() and any(manual_dir.iterdir())
  if not (prepared or raw):
    raise ConfigError(
        f"Dataset {config.dataset!r} is not prepared under {data_dir} and no raw files are in "
        f"{manual_dir}. Put the official archives there (or set --config.manual_dir), or prepare "
        "it with ltjax.data.prepare(..., download=True) on a machine with internet.")


def load_splits(config) -> Splits:
  """Reads `config.dataset` (preparing it offline if needed) and cuts the long-tailed training
  split (`config.split_protocol`, `config.imbalance_ratio`, `config.split_seed`) plus a balanced
  validation split of `config.val_per_class` discarded training images per class."""
  data_dir, manual_dir = _data_dirs(config)
  train_set = ltjax.data.load_arrays(config.dataset, "train", data_dir=data_dir,
                                     manual_dir=manual_dir)
  test_set = ltjax.data.load_arrays(config.dataset, "test", data_dir=data_dir,
                                    manual_dir=manual_dir)
  split = ltjax.data.longtail_split(
      train_set.labels, imbalance_ratio=config.imbalance_ratio, protocol=config.split_protocol,
      seed=config.split_seed, val_per_class=config.val_per_class, num_classes=train_set.num_classes)
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


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int) -> lt.Method:
  """Checks everything checkable without data; returns the method. Raises `ConfigError`."""
  try:
    method = lt.get_method(config.method)
    lt.hparams(config.hparams)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if config.batch_size <= 0 or config.batch_size % num_devices:
    raise ConfigError(
        f"config.batch_size={config.batch_size} must be a positive multiple of the number of "
        f"devices ({num_devices}).")
  if config.model not in models.BACKBONES:
    raise ConfigError(f"Unknown config.model {config.model!r}; expected one of "
                      f"{sorted(models.BACKBONES)}.")
  if config.augment not in AUGMENTATIONS:
    raise ConfigError(f"Unknown config.augment {config.augment!r}; expected one of "
                      f"{sorted(AUGMENTATIONS)}.")
  if config.lr.name not in lt.EPOCH_SCHEDULES:
    raise ConfigError(f"Unknown config.lr.name {config.lr.name!r}; expected one of "
                      f"{sorted(lt.EPOCH_SCHEDULES)}.")
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
  if config.imbalance_ratio < 1:
    raise ConfigError(f"config.imbalance_ratio must be >= 1, got {config.imbalance_ratio}.")
  return method


def _lr_fn(config, steps_per_epoch):
  kwargs = {k: v for k, v in config.lr.items() if k != "name"}
  if config.lr.name in ("gala", "cosine"):
    kwargs.setdefault("num_epochs", config.num_epochs)
  return lt.lr_schedule(config.lr.name, steps_per_epoch=steps_per_epoch, **kwargs)


def _restore_stage1(workdir: str):
  """The params and batch_stats of the latest checkpoint of a stage-1 run."""
  with checkpointing.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR)) as ckpt:
    tree, meta = ckpt.restore_tree()
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
  step_fn: Callable  # the uncompiled train step (vmapped over seeds by experiments.reproduce)
  order_fn: Callable  # the uncompiled epoch order
  steps_per_epoch: int
  device_data: dict


def build_experiment(config, splits: Splits) -> Experiment:
  """Builds model, optimizer, step-0 state and compiled steps for `config` on `splits`."""
  mesh = lt.data_mesh()
  method = validate_config(config, num_devices=mesh.devices.size)
  hp = lt.hparams(config.hparams)
  num_train = len(splits.train_labels)
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise ConfigError(f"config.batch_size={config.batch_size} exceeds the {num_train} training "
                      "images.")
  model = models.build_classifier(config.model, num_classes=splits.num_classes,
                                  head=method.head, head_init=config.head_init,
                                  **config.model_kwargs)
  lr_fn = _lr_fn(config, steps_per_epoch)
  key = jax.random.PRNGKey(config.seed)
  params, batch_stats = lt.init_variables(model, jax.random.fold_in(key, 0),
                                          splits.train_images.shape[1:])
  tx = lt.sgd_coupled(lr_fn, momentum=config.momentum, weight_decay=config.weight_decay,
                      nesterov=config.nesterov)
  if method.stage != "joint":
    stage1_params, batch_stats, _ = _restore_stage1(config.init_checkpoint)
    head = params["head"] if method.reinit_head else stage1_params["head"]
    params = {**stage1_params, "head": head}
    tx = lt.freeze_backbone(tx, params)
  state = lt.create_train_state(
      params, batch_stats, tx, loss_state=method.init_state(splits.num_classes, hp),
      rng=jax.random.fold_in(key, 1))
  batch_fn = functools.partial(ltjax.data.device_batch, mesh=mesh, mean=splits.mean,
                               std=splits.std, **AUGMENTATIONS[config.augment])
  step_kwargs = dict(steps_per_epoch=steps_per_epoch, batch_fn=batch_fn, lr_fn=lr_fn,
                     bn_train=config.stage2_bn_train or method.stage == "joint")
  train_step = lt.make_train_step(model, tx, method, hp, mesh=mesh, **step_kwargs)
  order_kwargs = dict(sampler=method.sampler, steps=steps_per_epoch, batch_size=config.batch_size)
  epoch_order = lt.make_epoch_order(mesh=mesh, **order_kwargs)
  preprocess = functools.partial(ltjax.data.normalize, mean=splits.mean, std=splits.std)
  eval_logits = lt.make_eval_logits(model, batch_size=config.eval_batch_size,
                                    preprocess=preprocess, mesh=mesh, flip_tta=config.flip_tta)
  counts = np.asarray(splits.class_counts, np.float32)
  host = {
      "train_images": splits.train_images, "train_labels": splits.train_labels.astype(np.int32),
      "test_images": splits.test_images,
      "stats": lt.ClassStats(class_counts=counts, log_prior=np.asarray(
          ltjax.priors.log_prior(counts), np.float32)),
  }
  if splits.val_images is not None:
    host["val_images"] = splits.val_images
  device_data = lt.put_replicated(host, mesh)
  state = lt.put_replicated(jax.device_get(state), mesh)
  return Experiment(config=config, method=method, hp=hp, splits=splits, mesh=mesh, model=model,
                    state=state, train_step=train_step, epoch_order=epoch_order,
                    eval_logits=eval_logits, steps_per_epoch=steps_per_epoch,
                    device_data=device_data,
                    step_fn=lt.train_step_fn(model, tx, method, hp, **step_kwargs),
                    order_fn=functools.partial(lt.epoch_order, **order_kwargs))


def _checkpoint_metadata(exp: Experiment, epoch: int) -> dict:
  return {"config": exp.config.to_dict(), "split_fingerprint": exp.splits.fingerprint,
          "epoch": epoch}


def _select_tau(exp: Experiment, val_logits_fn: Callable):
  """Picks the post-hoc tau with the best validation balanced accuracy (never the test set).

  Returns `(tau, sweep)` where `sweep` maps each tried tau to its validation top-1. Without a
  validation split, or for post-hoc steps whose tau is fixed by the recipe (GALA's PRS), the
  configured value is used.
  """
  posthoc = exp.method.posthoc
  fixed = exp.hp["prs_tau"] if posthoc == "rebalance" else exp.hp["tau"]
  if posthoc in ("none", "rebalance") or exp.splits.val_images is None:
    return fixed, {}
  sweep = {}
  for tau in exp.hp["tau_grid"]:
    sweep[float(tau)] = lt.evaluate_logits(val_logits_fn(tau), exp.splits.val_labels,
                                           class_counts=exp.splits.class_counts)["top1"]
  best = max(sweep, key=lambda t: (sweep[t], -abs(t - fixed)))
  return best, sweep


class _SplitLogits:
  """Post-hoc-adjusted logits of "val" / "test" for a tau. The network runs once per split,
  except for tau-norm, whose tau changes the weights."""

  def __init__(self, exp: Experiment, state):
    self._exp, self._state, self._raw = exp, state, {}

  def _network(self, split, params):
    return self._exp.eval_logits(params, self._state.batch_stats,
                                 self._exp.device_data[f"{split}_images"])

  def __call__(self, split: str, tau):
    exp, posthoc = self._exp, self._exp.method.posthoc
    if posthoc == "tau_norm":
      logits = self._network(split, models.tau_normalized_params(self._state.params, tau=tau))
    else:
      if split not in self._raw:
        self._raw[split] = self._network(split, self._state.params)
      logits = self._raw[split]
    return lt.POSTHOC_LOGITS[posthoc](logits, log_prior=exp.device_data["stats"].log_prior,
                                      tau=tau)


def evaluate(exp: Experiment, state) -> dict:
  """Validation and test metrics of `state`, with tau chosen on validation."""
  split_logits = _SplitLogits(exp, state)
  tau, sweep = _select_tau(exp, lambda t: split_logits("val", t))
  out = {}
  if exp.method.posthoc != "none":
    out["posthoc"] = {"step": exp.method.posthoc, "tau": tau,
                      "val_sweep": {str(k): v for k, v in sweep.items()}}
  splits = ("val", "test") if exp.splits.val_images is not None else ("test",)
  for split in splits:
    labels = getattr(exp.splits, f"{split}_labels")
    out[split] = lt.evaluate_logits(split_logits(split, tau), labels,
                                    class_counts=exp.splits.class_counts)
  return out


def _shots(metrics: dict) -> dict:
  return {k: metrics.get(k) for k in epoch_log.SHOT_KEYS}


def epoch_metrics(exp: Experiment, state, *, also: tuple = ()) -> dict:
  """The evaluation part of a per-epoch record: validation and test top-1 / many / medium / few
  of `state` (post-hoc tau chosen on validation, as in the final report), and under `also` the
  same for other methods evaluated on this state (e.g. `la_posthoc` on a CE run). The test
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
                       progress: bool = True) -> dict:
  """Trains `config` on `splits`, checkpoints into `workdir`, and writes the report.

  Args:
    config: a recipe (see `experiments/configs`).
    workdir: output folder: `checkpoints/`, `results.json`, `per_class_accuracy.png`.
    splits: the prepared long-tailed data (`load_splits(config)`).
    resume: continue from the latest checkpoint in `workdir` (bit-identically).
    stop_after_epoch: stop after this many epochs as if killed (for tests): the checkpoint is
      written and no report is made.
    progress: show the progress bar.

  Returns:
    The results dict written to `workdir/results.json` (empty when stopped early).
  """
  os.makedirs(workdir, exist_ok=True)
  exp = build_experiment(config, splits)
  state, start_epoch = exp.state, 0
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, CHECKPOINT_DIR))
  log = None
  try:
    if resume and ckpt.latest_step() is not None:
      meta = ckpt.restore_metadata()
      if meta["split_fingerprint"] != splits.fingerprint:
        raise ConfigError(f"Cannot resume: the checkpoint's split fingerprint "
                          f"{meta['split_fingerprint'][:12]} differs from this data's "
                          f"{splits.fingerprint[:12]}.")
      if meta["config"]["method"] != config.method:
        raise ConfigError(f"Cannot resume a {meta['config']['method']!r} run as "
                          f"{config.method!r}.")
      state, meta = ckpt.restore(state)
      start_epoch = int(meta["epoch"]) + 1
    elif not resume and ckpt.latest_step() is not None:
      raise ConfigError(f"{ckpt.directory} already holds checkpoints: pass --resume to continue "
                        "or use a fresh --workdir.")

    every = max(int(config.checkpoint_every_epochs), 1)
    last = config.num_epochs - 1
    # One writer (process 0) for the workdir's metrics.jsonl and event files.
    if jax.process_index() == 0:
      log = epoch_log.EpochLog(workdir, start_epoch=start_epoch)

    def on_epoch_end(epoch, state, record):
      if _evaluated_this_epoch(config, epoch, last):
        record.update(epoch_metrics(exp, state))
      if log is not None:
        log.write(record)
      if (epoch + 1) % every == 0 or epoch == last or epoch + 1 == stop_after_epoch:
        ckpt.save(state, metadata=_checkpoint_metadata(exp, epoch))

    num_epochs = config.num_epochs if stop_after_epoch is None else stop_after_epoch
    started = time.perf_counter()
    state, history = lt.train_epochs(
        state, train_step=exp.train_step, epoch_order=exp.epoch_order,
        images=exp.device_data["train_images"], labels=exp.device_data["train_labels"],
        stats=exp.device_data["stats"], start_epoch=start_epoch, num_epochs=num_epochs,
        steps_per_epoch=exp.steps_per_epoch, batch_size=config.batch_size,
        on_epoch_end=on_epoch_end, progress=progress, desc=config.method)
    train_seconds = time.perf_counter() - started
    per_epoch = log.records() if log is not None else history
    if stop_after_epoch is not None and stop_after_epoch < config.num_epochs:
      return {}
  finally:
    ckpt.close()
    if log is not None:
      log.close()
  return write_report(exp, state, workdir, train_seconds=train_seconds, history=history,
                      per_epoch=per_epoch)


def write_report(exp: Experiment, state, workdir: str, *, train_seconds: float,
                 history: list, per_epoch: list | None = None) -> dict:
  """Evaluates `state` (validation, then test) and writes `workdir/results.json` and the
  per-class plot; returns the results dict.

  `per_epoch` (default `history`) is the run's whole per-epoch record, resumed epochs included;
  `best_test_epoch` is the official codes' protocol computed from it (never used to select)."""
  config, splits = exp.config, exp.splits
  results = {
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
  results.update(evaluate(exp, state))
  results["per_epoch"] = history if per_epoch is None else per_epoch
  results["best_test_epoch"] = epoch_log.best_test_epoch(results["per_epoch"], results["test"])
  if jax.process_index() == 0:
    with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
      json.dump(results, f, indent=1)
    lt.plot_per_class(results["test"]["per_class"], splits.class_counts,
                      os.path.join(workdir, PLOT_FILE),
                      title=f"{config.method}, {config.dataset} IR {config.imbalance_ratio}")
  return results
