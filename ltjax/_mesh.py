"""The data-parallel layout: one "data" mesh axis over all devices of all processes.

State and the (small) datasets are replicated; each batch is sharded along "data" and XLA inserts
the all-reduces of gradients, BatchNorm statistics and per-class sums (global-view `jax.jit`).
The same code runs on 1 device, 8 devices or several processes after
`jax.distributed.initialize()`.

The one home of the axis name and of the replicated placement: `ltjax.data` (the on-device
pipeline) and `ltjax.train` (which re-exports these names) both import it. It imports only jax
and numpy, so importing it costs nothing beyond jax.
"""
from __future__ import annotations

import jax
import numpy as np

DATA_AXIS = "data"


def data_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh named "data" over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,),
                           axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> jax.NamedSharding:
  return jax.NamedSharding(mesh, jax.P())


def batch_sharded(mesh) -> jax.NamedSharding:
  return jax.NamedSharding(mesh, jax.P(DATA_AXIS))


def put_replicated(tree, mesh):
  """Places a host pytree (identical on every process) replicated on the mesh.

  Uses `jax.make_array_from_callback`, which also builds global arrays when the mesh spans
  several processes. `mesh=None` places it on the default device (`jax.device_put`).
  """
  if mesh is None:
    return jax.device_put(jax.tree.map(np.asarray, tree))
  sharding = replicated(mesh)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def check_batch_divisible(batch_size: int, mesh) -> None:
  """Raises ValueError unless the global batch splits evenly over the mesh's devices."""
  num_devices = mesh.devices.size
  if batch_size % num_devices:
    raise ValueError(
        f"batch_size={batch_size} is not divisible by the number of devices ({num_devices}); "
        f"pick a multiple of {num_devices}."
    )
