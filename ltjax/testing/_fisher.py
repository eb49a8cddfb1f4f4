"""Fisher consistency of a loss for the balanced (or plain) error, on a discrete problem.

Menon et al., "Long-tail learning via logit adjustment", ICLR 2021, Theorem 1: a loss is
consistent for the balanced error when the minimiser of its population risk over all scorers
predicts the balanced Bayes rule `argmax_y p(x | y)` on every x. On a finite input space the
population risk `R(f) = sum_{x, y} pi_y p(x | y) loss(f_x, y)` is a function of one free logit
vector `f_x` per x, so the minimiser can be computed and the property checked exactly.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ltjax.testing import _cases

TARGETS = ("balanced", "error")

# p(x | y) of the default problem (rows: 3 classes, columns: 6 values of x) with the prior
# 0.8 / 0.15 / 0.05. The balanced rule is [0, 0, 1, 2, 2, 2], the plain rule [0, 0, 0, 0, 0, 2]:
# they disagree on x = 2, 3, 4, and every top choice wins by a factor >= 1.2.
_DEFAULT_P_X_GIVEN_Y = np.array([
    [0.40, 0.30, 0.15, 0.10, 0.04, 0.01],
    [0.05, 0.25, 0.35, 0.20, 0.10, 0.05],
    [0.02, 0.03, 0.10, 0.25, 0.30, 0.30],
])
_DEFAULT_COUNTS = np.array([800, 150, 50])
# Each rule's winner must beat the runner-up by this log-ratio, so that the minimiser's small
# optimisation error cannot flip a prediction.
_MIN_LOG_GAP = 0.15
# Centred logits beyond this mean a diverging minimiser: a consistent loss on a problem whose
# probabilities are >= 1e-3 has |f_x - mean f_x| of at most a few log-ratios.
_DIVERGING = 25.0


@dataclasses.dataclass(frozen=True)
class FisherProblem:
  """A discrete classification problem: class-conditionals `p(x | y)` and training counts.

  Attributes:
    p_x_given_y: `[C, X]`, rows sum to 1.
    class_counts: `[C]`; the prior is `counts / sum(counts)`.

  Examples:
    >>> from ltjax import testing
    >>> problem = testing.FisherProblem.default()
    >>> print(problem.prior)
    [0.8  0.15 0.05]
    >>> print(problem.bayes_rule("balanced"), problem.bayes_rule("error"))
    [0 0 1 2 2 2] [0 0 0 0 0 2]
  """
  p_x_given_y: np.ndarray
  class_counts: np.ndarray

  @property
  def prior(self) -> np.ndarray:
    return self.class_counts / self.class_counts.sum()

  @property
  def joint(self) -> np.ndarray:
    """`p(x, y)` as `[X, C]`."""
    return (self.prior[:, None] * self.p_x_given_y).T

  def bayes_rule(self, target: str) -> np.ndarray:
    """`argmax_y p(x | y)` (balanced error) or `argmax_y pi_y p(x | y)` (plain error), `[X]`."""
    scores = self.p_x_given_y if target == "balanced" else self.joint.T
    return np.argmax(scores, axis=0)

  def error(self, predictions: np.ndarray, target: str) -> float:
    """Balanced error `1 - mean_y P(h(x) = y | y)` or plain error `1 - P(h(x) = y)`."""
    hit = np.arange(len(self.class_counts))[:, None] == np.asarray(predictions)[None, :]
    per_class = np.sum(self.p_x_given_y * hit, axis=1)
    return float(1 - (per_class.mean() if target == "balanced" else per_class @ self.prior))

  @classmethod
  def default(cls) -> FisherProblem:
    """The 3-class, 6-point problem with prior 0.8 / 0.15 / 0.05 (rules differ on 3 points)."""
    return cls(_DEFAULT_P_X_GIVEN_Y, _DEFAULT_COUNTS)

  @classmethod
  def make(cls, *, num_classes: int = 3, num_points: int = 6, imbalance_ratio: float = 16.0,
           seed: int = 0) -> FisherProblem:
    """A seeded problem: class y's `p(x | y)` is a bump around `x = (y + 1/2) X / C` on a line of
    `X` points plus noise, counts exponential with `imbalance_ratio`. Redrawn until the two Bayes
    rules disagree on some x and every rule's winner leads by a log-ratio of at least 0.15.
    """
    if num_classes < 2 or num_points < num_classes:
      raise ValueError(f"need 2 <= num_classes <= num_points, got {num_classes}, {num_points}.")
    rng = np.random.default_rng(seed)
    counts = _cases.longtail_counts(num_classes, imbalance_ratio)
    centres = (np.arange(num_classes) + 0.5) * num_points / num_classes
    xs = np.arange(num_points) + 0.5
    for _ in range(200):
      width = rng.uniform(0.6, 1.2) * num_points / num_classes
      bumps = np.exp(-0.5 * ((xs[None, :] - centres[:, None]) / width) ** 2)
      bumps = bumps * rng.uniform(0.7, 1.3, size=bumps.shape) + 0.02
      problem = cls(bumps / bumps.sum(1, keepdims=True), counts)
      if problem._separates():
        return problem
    raise ValueError(
        f"no {num_classes}-class, {num_points}-point problem with imbalance ratio "
        f"{imbalance_ratio} separates the balanced and plain Bayes rules; raise the ratio.")

  def _separates(self) -> bool:
    def leads(scores):
      top2 = np.sort(np.log(scores), axis=0)[-2:]
      return np.all(top2[1] - top2[0] >= _MIN_LOG_GAP)
    return bool(np.any(self.bayes_rule("balanced") != self.bayes_rule("error"))
                and leads(self.p_x_given_y) and leads(self.joint.T))


@dataclasses.dataclass(frozen=True)
class FisherReport:
  """The population-risk minimiser and how its predictions compare with the Bayes rule.

  Attributes:
    target: "balanced" or "error".
    logits: `[X, C]` the minimiser `f_x` (before any post-hoc rule).
    predictions: `[X]` argmax of the (post-hoc adjusted) minimiser.
    bayes_rule: `[X]` the target's Bayes rule.
    disagreements: the x at which they differ (empty when the check passed).
    error_gap: the minimiser's target error minus the Bayes error.
    steps: L-BFGS iterations; grad_norm: the risk's gradient norm at the end.

  Examples:
    >>> import dataclasses
    >>> from ltjax import testing
    >>> [field.name for field in dataclasses.fields(testing.FisherReport)][:5]
    ['target', 'logits', 'predictions', 'bayes_rule', 'disagreements']

    See :func:`check_fisher_consistency` for a report from a run.
  """
  target: str
  logits: np.ndarray
  predictions: np.ndarray
  bayes_rule: np.ndarray
  disagreements: tuple
  error_gap: float
  steps: int
  grad_norm: float


def population_minimiser(loss_fn: Callable, problem: FisherProblem, *, max_steps: int = 500,
                         grad_tol: float = 1e-7) -> tuple:
  """Minimises `R(f) = sum_{x,y} p(x, y) loss(f_x, y)` over `f in R^{X x C}` with optax's L-BFGS
  (backtracking line search) in float64, inside one compiled `lax.while_loop` that stops when
  `|grad R| < grad_tol`. Returns `(f, steps, grad_norm)` as NumPy.

  Examples:
    >>> import numpy as np
    >>> import optax
    >>> from ltjax import testing
    >>> problem = testing.FisherProblem.default()
    >>> def cross_entropy(logits, labels, *, class_counts):
    ...   return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    >>> f, steps, grad_norm = testing.population_minimiser(cross_entropy, problem)
    >>> f.shape, bool(grad_norm < 1e-7)
    ((6, 3), True)
    >>> # plain cross-entropy minimises the plain error, not the balanced one
    >>> print(f.argmax(-1), problem.bayes_rule("error"))
    [0 0 0 0 0 2] [0 0 0 0 0 2]
  """
  num_classes, num_points = problem.p_x_given_y.shape
  with jax.enable_x64(True):
    joint = jnp.asarray(problem.joint.reshape(-1))  # [X * C], (x, y) in row-major order
    xs = jnp.repeat(jnp.arange(num_points), num_classes)
    ys = jnp.tile(jnp.arange(num_classes, dtype=jnp.int32), num_points)
    counts = jnp.asarray(problem.class_counts)

    def risk(f):
      return jnp.sum(joint * _cases.call(loss_fn, f[xs], ys, counts))

    # Backtracking (Armijo) line search: compiles faster than the default zoom search, and on
    # these smooth risks L-BFGS still converges in a few dozen steps.
    optimiser = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(
        max_backtracking_steps=30, store_grad=True))
    value_and_grad = optax.value_and_grad_from_state(risk)

    def step(carry):
      f, state = carry
      value, grad = value_and_grad(f, state=state)
      updates, state = optimiser.update(grad, state, f, value=value, grad=grad, value_fn=risk)
      return optax.apply_updates(f, updates), state

    def not_converged(carry):
      _, state = carry
      count = optax.tree.get(state, "count")
      grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
      return (count == 0) | ((count < max_steps) & (grad_norm >= grad_tol))

    @jax.jit
    def minimise(f):
      f, state = jax.lax.while_loop(not_converged, step, (f, optimiser.init(f)))
      return f, optax.tree.get(state, "count"), optax.tree.norm(jax.grad(risk)(f))

    f, steps, grad_norm = minimise(jnp.zeros((num_points, num_classes), jnp.float64))
    return np.asarray(f), int(steps), float(grad_norm)


def check_fisher_consistency(loss_fn: Callable, *, target: str = "balanced",
                             posthoc: Callable | None = None,
                             problem: FisherProblem | None = None, num_classes: int | None = None,
                             num_points: int | None = None, imbalance_ratio: float | None = None,
                             seed: int | None = None, max_steps: int = 500,
                             grad_tol: float = 1e-7) -> FisherReport:
  r"""Checks that the loss's population-risk minimiser is the Bayes rule of the target error.

  On a discrete problem with known `p(x | y)` and a skewed prior `pi`, minimises

  .. math:: R(f) = \sum_x \sum_y \pi_y\, p(x \mid y)\, \ell(f_x, y)

  over free logits `f_x` (one vector per x) to convergence, then compares `argmax f_x` (after
  `posthoc`, if given) with `argmax_y p(x | y)` (target "balanced": the balanced-error Bayes rule,
  Menon et al. 2021, Theorem 1 and eq. (3)) or `argmax_y pi_y p(x | y)` (target "error": the
  plain-error rule, which cross-entropy attains) on every x. The default problem has 3 classes,
  6 points and prior 0.8/0.15/0.05, on which the two rules disagree at 3 points, so a loss that
  ignores the prior fails the balanced target and one that over-corrects fails the plain one.

  Args:
    loss_fn: `(logits f[B, C], labels int[B], *, class_counts) -> f[B]`.
    target: "balanced" or "error".
    posthoc: optional `(logits, *, class_counts) -> scores` applied to the minimiser before the
      argmax (e.g. `posthoc.adjust_logits` with the log prior for cross-entropy).
    problem: a `FisherProblem`; by default the fixed 3-class problem, or with any of
      `num_classes` (3), `num_points` (6), `imbalance_ratio` (16) or `seed` (0) given,
      `FisherProblem.make(...)` with those.
    max_steps, grad_tol: L-BFGS budget and convergence threshold on `|grad R|`.

  Returns:
    A `FisherReport`.

  Raises:
    AssertionError: if the minimiser's predictions differ from the Bayes rule at some x (the
      message lists them with the error gap), or the minimisation did not converge.

  Examples:
    >>> from ltjax import losses, priors, testing
    >>> def la_loss(logits, labels, *, class_counts):
    ...   log_prior = priors.log_prior(class_counts)
    ...   return losses.logit_adjusted_loss(logits, labels, log_prior=log_prior)
    >>> report = testing.check_fisher_consistency(la_loss, target="balanced")
    >>> print(report.predictions, report.disagreements, report.error_gap)
    [0 0 1 2 2 2] () 0.0
  """
  if target not in TARGETS:
    raise ValueError(f"`target` must be one of {TARGETS}, got {target!r}.")
  if problem is None:
    if num_classes is None and num_points is None and imbalance_ratio is None and seed is None:
      problem = FisherProblem.default()
    else:
      problem = FisherProblem.make(
          num_classes=3 if num_classes is None else num_classes,
          num_points=6 if num_points is None else num_points,
          imbalance_ratio=16.0 if imbalance_ratio is None else imbalance_ratio,
          seed=0 if seed is None else seed)
  name = f"check_fisher_consistency(target={target!r})"
  logits, steps, grad_norm = population_minimiser(loss_fn, problem, max_steps=max_steps,
                                                  grad_tol=grad_tol)
  if not np.isfinite(grad_norm) or grad_norm >= grad_tol:
    raise AssertionError(
        f"{name}: the population risk did not converge: |grad R| = {grad_norm:.3g} after {steps} "
        f"L-BFGS steps (threshold {grad_tol:g}); the loss may have no finite minimiser, or raise "
        f"max_steps.")
  scores = logits
  if posthoc is not None:
    with jax.enable_x64(True):
      scores = np.asarray(posthoc(jnp.asarray(logits), class_counts=problem.class_counts))
  predictions = np.argmax(scores, axis=-1)
  rule = problem.bayes_rule(target)
  disagree = tuple(int(x) for x in np.flatnonzero(predictions != rule))
  # A risk whose infimum is only approached as logits diverge (e.g. a class never penalised as a
  # negative) also ends with a small gradient; say so, since its minimiser is a direction.
  spread = float(np.max(np.abs(logits - logits.mean(-1, keepdims=True))))
  diverging = (f" The centred minimiser reaches |f| = {spread:.3g}: the risk has no finite "
               "minimiser and is minimised as logits diverge." if spread > _DIVERGING else "")
  gap = problem.error(predictions, target) - problem.error(rule, target)
  report = FisherReport(target, logits, predictions, rule, disagree, gap, steps, grad_norm)
  if disagree:
    other = "error" if target == "balanced" else "balanced"
    hint = ""
    if np.array_equal(predictions, problem.bayes_rule(other)):
      hint = (" The minimiser is the plain-error rule argmax_y pi_y p(x|y): the loss does not "
              "correct for the class prior." if target == "balanced" else
              " The minimiser is the balanced rule argmax_y p(x|y): the loss corrects for a "
              "prior the plain error does not want corrected.")
    label = "balanced error" if target == "balanced" else "plain error"
    raise AssertionError(
        f"{name}: not Fisher consistent for the {label} on the {len(problem.class_counts)}-class, "
        f"{problem.p_x_given_y.shape[1]}-point problem with prior "
        f"{np.round(problem.prior, 4).tolist()}: the population-risk minimiser predicts "
        f"{predictions.tolist()}, the Bayes rule is {rule.tolist()}; they disagree at "
        f"x = {list(disagree)}, {label} {problem.error(predictions, target):.4f} vs Bayes "
        f"{problem.error(rule, target):.4f} (gap {gap:.4f}).{hint}{diverging}")
  return report
