"""The per-classifier gradient probe of `experiments.figures`' `fig_gala_grad_ratio`: a method
whose loss state also accumulates, per class c, `sum_{i: y_i = c} |dL/dz_ic|` and
`sum_{i: y_i != c} |dL/dz_ic|` on the logits its loss sees, and one seed trained with it.
"""
from __future__ import annotations

import dataclasses
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments import experiment
from experiments import tables
from ltjax import losses
from ltjax import priors
from ltjax import train as lt


def records_gradients(method: lt.Method, num_classes: int) -> bool:
  """Whether `method`'s loss state accumulates per-class logit gradients (a `GalaState`)."""
  return isinstance(method.init_state(num_classes, lt.hparams(method=method)), losses.GalaState)



class _ProbeState(NamedTuple):
  inner: Any  # the method's own loss state
  pos: jax.Array  # f32[C]: sum over examples of class c of |dL/dz_c|
  neg: jax.Array  # f32[C]: sum over the other examples of |dL/dz_c|
  step: jax.Array  # i32[]: steps taken (for the epoch a DRW-style weight reads)


def probe_method(base: lt.Method, *, class_counts, steps_per_epoch: int) -> lt.Method:
  """`base` with a loss state extended by per-classifier gradient accumulators.

  After each step, with `g = d(weighted mean loss) / dz` on the step's raw logits (the
  method's own loss, class weights and loss state before this step's update, so GALA's
  adjustment is included): `pos[c] += sum_{i: y_i = c} |g_ic|`, `neg[c] += sum_{i: y_i != c}
  |g_ic|`. `update_state` sees no `LossInputs`, so the probe rebuilds them from `class_counts`
  and its step count; a stochastic loss (EQL) gets a fixed key, not the step's.
  """
  counts = jnp.asarray(class_counts, jnp.float32)
  log_prior = priors.log_prior(counts)

  def init(num_classes, hp):
    zeros = jnp.zeros((num_classes,), jnp.float32)
    return _ProbeState(base.init_state(num_classes, hp), zeros, zeros, jnp.int32(0))

  def loss(logits, labels, inputs, hp):
    return base.loss(logits, labels, inputs._replace(loss_state=inputs.loss_state.inner), hp)

  def update(state, logits, labels, hp):
    inputs = lt.LossInputs(class_counts=counts, log_prior=log_prior, loss_state=state.inner,
                           key=jax.random.PRNGKey(0), epoch=state.step // steps_per_epoch)
    weights = (jnp.ones_like(counts) if base.class_weights is None
               else base.class_weights(inputs, hp))[labels]

    def mean_loss(z):
      return jnp.sum(weights * base.loss(z, labels, inputs, hp)) / jnp.sum(weights)

    grad = jnp.abs(jax.grad(mean_loss)(logits.astype(jnp.float32)))
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    return _ProbeState(base.update_state(state.inner, logits, labels, hp),
                       state.pos + jnp.sum(grad * onehot, 0),
                       state.neg + jnp.sum(grad * (1 - onehot), 0), state.step + 1)

  return dataclasses.replace(base, loss=loss, init_state=init, update_state=update)


def probe_trace(spec, method, ir, seed, *, workdir, cache, every):
  """Trains one seed of `method` with the probe; the pos / neg ratios every `every` steps."""
  config = tables.run_config(spec, method, ir, seed, workdir=workdir)
  splits = cache.get(config)
  steps_per_epoch, _ = experiment.epoch_steps(
      len(splits.train_labels), config.batch_size,
      keep_last_batch=bool(config.get("keep_last_batch", False)),
      sampler=lt.get_method(method).sampler)
  probe = probe_method(lt.get_method(method), class_counts=splits.class_counts,
                       steps_per_epoch=steps_per_epoch)
  exp = experiment.build_experiment(config, splits, method=probe)
  steps, ratios = [], []
  total = config.num_epochs * exp.steps_per_epoch

  def probed(step_fn):
    # The run's own step, reading the probe's sums back every `every` steps.
    def step(state, batch, stats):
      state, metrics = step_fn(state, batch, stats)
      done = int(state.step)
      if done % every == 0 or done == total:
        probe_state = jax.device_get(state.loss_state)
        steps.append(done)
        ratios.append((np.asarray(probe_state.pos)
                       / np.maximum(np.asarray(probe_state.neg), 1e-12)).tolist())
      return state, metrics

    return step

  lt.fit(exp.state, step=probed(exp.train_step),
         last_step=None if exp.last_step is None else probed(exp.last_step), data=exp.data,
         stats=exp.stats, num_epochs=config.num_epochs, desc=f"{method} probe")
  return {"steps": steps, "ratio": ratios}, splits
