"""Gaussian-mixture data with a known balanced-error Bayes rule (the LA paper's §6.1 set-up).

Class `y` draws `x ~ N(mu_y, sigma^2 I)` with probability `pi_y`. With a shared isotropic
covariance the balanced-error Bayes rule `argmax_y p(x | y)` is linear,

  argmax_y  mu_y^T x / sigma^2 - ||mu_y||^2 / (2 sigma^2),

and the ordinary (prior-weighted) Bayes rule adds `log pi_y` to those scores. For two classes the
balanced Bayes error has the closed form `Phi(-||mu_1 - mu_0|| / (2 sigma))`.

Users import this module directly: `from ltjax.data import synthetic`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class GaussianMixture(NamedTuple):
  """Isotropic Gaussian classes with a shared scale.

  Attributes:
    means: `f[K, D]`, one mean per class.
    scale: sigma, the per-coordinate standard deviation shared by every class.
    prior: `f[K]`, the class probabilities (sum to 1).
  """
  means: np.ndarray
  scale: float
  prior: np.ndarray


def two_gaussians(*, minority_prior: float = 0.05, mean: tuple[float, ...] = (1.0, 1.0),
                  scale: float = 1.0) -> GaussianMixture:
  r"""The LA paper's synthetic problem: two classes with means `-mean` (class 0) and `+mean`
  (class 1), unit variance by default, and `P(y = 1) = minority_prior`.

  With the defaults (means `(+-1, +-1)`, sigma 1, 5% minority) the balanced Bayes error is
  `Phi(-sqrt(2))` ~ 7.86%, and the error-minimising (prior-weighted) rule has a balanced error of
  about 18%, so the gap a long-tail method must close is large.
  """
  if not 0.0 < minority_prior < 1.0:
    raise ValueError(f"`minority_prior` must lie in (0, 1), got {minority_prior}.")
  if scale <= 0:
    raise ValueError(f"`scale` must be positive, got {scale}.")
  mu = np.asarray(mean, np.float32)
  if mu.ndim != 1 or not np.any(mu != 0):
    raise ValueError(f"`mean` must be a non-zero 1-D vector, got {mean}.")
  return GaussianMixture(means=np.stack([-mu, mu]), scale=float(scale),
                         prior=np.asarray([1.0 - minority_prior, minority_prior]))


def sample(key: jax.Array, mixture: GaussianMixture, num_examples: int, *,
           balanced: bool = False) -> tuple[jax.Array, jax.Array]:
  """Draws `num_examples` pairs `(x f32[N, D], y i32[N])`.

  Args:
    key: a PRNG key.
    mixture: the distribution.
    num_examples: N.
    balanced: if False, labels are i.i.d. draws from `mixture.prior` (a long-tailed training set);
      if True, labels cycle through the classes so each has `N // K` or `N // K + 1` examples (a
      balanced test set, which estimates the balanced error with the least variance).
  """
  means = jnp.asarray(mixture.means, jnp.float32)
  num_classes, dim = means.shape
  label_key, noise_key = jax.random.split(key)
  if balanced:
    labels = jnp.arange(num_examples, dtype=jnp.int32) % num_classes
  else:
    log_prior = jnp.log(jnp.asarray(mixture.prior, jnp.float32))
    labels = jax.random.categorical(label_key, log_prior, shape=(num_examples,)).astype(jnp.int32)
  noise = jax.random.normal(noise_key, (num_examples, dim), jnp.float32)
  return means[labels] + mixture.scale * noise, labels


def bayes_balanced_scores(mixture: GaussianMixture, x: jax.typing.ArrayLike) -> jax.Array:
  r"""`log p(x | y)` up to a constant shared by the classes: `f32[N, K]`.

  Its argmax is the balanced-error Bayes rule; adding `log(mixture.prior)` gives the ordinary
  Bayes (error-minimising) rule.
  """
  means = jnp.asarray(mixture.means, jnp.float32)
  x = jnp.asarray(x, jnp.float32)
  return (x @ means.T - 0.5 * jnp.sum(jnp.square(means), -1)) / mixture.scale**2


def bayes_balanced_error(mixture: GaussianMixture) -> float:
  r"""Closed-form balanced Bayes error for two classes: `Phi(-||mu_1 - mu_0|| / (2 sigma))`.

  Raises:
    ValueError: for more than two classes (no closed form; estimate it on a sample with
      `bayes_balanced_scores`).

  Example (the LA paper's problem: `Phi(-sqrt(2))`):

  >>> from ltjax.data import synthetic
  >>> round(synthetic.bayes_balanced_error(synthetic.two_gaussians()), 4)
  0.0786
  """
  means = np.asarray(mixture.means, np.float64)
  if means.shape[0] != 2:
    raise ValueError(f"The closed form covers two classes, got {means.shape[0]}.")
  half_gap = np.linalg.norm(means[1] - means[0]) / (2.0 * mixture.scale)
  return 0.5 * math.erfc(half_gap / math.sqrt(2.0))
