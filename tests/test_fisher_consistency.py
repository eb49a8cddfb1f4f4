"""Fisher consistency (Menon et al., 2021, Theorem 1) through `ltjax.testing`.

The kit's default problem: 6 values of x, 3 classes, known class-conditionals p(x|y) and the prior
0.8 / 0.15 / 0.05. The population risk is minimised over free per-x logits; the LA loss, Balanced
Softmax, the LA pairwise form and post-hoc-adjusted CE recover the balanced Bayes rule
`argmax_y p(x|y)` on every x, plain CE recovers `argmax_y pi_y p(x|y)` instead (differs on x = 2,
3, 4).
"""
import numpy as np
import optax
import pytest

from ltjax import losses
from ltjax import posthoc
from ltjax import priors
from ltjax import testing

PROBLEM = testing.FisherProblem.default()


def logit_adjusted(logits, labels, *, class_counts):
  return losses.logit_adjusted_loss(logits, labels, log_prior=priors.log_prior(class_counts))


def cross_entropy(logits, labels, *, class_counts):
  del class_counts
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def test_the_problem_separates_the_two_bayes_rules():
  np.testing.assert_array_equal(PROBLEM.bayes_rule("balanced"), [0, 0, 1, 2, 2, 2])
  np.testing.assert_array_equal(PROBLEM.bayes_rule("error"), [0, 0, 0, 0, 0, 2])


def test_logit_adjusted_loss_minimiser_is_the_balanced_bayes_rule():
  report = testing.check_fisher_consistency(logit_adjusted)
  assert report.disagreements == () and report.error_gap == 0.0
  # Stronger: softmax(f + log pi) = p(y|x), so f_x = log p(x|y) + const(x).
  centred = report.logits - report.logits.mean(-1, keepdims=True)
  log_lik = np.log(PROBLEM.p_x_given_y.T)
  np.testing.assert_allclose(centred, log_lik - log_lik.mean(-1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("name", ["balanced_softmax", "pairwise_margin"])
def test_balanced_softmax_and_pairwise_form_minimisers_are_the_balanced_bayes_rule(name):
  def pairwise(logits, labels, *, class_counts):
    log_pi = priors.log_prior(class_counts)
    return losses.pairwise_margin_loss(logits, labels,
                                       margins=log_pi[None, :] - log_pi[:, None])
  loss = {"balanced_softmax": losses.balanced_softmax_loss, "pairwise_margin": pairwise}[name]
  testing.check_fisher_consistency(loss)


def test_cross_entropy_is_consistent_for_the_plain_error_and_needs_the_posthoc_adjustment():
  report = testing.check_fisher_consistency(cross_entropy, target="error")
  np.testing.assert_array_equal(report.predictions, PROBLEM.bayes_rule("error"))
  # (that CE fails the balanced target, with its message, is in test_testing_kit.py)
  testing.check_fisher_consistency(
      cross_entropy,
      posthoc=lambda f, *, class_counts: posthoc.adjust_logits(
          f, log_prior=priors.log_prior(class_counts)))


def test_generated_problem_with_more_classes_separates_la_from_ce():
  options = {"num_classes": 4, "num_points": 8, "imbalance_ratio": 30.0, "seed": 1}
  problem = testing.FisherProblem.make(**options)
  assert np.any(problem.bayes_rule("balanced") != problem.bayes_rule("error"))
  testing.check_fisher_consistency(logit_adjusted, **options)
  with pytest.raises(AssertionError, match="not Fisher consistent for the balanced error"):
    testing.check_fisher_consistency(cross_entropy, **options)


@pytest.mark.parametrize("name", ["focal", "label_over_smooth", "ldam"])
def test_losses_without_a_prior_correction_are_consistent_for_the_plain_error_only(name):
  # Focal loss and label over-smoothing never read the prior. LDAM's margins depend on the label
  # only (here on unconstrained scores); on this problem its minimiser stays on the plain rule
  # (the LA paper, Section 4, notes such margins are not balanced-consistent in general).
  loss = {
      "focal": lambda z, y, *, class_counts: losses.focal_loss(z, y, gamma=1.0),
      "label_over_smooth": lambda z, y, *, class_counts: losses.label_over_smooth_loss(
          z, y, delta=0.98),
      "ldam": losses.ldam_loss,
  }[name]
  # LDAM's scale s = 30 multiplies the float32 rounding of its population gradient: L-BFGS stalls
  # at |grad R| = 1.18e-7 on this machine's CPU whatever the step budget (500 or 2000), just
  # over the default 1e-7 threshold, so LDAM gets 1e-6.
  report = testing.check_fisher_consistency(loss, target="error",
                                            grad_tol=1e-6 if name == "ldam" else 1e-7)
  assert list(np.flatnonzero(report.predictions != PROBLEM.bayes_rule("balanced"))) == [2, 3, 4]
