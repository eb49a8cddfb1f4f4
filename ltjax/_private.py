"""Every private JAX / Orbax piece ltjax uses, each behind one accessor with a public fallback.

A private module can move in any release. Here each piece is looked up by name at use time
(`lookup`), so a JAX or Orbax that moved it costs a slower or less specific public path, never an
`ImportError` at import time; `require` (and tests/test_private.py, which requires every entry of
`PIECES` on the installed versions) says in one line which piece moved in which version.

The pieces (verified on jax 0.10.2 - 0.12 and orbax-checkpoint 0.12.8):

- `jax._src.distributed.global_state.client`: the coordination service's client, whose
  `wait_at_barrier` lines processes up without a device collective (on CPU the first collective
  of each device group sets up a Gloo context with a fixed 30 s timeout; see
  `ltjax.cli.streaming.wait_for_all_processes`). Fallback:
  `jax.experimental.multihost_utils.sync_global_devices`, a public barrier built on a collective.
- `orbax.checkpoint._src.metadata.array_metadata_store.Store`: the per-array metadata store that
  Orbax's standard jax.Array handler writes through (not exported), needed to build that handler
  with `use_replica_parallel=False`; and `StandardCheckpointHandler._impl`, the
  `PyTreeCheckpointHandler` it delegates all I/O to, rebuilt with our type-handler registry
  (`whole_array_handler`). Fallback: Orbax's own `StandardCheckpointHandler` (same format; slower
  first save on many CPU devices).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

_log = logging.getLogger("ltjax")

# name -> (distribution whose version the message names, module, attribute path in the module).
PIECES = {
    "jax_coordination_client": ("jax", "jax._src.distributed", "global_state.client"),
    "orbax_array_metadata_store": (
        "orbax-checkpoint", "orbax.checkpoint._src.metadata.array_metadata_store", "Store"),
    "orbax_standard_handler_impl": (
        "orbax-checkpoint", "orbax.checkpoint", "StandardCheckpointHandler._impl"),
}


class PrivateApiMoved(RuntimeError):
  """A private JAX / Orbax piece ltjax relies on is not where it was (an upgrade moved it)."""


def _version(distribution: str) -> str:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def _moved(name: str, why: str) -> PrivateApiMoved:
  distribution, module, attribute = PIECES[name]
  return PrivateApiMoved(
      f"{module}.{attribute} is not in the installed {distribution} {_version(distribution)} "
      f"({why}); ltjax/_private.py must be updated for this version (ltjax uses the public "
      "fallback meanwhile).")


def require(name: str) -> Any:
  """The private piece `name` of `PIECES` (for an instance attribute such as `X._impl`, the class
  `X`, after checking that a fresh instance has the attribute).

  Raises:
    PrivateApiMoved: the installed version has no such module or attribute; the message names
      the piece and the installed version.
  """
  _, module_name, attribute = PIECES[name]
  try:
    obj = importlib.import_module(module_name)
  except ImportError as e:
    raise _moved(name, f"import failed: {e}") from None
  *parents, last = attribute.split(".")
  for part in parents:
    if not hasattr(obj, part):
      raise _moved(name, f"no attribute {part!r}")
    obj = getattr(obj, part)
  if isinstance(obj, type) and last.startswith("_"):
    # An attribute set by __init__ (StandardCheckpointHandler._impl): checked on an instance.
    if not hasattr(obj(), last):
      raise _moved(name, f"a {obj.__name__} has no attribute {last!r}")
    return obj
  if not hasattr(obj, last):
    raise _moved(name, f"no attribute {last!r}")
  return getattr(obj, last)


def lookup(name: str) -> Any | None:
  """`require(name)`, or None (logged once at debug level) when the installed version moved it."""
  try:
    return require(name)
  except PrivateApiMoved as e:
    _log.debug("%s", e)
    return None


def barrier(name: str, *, timeout_s: int) -> None:
  """Blocks until every process of a multi-process run reaches barrier `name`: through the
  coordination service (no device collective), else `multihost_utils.sync_global_devices`."""
  if jax.process_count() == 1:
    return
  client = lookup("jax_coordination_client")
  if client is not None:
    client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)
    return
  multihost_utils.sync_global_devices(name)


def whole_array_handler():
  """Orbax's `StandardCheckpointHandler` with every jax.Array shard written whole by one replica
  (`use_replica_parallel=False`), or None when this Orbax moved the private pieces it needs (the
  caller then uses `ocp.StandardCheckpointHandler()`).

  Orbax's `ArrayHandler` defaults to `use_replica_parallel=True` unless `JAX_PLATFORMS` names a
  GPU (orbax-checkpoint 0.12.8, `_get_default_use_replica_parallel`): each replicated array is cut
  into one slice per device so that each replica writes 1/R of it, every slice shape one
  `jit(slice)` compilation. A ResNeXt-50 state's first save on 8 CPU devices compiled 200 of them
  and took 11-14 s instead of 1.5 s (later saves 2.8 s instead of 0.9-1.2 s), measured under load
  on 2 cores. CPU devices share host memory, so the split buys nothing there.

  Same format: each array is one chunk per shard rather than per replica slice (as Orbax writes
  under `JAX_PLATFORMS=cuda`), and the step metadata names the standard handler (`typestr`), so
  either handler reads the other's checkpoints. Uses its own type-handler registry; Orbax's global
  one (users' own Orbax code) is left as it is.
  """
  store = lookup("orbax_array_metadata_store")
  if store is None or lookup("orbax_standard_handler_impl") is None:
    return None
  return _NoReplicaSlicingHandler(store)


class _NoReplicaSlicingHandler(ocp.StandardCheckpointHandler):
  """`whole_array_handler`'s handler (build it through that function)."""

  def __init__(self, store):
    super().__init__()
    handlers = [(ty, ocp.type_handlers.get_type_handler(ty))
                for ty in ocp.type_handlers.supported_types() if ty is not jax.Array]
    whole_arrays = ocp.type_handlers.ArrayHandler(use_replica_parallel=False,
                                                  array_metadata_store=store())
    registry = ocp.type_handlers.create_type_handler_registry(*handlers, (jax.Array, whole_arrays))
    # StandardCheckpointHandler takes no registry; it delegates all I/O to the
    # PyTreeCheckpointHandler in `_impl`, rebuilt here as its __init__ builds it (orbax 0.12.8)
    # plus the registry.
    self._impl = ocp.PyTreeCheckpointHandler(
        save_concurrent_gb=96, restore_concurrent_gb=96, type_handler_registry=registry)

  @classmethod
  def typestr(cls) -> str:
    return ocp.StandardCheckpointHandler.typestr()
