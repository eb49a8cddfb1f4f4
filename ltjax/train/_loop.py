"""The epoch loop: dispatches compiled steps, reads metrics back once per epoch, shows progress."""
from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import auto as tqdm


def _scalar_or_list(x):
  x = np.asarray(x)
  return float(x) if x.ndim == 0 else x.tolist()


class TrainingDiverged(RuntimeError):
  """The loss or gradient norm became non-finite. Raised before the epoch's `on_epoch_end`, so
  no checkpoint of the diverged state is written.

  Attributes:
    epoch: the 0-based epoch in which it was detected.
    step: the first global step (0-based) whose loss or gradient norm was non-finite.
    last_finite_loss: the last finite step loss before it (None if there was none).
    history: the records of the epochs completed before it.
  """

  def __init__(self, *, epoch: int, step: int, last_finite_loss, history: list):
    self.epoch, self.step, self.last_finite_loss, self.history = (
        epoch, step, last_finite_loss, history)
    last = "none" if last_finite_loss is None else f"{last_finite_loss:.6g}"
    super().__init__(f"Training diverged: the loss or gradient norm is not finite in epoch "
                     f"{epoch} (0-based) at step {step}; last finite loss {last}. No checkpoint "
                     "of the diverged state was written; lower the learning rate or check the "
                     "hyperparameters.")


def _init_health(loss_shape):
  """Per-run divergence bookkeeping, kept on the device: the first non-finite step (-1: none)
  and the last finite loss before it."""
  return {"first_bad": jnp.full(loss_shape, -1, jnp.int32),
          "last_finite": jnp.full(loss_shape, jnp.nan, jnp.float32)}


@jax.jit
def _accumulate(loss_sum, health, metrics, step):
  """One step's bookkeeping in one dispatch (no host sync): the loss sum, and the first step
  whose loss or gradient norm is non-finite (elementwise over vmapped replicas)."""
  loss = metrics["loss"].astype(jnp.float32)
  grad_norm = metrics.get("grad_norm", loss)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  healthy = health["first_bad"] < 0
  first_bad = jnp.where(healthy & ~finite, step, health["first_bad"])
  last_finite = jnp.where(healthy & finite, loss, health["last_finite"])
  return loss_sum + loss, {"first_bad": first_bad, "last_finite": last_finite}


def _raise_if_diverged(health, *, epoch: int, history: list) -> None:
  first_bad, last_finite = (np.asarray(x) for x in jax.device_get(
      (health["first_bad"], health["last_finite"])))
  bad = np.flatnonzero(first_bad.reshape(-1) >= 0)
  if bad.size:
    i = int(bad[np.argmin(first_bad.reshape(-1)[bad])])
    last = float(last_finite.reshape(-1)[i])
    raise TrainingDiverged(epoch=epoch, step=int(first_bad.reshape(-1)[i]),
                           last_finite_loss=last if np.isfinite(last) else None,
                           history=history)


def train_epochs(state, *, train_step: Callable, epoch_order: Callable, images, labels, stats,
                 start_epoch: int, num_epochs: int, steps_per_epoch: int, batch_size: int,
                 on_epoch_end: Callable | None = None, progress: bool = True,
                 desc: str = "train", last_step: Callable | None = None,
                 examples_per_epoch: int | None = None, check_every_steps: int = 0,
                 start_step: int = 0, start_loss_sum: float | list = 0.0,
                 stop: Callable[[int], bool] | None = None, on_stop: Callable | None = None):
  """Runs epochs `start_epoch .. num_epochs - 1` and returns `(state, history)`.

  Within an epoch every step is dispatched without waiting (the loss is summed on the device);
  the host reads the epoch's mean loss and last learning rate once, at the end of the epoch,
  which is also when `on_epoch_end(epoch, state, record)` runs (checkpointing).

  Divergence: each step's loss and gradient norm are checked for finiteness on the device; the
  host looks at the result once per epoch (and every `check_every_steps` steps when > 0) and
  raises `TrainingDiverged` before `on_epoch_end`, so a diverged state is never checkpointed.

  Stopping mid-epoch (pre-emption): after each step the host asks `stop(global_step)` (steps done
  so far in the whole run, 1-based); on True it checks for divergence, calls
  `on_stop(epoch, step_in_epoch, state, loss_sum)` with the position of the next step and the
  epoch's loss sum so far, and returns. A stop at an epoch's last step first ends the epoch
  (record, `on_epoch_end`), then reports position `(epoch + 1, 0)`. The run continues exactly
  from there with `start_epoch=epoch, start_step=step_in_epoch, start_loss_sum=loss_sum`: the
  epoch's order is a function of (state.rng, epoch), so its first `step_in_epoch` rows are
  skipped, and the epoch's record (mean loss) comes out as the uninterrupted run's.

  Args:
    state: the `TrainState` (donated to each step).
    train_step: from `make_train_step`.
    epoch_order: `(rng, epoch, labels, class_counts) -> i32[steps, B]`, the jitted
      `ltjax.data.DevicePipeline.epoch_order`.
    images, labels: the training set on the device.
    stats: `ClassStats`.
    start_epoch: first epoch to run (0-based; > 0 after a resume).
    num_epochs: total epochs of the run.
    steps_per_epoch: steps per epoch.
    batch_size: global batch, for images/s.
    on_epoch_end: optional hook.
    progress: show a tqdm bar (epoch, loss, lr, images/s).
    desc: the bar's label.
    last_step: the remainder step run as the last of each epoch's `steps_per_epoch` steps when
      the epoch keeps its last partial batch (`make_train_step(..., batch_size=N % B)`); None:
      every step is `train_step`.
    examples_per_epoch: images per epoch and replica, for images/s (default
      `steps_per_epoch * batch_size`).
    check_every_steps: also check for divergence every this many steps (0: once per epoch,
      which adds no host sync).
    start_step: the step within `start_epoch` to start at (0-based; > 0 after a mid-epoch stop).
    start_loss_sum: the loss summed over the `start_step` steps already done of `start_epoch`
      (`on_stop`'s `loss_sum`), so that the epoch's mean loss is the whole epoch's.
    stop: `global_step -> bool`, asked after every step (with the same count on every process);
      None: never stop early.
    on_stop: `(epoch, step_in_epoch, state, loss_sum)` called once when `stop` said True (writes
      the checkpoint); `loss_sum` is a float (a list, one per replica, for a vmapped step).

  Returns:
    The final state and a list of per-epoch records `{"epoch", "loss", "lr", "images_per_s"}`
    (`loss` and `lr` are lists, one per replica, for a vmapped step; `images_per_s` counts all
    replicas' images).
  """
  if not 0 <= start_step < max(steps_per_epoch, 1):
    raise ValueError(f"start_step={start_step} is not a step of an epoch of {steps_per_epoch} "
                     "steps.")
  history = []
  examples = steps_per_epoch * batch_size if examples_per_epoch is None else examples_per_epoch
  health = None
  total = max(num_epochs - start_epoch, 0) * steps_per_epoch - start_step
  with tqdm.tqdm(total=total, desc=desc, disable=not progress or total <= 0,
                 unit="step", dynamic_ncols=True) as bar:
    for epoch in range(start_epoch, num_epochs):
      started = time.perf_counter()
      order = epoch_order(state.rng, jnp.int32(epoch), labels, stats.class_counts)
      first = start_step if epoch == start_epoch else 0
      loss_sum = jnp.asarray(start_loss_sum if first else 0.0, jnp.float32)
      metrics, stopping = {}, False
      for i in range(first, steps_per_epoch):
        step = last_step if last_step is not None and i == steps_per_epoch - 1 else train_step
        state, metrics = step(state, images, labels, order, stats)
        if health is None:
          health = _init_health(np.shape(metrics["loss"]))
        loss_sum, health = _accumulate(loss_sum, health, metrics,
                                       jnp.int32(epoch * steps_per_epoch + i))
        bar.update(1)
        if check_every_steps and (i + 1) % check_every_steps == 0:
          _raise_if_diverged(health, epoch=epoch, history=history)
        stopping = stop is not None and stop(epoch * steps_per_epoch + i + 1)
        if stopping and i + 1 < steps_per_epoch:
          _raise_if_diverged(health, epoch=epoch, history=history)  # never save a diverged state
          if on_stop is not None:
            on_stop(epoch, i + 1, state, _scalar_or_list(jax.device_get(loss_sum)))
          return state, history
      if health is not None:
        _raise_if_diverged(health, epoch=epoch, history=history)
      loss_mean, lr = jax.device_get((loss_sum / steps_per_epoch, metrics["lr"]))
      seconds = time.perf_counter() - started
      # Vmapped replicas (ltjax.train.make_replica_train_step) report one loss per replica.
      replicas = int(np.size(loss_mean))
      record = {"epoch": epoch, "loss": _scalar_or_list(loss_mean), "lr": _scalar_or_list(lr),
                "images_per_s": replicas * examples / seconds,
                "seconds": seconds}
      history.append(record)
      bar.set_postfix(epoch=f"{epoch + 1}/{num_epochs}", loss=f"{np.mean(loss_mean):.4f}",
                      lr=f"{np.mean(lr):.4g}", img_s=f"{record['images_per_s']:.0f}")
      if on_epoch_end is not None:
        on_epoch_end(epoch, state, record)
      if stopping:  # at the epoch's last step: the epoch ended (record, checkpoint) first
        if on_stop is not None:
          on_stop(epoch + 1, 0, state, 0.0)
        return state, history
  return state, history
