"""Seeds as vmapped replicas: each replica follows exactly the trajectory of its separate run."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ltjax
from ltjax import models
from ltjax import train as lt

STEPS_PER_EPOCH, BATCH, NUM_CLASSES = 2, 8, 4


def _replica(method_name, seed):
  """One run's pieces: its own init, rng and (shuffled) training set, a shared model/optimizer."""
  rng = np.random.default_rng(seed)
  counts = np.array([12, 6, 4, 2])
  labels = rng.permutation(np.repeat(np.arange(NUM_CLASSES), counts)).astype(np.int32)
  images = rng.integers(0, 255, (len(labels), 8, 8, 1), dtype=np.uint8)
  method = lt.get_method(method_name)
  hp = lt.hparams()
  model = models.build_classifier("small_cnn", num_classes=NUM_CLASSES, head=method.head,
                                  widths=(4,), features=8)
  params, batch_stats = lt.init_variables(model, jax.random.PRNGKey(10 + seed),
                                          images.shape[1:])
  lr_fn = lt.lr_schedule("constant", steps_per_epoch=STEPS_PER_EPOCH, base_lr=0.1)
  tx = lt.sgd_coupled(lr_fn, momentum=0.9, weight_decay=5e-4)
  state = lt.create_train_state(params, batch_stats, tx,
                                loss_state=method.init_state(NUM_CLASSES, hp),
                                rng=jax.random.PRNGKey(20 + seed))
  step_fn = lt.train_step_fn(
      model, tx, method, hp, steps_per_epoch=STEPS_PER_EPOCH, lr_fn=lr_fn,
      batch_fn=ltjax.data.order_batch_fn(functools.partial(ltjax.data.device_batch,
                                                           crop_padding=2),
                                         steps_per_epoch=STEPS_PER_EPOCH))
  order_fn = functools.partial(ltjax.data.epoch_order, sampler="instance",
                               steps=STEPS_PER_EPOCH, batch_size=BATCH)
  stats = lt.ClassStats(class_counts=counts.astype(np.float32),
                        log_prior=np.log(counts / counts.sum()).astype(np.float32))
  return {"state": state, "images": images, "labels": labels, "stats": stats}, step_fn, order_fn


def _train(step, order, state, images, labels, stats, num_steps):
  losses = []
  for s in range(num_steps):
    o = order(state.rng, jnp.int32(s // STEPS_PER_EPOCH), labels, stats.class_counts)
    state, metrics = step(state, {"images": images, "labels": labels, "order": o}, stats)
    losses.append(metrics["loss"])
  return state, jnp.stack(losses)


@pytest.mark.slow
def test_vmapped_replicas_equal_separate_runs():
  # GALA: a stateful loss, so the per-replica loss state is checked too.
  replicas = [_replica("gala", seed) for seed in (0, 1)]
  step_fn, order_fn = replicas[0][1], replicas[0][2]
  separate = []
  for data, fn, ofn in replicas:
    separate.append(_train(jax.jit(fn), jax.jit(ofn), data["state"], data["images"],
                           data["labels"], data["stats"], 3))
  mesh = lt.data_mesh(jax.devices()[:1])
  program = lt.replica_program(
      [d["state"] for d, _, _ in replicas],
      [{"train_images": d["images"], "train_labels": d["labels"], "stats": d["stats"]}
       for d, _, _ in replicas], step_fn=step_fn, order_fn=order_fn, mesh=mesh)
  assert program.last_step is None and program.images.shape[0] == 2
  state, losses = _train(program.train_step, program.epoch_order, program.state, program.images,
                         program.labels, program.stats, 3)
  assert losses.shape == (3, 2)  # [steps, replicas]
  for i, (sep_state, sep_losses) in enumerate(separate):
    got = jax.device_get(lt.unstack_replica(state, i))
    want = jax.device_get(sep_state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)
    np.testing.assert_allclose(losses[:, i], sep_losses, rtol=1e-5, atol=1e-6)
  # The replicas really differ (different seeds), so the equality above is not vacuous.
  assert not np.allclose(jax.device_get(lt.unstack_replica(state, 0).params["head"]["kernel"]),
                         jax.device_get(lt.unstack_replica(state, 1).params["head"]["kernel"]))


def test_stack_replicas_rejects_an_empty_list():
  with pytest.raises(ValueError, match="at least one"):
    lt.stack_replicas([])


def test_replica_program_needs_one_dataset_per_state():
  data, step_fn, order_fn = _replica("ce", 0)
  mesh = lt.data_mesh(jax.devices()[:1])
  with pytest.raises(ValueError, match="as many datasets as states"):
    lt.replica_program([data["state"]] * 2, [{"train_images": data["images"],
                                             "train_labels": data["labels"],
                                             "stats": data["stats"]}],
                       step_fn=step_fn, order_fn=order_fn, mesh=mesh)
