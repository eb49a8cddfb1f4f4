"""Optimisers and learning-rate schedules as the reference recipes define them.

PyTorch's `SGD(weight_decay=wd)` adds `wd * w` to the gradient of *every* parameter (BatchNorm
scales and biases included) before the momentum buffer `b = m * b + g`, then `w -= lr * b`
(docs/methods.md §1.5). `optax.add_decayed_weights` followed by `optax.sgd(momentum=m)` computes
exactly that.

The recipes step their schedulers once per epoch, so every schedule here is a function of the
0-based epoch index `e = step // steps_per_epoch`, evaluated inside the compiled step.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def _lr_dtype():
  # float32, or float64 under jax_enable_x64: a float32 lr of 0.1 is off by 1.5e-9 relative,
  # which float64 parity tests against PyTorch would see.
  return jax.dtypes.canonicalize_dtype(jnp.float64)


def sgd_coupled(learning_rate, *, momentum: float = 0.9, weight_decay: float = 0.0,
                nesterov: bool = False) -> optax.GradientTransformation:
  """PyTorch `torch.optim.SGD` with coupled (L2) weight decay on all parameters.

  Args:
    learning_rate: a float or an optax schedule of the step.
    momentum: heavy-ball momentum `m` (dampening 0, as PyTorch's default).
    weight_decay: `wd` in `g <- g + wd * w`.
    nesterov: Nesterov momentum, as `SGD(nesterov=True)`.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov),
  )


def ldam_epoch_lr(epoch, *, base_lr: float = 0.1, warmup_epochs: int = 5,
                  decay_epochs: tuple[int, int] = (160, 180), decay: float = 0.01):
  """LDAM-DRW's `adjust_learning_rate`: with `e = epoch + 1`, linear warm-up `base_lr * e / 5`
  for `e <= 5`, then `base_lr`, times 0.01 after epoch 160 and 1e-4 after 180."""
  e = epoch + 1
  lr = jnp.where(e <= warmup_epochs, base_lr * e / warmup_epochs, base_lr)
  lr = jnp.where(e > decay_epochs[0], base_lr * decay, lr)
  return jnp.where(e > decay_epochs[1], base_lr * decay * decay, lr)


def gala_epoch_lr(epoch, *, num_epochs: int, base_lr: float = 0.05, warmup_lr: float = 0.1,
                  warmup_epochs: int = 2):
  r"""GALA/BALMS's `CosineAnnealingLRWarmup` stepped at each epoch's start (docs/methods.md §3):
  epochs `k < W - 1` warm linearly from `base_lr`, then
  `lr(k) = warmup_lr * (1 + cos(pi (k - W + 1) / (T - W))) / 2`, so the last epoch trains at 0.
  With W = 2, T = 200: 0.05, 0.1, ..., 0."""
  k = jnp.asarray(epoch, _lr_dtype())  # an int32 / int division would be float32 under x64
  warm = base_lr + (warmup_lr - base_lr) * k / max(warmup_epochs - 1, 1)
  # (1 + cos(pi p)) / 2 = sin^2(pi (1 - p) / 2), with 1 - p = (T - 1 - k) / (T - W) formed from
  # integers: no cancellation near the end, where float32 1 + cos(.) is 1e-4 off (epoch 198).
  remaining = jnp.clip((num_epochs - 1 - k) / max(num_epochs - warmup_epochs, 1), 0.0, 1.0)
  cosine = warmup_lr * jnp.sin(jnp.pi / 2.0 * remaining) ** 2
  return jnp.where(k < warmup_epochs - 1, warm, cosine)


def cosine_epoch_lr(epoch, *, num_epochs: int, base_lr: float, stepped_at: str = "end"):
  r"""PyTorch `CosineAnnealingLR(T_max=num_epochs, eta_min=0)` stepped once per epoch.

  `stepped_at="end"` (LOS stages 1 and 2: `scheduler.step()` after each epoch's batches): epoch
  `k` (0-based) trains at `lr(k) = base_lr * (1 + cos(pi k / T)) / 2`, from `base_lr` down to
  `lr(T - 1) > 0`.

  `stepped_at="start"` (classifier-balancing run_networks.py @f162ade, `train()`: the scheduler
  steps at the top of each epoch's loop, before its batches; cRT's loop): epoch `k` trains at the
  value of `k + 1`, `lr(k) = base_lr * (1 + cos(pi (k + 1) / T)) / 2`, so the first epoch is
  already below `base_lr` and the last one trains at lr 0.

  Evaluated as `base_lr * sin^2(pi (T - k') / (2 T))`, `k'` the stepped epoch (no float32
  cancellation in the last epochs).
  """
  if stepped_at not in ("start", "end"):
    raise ValueError(f"`stepped_at` must be 'start' or 'end', got {stepped_at!r}.")
  epoch = jnp.asarray(epoch, _lr_dtype())  # an int32 / int division would be float32 under x64
  stepped = epoch + 1 if stepped_at == "start" else epoch
  remaining = jnp.clip((num_epochs - stepped) / num_epochs, 0.0, 1.0)
  return base_lr * jnp.sin(jnp.pi / 2.0 * remaining) ** 2


def constant_epoch_lr(epoch, *, base_lr: float):
  """A constant learning rate."""
  return jnp.full_like(jnp.asarray(epoch, _lr_dtype()), base_lr)


EPOCH_SCHEDULES = {
    "ldam": ldam_epoch_lr,
    "gala": gala_epoch_lr,
    "cosine": cosine_epoch_lr,
    "constant": constant_epoch_lr,
}


def per_epoch_schedule(epoch_lr: Callable, *, steps_per_epoch: int) -> optax.Schedule:
  """Turns a function of the 0-based epoch into an optax schedule of the step."""
  if steps_per_epoch < 1:
    raise ValueError(f"`steps_per_epoch` must be >= 1, got {steps_per_epoch}.")

  def schedule(step):
    return jnp.asarray(epoch_lr(step // steps_per_epoch), _lr_dtype())

  return schedule


def lr_schedule(name: str, *, steps_per_epoch: int, **kwargs) -> optax.Schedule:
  """The named epoch schedule of `EPOCH_SCHEDULES` (keyword arguments as that function's),
  as an optax schedule of the step."""
  if name not in EPOCH_SCHEDULES:
    raise ValueError(f"Unknown lr schedule {name!r}; expected one of {sorted(EPOCH_SCHEDULES)}.")
  fn = EPOCH_SCHEDULES[name]
  return per_epoch_schedule(lambda e: fn(e, **kwargs), steps_per_epoch=steps_per_epoch)


def freeze_backbone(tx: optax.GradientTransformation, params) -> optax.GradientTransformation:
  """Applies `tx` to the head only; every other top-level subtree gets no update at all (weight
  decay included), as decoupled stage 2 (cRT, LOS) trains `model.fc` alone."""
  labels = {name: ("train" if name == "head" else "frozen") for name in params}
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
