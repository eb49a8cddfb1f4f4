"""Building a run from its recipe: the model, the optimizer and its learning-rate schedule, the
step-0 state (a stage-1 run's weights for decoupled stage 2, or pre-trained torchvision weights)
and the compiled train step of an input (`ltjax.data.DeviceArrays`, `HostArrays`, `ImageLists`).

The recipe is any mapping with the keys of `ltjax/recipes` (an `ml_collections.ConfigDict`
works): `model`, `model_kwargs`, `head_init`, `mixed_precision`, `lr` (a schedule of
`EPOCH_SCHEDULES` by `name` and its arguments), `seed`, `momentum`, `weight_decay`, `nesterov`,
`num_epochs`, `stage2_bn_train`, `init_checkpoint`.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ltjax import models
from ltjax.train import _optim
from ltjax.train import _state
from ltjax.train import _step
from ltjax.train._methods import Method
from ltjax.train._run_state import ConfigError

CHECKPOINT_DIR = "checkpoints"  # a run's checkpoints, under its workdir


def lr_schedule_of(lr: dict, *, steps_per_epoch: int, num_epochs: int,
                   method: Method | None = None):
  """The optax schedule of a recipe's `lr` (`{"name": ..., **arguments}`, one of
  `EPOCH_SCHEDULES`); a schedule that takes the run's length (`num_epochs`) gets it unless `lr`
  sets it, and one that can be stepped at an epoch's start or end (`stepped_at`) is stepped where
  `method`'s official loop steps it (`Method.lr_stepped_at`: cRT at the start) unless `lr` says."""
  kwargs = {k: v for k, v in dict(lr).items() if k != "name"}
  fn = _optim.EPOCH_SCHEDULES.get(lr["name"])
  parameters = inspect.signature(fn).parameters if fn is not None else {}
  if "num_epochs" in parameters:
    kwargs.setdefault("num_epochs", num_epochs)
  if "stepped_at" in parameters and method is not None:
    kwargs.setdefault("stepped_at", method.lr_stepped_at)
  return _optim.lr_schedule(lr["name"], steps_per_epoch=steps_per_epoch, **kwargs)


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
  backbone = models.BACKBONES[config["model"]]
  fields = getattr(getattr(backbone, "func", backbone), "__dataclass_fields__", {})
  if "dtype" not in fields:
    raise ConfigError(f"config.mixed_precision needs a backbone with a compute dtype; "
                      f"{config['model']!r} has none (use resnet50 / resnext50_32x4d / "
                      "resnet152).")
  return {"dtype": jax.numpy.bfloat16}


def restore_stage1(workdir: str):
  """`(params, batch_stats, metadata)` of the latest checkpoint of a stage-1 run's workdir.

  Raises:
    ConfigError: it holds no checkpoint.
    ltjax.checkpointing.CheckpointError: its latest checkpoint is unreadable.
  """
  from ltjax import checkpointing  # noqa: PLC0415 (Orbax, imported when a run checkpoints)

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


def torchvision_weights(path: str | None) -> Callable | None:
  """`(params, batch_stats) -> (params, batch_stats)` loading a torchvision state dict saved as
  .npz (`config.init_weights`) into the backbone, the head left as initialised; None for no path.

  Raises:
    ConfigError: the file does not exist.
  """
  if not path:
    return None
  if not os.path.isfile(path):
    raise ConfigError(f"config.init_weights={path!r} does not exist (a torchvision state dict "
                      "saved with numpy.savez).")

  def load(params, batch_stats):
    with np.load(path) as state_dict:
      loaded = models.load_torchvision_state_dict(
          {"params": params, "batch_stats": batch_stats}, dict(state_dict), head=False)
    return loaded["params"], loaded["batch_stats"]

  return load


def build_train_step(config, method: Method, hp: dict, *, num_classes: int, image_shape,
                     steps_per_epoch: int, batch_fn: Callable, mesh, lr: dict | None = None,
                     load_weights: Callable | None = None):
  """The model, optimizer, step-0 state and compiled train step of `config`, for every input.

  Args:
    config, method, hp: the recipe, its method and hyperparameters.
    num_classes: C.
    image_shape: (H, W, channels) of the model's input.
    steps_per_epoch: optimizer steps per epoch (the schedule's unit).
    batch_fn: the input's `batch_fn` (see `train_step_fn`), fused into the step.
    mesh: the data mesh.
    lr: the schedule (default `config.lr`; e.g. rescaled for another global batch).
    load_weights: `(params, batch_stats) -> (params, batch_stats)` applied to the initial
      variables (pre-trained backbones, `torchvision_weights`), or None.

  Returns:
    `(model, tx, state, train_step, step_kwargs)`; `step_kwargs` are `train_step_fn`'s.
  """
  model = models.build_classifier(config["model"], num_classes=num_classes,
                                  head=method.head, head_init=config["head_init"],
                                  **config["model_kwargs"], **precision_kwargs(config))
  lr_fn = lr_schedule_of(config["lr"] if lr is None else lr, steps_per_epoch=steps_per_epoch,
                         num_epochs=config["num_epochs"], method=method)
  key = jax.random.PRNGKey(config["seed"])
  params, batch_stats = _state.init_variables(model, jax.random.fold_in(key, 0),
                                              tuple(image_shape))
  if load_weights is not None:
    params, batch_stats = load_weights(params, batch_stats)
  tx = _optim.sgd_coupled(lr_fn, momentum=config["momentum"],
                          weight_decay=config["weight_decay"], nesterov=config["nesterov"])
  if method.stage != "joint":
    stage1_params, batch_stats, _ = restore_stage1(config["init_checkpoint"])
    head = params["head"] if method.reinit_head else stage1_params["head"]
    params = {**stage1_params, "head": head}
    tx = _optim.freeze_backbone(tx, params)
  state = _state.create_train_state(
      params, batch_stats, tx, loss_state=method.init_state(num_classes, hp),
      rng=jax.random.fold_in(key, 1))
  bn_train = bool(config["stage2_bn_train"] or method.stage == "joint")
  step_kwargs: dict[str, Any] = dict(steps_per_epoch=steps_per_epoch, batch_fn=batch_fn,
                                     lr_fn=lr_fn, bn_train=bn_train)
  train_step = _step.make_train_step(model, tx, method, hp, mesh=mesh,
                                     steps_per_epoch=steps_per_epoch, batch_fn=batch_fn,
                                     lr_fn=lr_fn, bn_train=bn_train)
  return model, tx, state, train_step, step_kwargs
