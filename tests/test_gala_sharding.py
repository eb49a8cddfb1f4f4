"""GALA under data parallelism: 8 devices reproduce 1 device under global-view `jax.jit` on a
Mesh, `jax.pmap` and `jax.shard_map` (the last two through `axis_name`)."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import losses

C, D, B, STEPS, LR = 10, 6, 32, 20, 0.5
KW = {"lam1": 1.2, "lam2": 0.9}


def train(params, state, xs, ys, *, axis_name=None, psum_grads=False):
  """STEPS steps of a linear model trained with GALA (SGD); the losses feed back into the state.

  Under `axis_name` each device holds a slice of every batch. The loss is the local sum over the
  global batch size B, so the global mean's gradient is the sum of the devices' gradients:
  `shard_map` (which tracks replicated values) already sums the gradient of replicated params,
  legacy `pmap` does not, hence `psum_grads`. GALA's statistics are summed by `gala_update`.
  """
  def step(carry, batch):
    params, state = carry
    x, y = batch

    def batch_loss(params):
      logits = x @ params["w"] + params["b"]
      per_example = losses.gala_loss(logits, y, state, **KW)
      return jnp.sum(per_example) / B, (logits, per_example)

    grads, (logits, per_example) = jax.grad(batch_loss, has_aux=True)(params)
    if psum_grads:
      grads = jax.lax.psum(grads, axis_name)
    params = jax.tree.map(lambda p, g: p - LR * g, params, grads)
    state = losses.gala_update(state, logits, y, axis_name=axis_name, **KW)
    return (params, state), per_example

  (params, state), per_example = jax.lax.scan(step, (params, state), (xs, ys))
  return params, state, per_example


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  prior = 0.7 ** np.arange(C)
  ys = rng.choice(C, size=(STEPS, B), p=prior / prior.sum()).astype(np.int32)
  centres = 2.0 * rng.standard_normal((C, D))
  xs = (centres[ys] + rng.standard_normal((STEPS, B, D))).astype(np.float32)
  params = {"w": jnp.zeros((D, C)), "b": jnp.zeros((C,))}
  single = jax.jit(train)(params, losses.gala_init(C), xs, ys)
  assert jax.device_count() == 8
  assert float(jnp.min(single[1].theta)) > 0  # every class was seen and accumulated
  return params, xs, ys, single


def assert_same_run(run, single):
  params, state, per_example = run
  chex.assert_trees_all_close(state, single[1], rtol=1e-5)
  chex.assert_trees_all_close(params, single[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(per_example, single[2], rtol=1e-5, atol=1e-6)


def on_mesh(params, xs, ys):
  """An 8-device data mesh, the params and a fresh state replicated, the batches split."""
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  with jax.set_mesh(mesh):
    params, state = jax.device_put((params, losses.gala_init(C)), jax.P())
    xs, ys = jax.device_put((xs, ys), jax.P(None, "data"))
  return mesh, (params, state, xs, ys)


SHARD_SPECS = {"in_specs": (jax.P(), jax.P(), jax.P(None, "data"), jax.P(None, "data"))}


def test_global_view_jit_on_a_mesh(problem):
  params, xs, ys, single = problem
  mesh, args = on_mesh(params, xs, ys)
  with jax.set_mesh(mesh):
    run = jax.jit(train)(*args)
  assert len(run[2].sharding.device_set) == 8  # the batch really was split
  assert_same_run(run, single)


def test_pmap_with_axis_name(problem):
  params, xs, ys, single = problem
  per_device = lambda a: a.reshape(STEPS, 8, B // 8, *a.shape[2:]).swapaxes(0, 1)
  run = jax.pmap(functools.partial(train, axis_name="data", psum_grads=True), axis_name="data",
                 in_axes=(None, None, 0, 0), out_axes=(None, None, 0))(
                     params, losses.gala_init(C), per_device(xs), per_device(ys))
  params_out, state, per_example = run
  per_example = per_example.swapaxes(0, 1).reshape(STEPS, B)
  assert_same_run((params_out, state, per_example), single)


def test_shard_map_with_axis_name(problem):
  params, xs, ys, single = problem
  mesh, args = on_mesh(params, xs, ys)
  sharded = jax.shard_map(functools.partial(train, axis_name="data"), mesh=mesh, **SHARD_SPECS,
                          out_specs=(jax.P(), jax.P(), jax.P(None, "data")))
  run = jax.jit(sharded)(*args)
  assert_same_run(run, single)


def test_axis_name_sums_statistics_and_normalises_by_the_global_batch(problem):
  """Without `axis_name` each device keeps statistics of its slice normalised by its local
  size B/8: their sum is 8 times the global statistics. With it, one step equals one device."""
  _, xs, ys, _ = problem
  mesh, (_, state, _, ys_sharded) = on_mesh(problem[0], xs, ys)
  logits = np.random.default_rng(1).standard_normal((B, C)).astype(np.float32)
  with jax.set_mesh(mesh):
    logits_sharded = jax.device_put(logits, jax.P("data"))
  specs = {"mesh": mesh, "in_specs": (jax.P(), jax.P("data"), jax.P("data"))}
  summed = jax.jit(jax.shard_map(
      functools.partial(losses.gala_update, axis_name="data", **KW), **specs,
      out_specs=jax.P()))(state, logits_sharded, ys_sharded[0])
  per_device = jax.jit(jax.shard_map(
      lambda *a: jax.tree.map(lambda x: x[None], losses.gala_update(*a, **KW)), **specs,
      out_specs=jax.P("data")))(state, logits_sharded, ys_sharded[0])
  per_device = jax.device_get(per_device)
  expected = losses.gala_update(losses.gala_init(C), logits, ys[0], **KW)
  chex.assert_trees_all_close(summed, expected, rtol=1e-5)
  chex.assert_trees_all_close(jax.tree.map(lambda x: x.sum(0) / 8, per_device), expected,
                              rtol=1e-5)
  assert not np.allclose(per_device.theta[0], expected.theta, rtol=1e-2)


def test_leading_axes_with_a_sharded_batch_axis(problem):
  """`f[steps, B, C]` sharded on B (Explicit mode) updates like one device: no reshape merges
  the sharded axis."""
  _, xs, ys, _ = problem
  logits = np.random.default_rng(2).standard_normal((2, B, C)).astype(np.float32)
  expected = losses.gala_update(losses.gala_init(C), logits, ys[:2], **KW)
  mesh, (_, state, _, _) = on_mesh(problem[0], xs, ys)
  with jax.set_mesh(mesh):
    logits_sharded, labels = jax.device_put((logits, ys[:2]), jax.P(None, "data"))
    got = jax.jit(functools.partial(losses.gala_update, **KW))(state, logits_sharded, labels)
  chex.assert_trees_all_close(got, expected, rtol=1e-5)
