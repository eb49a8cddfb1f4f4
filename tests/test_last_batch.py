"""The last partial batch (`config.keep_last_batch`, PyTorch's `DataLoader(drop_last=False)`):
the remainder step is PyTorch's mean over the smaller batch, every step has its epoch's learning
rate, and kill + resume stays bit-identical with it on (8 simulated devices; the remainder does
not split over them)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ltjax
from experiments import experiment
from experiments import runner
from experiments.configs import fmnist_cnn
from ltjax import checkpointing
from ltjax import train as lt
from tests import test_checkpoint

# 62 training images at batch 16: three full steps and a remainder of 14, which does not split
# over the 8 test devices (the remainder step then runs unsharded).
COUNTS = np.array([30, 16, 10, 6])
BATCH = 16


def tiny_splits(seed=0, size=8, counts=COUNTS):
  """`test_checkpoint.tiny_splits` with this file's counts (a remainder of 14 at batch 16)."""
  return test_checkpoint.tiny_splits(seed, size, counts=counts, fingerprint="toy-last-batch")


def tiny_config(method="ce", num_epochs=3, keep_last_batch=True):
  c = fmnist_cnn.get_config()  # cosine lr: every epoch has its own learning rate
  c.method = method
  c.num_epochs = num_epochs
  c.batch_size = BATCH
  c.keep_last_batch = keep_last_batch
  c.eval_batch_size = 16
  c.model_kwargs = {"widths": (4,), "features": 8}
  c.checkpoint_every_epochs = 1
  c.augment = "none"  # so that the hand computation below can rebuild the batch
  return c


def test_epoch_steps_keep_or_drop_the_remainder():
  assert experiment.epoch_steps(12406, 128, keep_last_batch=True) == (97, 118)
  assert experiment.epoch_steps(12406, 128, keep_last_batch=False) == (96, 0)
  assert experiment.epoch_steps(256, 128, keep_last_batch=True) == (2, 0)
  # cRT's class-aware sampler draws int(N / B) full batches whatever the recipe says.
  assert experiment.epoch_steps(12406, 128, keep_last_batch=True,
                                sampler="class_balanced") == (96, 0)
  assert experiment.epoch_steps(100, 128, keep_last_batch=True) == (1, 100)
  with pytest.raises(experiment.ConfigError, match="exceeds"):
    experiment.epoch_steps(100, 128, keep_last_batch=False)


def test_epoch_order_keeps_the_permutation_and_pads_the_last_row():
  labels = jnp.asarray(np.repeat(np.arange(4), COUNTS))
  counts = jnp.asarray(COUNTS, jnp.float32)
  key = jax.random.PRNGKey(3)
  kept = ltjax.data.epoch_order(key, 2, labels, counts, sampler="instance", steps=4,
                                batch_size=BATCH, keep_last_batch=True)
  dropped = ltjax.data.epoch_order(key, 2, labels, counts, sampler="instance", steps=3,
                                   batch_size=BATCH)
  np.testing.assert_array_equal(kept[:3], dropped)
  assert sorted(np.ravel(kept)[:62].tolist()) == list(range(62))
  np.testing.assert_array_equal(kept[3, 14:], -1)


def _hand_step(exp, state, order, step_in_epoch, size):
  """One step computed by hand from `state`: the recipe's loss over the `size` examples of the
  order row, reduced as PyTorch does (`sum w_y l / sum w_y`, plain mean without weights), BN
  over that batch, then the optimizer."""
  idx = np.asarray(order)[step_in_epoch, :size]
  assert np.all(idx >= 0)
  x = ltjax.data.normalize(exp.splits.train_images[idx], mean=exp.splits.mean,
                           std=exp.splits.std)
  y = jnp.asarray(exp.splits.train_labels[idx], jnp.int32)
  counts = jnp.asarray(exp.splits.class_counts, jnp.float32)
  inputs = lt.LossInputs(class_counts=counts, log_prior=jnp.log(counts / counts.sum()),
                         loss_state=state.loss_state, key=jax.random.PRNGKey(0),
                         epoch=jnp.int32(0))
  method = exp.method
  w = (jnp.ones(len(counts)) if method.class_weights is None
       else method.class_weights(inputs, exp.hp))

  def loss_fn(params):
    logits, updates = exp.model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                      train=True, mutable=["batch_stats"])
    per_example = method.loss(logits, y, inputs, exp.hp)
    return jnp.sum(w[y] * per_example) / jnp.sum(w[y]), (logits, updates["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  tx = lt.sgd_coupled(experiment._lr_fn(exp.config, exp.steps_per_epoch),
                      momentum=exp.config.momentum, weight_decay=exp.config.weight_decay)
  updates, _ = tx.update(grads, state.opt_state, state.params)
  loss_state = method.update_state(state.loss_state, logits, y, exp.hp)
  return loss, optax.apply_updates(state.params, updates), batch_stats, loss_state


@pytest.mark.parametrize("method,counts", [
    ("ce", COUNTS), ("cb", COUNTS), ("gala", COUNTS),
    ("cb", np.array([30, 16, 8, 2])),  # 56 = 3 x 16 + 8: the remainder is sharded over 8 devices
])
def test_remainder_step_is_the_mean_over_the_smaller_batch(method, counts):
  assert jax.device_count() == 8
  exp = experiment.build_experiment(tiny_config(method), tiny_splits(counts=counts))
  last = int(counts.sum()) % BATCH
  assert (exp.steps_per_epoch, exp.last_batch_size) == (4, last)
  state, data = exp.state, exp.device_data
  order = exp.epoch_order(state.rng, jnp.int32(0), data["train_labels"],
                          data["stats"].class_counts)
  args = (exp.device_batch(order), data["stats"])
  for i in range(exp.steps_per_epoch):
    before = jax.device_get(state)
    state, metrics = exp.step_at(i)(state, *args)
  loss, params, batch_stats, loss_state = _hand_step(exp, before, order, 3, last)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
  close(float(metrics["loss"]), float(loss))
  jax.tree.map(close, jax.device_get(state.params), jax.device_get(params))
  jax.tree.map(close, jax.device_get(state.batch_stats), jax.device_get(batch_stats))
  jax.tree.map(close, jax.device_get(state.loss_state), jax.device_get(loss_state))
  assert int(state.step) == 4
  assert exp.last_step._cache_size() == 1  # pylint: disable=protected-access


def _final_state(workdir):
  with checkpointing.Checkpointer(os.path.join(workdir, experiment.CHECKPOINT_DIR)) as ckpt:
    return ckpt.restore_tree()


@pytest.mark.slow
def test_kill_and_resume_is_bit_identical_with_the_last_batch(tmp_path):
  splits, config = tiny_splits(), tiny_config("gala")
  full = experiment.train_and_evaluate(config, str(tmp_path / "full"), splits=splits,
                                       progress=False)
  killed = str(tmp_path / "killed")
  experiment.train_and_evaluate(config, killed, splits=splits, stop_after_epoch=1, progress=False)
  resumed = experiment.train_and_evaluate(config, killed, splits=splits, resume=True,
                                          progress=False)
  a, b = _final_state(tmp_path / "full")[0], _final_state(killed)[0]
  assert int(a["step"]) == 3 * 4  # ceil(62 / 16) steps per epoch
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert [h["loss"] for h in full["history"][1:]] == [h["loss"] for h in resumed["history"]]
  # The recorded lr is the last (remainder) step's: the cosine value of its own epoch.
  lrs = [h["lr"] for h in full["history"]]
  np.testing.assert_allclose(lrs, [0.05 * (1 + np.cos(np.pi * e / 3)) / 2 for e in range(3)],
                             rtol=1e-6)
  # Without the last batch the same run is a different trajectory (the flag does something).
  dropped = experiment.train_and_evaluate(tiny_config("gala", keep_last_batch=False),
                                     str(tmp_path / "dropped"), splits=splits, progress=False)
  assert int(_final_state(tmp_path / "dropped")[0]["step"]) == 3 * 3
  assert dropped["history"][0]["loss"] != full["history"][0]["loss"]


@pytest.mark.slow
def test_vmapped_seeds_run_the_remainder_step_as_separate_runs(tmp_path):
  def experiments():
    configs = [tiny_config("gala", num_epochs=2) for _ in range(2)]
    for seed, c in enumerate(configs):
      c.seed = seed
    return [experiment.build_experiment(c, tiny_splits()) for c in configs]

  def paths(name):
    return [str(tmp_path / name / f"seed{i}") for i in range(2)]

  separate = runner.train_replicas(experiments(), paths("separate"), vmap=False,
                                      desc="separate")
  vmapped = runner.train_replicas(experiments(), paths("vmapped"), vmap=True, desc="vmapped")
  for a, b in zip(separate, vmapped):
    assert int(a.step) == int(b.step) == 2 * 4
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5),
                 jax.device_get(a), jax.device_get(b))
