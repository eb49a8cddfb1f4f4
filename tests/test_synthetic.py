"""The Gaussian-mixture data, its Bayes rule, and a reduced LA-paper §6.1 experiment."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import synthetic as experiment
from ltjax import metrics
from ltjax.data import synthetic

MIXTURE = synthetic.two_gaussians()


def _normal_cdf(t):
  return 0.5 * math.erfc(-t / math.sqrt(2.0))


def _linear_rule_balanced_error(mixture, w, b):
  """Population balanced error of `predict 1 iff w.x + b > 0` (exact for Gaussian classes)."""
  means, sigma = np.asarray(mixture.means, np.float64), mixture.scale
  spread = sigma * np.linalg.norm(w)
  error_0 = 1.0 - _normal_cdf(-(w @ means[0] + b) / spread)  # class 0 predicted as 1
  error_1 = _normal_cdf(-(w @ means[1] + b) / spread)  # class 1 predicted as 0
  return 0.5 * (error_0 + error_1)


def _bayes_linear_rule(mixture):
  scores_at = lambda x: np.asarray(synthetic.bayes_balanced_scores(mixture, x), np.float64)
  origin, basis = scores_at(np.zeros((1, 2))), scores_at(np.eye(2))
  b = origin[0, 1] - origin[0, 0]
  w = (basis[:, 1] - basis[:, 0]) - b
  return w, b


def test_bayes_closed_form():
  np.testing.assert_allclose(synthetic.bayes_balanced_error(MIXTURE), _normal_cdf(-math.sqrt(2)),
                             rtol=1e-12)
  w, b = _bayes_linear_rule(MIXTURE)
  np.testing.assert_allclose(_linear_rule_balanced_error(MIXTURE, w, b),
                             synthetic.bayes_balanced_error(MIXTURE), rtol=1e-6)


def test_bayes_rule_beats_random_perturbations_of_itself():
  mixture = synthetic.two_gaussians(minority_prior=0.1, mean=(1.5, 0.5), scale=1.3)
  w, b = _bayes_linear_rule(mixture)
  bayes = _linear_rule_balanced_error(mixture, w, b)
  rng = np.random.default_rng(0)
  for _ in range(200):
    perturbed = _linear_rule_balanced_error(mixture, w + 0.3 * rng.normal(size=2),
                                            b + 0.3 * rng.normal())
    assert perturbed > bayes - 1e-12
  # And the error-minimising rule (scores + log prior) is strictly worse on balanced error.
  assert _linear_rule_balanced_error(mixture, w, b + math.log(0.1 / 0.9)) > bayes + 0.01


def test_empirical_bayes_error_matches_closed_form():
  x, y = synthetic.sample(jax.random.key(1), MIXTURE, 200_000, balanced=True)
  scores = jax.jit(lambda v: synthetic.bayes_balanced_scores(MIXTURE, v))(x)
  predictions = jnp.argmax(scores, -1).astype(jnp.int32)
  error = metrics.balanced_error(metrics.confusion_matrix(y, predictions, num_classes=2))
  # Standard error ~ 0.0009 per class; 4 sigma.
  np.testing.assert_allclose(error, synthetic.bayes_balanced_error(MIXTURE), atol=0.004)


def test_sample_class_balance_and_means():
  x, y = jax.jit(lambda k: synthetic.sample(k, MIXTURE, 40_000))(jax.random.key(2))
  assert x.shape == (40_000, 2) and y.dtype == jnp.int32
  np.testing.assert_allclose(np.mean(y), 0.05, atol=0.005)
  for c in (0, 1):
    np.testing.assert_allclose(np.mean(x[y == c], 0), MIXTURE.means[c], atol=0.1)
  _, y_balanced = synthetic.sample(jax.random.key(3), MIXTURE, 1001, balanced=True)
  assert np.bincount(y_balanced).tolist() == [501, 500]


def test_bad_mixtures():
  with pytest.raises(ValueError, match="minority_prior"):
    synthetic.two_gaussians(minority_prior=1.5)
  with pytest.raises(ValueError, match="scale"):
    synthetic.two_gaussians(scale=0.0)
  three = synthetic.GaussianMixture(np.eye(3, 2), 1.0, np.ones(3) / 3)
  with pytest.raises(ValueError, match="two classes"):
    synthetic.bayes_balanced_error(three)


@pytest.mark.slow
def test_reduced_experiment_orders_methods(tmp_path):
  out = str(tmp_path / "synthetic")
  results = experiment.main(["--seeds", "2", "--train-size", "6000", "--val-size", "2000",
                             "--test-size", "40000", "--steps", "60", "--out", out,
                             "--no-progress"])
  excess = {m: results["balanced_error"][m]["excess_over_bayes_same_sample"]
            for m in experiment.METHODS}
  assert abs(excess["la_loss"]) < 0.005
  assert abs(excess["ce_posthoc_la"]) < 0.005
  assert excess["ce"] > 0.03
  assert excess["ce_weight_norm"] > 0.03
  for trial in results["trials"]:
    assert max(trial["grad_norm"].values()) < 1e-3  # L-BFGS converged
  with open(out + ".json") as f:
    assert json.load(f)["acceptance"] == results["acceptance"]
  for ext in (".md", ".png"):
    assert (tmp_path / ("synthetic" + ext)).stat().st_size > 0
