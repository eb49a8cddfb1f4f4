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

import jax
import numpy as np

from ltjax import _mesh


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


def replica_count(tree) -> int:
  """The size of the leading replica axis of a stacked pytree."""
  return int(jax.tree.leaves(tree)[0].shape[0])


def as_replicated(tree, mesh):
  """A stacked host pytree placed replicated on `mesh` (as `put_replicated`)."""
  return _mesh.put_replicated(jax.tree.map(np.asarray, tree), mesh)

