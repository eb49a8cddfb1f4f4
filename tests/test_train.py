"""Training core: PyTorch SGD, the recipes' schedules, the registry, and the compiled step
(1 device == 8 devices, no retracing, frozen backbone in stage 2)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ltjax
from ltjax import models
from ltjax import train as lt


def test_sgd_coupled_matches_pytorch_recurrence():
  params = {"w": jnp.array([1.0, -2.0]), "bn": {"scale": jnp.array([0.5])}}
  grads = [jax.tree.map(lambda p, i=i: jnp.sin(p * (i + 1)), params) for i in range(3)]
  lr, m, wd = 0.1, 0.9, 0.01
  tx = lt.sgd_coupled(lr, momentum=m, weight_decay=wd)
  opt, p = tx.init(params), params
  ref, buf = jax.tree.map(np.asarray, params), None
  for g in grads:
    updates, opt = tx.update(g, opt, p)
    p = optax.apply_updates(p, updates)
    # torch.optim.SGD: d = g + wd * w; b = m * b + d (b = d at first); w -= lr * b
    d = jax.tree.map(lambda g, w: np.asarray(g) + wd * w, g, ref)
    buf = d if buf is None else jax.tree.map(lambda b, d: m * b + d, buf, d)
    ref = jax.tree.map(lambda w, b: w - lr * b, ref, buf)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), p, ref)


def test_ldam_schedule_values():
  lr = jax.jit(lt.ldam_epoch_lr)
  got = [float(lr(e)) for e in (0, 4, 5, 159, 160, 179, 180, 199)]
  np.testing.assert_allclose(got, [0.02, 0.1, 0.1, 0.1, 1e-3, 1e-3, 1e-5, 1e-5], rtol=1e-6)


def test_gala_schedule_warms_then_anneals_to_zero():
  lrs = np.array([float(lt.gala_epoch_lr(e, num_epochs=200)) for e in range(200)])
  np.testing.assert_allclose(lrs[:2], [0.05, 0.1], rtol=1e-6)
  np.testing.assert_allclose(lrs[-1], 0.0, atol=1e-9)
  np.testing.assert_allclose(lrs[101], 0.1 * (1 + np.cos(np.pi * 100 / 198)) / 2, rtol=1e-5)
  assert np.all(np.diff(lrs[1:]) <= 0)


def test_per_epoch_schedule_is_constant_within_an_epoch():
  sched = lt.lr_schedule("cosine", steps_per_epoch=7, num_epochs=10, base_lr=0.2)
  lrs = np.array([float(sched(s)) for s in range(70)]).reshape(10, 7)
  assert np.all(lrs == lrs[:, :1])
  np.testing.assert_allclose(lrs[:, 0], 0.2 * (1 + np.cos(np.pi * np.arange(10) / 10)) / 2,
                             rtol=1e-6)


def test_registry_declares_every_stage_and_reuse_and_rejects_unknown_names():
  assert {m.stage for m in lt.METHODS.values()} == {"joint", "stage2", "posthoc"}
  # Every reused training is a registered joint method's, and every decoupled method has one.
  for name, method in lt.METHODS.items():
    if method.reuses is not None:
      assert lt.METHODS[method.reuses].stage == "joint", name
  assert set(lt.stage1_sources()) == {n for n, m in lt.METHODS.items() if m.stage != "joint"}
  with pytest.raises(ValueError, match="stage-1 method"):
    lt.Method(head="linear", loss=None, stage="stage2")
  with pytest.raises(ValueError, match="post-hoc step"):
    lt.Method(head="linear", loss=None, posthoc=lt.get_method("la_posthoc").posthoc)
  with pytest.raises(ValueError, match="Unknown method 'nope'"):
    lt.get_method("nope")
  with pytest.raises(ValueError, match="Unknown hyperparameter"):
    lt.hparams({"tua": 1.0})
  with pytest.raises(ValueError, match="stage"):
    lt.Method(head="linear", loss=None, stage="warmup")


def test_epoch_order_samplers():
  labels = jnp.repeat(jnp.arange(4), jnp.array([400, 200, 100, 50]))
  counts = jnp.array([400.0, 200.0, 100.0, 50.0])
  key = jax.random.PRNGKey(0)
  perm = ltjax.data.epoch_order(key, 3, labels, counts, sampler="instance", steps=7,
                                batch_size=100)
  assert perm.shape == (7, 100) and len(np.unique(perm)) == 700
  other = ltjax.data.epoch_order(key, 4, labels, counts, sampler="instance", steps=7,
                                 batch_size=100)
  assert not np.array_equal(perm, other)
  drawn = ltjax.data.epoch_order(key, 3, labels, counts, sampler="class_balanced", steps=80,
                                 batch_size=100)
  freq = np.bincount(np.asarray(labels)[np.ravel(drawn)], minlength=4) / 8000
  np.testing.assert_allclose(freq, 0.25, atol=0.03)


def _tiny_setup(mesh, method_name="ce", *, freeze=False, steps_per_epoch=2, batch=16):
  rng = np.random.default_rng(0)
  counts = np.array([24, 12, 8, 4])
  labels = np.repeat(np.arange(4), counts).astype(np.int32)
  images = rng.integers(0, 255, (len(labels), 8, 8, 1), dtype=np.uint8)
  method = lt.get_method(method_name)
  hp = lt.hparams()
  model = models.build_classifier("small_cnn", num_classes=4, head=method.head, widths=(4,),
                                  features=8)
  params, batch_stats = lt.init_variables(model, jax.random.PRNGKey(1), images.shape[1:])
  lr_fn = lt.lr_schedule("constant", steps_per_epoch=steps_per_epoch, base_lr=0.1)
  tx = lt.sgd_coupled(lr_fn, momentum=0.9, weight_decay=5e-4)
  if freeze:
    tx = lt.freeze_backbone(tx, params)
  state = lt.create_train_state(params, batch_stats, tx, loss_state=method.init_state(4, hp),
                                rng=jax.random.PRNGKey(2))
  pipeline = ltjax.data.DevicePipeline(num_examples=len(labels), batch_size=batch, mesh=mesh,
                                       crop_padding=2)
  step = lt.make_train_step(model, tx, method, hp, steps_per_epoch=steps_per_epoch,
                            batch_fn=ltjax.data.order_batch_fn(
                                pipeline.gather, steps_per_epoch=steps_per_epoch),
                            lr_fn=lr_fn, mesh=mesh)
  order = jax.jit(functools.partial(ltjax.data.epoch_order, steps=steps_per_epoch,
                                    batch_size=batch), out_shardings=lt.replicated(mesh))
  stats = lt.ClassStats(class_counts=counts.astype(np.float32),
                        log_prior=np.log(counts / counts.sum()).astype(np.float32))
  data = lt.put_replicated({"images": images, "labels": labels, "stats": stats,
                            "state": state}, mesh)
  return step, order, data


def _run(step, order, data, num_steps, steps_per_epoch=2):
  state = data["state"]
  for s in range(num_steps):
    o = order(state.rng, jnp.int32(s // steps_per_epoch), data["labels"],
              data["stats"].class_counts)
    with jax.transfer_guard("disallow"):  # the step itself moves nothing to or from the host
      state, metrics = step(state, {"images": data["images"], "labels": data["labels"],
                                    "order": o}, data["stats"])
  return state, metrics


def test_train_step_one_device_equals_eight_devices_and_never_retraces():
  assert jax.device_count() == 8
  results = []
  for mesh in (lt.data_mesh(jax.devices()[:1]), lt.data_mesh()):
    step, order, data = _tiny_setup(mesh)
    state, metrics = _run(step, order, data, 3)
    assert step._cache_size() == 1  # pylint: disable=protected-access
    assert state.params["head"]["kernel"].sharding.is_fully_replicated
    results.append(jax.device_get((state.params, state.batch_stats, metrics["loss"])))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), *results)
  assert int(state.step) == 3


def test_frozen_backbone_keeps_weights_but_updates_bn_stats_and_head():
  step, order, data = _tiny_setup(lt.data_mesh(), freeze=True)
  before = jax.device_get(data["state"])
  state, _ = _run(step, order, data, 2)
  after = jax.device_get(state)
  jax.tree.map(np.testing.assert_array_equal, before.params["backbone"],
               after.params["backbone"])
  assert not np.allclose(before.params["head"]["kernel"], after.params["head"]["kernel"])
  # BN in train mode during stage 2, as the official cRT / LOS code: running stats move.
  mean_before = before.batch_stats["backbone"]["BatchNorm_0"]["mean"]
  assert not np.allclose(mean_before, after.batch_stats["backbone"]["BatchNorm_0"]["mean"])


@pytest.mark.parametrize("name", [n for n, m in lt.METHODS.items() if m.stage == "joint"])
def test_every_joint_method_takes_a_finite_step(name):
  step, order, data = _tiny_setup(lt.data_mesh(), name)
  state, metrics = _run(step, order, data, 1)
  assert np.isfinite(float(metrics["loss"]))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.params)))


def test_drw_weights_switch_at_the_configured_epoch():
  inputs = lambda e: lt.LossInputs(class_counts=jnp.array([100.0, 10.0, 1.0]), log_prior=None,
                                   loss_state=(), key=None, epoch=jnp.int32(e))
  weights = jax.jit(lambda e: lt.get_method("ce_drw").class_weights(inputs(e), lt.hparams()))
  np.testing.assert_array_equal(weights(159), np.ones(3))
  w = np.asarray(weights(160))
  np.testing.assert_allclose(w.sum(), 3.0, rtol=1e-5)
  assert w[0] < w[1] < w[2]
