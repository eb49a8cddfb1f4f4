"""GALA's stateful loss: parity with a NumPy replica of the official code, its invariances, the
paper formula, gradients, checkpointing, retracing and input checks; the property kit through its
init/loss/update triple."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from ltjax import losses
from ltjax import testing

C, B, STEPS = 10, 16, 25


def official_gala_run(logits_steps, labels_steps, *, lam1, lam2):
  """NumPy replica of lt-project's GALA (docs/methods.md §2.10): full [C, C] F and P, float64.

  Per step: read theta = diag(P), phi = off-diagonal column sums of P; adjust every logit by
  lam1 * log(theta + 1e-3) and each row by -lam2 * log(phi_y + 1e-3); g = (softmax - onehot) / B;
  `F[:, y_i] += |g_i|` example by example; then `P += F`.
  """
  num_classes = logits_steps.shape[-1]
  f = np.zeros((num_classes, num_classes))
  p = np.zeros((num_classes, num_classes))
  off_diagonal = 1.0 - np.eye(num_classes)
  records = []
  for z, y in zip(logits_steps.astype(np.float64), labels_steps):
    theta, phi = np.diag(p).copy(), (p * off_diagonal).sum(0)
    z_adj = z + lam1 * np.log(theta + 1e-3)[None, :] - lam2 * np.log(phi[y] + 1e-3)[:, None]
    shifted = z_adj - z_adj.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    loss = -log_softmax[np.arange(len(y)), y]
    g = (np.exp(log_softmax) - np.eye(num_classes)[y]) / len(y)
    for i in range(len(y)):
      f[:, y[i]] += np.abs(g[i])
    p += f
    records.append({"z_adj": z_adj, "loss": loss, "F": f.copy(), "P": p.copy()})
  return records


def random_steps(seed, steps=STEPS, batch=B, num_classes=C, scale=2.0):
  rng = np.random.default_rng(seed)
  prior = 0.6 ** np.arange(num_classes)  # long-tailed labels: some classes stay unseen for a while
  labels = rng.choice(num_classes, size=(steps, batch), p=prior / prior.sum()).astype(np.int32)
  logits = (scale * rng.standard_normal((steps, batch, num_classes))).astype(np.float32)
  return logits, labels


@jax.jit(static_argnames=("lam1", "lam2", "mode"))
def ltjax_step(state, logits, labels, lam1=1.0, lam2=1.0, mode="code"):
  kw = {"lam1": lam1, "lam2": lam2, "mode": mode}
  adjusted = losses.gala_adjusted_logits(logits, labels, state, **kw)
  loss = losses.gala_loss(logits, labels, state, **kw)
  return losses.gala_update(state, logits, labels, **kw), adjusted, loss


def assert_close(actual, desired):
  """1e-5 relative, with an absolute floor of 1e-6 of the array's scale for entries that cancel
  to near zero (an adjusted logit z + log theta - log phi can be ~0)."""
  desired = np.asarray(desired)
  np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-6 * np.abs(desired).max())


def off_diagonal_column_sums(m):
  return (m * (1.0 - np.eye(len(m)))).sum(0)


@pytest.mark.parametrize("lam1,lam2", [(1.0, 1.0), (1.2, 0.9)])
def test_matches_numpy_replica_of_official_code(lam1, lam2):
  logits, labels = random_steps(0)
  reference = official_gala_run(logits, labels, lam1=lam1, lam2=lam2)
  state = losses.gala_init(C)
  for z, y, ref in zip(logits, labels, reference):
    # The state before this step produced the adjusted logits and the loss.
    theta, phi = losses.gala_margins(state)
    state, adjusted, loss = ltjax_step(state, z, y, lam1=lam1, lam2=lam2)
    assert_close(adjusted, ref["z_adj"])
    assert_close(loss, ref["loss"])
    # F and P are read only through their diagonals and off-diagonal column sums.
    assert_close(state.grad_pos, np.diag(ref["F"]))
    assert_close(state.grad_neg, off_diagonal_column_sums(ref["F"]))
    assert_close(state.theta, np.diag(ref["P"]))
    assert_close(state.phi, off_diagonal_column_sums(ref["P"]))
  assert_close(theta, np.diag(reference[-2]["P"]))
  assert_close(phi, off_diagonal_column_sums(reference[-2]["P"]))
  # Double accumulation: theta grows much faster than a single cumulative sum of |g_y|.
  assert np.all(np.diag(reference[-1]["P"])[:3] > 5 * np.diag(reference[-1]["F"])[:3])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_phi_equals_theta_after_every_step(seed):
  logits, labels = random_steps(seed)
  state = losses.gala_init(C)
  for z, y in zip(logits, labels):
    state, _, _ = ltjax_step(state, z, y)
    theta, phi = losses.gala_margins(state)
    np.testing.assert_allclose(phi, theta, rtol=1e-5, atol=1e-7)
  assert np.sum(theta > 0) >= 5  # many classes have accumulated something


def test_code_mode_is_invariant_to_lam2():
  logits, labels = random_steps(4)
  a = b = losses.gala_init(C)
  for z, y in zip(logits, labels):
    a, _, loss_a = ltjax_step(a, z, y, lam2=0.0)
    b, _, loss_b = ltjax_step(b, z, y, lam2=3.0)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
  chex.assert_trees_all_close(a, b, rtol=1e-5)


def hand_state(log_theta, log_phi):
  """A state whose `log(theta + 1e-3)` and `log(phi + 1e-3)` are the given numbers."""
  theta = np.exp(np.asarray(log_theta, np.float64)) - 1e-3
  phi = np.exp(np.asarray(log_phi, np.float64)) - 1e-3
  return losses.GalaState(grad_pos=jnp.zeros(len(theta)), grad_neg=jnp.zeros(len(theta)),
                          theta=jnp.asarray(theta, jnp.float32), phi=jnp.asarray(phi, jnp.float32))


def test_paper_mode_on_hand_built_cases():
  # log theta = [1, 2, 3], log phi = [4, 2, 6], lam1 = 2, lam2 = 0.5, zero raw logits.
  state = hand_state([1.0, 2.0, 3.0], [4.0, 2.0, 6.0])
  logits, labels = jnp.zeros((2, 3)), jnp.array([1, 0])
  kw = {"lam1": 2.0, "lam2": 0.5, "mode": "paper"}
  # Non-targets get 2 * log theta_j - 0.5 * log phi_y, the target nothing.
  expected_adjusted = np.array([[2 - 1, 0.0, 6 - 1], [0.0, 4 - 2, 6 - 2]])
  got = jax.jit(losses.gala_adjusted_logits, static_argnames="mode")(logits, labels, state, **kw)
  np.testing.assert_allclose(got, expected_adjusted, rtol=1e-5)
  expected_loss = (np.log(np.exp(expected_adjusted).sum(-1))
                   - expected_adjusted[np.arange(2), np.asarray(labels)])
  got_loss = jax.jit(losses.gala_loss, static_argnames="mode")(logits, labels, state, **kw)
  np.testing.assert_allclose(got_loss, expected_loss, rtol=1e-5)
  # docs/methods.md §2.10, shifted: target z_y + lam2 log phi_y, others z_j + lam1 log theta_j.
  shifted = np.array([[2 * 1, 0.5 * 2, 2 * 3], [0.5 * 4, 2 * 2, 2 * 3]])
  shifted_loss = np.log(np.exp(shifted).sum(-1)) - shifted[np.arange(2), np.asarray(labels)]
  np.testing.assert_allclose(got_loss, shifted_loss, rtol=1e-5)
  # The code adds lam1 * log theta_j to the target as well: another loss here.
  code_loss = losses.gala_loss(logits, labels, state, lam1=2.0, lam2=0.5)
  assert not np.allclose(code_loss, got_loss, rtol=1e-3)


def test_paper_equals_code_iff_lam1_equals_lam2():
  logits, labels = random_steps(5, steps=8)
  state = losses.gala_init(C)
  for z, y in zip(logits, labels):
    state, _, _ = ltjax_step(state, z, y)
  z, y = logits[-1], labels[-1]
  code = losses.gala_loss(z, y, state, lam1=1.3, lam2=1.3)
  paper = losses.gala_loss(z, y, state, lam1=1.3, lam2=1.3, mode="paper")
  np.testing.assert_allclose(paper, code, rtol=1e-5)
  paper_other = losses.gala_loss(z, y, state, lam1=1.3, lam2=0.7, mode="paper")
  assert not np.allclose(paper_other, code, rtol=1e-3)


def test_gradients_reach_the_logits_only():
  logits, labels = random_steps(6, steps=4)
  state = losses.gala_init(C)
  for z, y in zip(logits[:-1], labels[:-1]):
    state, _, _ = ltjax_step(state, z, y)
  z, y = jnp.asarray(logits[-1]), jnp.asarray(labels[-1])

  def mean_loss(z, state):
    return jnp.mean(losses.gala_loss(z, y, state))

  grad_z, grad_state = jax.jit(jax.grad(mean_loss, argnums=(0, 1)))(z, state)
  adjusted = losses.gala_adjusted_logits(z, y, state)
  # Closed form of the batch-mean CE gradient: the official g, taken w.r.t. the raw logits.
  expected = (jax.nn.softmax(adjusted) - jax.nn.one_hot(y, C)) / len(y)
  np.testing.assert_allclose(grad_z, expected, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_equal(grad_state, jax.tree.map(jnp.zeros_like, state))
  update_grad = jax.grad(lambda z: jnp.sum(losses.gala_update(state, z, y).theta))(z)
  np.testing.assert_array_equal(update_grad, np.zeros_like(z))


def test_leading_axes_flatten_into_the_batch():
  logits, labels = random_steps(7, steps=3)
  state = losses.gala_init(C)
  for z, y in zip(logits, labels):
    flat = losses.gala_update(state, z, y)
    folded = losses.gala_update(state, z.reshape(4, 4, C), y.reshape(4, 4))
    chex.assert_trees_all_close(flat, folded, rtol=1e-6)
    np.testing.assert_allclose(losses.gala_loss(z.reshape(4, 4, C), y.reshape(4, 4), state),
                               losses.gala_loss(z, y, state).reshape(4, 4), rtol=1e-6)
    state = flat


def unstack(tree, k):
  """Run `k` of a tree whose leaves have a leading run axis."""
  return jax.tree.map(lambda x: x[k], tree)


def test_vmap_over_runs_equals_one_run_at_a_time():
  logits, labels = random_steps(12, steps=4)  # 4 independent runs, one batch each
  states = jax.vmap(lambda _: losses.gala_init(C))(jnp.arange(4))
  states = jax.vmap(losses.gala_update)(states, logits, labels)
  states_losses = jax.vmap(losses.gala_loss)(logits, labels, states)
  for k in range(4):
    alone = losses.gala_update(losses.gala_init(C), logits[k], labels[k])
    chex.assert_trees_all_close(unstack(states, k), alone, rtol=1e-6)
    np.testing.assert_allclose(states_losses[k], losses.gala_loss(logits[k], labels[k], alone),
                               rtol=1e-6)


def test_state_round_trips_through_orbax(tmp_path):
  logits, labels = random_steps(8, steps=5)
  state = losses.gala_init(C)
  for z, y in zip(logits, labels):
    state, _, _ = ltjax_step(state, z, y)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "gala", state)
  checkpointer.wait_until_finished()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, losses.gala_init(C))
  restored = checkpointer.restore(tmp_path / "gala", abstract)
  assert isinstance(restored, losses.GalaState)
  chex.assert_trees_all_equal(restored, state)
  chex.assert_trees_all_equal_dtypes(restored, state)
  # Training resumes identically from the restored state.
  chex.assert_trees_all_equal(ltjax_step(restored, logits[0], labels[0]),
                              ltjax_step(state, logits[0], labels[0]))


def test_jitted_step_does_not_retrace():
  logits, labels = random_steps(9, steps=6)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, z, y):
    loss = jnp.mean(losses.gala_loss(z, y, state, lam1=1.2, lam2=0.9))
    return losses.gala_update(state, z, y, lam1=1.2, lam2=0.9), loss

  state = losses.gala_init(C)
  for z, y in zip(logits, labels):
    state, loss = step(state, z, y)
  assert np.isfinite(loss)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, losses.gala_init(C))


def test_a_jitted_step_can_donate_the_state():
  logits, labels = random_steps(11, steps=3)
  step = jax.jit(losses.gala_update, donate_argnums=0)
  state = losses.gala_init(C)
  expected = jax.tree.map(jnp.copy, state)
  for z, y in zip(logits, labels):
    state, expected = step(state, z, y), losses.gala_update(expected, z, y)
  chex.assert_trees_all_close(state, expected, rtol=1e-6)


def test_out_of_range_labels_poison_the_state_under_jit():
  logits, labels = random_steps(10, steps=1)
  labels = labels[0].copy()
  labels[3] = C
  state, _, loss = ltjax_step(losses.gala_init(C), logits[0], labels)
  assert np.isnan(loss[3])
  assert np.all(np.isnan(state.theta)) and np.all(np.isnan(state.phi))


def test_bad_inputs_raise_clear_errors():
  state = losses.gala_init(C)
  z, y = jnp.zeros((4, C)), jnp.zeros((4,), jnp.int32)
  with pytest.raises(ValueError, match="initialised for 10 classes but the logits have 7"):
    losses.gala_loss(jnp.zeros((4, 7)), y, state)
  with pytest.raises(ValueError, match="initialised for 10 classes"):
    jax.jit(losses.gala_update)(state, jnp.zeros((4, 7)), y)
  with pytest.raises(TypeError, match="`logits` must have a floating dtype"):
    losses.gala_loss(jnp.zeros((4, C), jnp.int32), y, state)
  with pytest.raises(TypeError, match="`labels` must have an integer dtype"):
    losses.gala_update(state, z, jnp.zeros((4,), jnp.float32))
  with pytest.raises(TypeError, match=r"`state.theta` must be float32"):
    losses.gala_loss(z, y, state._replace(theta=jnp.zeros((C,), jnp.int32)))
  with pytest.raises(ValueError, match=r"`state.phi` has 3 entries"):
    losses.gala_loss(z, y, state._replace(phi=jnp.zeros((3,))))
  with pytest.raises(TypeError, match="GalaState"):
    losses.gala_loss(z, y, tuple(state))
  with pytest.raises(ValueError, match="`mode` must be one of"):
    losses.gala_loss(z, y, state, mode="Code")
  with pytest.raises(ValueError, match="`lam1` must be a finite number >= 0"):
    losses.gala_loss(z, y, state, lam1=-1.0)
  with pytest.raises(ValueError, match="`lam2` must be a finite number >= 0"):
    losses.gala_update(state, z, y, lam2=float("nan"))
  with pytest.raises(ValueError, match="`labels` must lie in"):
    losses.gala_update(state, z, jnp.full((4,), C))
  with pytest.raises(ValueError, match="`num_classes` must be positive"):
    losses.gala_init(0)
  with pytest.raises(TypeError, match="`num_classes` must be an integer"):
    losses.gala_init(10.0)


def gala_per_example(logits, labels, *, class_counts, lam1=1.2, lam2=0.9, mode="code"):
  """GALA through `testing.stateful_per_example`: the state a batch with the counts' class
  frequencies would leave, then the loss."""
  kw = {"lam1": lam1, "lam2": lam2, "mode": mode}
  loss_fn = testing.stateful_per_example(losses.gala_init,
                                         functools.partial(losses.gala_loss, **kw),
                                         functools.partial(losses.gala_update, **kw))
  return loss_fn(logits, labels, class_counts=class_counts)


def test_the_kit_state_is_one_update_on_a_batch_with_the_count_frequencies():
  counts = np.array([3, 1, 0, 2])
  batch_labels = np.repeat(np.arange(4), counts)  # [0, 0, 0, 1, 3, 3]
  state = losses.gala_update(losses.gala_init(4), jnp.zeros((6, 4)), batch_labels, lam1=1.2,
                             lam2=0.9)
  z, y = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32), np.array([0, 1, 3, 3, 0])
  np.testing.assert_allclose(gala_per_example(z, y, class_counts=counts),
                             losses.gala_loss(z, y, state, lam1=1.2, lam2=0.9), rtol=1e-6)


def test_gala_passes_the_property_kit():
  # With lam1 = lam2 = 0 the adjustment vanishes: plain cross-entropy.
  testing.check_all(gala_per_example, target=None,
                    reference_fn=optax.softmax_cross_entropy_with_integer_labels,
                    reference_at={"lam1": 0.0, "lam2": 0.0})


def test_gala_paper_mode_is_shift_invariant_and_permutation_equivariant():
  paper = functools.partial(gala_per_example, mode="paper")
  testing.check_shift_invariance(paper)
  testing.check_class_permutation_equivariance(paper)
