"""ltjax.losses numerics beyond the kit's `check_finite_extremes` (which test_losses.py runs on
every loss): float32 compute for bfloat16 inputs, the statistics of a zero-count class, the
weighted mean at the extremes, and float64 accuracy of the class-balanced weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import losses
from ltjax import priors
from ltjax import testing

B, C = 8, 6
RNG = np.random.default_rng(1)
LABELS = np.array([0, 1, 2, 3, 4, 5, 5, 0])
BASE = RNG.normal(size=(B, C)).astype(np.float32)
IMBALANCE_1E4 = np.floor(10_000 * 1e-4 ** (np.arange(C) / (C - 1))).astype(np.int64)  # 1e4..1
WITH_ZERO = np.array([300, 100, 30, 0, 10, 3])


def _named_losses(counts):
  weights = losses.class_balanced_weights(counts)
  log_pi = priors.log_prior(counts)
  return {
      "logit_adjusted": lambda z, y: losses.logit_adjusted_loss(z, y, log_prior=log_pi),
      "balanced_softmax": lambda z, y: losses.balanced_softmax_loss(z, y, class_counts=counts),
      "pairwise_margin": lambda z, y: losses.pairwise_margin_loss(
          z, y, margins=log_pi[None, :] - log_pi[:, None], class_weights=weights),
      "ldam": lambda x, y: losses.ldam_loss(x, y, class_counts=counts),
      "ala": lambda x, y: losses.ala_loss(x, y, class_counts=counts),
      "focal_half": lambda z, y: losses.focal_loss(z, y, gamma=0.5),
      "focal_two": lambda z, y: losses.focal_loss(z, y, gamma=2.0),
      "label_over_smooth": lambda z, y: losses.label_over_smooth_loss(z, y, delta=0.98),
      "equalization": lambda z, y: losses.equalization_loss(
          z, y, class_counts=counts, key=jax.random.key(0), threshold=0.2, gamma=0.9),
      "weighted_ce_drw": lambda z, y: losses.weighted_mean(
          losses.focal_loss(z, y, gamma=0.0), y,
          class_weights=losses.drw_weights(counts, epoch=200)),
  }


def _value_and_grad(fn, x):
  return jax.jit(jax.value_and_grad(lambda v: jnp.sum(fn(v, LABELS))))(x)


def _assert_finite(value, grad):
  assert np.isfinite(np.asarray(value, np.float32)).all(), value
  assert np.isfinite(np.asarray(grad, np.float32)).all(), grad


SCENARIOS = {
    "huge_logits": (np.sign(BASE) * 1e4, IMBALANCE_1E4),
    "zero_count_class": (BASE * 5, WITH_ZERO),
    "imbalance_1e4": (BASE * 5, IMBALANCE_1E4),
}


def test_focal_with_gamma_below_one_passes_the_finite_extremes_check():
  # (1 - p_y)^gamma has an infinite derivative at p_y = 1 for gamma < 1.
  testing.check_finite_extremes(
      lambda z, y, *, class_counts: losses.focal_loss(z, y, gamma=0.5))


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_drw_weighted_mean_and_its_gradient_are_finite(scenario):
  x, counts = SCENARIOS[scenario]
  value, grad = _value_and_grad(_named_losses(counts)["weighted_ce_drw"], jnp.asarray(x))
  _assert_finite(value, grad)


def test_bfloat16_logits_give_finite_float32_losses_close_to_float32_inputs():
  for name, fn in _named_losses(WITH_ZERO).items():
    x = jnp.asarray(np.tanh(BASE) if name in ("ldam", "ala") else BASE * 4, jnp.bfloat16)
    value, grad = _value_and_grad(fn, x)
    _assert_finite(value, grad)
    assert grad.dtype == jnp.bfloat16
    assert jax.eval_shape(fn, x, LABELS).dtype == jnp.float32, name  # computed in float32
    want = jax.jit(lambda v, fn=fn: jnp.sum(fn(v, LABELS)))(x.astype(jnp.float32))
    np.testing.assert_allclose(value, want, rtol=1e-5, err_msg=name)


def test_zero_count_class_gets_the_rarest_observed_statistics():
  counts = np.array([300, 100, 0, 10])
  margins = losses.ldam_margins(counts)
  np.testing.assert_allclose(margins[2], 0.5)
  np.testing.assert_allclose(margins[3], 0.5)
  factors = losses.quantity_factors(counts)
  np.testing.assert_allclose(factors[2], factors[3])
  weights = losses.class_balanced_weights(counts)
  np.testing.assert_allclose(weights[2], weights[3], rtol=1e-6)
  np.testing.assert_allclose(jnp.sum(weights), 4.0, rtol=1e-6)
  np.testing.assert_allclose(priors.log_prior(counts)[2], np.log(1e-12), rtol=1e-6)


def test_class_balanced_weights_keep_float64_accuracy_near_beta_one():
  counts = np.array([5000, 1])
  w = (1 - 0.9999) / (1 - 0.9999 ** counts.astype(np.float64))
  np.testing.assert_allclose(losses.class_balanced_weights(counts), w / w.sum() * 2, rtol=1e-6)
