"""Fisher consistency of the logit-adjusted loss (Menon et al., 2021, Theorem 1).

A discrete problem: 6 values of x, 3 classes, known class-conditionals p(x|y) and a skewed prior.
The population risk `sum_{x,y} pi_y p(x|y) loss(f_x, y)` is minimised over free per-x logits. The
balanced-error Bayes rule is `argmax_y p(x|y)`; the LA loss and post-hoc-adjusted CE recover it on
every x, plain CE recovers `argmax_y pi_y p(x|y)` instead, which differs on x = 2, 3, 4.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ltjax import losses
from ltjax import posthoc
from ltjax import priors

# p(x | y): rows are classes, columns the six x values.
P_X_GIVEN_Y = np.array([
    [0.40, 0.30, 0.15, 0.10, 0.04, 0.01],
    [0.05, 0.25, 0.35, 0.20, 0.10, 0.05],
    [0.02, 0.03, 0.10, 0.25, 0.30, 0.30],
])
COUNTS = np.array([800, 150, 50])  # prior 0.8 / 0.15 / 0.05
PRIOR = COUNTS / COUNTS.sum()
NUM_X, NUM_CLASSES = P_X_GIVEN_Y.shape[1], P_X_GIVEN_Y.shape[0]
BALANCED_BAYES = P_X_GIVEN_Y.argmax(0)                      # [0, 0, 1, 2, 2, 2]
PLAIN_BAYES = (PRIOR[:, None] * P_X_GIVEN_Y).argmax(0)      # [0, 0, 0, 0, 0, 2]


def _population_minimiser(per_example_loss):
  """Minimises sum_{x,y} p(x, y) loss(f_x, y) over f in R^{6 x 3} with Adam."""
  joint = jnp.asarray((PRIOR[:, None] * P_X_GIVEN_Y).T, jnp.float32)   # [x, y]
  xs = jnp.repeat(jnp.arange(NUM_X), NUM_CLASSES)
  ys = jnp.tile(jnp.arange(NUM_CLASSES), NUM_X)

  def risk(logits):
    return jnp.sum(joint[xs, ys] * per_example_loss(logits[xs], ys))

  optimiser = optax.adam(0.05)

  @jax.jit
  def minimise(logits):
    def step(carry, _):
      logits, state = carry
      grad = jax.grad(risk)(logits)
      updates, state = optimiser.update(grad, state)
      return (optax.apply_updates(logits, updates), state), None
    (logits, _), _ = jax.lax.scan(step, (logits, optimiser.init(logits)), None, length=3000)
    return logits, jnp.max(jnp.abs(jax.grad(risk)(logits)))

  logits, grad_norm = minimise(jnp.zeros((NUM_X, NUM_CLASSES), jnp.float32))
  assert grad_norm < 1e-4, grad_norm  # converged
  return logits


def test_the_problem_separates_the_two_bayes_rules():
  np.testing.assert_array_equal(BALANCED_BAYES, [0, 0, 1, 2, 2, 2])
  np.testing.assert_array_equal(np.flatnonzero(BALANCED_BAYES != PLAIN_BAYES), [2, 3, 4])


def test_logit_adjusted_loss_minimiser_is_the_balanced_bayes_rule():
  log_pi = priors.log_prior(COUNTS)
  logits = _population_minimiser(
      lambda f, y: losses.logit_adjusted_loss(f, y, log_prior=log_pi))
  np.testing.assert_array_equal(np.argmax(logits, -1), BALANCED_BAYES)
  # Stronger: softmax(f + log pi) = p(y|x), so f_x = log p(x|y) + const(x).
  centred = logits - logits.mean(-1, keepdims=True)
  log_lik = np.log(P_X_GIVEN_Y.T)
  np.testing.assert_allclose(centred, log_lik - log_lik.mean(-1, keepdims=True), atol=2e-3)


def test_balanced_softmax_and_pairwise_form_minimisers_are_the_balanced_bayes_rule():
  log_pi = priors.log_prior(COUNTS)
  for loss in (
      lambda f, y: losses.balanced_softmax_loss(f, y, class_counts=COUNTS),
      lambda f, y: losses.pairwise_margin_loss(f, y, margins=log_pi[None, :] - log_pi[:, None]),
  ):
    np.testing.assert_array_equal(np.argmax(_population_minimiser(loss), -1), BALANCED_BAYES)


def test_cross_entropy_needs_the_posthoc_adjustment():
  logits = _population_minimiser(optax.softmax_cross_entropy_with_integer_labels)
  predictions = np.argmax(logits, -1)
  np.testing.assert_array_equal(predictions, PLAIN_BAYES)
  assert set(np.flatnonzero(predictions != BALANCED_BAYES)) == {2, 3, 4}
  adjusted = posthoc.adjust_logits(logits, log_prior=priors.log_prior(COUNTS))
  np.testing.assert_array_equal(np.argmax(adjusted, -1), BALANCED_BAYES)
