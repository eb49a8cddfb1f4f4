"""Several independent runs (seeds) trained as one program: `jax.vmap` over replicas.

Each replica has its own `TrainState`, its own training set (a seed also draws its own
long-tailed subset; the subsets have equal sizes because the class counts do not depend on the
seed) and its own epoch orders. A replica's trajectory is the one the single-run step would
produce; vmapping only batches the arithmetic, which pays when one run is too small to keep the
device busy (the small CNN), and may not when the convolutions turn into grouped ones (CPU).
"""
from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import numpy as np

from ltjax import _mesh
from ltjax.data import _inputs


def stack_replicas(trees: Sequence):
  """Stacks pytrees of identical structure along a new leading replica axis (host arrays)."""
  if not trees:
    raise ValueError("stack_replicas needs at least one pytree.")
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                      *[jax.device_get(t) for t in trees])


def unstack_replica(tree, index: int):
  """Replica `index` of a stacked pytree."""
  return jax.tree.map(lambda x: x[index], tree)


def make_replica_train_step(step_fn: Callable, *, mesh):
  """`jit(vmap(step_fn))`: the step of `train_step_fn` on stacked states, datasets, epoch
  orders and class statistics (every argument carries the replica axis first); `state` is
  donated and the metrics come back per replica (`loss f32[R]`, `lr f32[R]`)."""
  repl = _mesh.replicated(mesh)
  return jax.jit(jax.vmap(step_fn), donate_argnums=0, out_shardings=(repl, repl))


def make_replica_epoch_order(order_fn: Callable, *, mesh):
  """The vmapped `order(rng[R], epoch, labels[R, N], class_counts[R, C]) -> i32[R, S, B]`
  from an unjitted epoch order (`ltjax.data.DevicePipeline.epoch_order`; the epoch is shared)."""
  return jax.jit(jax.vmap(order_fn, in_axes=(0, None, 0, 0)),
                 out_shardings=_mesh.replicated(mesh))


def stack_on_mesh(trees: Sequence, mesh):
  """`stack_replicas(trees)` placed replicated on `mesh` (as `put_replicated`)."""
  return _mesh.put_replicated(stack_replicas(trees), mesh)


class ReplicaProgram(NamedTuple):
  """Runs of the same shapes trained as one vmapped program (`replica_program`).

  Attributes:
    state: the stacked `TrainState`, replica axis first, replicated on the mesh.
    images: the stacked training images, `[R, N, ...]`.
    labels: the stacked training labels, `i32[R, N]`.
    stats: the stacked `ClassStats` (`[R, C]` each).
    train_step: `(state, batch, stats) -> (state, metrics)`, vmapped and compiled, `state`
      donated; metrics per replica (`f32[R]`); `batch` is `{"images", "labels", "order"}`
      stacked.
    epoch_order: `(rng[R], epoch, labels[R, N], class_counts[R, C]) -> i32[R, S, B]`.
    last_step: the vmapped step of an epoch's last, partial batch, or None when every step is
      full.
    data: the input of `ltjax.train.fit` (`ltjax.data.DeviceArrays` of the stacked arrays and
      the vmapped order), or None when no pipeline was given.
  """
  state: Any
  images: Any
  labels: Any
  stats: Any
  train_step: Callable
  epoch_order: Callable
  last_step: Callable | None
  data: Any = None


def replica_program(states: Sequence, data: Sequence, *, step_fn: Callable, order_fn: Callable,
                    mesh, last_step_fn: Callable | None = None,
                    pipeline=None) -> ReplicaProgram:
  """Stacks the runs' states and training data and compiles their vmapped step and epoch order.

  What `ltjax.train.fit` runs for R runs (seeds) of one method at once: run `r` of the program
  follows the trajectory of run `r` trained alone with `step_fn` (see the module docstring), and
  `unstack_replica(state, r)` gives it back.

  Args:
    states: R `TrainState`s of identical structure and shapes.
    data: R mappings with "train_images" `[N, ...]`, "train_labels" `i32[N]` and "stats"
      (`ClassStats`), equal `N` across runs.
    step_fn: the uncompiled step of one run (`train_step_fn`).
    order_fn: the uncompiled epoch order of one run (a `functools.partial` of `epoch_order`).
    mesh: the data mesh; everything is replicated on it.
    last_step_fn: the uncompiled step of the epoch's last, partial batch, or None.
    pipeline: the runs' (shared) `ltjax.data.DevicePipeline`, for the program's `data` input.

  Raises:
    ValueError: `states` and `data` are empty or of different lengths.
  """
  if len(states) != len(data) or not states:
    raise ValueError(f"replica_program needs as many datasets as states (>= 1), got "
                     f"{len(states)} states and {len(data)} datasets.")
  stacked = stack_on_mesh([{k: d[k] for k in ("train_images", "train_labels", "stats")}
                           for d in data], mesh)
  epoch_order = make_replica_epoch_order(order_fn, mesh=mesh)
  inputs = None if pipeline is None else _inputs.DeviceArrays(
      pipeline=pipeline, images=stacked["train_images"], labels=stacked["train_labels"],
      class_counts=stacked["stats"].class_counts, order=epoch_order)
  return ReplicaProgram(
      state=stack_on_mesh(states, mesh), images=stacked["train_images"],
      labels=stacked["train_labels"], stats=stacked["stats"],
      train_step=make_replica_train_step(step_fn, mesh=mesh), epoch_order=epoch_order,
      last_step=None if last_step_fn is None
      else make_replica_train_step(last_step_fn, mesh=mesh), data=inputs)
