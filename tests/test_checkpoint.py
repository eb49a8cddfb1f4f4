"""Orbax checkpoints: exact round trip; a killed-then-resumed run equals an uninterrupted one."""
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import serialization

from experiments import experiment
from experiments.configs import fmnist_cnn
from ltjax import checkpointing
from ltjax import train as lt


def _state(mesh):
  params = {"backbone": {"w": jnp.arange(6.0).reshape(2, 3)}, "head": {"b": jnp.ones(3)}}
  tx = lt.sgd_coupled(0.1, momentum=0.9, weight_decay=1e-4)
  state = lt.create_train_state(params, {"bn": jnp.zeros(3)}, tx,
                                loss_state=(jnp.eye(3), jnp.full((3, 3), 0.5)),
                                rng=jax.random.PRNGKey(3))
  return lt.put_replicated(jax.device_get(state), mesh)


def test_round_trip_is_exact_and_keeps_metadata(tmp_path):
  mesh = lt.data_mesh()
  state = _state(mesh)
  state = state.replace(step=state.step + 7,
                        params=jax.tree.map(lambda x: x * 1.000001 + 1e-7, state.params))
  with checkpointing.Checkpointer(tmp_path / "ckpt") as ckpt:
    ckpt.save(state, metadata={"split_fingerprint": "f00", "epoch": 3})
    assert ckpt.latest_step() == 7
    restored, meta = ckpt.restore(_state(mesh))
    raw, _ = ckpt.restore_tree()
  assert meta == {"split_fingerprint": "f00", "epoch": 3}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), jax.device_get(restored))
  assert restored.params["head"]["b"].sharding.is_fully_replicated
  np.testing.assert_array_equal(raw["params"]["backbone"]["w"], state.params["backbone"]["w"])


def test_restore_without_checkpoint_raises(tmp_path):
  with checkpointing.Checkpointer(tmp_path / "none") as ckpt, pytest.raises(FileNotFoundError):
    ckpt.restore(_state(lt.data_mesh()))


def _replicated_tree(mesh):
  """A state whose arrays have shapes no other test saves (so none of their slices is in jax's
  compilation cache yet), each divisible by the 8 devices along an axis (so Orbax's
  replica-parallel writer would slice it)."""
  params = {"a": jnp.arange(8 * 13, dtype=jnp.float32).reshape(8, 13), "b": jnp.ones((5, 24))}
  state = lt.create_train_state(params, {"c": jnp.zeros(40)}, lt.sgd_coupled(0.1, momentum=0.9),
                                loss_state=(jnp.full((16, 7), 0.5),), rng=jax.random.PRNGKey(5))
  state = lt.put_replicated(jax.device_get(state), mesh)
  # A typed key too: Orbax keeps its implementation in the array metadata store.
  key = jax.device_put(jax.random.key(7), jax.NamedSharding(mesh, jax.P()))
  return state.replace(loss_state=(*state.loss_state, key))


def test_save_of_a_replicated_state_compiles_no_slices(tmp_path, caplog):
  # Orbax's replica-parallel writer (its default off GPU) compiles one jit(slice) per replica and
  # array shape: 200 of them (~10 s) in a ResNeXt-50 state's first save on 8 CPU devices.
  mesh = lt.data_mesh()
  state = _replicated_tree(mesh)
  assert len(state.params["a"].sharding.device_set) == jax.device_count() == 8
  global_handler = ocp.type_handlers.get_type_handler(jax.Array)
  with checkpointing.Checkpointer(tmp_path / "ckpt") as ckpt:
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
      ckpt.save(state, metadata={})
    restored, _ = ckpt.restore(_replicated_tree(mesh))
  compiled = [r.getMessage().split()[1] for r in caplog.records
              if r.getMessage().startswith("Compiling ")]
  assert not [name for name in compiled if "slice" in name], compiled
  assert ocp.type_handlers.get_type_handler(jax.Array) is global_handler  # users' Orbax untouched
  key = restored.loss_state[-1]
  assert jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(state.loss_state[-1]))
  state, restored = (s.replace(loss_state=s.loss_state[:-1]) for s in (state, restored))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), jax.device_get(restored))


def test_off_cpu_the_state_keeps_orbax_standard_handler(monkeypatch):
  # On GPU/TPU each replica writing its slice spreads the device-to-host copies: Orbax decides.
  assert type(checkpointing._state_handler()) is not ocp.StandardCheckpointHandler
  for platform in ("gpu", "tpu"):
    monkeypatch.setattr(jax, "default_backend", lambda p=platform: p)
    assert type(checkpointing._state_handler()) is ocp.StandardCheckpointHandler


def _standard_manager(directory):
  """An Orbax manager with Orbax's standard handler, as ltjax saved before (and as users' own
  Orbax code reads)."""
  return ocp.CheckpointManager(directory, item_handlers={
      "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})


def test_checkpoints_of_the_standard_handler_restore_and_vice_versa(tmp_path):
  mesh = lt.data_mesh()
  state = _state(mesh).replace(step=jnp.asarray(5))
  with _standard_manager(tmp_path / "old") as old:
    old.save(5, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave({"epoch": 1})))
    old.wait_until_finished()
  with checkpointing.Checkpointer(tmp_path / "old") as ckpt:
    restored, meta = ckpt.restore(_state(mesh))
    raw, _ = ckpt.restore_tree()
    ckpt.save(restored.replace(step=jnp.asarray(6)), metadata=meta)
  assert meta == {"epoch": 1}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), jax.device_get(restored))
  expected = jax.tree.leaves(serialization.to_state_dict(jax.device_get(state)))
  assert len(jax.tree.leaves(raw)) == len(expected)
  for got, want in zip(jax.tree.leaves(raw), expected):
    np.testing.assert_array_equal(got, want)
  with _standard_manager(tmp_path / "old") as old:
    assert old.metadata(6).item_handlers == old.metadata(5).item_handlers
    back = old.restore(6, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, state)),
        meta=ocp.args.JsonRestore()))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.replace(step=6)),
               jax.device_get(back["state"]))


def tiny_splits(seed=0, size=8, counts=(32, 16, 8, 8), fingerprint="toy-fingerprint"):
  """A separable 4-class long-tailed toy set (bright band at a class-dependent row)."""
  rng = np.random.default_rng(seed)
  counts = np.asarray(counts)

  def images(labels):
    x = rng.integers(0, 60, (len(labels), size, size, 1)).astype(np.uint8)
    x[np.arange(len(labels)), 2 * labels] += 180
    return x

  ytr = np.repeat(np.arange(4), counts)
  yte = np.repeat(np.arange(4), 6)
  return experiment.Splits(images(ytr), ytr, images(yte), yte, counts, fingerprint,
                      val_images=images(yte), val_labels=yte, mean=(0.3,), std=(0.3,))


def tiny_config(method="gala", num_epochs=4):
  c = fmnist_cnn.get_config()
  c.method = method
  c.num_epochs = num_epochs
  c.batch_size = 16
  c.eval_batch_size = 16
  c.model_kwargs = {"widths": (4,), "features": 8}
  c.checkpoint_every_epochs = 1
  return c


def _final_state(workdir):
  with checkpointing.Checkpointer(os.path.join(workdir, experiment.CHECKPOINT_DIR)) as ckpt:
    return ckpt.restore_tree()


def test_kill_and_resume_is_bit_identical(tmp_path):
  splits, config = tiny_splits(), tiny_config()
  full = experiment.train_and_evaluate(config, str(tmp_path / "full"), splits=splits,
                                       progress=False)
  killed = str(tmp_path / "killed")
  assert experiment.train_and_evaluate(config, killed, splits=splits, stop_after_epoch=2,
                                  progress=False) == {}
  with pytest.raises(experiment.ConfigError, match="--resume"):
    experiment.train_and_evaluate(config, killed, splits=splits, progress=False)
  resumed = experiment.train_and_evaluate(config, killed, splits=splits, resume=True,
                                          progress=False)
  (a, meta_a), (b, meta_b) = _final_state(tmp_path / "full"), _final_state(killed)
  assert meta_a == meta_b and meta_a["epoch"] == 3
  assert int(a["step"]) == 4 * (len(splits.train_labels) // 16)
  jax.tree.map(np.testing.assert_array_equal, a, b)  # params, BN, momentum, GALA state, rng
  assert [h["loss"] for h in full["history"][2:]] == [h["loss"] for h in resumed["history"]]
  assert full["test"] == resumed["test"]
  assert os.path.exists(os.path.join(killed, experiment.RESULTS_FILE))


def test_resume_refuses_other_data(tmp_path):
  workdir = str(tmp_path / "w")
  experiment.train_and_evaluate(tiny_config("ce", 1), workdir, splits=tiny_splits(), progress=False)
  other = tiny_splits()
  other = experiment.Splits(**{**other.__dict__, "fingerprint": "another"})
  with pytest.raises(experiment.ConfigError, match="fingerprint"):
    experiment.train_and_evaluate(tiny_config("ce", 2), workdir, splits=other, resume=True,
                             progress=False)
