"""The private JAX / Orbax pieces (ltjax/_private.py): present in the installed versions, a clear
line naming the piece and the version when an upgrade moves one, and the public fallbacks work."""
import importlib
import importlib.metadata
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ltjax import _private
from ltjax import checkpointing
from ltjax import train as lt


@pytest.mark.parametrize("name", sorted(_private.PIECES))
def test_every_private_piece_is_where_ltjax_expects_it(name):
  # Fails on a JAX / Orbax upgrade that moved the piece, with require's line (piece + version).
  assert _private.require(name) is not None or name == "jax_coordination_client"


def _hide_module(monkeypatch, hidden):
  real = importlib.import_module

  def import_module(name, *args):
    if name == hidden:
      raise ModuleNotFoundError(f"No module named {hidden!r}")
    return real(name, *args)

  monkeypatch.setattr(_private.importlib, "import_module", import_module)


def test_a_moved_module_is_named_with_the_installed_version(monkeypatch):
  _hide_module(monkeypatch, "orbax.checkpoint._src.metadata.array_metadata_store")
  version = importlib.metadata.version("orbax-checkpoint")
  with pytest.raises(_private.PrivateApiMoved) as e:
    _private.require("orbax_array_metadata_store")
  line = str(e.value)
  assert "\n" not in line
  assert "orbax.checkpoint._src.metadata.array_metadata_store.Store" in line
  assert f"orbax-checkpoint {version}" in line
  assert _private.lookup("orbax_array_metadata_store") is None


def test_a_moved_attribute_is_named(monkeypatch):
  # jax._src.distributed without `global_state`, and a StandardCheckpointHandler without `_impl`.
  monkeypatch.setattr(_private.importlib, "import_module",
                      lambda name, *a: types.SimpleNamespace())
  with pytest.raises(_private.PrivateApiMoved, match=r"jax\._src\.distributed\.global_state"
                     r"\.client is not in the installed jax .*'global_state'"):
    _private.require("jax_coordination_client")
  monkeypatch.undo()
  monkeypatch.delattr(ocp.StandardCheckpointHandler, "__init__")  # object's: sets no _impl
  with pytest.raises(_private.PrivateApiMoved, match=r"StandardCheckpointHandler\._impl .*"
                     r"orbax-checkpoint"):
    _private.require("orbax_standard_handler_impl")


def _state(mesh):
  params = {"w": jnp.arange(8 * 3, dtype=jnp.float32).reshape(8, 3), "b": jnp.ones(3)}
  state = lt.create_train_state(params, {}, lt.sgd_coupled(0.1, momentum=0.9), loss_state=(),
                                rng=jax.random.PRNGKey(1))
  return lt.put_replicated(jax.device_get(state), mesh)


def test_without_the_private_orbax_pieces_checkpoints_use_the_standard_handler(monkeypatch,
                                                                               tmp_path):
  assert type(checkpointing._state_handler()) is not ocp.StandardCheckpointHandler
  _hide_module(monkeypatch, "orbax.checkpoint._src.metadata.array_metadata_store")
  assert _private.whole_array_handler() is None
  assert type(checkpointing._state_handler()) is ocp.StandardCheckpointHandler
  mesh = lt.data_mesh()
  state = _state(mesh)
  state = state.replace(step=state.step + 3, params=jax.tree.map(lambda x: x / 3, state.params))
  with checkpointing.Checkpointer(tmp_path / "ckpt") as ckpt:
    ckpt.save(state, metadata={"epoch": 1})
    restored, meta = ckpt.restore(_state(mesh))
  assert meta == {"epoch": 1}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), jax.device_get(restored))
  step = jax.jit(lambda p: jax.tree.map(lambda x: 2 * x, p))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(step(state.params)),
               jax.device_get(step(restored.params)))


class _Client:
  def __init__(self):
    self.calls = []

  def wait_at_barrier(self, name, timeout_in_ms):
    self.calls.append((name, timeout_in_ms))


def test_barrier_uses_the_coordination_service_else_the_public_collective(monkeypatch):
  synced = []
  monkeypatch.setattr(_private.multihost_utils, "sync_global_devices", synced.append)
  _private.barrier("one_process", timeout_s=5)  # one process: nothing to wait for
  assert synced == []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  client = _Client()
  monkeypatch.setattr(_private, "lookup", lambda name: client)
  _private.barrier("first", timeout_s=7)
  assert client.calls == [("first", 7000)] and synced == []
  monkeypatch.setattr(_private, "lookup", lambda name: None)  # the piece moved: public fallback
  _private.barrier("second", timeout_s=7)
  assert synced == ["second"] and client.calls == [("first", 7000)]
