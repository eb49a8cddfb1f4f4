"""The epoch loop: dispatches compiled steps, reads metrics back once per epoch, shows progress."""
from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import auto as tqdm


def _scalar_or_list(x):
  x = np.asarray(x)
  return float(x) if x.ndim == 0 else x.tolist()


def train_epochs(state, *, train_step: Callable, epoch_order: Callable, images, labels, stats,
                 start_epoch: int, num_epochs: int, steps_per_epoch: int, batch_size: int,
                 on_epoch_end: Callable | None = None, progress: bool = True,
                 desc: str = "train", last_step: Callable | None = None,
                 examples_per_epoch: int | None = None):
  """Runs epochs `start_epoch .. num_epochs - 1` and returns `(state, history)`.

  Within an epoch every step is dispatched without waiting (the loss is summed on the device);
  the host reads the epoch's mean loss and last learning rate once, at the end of the epoch,
  which is also when `on_epoch_end(epoch, state, record)` runs (checkpointing).

  Args:
    state: the `TrainState` (donated to each step).
    train_step: from `make_train_step`.
    epoch_order: from `make_epoch_order`.
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

  Returns:
    The final state and a list of per-epoch records `{"epoch", "loss", "lr", "images_per_s"}`
    (`loss` and `lr` are lists, one per replica, for a vmapped step; `images_per_s` counts all
    replicas' images).
  """
  history = []
  examples = steps_per_epoch * batch_size if examples_per_epoch is None else examples_per_epoch
  total = (num_epochs - start_epoch) * steps_per_epoch
  with tqdm.tqdm(total=total, desc=desc, disable=not progress or total == 0,
                 unit="step", dynamic_ncols=True) as bar:
    for epoch in range(start_epoch, num_epochs):
      started = time.perf_counter()
      order = epoch_order(state.rng, jnp.int32(epoch), labels, stats.class_counts)
      loss_sum = jnp.zeros((), jnp.float32)
      metrics = {}
      for i in range(steps_per_epoch):
        step = last_step if last_step is not None and i == steps_per_epoch - 1 else train_step
        state, metrics = step(state, images, labels, order, stats)
        loss_sum = loss_sum + metrics["loss"]
        bar.update(1)
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
  return state, history
