"""The one training loop, `fit`, for every input (device-resident arrays, host-streamed arrays,
streamed image lists) and for vmapped replicas: dispatches compiled steps, detects divergence on
the device, reads metrics back once per epoch, shows progress, stops at a step boundary when
asked (pre-emption) and resumes mid-epoch."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import auto as tqdm

from ltjax.train import _watchdog


def _scalar_or_list(x):
  x = np.asarray(x)
  return float(x) if x.ndim == 0 else x.tolist()


class TrainingDiverged(RuntimeError):
  """The loss or gradient norm became non-finite. Raised before the epoch's `on_epoch_end`, so
  no checkpoint of the diverged state is written.

  Attributes:
    epoch: the epoch in which it was detected, counted from 1 (as the records' "epoch").
    step: the first global step (0-based) whose loss or gradient norm was non-finite.
    last_finite_loss: the last finite step loss before it (None if there was none).
    history: the records of the epochs completed before it.
  """

  def __init__(self, *, epoch: int, step: int, last_finite_loss, history: list):
    self.epoch, self.step, self.last_finite_loss, self.history = (
        epoch, step, last_finite_loss, history)
    last = "none" if last_finite_loss is None else f"{last_finite_loss:.6g}"
    super().__init__(f"Training diverged: the loss or gradient norm is not finite in epoch "
                     f"{epoch} at step {step}; last finite loss {last}. No checkpoint of the "
                     "diverged state was written; lower the learning rate or check the "
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
  """Raises `TrainingDiverged` if a step went non-finite (`epoch`: the loop's 0-based index)."""
  first_bad, last_finite = (np.asarray(x) for x in jax.device_get(
      (health["first_bad"], health["last_finite"])))
  bad = np.flatnonzero(first_bad.reshape(-1) >= 0)
  if bad.size:
    i = int(bad[np.argmin(first_bad.reshape(-1)[bad])])
    last = float(last_finite.reshape(-1)[i])
    raise TrainingDiverged(epoch=epoch + 1, step=int(first_bad.reshape(-1)[i]),
                           last_finite_loss=last if np.isfinite(last) else None,
                           history=history)


def _is_terminal(stream) -> bool:
  isatty = getattr(stream, "isatty", None)
  return bool(isatty and isatty())


def _no_step_line(step: int) -> None:
  del step


def _progress_lines(enabled: bool):
  """`(on_step(global_step), on_epoch(text))` printing one line each (logs of long streamed
  runs, where a redrawn bar is noise), or no-ops."""
  if not enabled:
    return (lambda step: None), (lambda text: None)
  return (lambda step: print(f"step {step}", flush=True)), (lambda text: print(text, flush=True))


def _dispatch_step(step_fn: Callable, state, batch, stats, global_step: int,
                   deadline: _watchdog.StepDeadline):
  """The one place a training step of any input is dispatched (`global_step`: 0-based), under
  the per-step deadline on its cross-process collectives (`StepDeadline`: a step that does not
  complete in time ends the process with one line naming the process and step, 1-based)."""
  return deadline.call(global_step + 1, step_fn, state, batch, stats)


def default_deadline() -> _watchdog.StepDeadline:
  """This process's `StepDeadline` from `LTJAX_COLLECTIVE_TIMEOUT_S` (off in a single process,
  600 s with several) and `LTJAX_SERIALIZE_STEPS` (on for multi-process CPU runs with several
  devices per process, where Gloo deadlocks with several steps in flight)."""
  return _watchdog.StepDeadline.from_env(
      process_index=jax.process_index(), process_count=jax.process_count(),
      backend=jax.default_backend(), local_devices=jax.local_device_count())


def fit(state, *, step: Callable, data, stats, num_epochs: int, start_epoch: int = 0,
        start_step: int = 0, start_loss_sum: float | list = 0.0,
        last_step: Callable | None = None, on_epoch_end: Callable | None = None,
        progress: bool | str = True, desc: str = "train", check_every_steps: int = 0,
        stop: Callable[[int], bool] | None = None, on_stop: Callable | None = None,
        replicas: int | None = None, deadline: _watchdog.StepDeadline | None = None):
  """Runs epochs `start_epoch .. num_epochs - 1` (0-based indices) of `step` over `data`;
  returns `(state, history)`.

  Epoch numbering: what a person sees counts epochs from 1 ("epoch 3/5" is the third): the
  records' "epoch", the bar, the "epochs" log lines and `TrainingDiverged.epoch`. The arguments
  are 0-based indices, as the input's `epoch_batches(rng, epoch, ...)`: `start_epoch` (the
  epochs already finished), `on_epoch_end`'s and `on_stop`'s `epoch`; so an epoch-end callback
  receives `epoch` and a record whose "epoch" is `epoch + 1`.

  Within an epoch every step is dispatched without waiting (the loss is summed on the device);
  the host reads the epoch's mean loss and last learning rate once, at the end of the epoch,
  which is also when `on_epoch_end(epoch, state, record)` runs (evaluation, checkpointing).

  Divergence: each step's loss and gradient norm are checked for finiteness on the device; the
  host looks at the result once per epoch (and every `check_every_steps` steps when > 0) and
  raises `TrainingDiverged` before `on_epoch_end`, so a diverged state is never checkpointed.

  Stopping mid-epoch (pre-emption): after each step the host asks `stop(global_step)` (steps done
  so far in the whole run, 1-based); on True it checks for divergence, calls
  `on_stop(epoch, step_in_epoch, state, loss_sum)` with the position of the next step and the
  epoch's loss sum so far, and returns. A stop at an epoch's last step first ends the epoch
  (record, `on_epoch_end`), then reports position `(epoch + 1, 0)`. The run continues exactly
  from there with `start_epoch=epoch, start_step=step_in_epoch, start_loss_sum=loss_sum`: the
  input's epoch is a function of (state.rng, epoch), so `data.epoch_batches(rng, epoch,
  step_in_epoch)` yields the batches an uninterrupted run would, and the epoch's record (mean
  loss) comes out as the uninterrupted run's.

  Args:
    state: the `TrainState` (donated to each step; stacked for vmapped replicas).
    step: `step(state, batch, stats) -> (state, metrics)` (`make_train_step` with the input's
      `batch_fn`); `last_step` the epoch's last step when it keeps a partial batch (a second
      compiled shape, `make_train_step(..., batch_size=N % B)`); None: every step is `step`.
    data: the input (`ltjax.data.DeviceArrays`, `HostArrays`, `ImageLists`, or any object with
      `epoch_batches(rng, epoch, start_step)`, `steps_per_epoch` and `examples_per_epoch`).
    stats: `ClassStats`.
    num_epochs: total epochs of the run.
    start_epoch, start_step: the position to start at (0-based; after a resume).
    start_loss_sum: the loss summed over the `start_step` steps already done of `start_epoch`
      (`on_stop`'s `loss_sum`), so that the epoch's mean loss is the whole epoch's.
    on_epoch_end: `(epoch, state, record)` after each epoch (`epoch` 0-based,
      `record["epoch"] == epoch + 1`).
    progress: True: a tqdm bar (epoch, loss, lr, images/s) on a terminal, and one printed line
      per epoch when stderr is not one (a log file: no carriage-return flood); "lines": one
      printed line per step and per epoch (logs of long streamed runs); "epochs": one printed
      line per epoch; False: nothing.
    desc: the bar's label.
    check_every_steps: also check for divergence every this many steps (0: once per epoch,
      which adds no host sync).
    stop: `global_step -> bool`, asked after every step (with the same count on every process);
      None: never stop early.
    on_stop: `(epoch, step_in_epoch, state, loss_sum)` called once when `stop` said True (writes
      the checkpoint); `loss_sum` is a float (a list, one per replica, for a vmapped step).
    replicas: the vmapped replicas the images/s count covers (default: the size of the loss).
    deadline: the `StepDeadline` every step runs under (default `default_deadline()`).

  Returns:
    The final state and a list of per-epoch records `{"epoch", "loss", "lr", "images_per_s",
    "seconds"}` ("epoch" counted from 1; `loss` and `lr` are lists, one per replica, for a
    vmapped step; `images_per_s` counts all replicas' images).
  """
  steps_per_epoch = int(data.steps_per_epoch)
  if not 0 <= start_step < max(steps_per_epoch, 1):
    raise ValueError(f"start_step={start_step} is not a step of an epoch of {steps_per_epoch} "
                     "steps.")
  history = []
  examples = int(data.examples_per_epoch)
  health = None
  total = max(num_epochs - start_epoch, 0) * steps_per_epoch - start_step
  if progress is True and not _is_terminal(sys.stderr):
    # A bar redrawn with carriage returns floods a log file or CI output: one line per epoch.
    progress = "epochs"
  lines = progress in ("lines", "epochs")
  print_step, print_epoch = _progress_lines(lines)
  if progress == "epochs":
    print_step = _no_step_line
    if total > 0:  # where the bar would start: a log still shows that training began
      print(f"{desc}: {total} steps, epochs {start_epoch + 1}-{num_epochs} of {num_epochs}",
            file=sys.stderr, flush=True)
  deadline = default_deadline() if deadline is None else deadline
  with deadline, tqdm.tqdm(total=total, desc=desc, disable=not progress or lines or total <= 0,
                           unit="step", dynamic_ncols=True) as bar:
    for epoch in range(start_epoch, num_epochs):
      started = time.perf_counter()
      first = start_step if epoch == start_epoch else 0
      batches = data.epoch_batches(state.rng, epoch, first)
      loss_sum = jnp.asarray(start_loss_sum if first else 0.0, jnp.float32)
      metrics, stopping, done = {}, False, 0
      for i in range(first, steps_per_epoch):
        batch = next(batches)
        step_fn = last_step if last_step is not None and i == steps_per_epoch - 1 else step
        global_step = epoch * steps_per_epoch + i
        state, metrics = _dispatch_step(step_fn, state, batch, stats, global_step, deadline)
        if health is None:
          health = _init_health(np.shape(metrics["loss"]))
        loss_sum, health = _accumulate(loss_sum, health, metrics, jnp.int32(global_step))
        done += 1
        bar.update(1)
        print_step(global_step + 1)
        if check_every_steps and (i + 1) % check_every_steps == 0:
          _raise_if_diverged(health, epoch=epoch, history=history)
        stopping = stop is not None and stop(global_step + 1)
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
      copies = int(np.size(loss_mean)) if replicas is None else replicas
      record = {"epoch": epoch + 1, "loss": _scalar_or_list(loss_mean), "lr": _scalar_or_list(lr),
                "images_per_s": copies * examples * done / steps_per_epoch / seconds,
                "seconds": seconds}
      history.append(record)
      bar.set_postfix(epoch=f"{epoch + 1}/{num_epochs}", loss=f"{np.mean(loss_mean):.4f}",
                      lr=f"{np.mean(lr):.4g}", img_s=f"{record['images_per_s']:.0f}")
      print_epoch(f"epoch {epoch + 1}/{num_epochs} loss {np.mean(loss_mean):.4f} "
                  f"lr {np.mean(lr):.4g} {record['images_per_s']:.0f} images/s")
      if on_epoch_end is not None:
        on_epoch_end(epoch, state, record)
      if stopping:  # at the epoch's last step: the epoch ended (record, checkpoint) first
        if on_stop is not None:
          on_stop(epoch + 1, 0, state, 0.0)
        return state, history
  return state, history
