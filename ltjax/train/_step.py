"""Pure train and eval steps, compiled once with `jax.jit` over the data mesh.

A step takes a batch: `train_step(state, batch, stats)`. What a batch is belongs to the input
(`ltjax.data.DeviceArrays`, `HostArrays`, `ImageLists`): its `batch_fn`, fused into the step
at build time, turns the batch into the model's images and labels. For device-resident data
that is the gather of the step's row of the epoch order plus augmentation and normalisation
(`ltjax.data.DevicePipeline`), so nothing crosses to the host during an epoch and the step never
retraces (the step counter and epoch are traced values).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ltjax import _mesh
from ltjax import data
from ltjax import losses
from ltjax.train._methods import LossInputs
from ltjax.train._methods import Method
from ltjax.train._state import TrainState


class ClassStats(NamedTuple):
  """Training-split statistics the losses read (replicated arrays)."""
  class_counts: jax.Array  # f32[C]
  log_prior: jax.Array  # f32[C]


def _weighted_mean(per_example, labels, class_weights):
  if class_weights is None:
    return jnp.mean(per_example)
  return losses.weighted_mean(per_example, labels, class_weights=class_weights)


def make_train_step(model, tx: optax.GradientTransformation, method: Method, hp: dict, *,
                    steps_per_epoch: int, batch_fn: Callable, lr_fn: Callable, mesh,
                    bn_train: bool = True, batch_size: int | None = None):
  """Builds the compiled `train_step(state, batch, stats) -> (state, metrics)`.

  The arguments are those of `train_step_fn`; the step is jitted with `state` donated and its
  outputs replicated over `mesh`.
  """
  step = train_step_fn(model, tx, method, hp, steps_per_epoch=steps_per_epoch,
                       batch_fn=batch_fn, lr_fn=lr_fn, bn_train=bn_train,
                       batch_size=batch_size)
  repl = _mesh.replicated(mesh)
  return jax.jit(step, donate_argnums=0, out_shardings=(repl, repl))


def train_step_fn(model, tx: optax.GradientTransformation, method: Method, hp: dict, *,
                  steps_per_epoch: int, batch_fn: Callable, lr_fn: Callable,
                  bn_train: bool = True, batch_size: int | None = None):
  """The pure, uncompiled `train_step(state, batch, stats) -> (state, metrics)`
  (jitted by `make_train_step`, vmapped over replicas by `make_replica_train_step`).

  Args:
    model: the Linen `Classifier`.
    tx: the optimizer.
    method: the registry entry (loss, class weights, loss state).
    hp: the method's hyperparameters (static).
    steps_per_epoch: optimizer steps per epoch.
    batch_fn: `(key, batch, step, size) -> {"image": f32[b, ...], "label": i32[b]}`, the
      input's `batch_fn` (`ltjax.data.DeviceArrays.batch_fn`: the gather + augmentation +
      normalisation of the step's row of the epoch order, sharded over "data"; the streamed
      inputs' only augment or normalise what the host gathered). `key` is the step's
      augmentation key (`ltjax.data.step_keys`), `step` the traced step counter, `size` this
      function's `batch_size`.
    lr_fn: the learning-rate schedule (reported in the metrics).
    bn_train: BatchNorm in train mode (batch statistics, running stats updated). Stage 2 of cRT /
      LOS keeps it on, as the official code calls `model.train()`.
    batch_size: static; the step trains on the first `batch_size` examples of its batch (None:
      all of them). The remainder step of an epoch that keeps its last partial batch is this
      function with `batch_size = N % B`, a second compiled shape run only at the epoch's last
      step: the loss is then the (weighted) mean over those `N % B` examples and BatchNorm and
      the loss state see that smaller batch, as PyTorch's last `DataLoader` batch.

  Returns:
    The step function. `metrics` holds the scalar `loss` (the weighted batch mean), `lr` and
    `grad_norm` (the global norm of the gradient).
  """
  def train_step(state: TrainState, batch, stats: ClassStats):
    epoch = state.step // steps_per_epoch
    aug_key, loss_key = data.step_keys(state.rng, state.step)
    model_batch = batch_fn(aug_key, batch, state.step, batch_size)
    x, y = model_batch["image"], model_batch["label"]
    inputs = LossInputs(class_counts=stats.class_counts, log_prior=stats.log_prior,
                        loss_state=state.loss_state, key=loss_key, epoch=epoch)
    weights = None if method.class_weights is None else method.class_weights(inputs, hp)

    def loss_fn(params):
      variables = {"params": params, "batch_stats": state.batch_stats}
      if bn_train:
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        batch_stats = updates["batch_stats"]
      else:
        logits, batch_stats = model.apply(variables, x, train=False), state.batch_stats
      loss = _weighted_mean(method.loss(logits, y, inputs, hp), y, weights)
      return loss, (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = dataclasses.replace(
        state,
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
        loss_state=method.update_state(state.loss_state, jax.lax.stop_gradient(logits), y, hp),
    )
    # The gradient norm lets the loop catch a non-finite gradient before it reaches a checkpoint.
    return new_state, {"loss": loss, "lr": lr_fn(state.step),
                       "grad_norm": optax.tree.norm(grads)}

  return train_step


def make_eval_logits(model, *, batch_size: int, preprocess: Callable, mesh,
                     flip_tta: bool = False):
  """Builds `eval_logits(params, batch_stats, images) -> f32[N, C]` (BN in eval mode).

  The images are cut into batches of `batch_size` on the device (the tail is zero-padded and its
  rows dropped; with running BN statistics padding cannot change the other rows). With
  `flip_tta`, the logits of x and of its horizontal flip are averaged, as LOS evaluates.
  """
  batch_sharding = _mesh.batch_sharded(mesh)

  def batch_logits(params, batch_stats, images, start):
    x = jax.lax.dynamic_slice_in_dim(images, start, batch_size, axis=0)
    x = preprocess(jax.lax.with_sharding_constraint(x, batch_sharding))
    apply = functools.partial(model.apply, {"params": params, "batch_stats": batch_stats},
                              train=False)
    logits = apply(x)
    if flip_tta:
      logits = (logits + apply(jnp.flip(x, axis=2))) / 2.0
    return logits

  compiled = jax.jit(batch_logits, out_shardings=_mesh.replicated(mesh))

  def eval_logits(params, batch_stats, images):
    n = images.shape[0]
    padded = -(-n // batch_size) * batch_size
    if padded != n:
      images = jnp.pad(images, ((0, padded - n),) + ((0, 0),) * (images.ndim - 1))
    chunks = [compiled(params, batch_stats, images, jnp.int32(s))
              for s in range(0, padded, batch_size)]
    return jnp.concatenate(chunks, axis=0)[:n]

  return eval_logits
