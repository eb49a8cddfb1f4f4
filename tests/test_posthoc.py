"""Properties of ltjax.posthoc: logit adjustment, tau-normalisation, GALA's re-balancing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import posthoc
from ltjax import priors

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(64, 7)).astype(np.float32) * 3
COUNTS = np.array([500, 300, 120, 60, 20, 8, 3])
LOG_PRIOR = np.log(COUNTS / COUNTS.sum()).astype(np.float32)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 1.7])
def test_adjust_logits_matches_the_official_formula_under_jit(tau):
  # google-research/logit_adjustment: `logits - log(pi ** tau + 1e-12)`, from the counts in
  # float64; ltjax takes `log_prior` instead (equal here since pi ** tau >> 1e-12).
  official = LOGITS - np.log((COUNTS / COUNTS.sum()) ** tau + 1e-12)
  got = jax.jit(lambda z, lp, t: posthoc.adjust_logits(z, log_prior=lp, tau=t))(
      LOGITS, priors.log_prior(COUNTS), tau)
  np.testing.assert_allclose(got, official, rtol=1e-6, atol=1e-5)


def test_adjust_logits_uniform_prior_keeps_argmax():
  uniform = np.full(7, np.log(1 / 7), np.float32)
  adjusted = jax.jit(lambda z: posthoc.adjust_logits(z, log_prior=uniform, tau=1.3))(LOGITS)
  np.testing.assert_array_equal(np.argmax(adjusted, -1), np.argmax(LOGITS, -1))


def test_adjust_logits_favours_rare_classes():
  # Equal logits: the adjusted argmax is the rarest class.
  adjusted = posthoc.adjust_logits(jnp.zeros((3, 7)), log_prior=LOG_PRIOR)
  np.testing.assert_array_equal(np.argmax(adjusted, -1), [6, 6, 6])


def test_adjust_logits_bad_inputs():
  with pytest.raises(ValueError, match="log_prior"):
    posthoc.adjust_logits(LOGITS, log_prior=LOG_PRIOR[:5])
  with pytest.raises(TypeError, match="logits"):
    posthoc.adjust_logits(LOGITS.astype(np.int32), log_prior=LOG_PRIOR)
  with pytest.raises(TypeError, match="log_prior"):
    posthoc.adjust_logits(LOGITS, log_prior=COUNTS)


KERNEL = RNG.normal(size=(16, 7)).astype(np.float32) * np.linspace(0.2, 3.0, 7, dtype=np.float32)


def test_tau_normalize_tau0_is_identity_and_tau1_gives_unit_columns():
  normalize = jax.jit(lambda k, t: posthoc.tau_normalize(k, tau=t))
  np.testing.assert_allclose(normalize(KERNEL, 0.0), KERNEL, rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(normalize(KERNEL, 1.0), axis=0), np.ones(7), rtol=1e-5)


@pytest.mark.parametrize("tau", [0.3, 1.5])
def test_tau_normalize_numpy_reference(tau):
  expected = KERNEL / np.linalg.norm(KERNEL, axis=0, keepdims=True) ** tau
  np.testing.assert_allclose(posthoc.tau_normalize(KERNEL, tau=tau), expected, rtol=1e-5)


def test_tau_normalize_zero_column_stays_zero_with_finite_gradient():
  kernel = KERNEL.copy()
  kernel[:, 2] = 0.0
  out = posthoc.tau_normalize(kernel, tau=1.0)
  np.testing.assert_array_equal(out[:, 2], 0.0)
  grad = jax.grad(lambda k: jnp.sum(posthoc.tau_normalize(k, tau=1.0)))(jnp.asarray(kernel))
  assert np.all(np.isfinite(grad))


def test_tau_normalize_bad_inputs():
  with pytest.raises(ValueError, match="kernel"):
    posthoc.tau_normalize(KERNEL[0], tau=1.0)
  with pytest.raises(TypeError, match="kernel"):
    posthoc.tau_normalize(KERNEL.astype(np.int32), tau=1.0)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_rebalance_matches_literal_and_log_forms(tau):
  scores = jax.jit(lambda z, t: posthoc.rebalance(z, tau=t))(LOGITS, tau)
  z = LOGITS.astype(np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  s = p.sum(0)
  np.testing.assert_array_equal(np.argmax(scores, -1), np.argmax(p / s**tau, -1))
  np.testing.assert_array_equal(np.argmax(scores, -1), np.argmax(z - tau * np.log(s), -1))
  np.testing.assert_allclose(scores, np.log(p) - tau * np.log(s), rtol=1e-4, atol=1e-4)


def test_rebalance_changes_predictions_of_a_skewed_model():
  # A model that over-predicts class 0: re-balancing must move some predictions away from it.
  skewed = LOGITS + np.array([4.0, 0, 0, 0, 0, 0, 0], np.float32)
  before = np.argmax(skewed, -1)
  after = np.argmax(posthoc.rebalance(skewed, tau=1.0), -1)
  assert np.sum(after == 0) < np.sum(before == 0)


def test_rebalance_tau0_is_plain_argmax_and_row_constant_invariant():
  np.testing.assert_array_equal(np.argmax(posthoc.rebalance(LOGITS, tau=0.0), -1),
                                np.argmax(LOGITS, -1))
  shifted = LOGITS + RNG.normal(size=(64, 1)).astype(np.float32) * 10
  np.testing.assert_allclose(posthoc.rebalance(shifted, tau=1.0),
                             posthoc.rebalance(LOGITS, tau=1.0), rtol=1e-4, atol=1e-4)


def test_rebalance_batch_sharded_equals_single_device():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  with jax.set_mesh(mesh):
    sharded = jax.device_put(LOGITS, jax.P("data"))
    got = jax.jit(lambda z: posthoc.rebalance(z, tau=1.0))(sharded)
  np.testing.assert_allclose(np.asarray(got), posthoc.rebalance(LOGITS, tau=1.0), rtol=1e-5,
                             atol=1e-5)


def test_rebalance_bad_inputs():
  with pytest.raises(ValueError, match="whole evaluation set"):
    posthoc.rebalance(LOGITS[0])
  with pytest.raises(ValueError, match="at least one example"):
    posthoc.rebalance(np.zeros((0, 7), np.float32))
  with pytest.raises(TypeError, match="logits"):
    posthoc.rebalance(LOGITS.astype(np.int32))
