"""ltjax.priors: the empirical prior, its log with a finite floor, input validation."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import priors

COUNTS = np.array([500, 120, 30, 7, 2])


def test_class_prior_is_counts_over_total_under_jit():
  got = jax.jit(priors.class_prior)(COUNTS)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, COUNTS / COUNTS.sum(), rtol=1e-6)


def test_log_prior_adds_eps_to_the_prior_and_keeps_zero_counts_finite():
  counts = np.array([10, 0, 5])
  got = jax.jit(priors.log_prior)(counts)
  np.testing.assert_allclose(got, np.log(counts / 15 + 1e-12), rtol=1e-6)
  assert np.isfinite(got).all() and got[1] == pytest.approx(np.log(1e-12), rel=1e-6)
  np.testing.assert_allclose(priors.log_prior(counts, eps=1e-3)[1], np.log(1e-3), rtol=1e-6)


def test_no_gradient_reaches_the_counts():
  counts = jnp.asarray(COUNTS, jnp.float32)
  grad = jax.jit(jax.grad(lambda n: jnp.sum(priors.log_prior(n) * jnp.arange(5.0))))(counts)
  np.testing.assert_array_equal(grad, np.zeros(5))


@pytest.mark.parametrize("counts, match", [
    (np.array([3, -1, 2]), "non-negative"),
    (np.zeros(3), "positive"),
    (np.ones((2, 3)), "1-D"),
    (np.array([1.0, np.inf]), "finite"),
])
def test_bad_counts_raise_naming_the_argument(counts, match):
  for fn in (priors.class_prior, priors.log_prior):
    with pytest.raises(ValueError, match=f"class_counts.*{match}|{match}.*class_counts"):
      fn(counts)
    # Concrete counts closed over by a jitted function are checked at trace time.
    with pytest.raises(ValueError, match="class_counts"):
      jax.jit(functools.partial(fn, counts))()


def test_non_positive_eps_is_rejected():
  with pytest.raises(ValueError, match="eps"):
    priors.log_prior(COUNTS, eps=0.0)
