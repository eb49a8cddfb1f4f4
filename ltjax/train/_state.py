"""The training state: one pytree holding everything a step reads and writes."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
  """Everything that changes during training, as a pytree (checkpointed whole).

  Attributes:
    step: i32[], optimizer steps taken so far (the epoch is `step // steps_per_epoch`).
    params: the model's `params` collection.
    batch_stats: the model's BatchNorm running statistics.
    opt_state: the optax state.
    loss_state: the method's loss state (GALA's accumulators), `()` when stateless.
    rng: u32[2], the run's base PRNG key; per-step keys are `fold_in(rng, step)`, so a resumed
      run draws exactly the same randomness.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  loss_state: Any
  rng: jax.Array


def init_variables(model, key, input_shape):
  """`model.init` on a zero batch of one example of shape `input_shape` (compiled)."""
  x = jnp.zeros((1, *input_shape), jnp.float32)
  variables = jax.jit(lambda k: model.init(k, x, train=False))(key)
  return variables["params"], variables.get("batch_stats", {})


def create_train_state(params, batch_stats, tx: optax.GradientTransformation, *, loss_state,
                       rng) -> TrainState:
  """A step-0 `TrainState` for `params`, optimised by `tx`."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), loss_state=loss_state,
                    rng=jnp.asarray(rng, jnp.uint32))
