"""experiments.figures: which methods a figure shows comes from the registry and the table, and
the gradient-ratio probe measures the gradient the loss really has."""
import jax
import jax.numpy as jnp
import numpy as np

from experiments import experiment
from experiments import figures
from experiments import gradient_probe
from experiments import tables
from ltjax import losses
from ltjax import train as lt
from tests import test_checkpoint as tc


def _table(methods):
  return tables.TableSpec(name="t", title="t", recipe="fmnist_cnn", imbalance_ratios=(100.0,),
                          methods=methods, seeds=(0,), num_epochs=2, stage2_epochs=1)


def test_figure_methods_follow_the_registry():
  spec = tables.get_table("A")
  sweeping = figures.sweeping_methods(spec)
  assert sweeping and all(lt.get_method(m).posthoc.grid is not None for m in sweeping)
  assert set(sweeping) == {m for m, method in lt.METHODS.items()
                           if method.posthoc is not None and method.posthoc.grid is not None}
  trained = figures.trained_methods(spec)
  same = tables.same_training(spec)
  assert all(lt.get_method(m).stage == "joint" and m not in same for m in trained)
  decoupled = figures.decoupled_methods(spec)
  stage1 = tables.stage1_sources()
  # Every decoupled method comes after the stage-1 method it starts from.
  assert {m for m in decoupled if m in stage1} == set(stage1)
  assert all(decoupled.index(stage1[m]) < decoupled.index(m) for m in stage1)
  gradient = figures.gradient_methods(spec, 10)
  assert gradient[0] == spec.baseline and len(gradient) > 1
  assert all(gradient_probe.records_gradients(lt.get_method(m), 10) for m in gradient[1:])
  assert not gradient_probe.records_gradients(lt.get_method(spec.baseline), 10)


def test_probe_accumulates_the_gradient_the_gala_state_accumulates():
  # GALA's own state sums |g_iy| over the examples of class y, g the gradient of its loss on the
  # adjusted logits: the probe's positive sums, taken by autodiff through the loss, must match.
  splits = tc.tiny_splits()
  config = tc.tiny_config("gala", 1)
  base = next(m for m in figures.gradient_methods(_table(tuple(lt.METHODS)), 4)[1:])
  config.method = base
  exp = experiment.build_experiment(config, splits)
  probe = gradient_probe.probe_method(lt.get_method(base), class_counts=splits.class_counts,
                               steps_per_epoch=exp.steps_per_epoch)
  exp = experiment.build_experiment(config, splits, method=probe)
  state, data = exp.state, exp.device_data
  order = exp.epoch_order(state.rng, jnp.int32(0), data["train_labels"],
                          data["stats"].class_counts)
  for i in range(exp.steps_per_epoch):
    state, _ = exp.step_at(i)(state, exp.device_batch(order), data["stats"])
  probe_state = jax.device_get(state.loss_state)
  assert isinstance(probe_state.inner, losses.GalaState)
  assert int(probe_state.step) == exp.steps_per_epoch
  np.testing.assert_allclose(probe_state.pos, probe_state.inner.grad_pos, rtol=1e-5, atol=1e-7)
  # The negative sums are per classifier (other classes' examples), not GALA's per example
  # class: both total the same gradient mass.
  np.testing.assert_allclose(probe_state.neg.sum(), probe_state.inner.grad_neg.sum(), rtol=1e-5)
  assert np.all(probe_state.pos > 0) and np.all(probe_state.neg > 0)
