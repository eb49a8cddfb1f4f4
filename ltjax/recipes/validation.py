"""The domains of the recipe keys (the schema is `ltjax/recipes/common.py`) and
`validate_config`: every config value checkable without data, checked before any data is read or
compiled, each failure one `ltjax.train.ConfigError` line naming the key, its value and what is
allowed."""
from __future__ import annotations

import os

import ml_collections

import ltjax
from ltjax import models
from ltjax import train as lt

# Domains of the recipe keys every config has (see ltjax/recipes/common.py); a key a recipe
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
    "augment": lt.OneOf(tuple(ltjax.data.AUGMENTATIONS) + ltjax.data.HOST_AUGMENTATIONS),
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
    # the host batch by batch) or "auto" (device when it fits; ltjax.cli.streaming).
    "pipeline": lt.OneOf(("auto", "device", "streaming")),
}


def _check(key: str, value, domain) -> None:
  if not domain.contains(value):
    raise lt.ConfigError(f"config.{key}={value!r} is not allowed: expected {domain}.")


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int,
                    method: lt.Method | None = None) -> lt.Method:
  """Checks every config value checkable without data; returns the method (`method` when given,
  else the registry's `config.method`).

  Raises `lt.ConfigError` with one line naming the key, its value and the allowed values.
  """
  try:
    method = lt.get_method(config.method) if method is None else method
    lt.hparams(config.hparams, method=method)
  except ValueError as e:
    raise lt.ConfigError(str(e).replace("hparams.", "config.hparams.", 1)) from None
  if config.model not in models.BACKBONES:
    raise lt.ConfigError(f"Unknown config.model {config.model!r}; expected one of "
                      f"{sorted(models.BACKBONES)}.")
  if config.lr.name not in lt.EPOCH_SCHEDULES:
    raise lt.ConfigError(f"Unknown config.lr.name {config.lr.name!r}; expected one of "
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
  list_defined = config.dataset in ltjax.data.LIST_DATASETS
  if (config.split_protocol == "list") != list_defined:
    raise lt.ConfigError(
        f"config.split_protocol={config.split_protocol!r} is not allowed for "
        f"config.dataset={config.dataset!r}: expected "
        + ("'list' (its split is the list file)" if list_defined
           else f"one of {ltjax.data.PROTOCOLS}") + ".")
  if config.batch_size % num_devices:
    raise lt.ConfigError(
        f"config.batch_size={config.batch_size} must be a positive multiple of the number of "
        f"devices ({num_devices}).")
  if method.stage != "joint" and not config.init_checkpoint:
    raise lt.ConfigError(
        f"Method {config.method!r} is a decoupled {method.stage} method: set "
        "config.init_checkpoint to the workdir of a finished stage-1 run.")
  if method.stage != "joint" and not os.path.isdir(
      os.path.join(config.init_checkpoint, lt.CHECKPOINT_DIR)):
    raise lt.ConfigError(f"config.init_checkpoint={config.init_checkpoint!r} holds no "
                      f"'{lt.CHECKPOINT_DIR}/' folder of a stage-1 run.")
  if method.stage == "posthoc" and config.num_epochs != 0:
    raise lt.ConfigError(f"Method {config.method!r} trains nothing (post-hoc on a stage-1 "
                      "checkpoint): set config.num_epochs=0.")
  if method.stage != "posthoc" and config.num_epochs == 0:
    raise lt.ConfigError(f"config.num_epochs=0 is not allowed for method {config.method!r}, which "
                      "trains: expected an integer >= 1 (0 only for post-hoc methods).")
  return method
