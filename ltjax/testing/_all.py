"""Every applicable check on one loss, as one call."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from collections.abc import Sequence

from ltjax.testing import _fisher
from ltjax.testing import _properties

STATISTICS_GRADIENT = ("warn", "error", "skip")


class ChecksFailed(AssertionError):
  """Raised by `check_all(..., fail_fast=False)`: every failed property at once.

  Attributes:
    failures: `{check name: its AssertionError}` for the checks that failed, in the order run.
    reports: `{check name: report}` for the checks that passed.

  Examples:
    >>> from ltjax import testing
    >>> error = testing.ChecksFailed({"check_gradients": AssertionError("off by 0.1")},
    ...                              {"check_shift_invariance": None})
    >>> isinstance(error, AssertionError), list(error.failures)
    (True, ['check_gradients'])
    >>> print(error)
    1 of 2 checks failed:
    - check_gradients: off by 0.1
    passed: check_shift_invariance
  """

  def __init__(self, failures: dict, reports: dict):
    self.failures, self.reports = failures, reports
    lines = [f"{len(failures)} of {len(failures) + len(reports)} checks failed:"]
    lines += [f"- {name}: {error}" for name, error in failures.items()]
    if reports:
      lines.append(f"passed: {', '.join(reports)}")
    super().__init__("\n".join(lines))


def check_all(loss_fn: Callable, *, inputs: str = "logits", target: str | None = "balanced",
              posthoc: Callable | None = None, fisher_options: dict | None = None,
              reference_fn: Callable | None = None, reference_at: dict | None = None,
              reference_counts=None, shift_invariant: bool = True,
              permutation_equivariant: bool = True, closed_form_gradient: Callable | None = None,
              sharding: Sequence[str] = _properties.SHARDING_MODES, num_classes: int = 5,
              seed: int = 0, fail_fast: bool = True, statistics_gradient: str = "warn") -> dict:
  """Runs every applicable check on `loss_fn(logits, labels, *, class_counts) -> f[B]`.

  Always: `check_gradients` (finite differences, or `closed_form_gradient`),
  `check_transformations`, `check_finite_extremes`. Unless turned off: `check_shift_invariance`,
  `check_class_permutation_equivariance`, `check_no_gradient_to_statistics` (see
  `statistics_gradient`). With `target` ("balanced", "error"; None skips):
  `check_fisher_consistency` with `posthoc` and `fisher_options`. With `reference_fn`:
  `check_reduces_to(loss_fn, reference_fn, at=reference_at, class_counts=reference_counts)`.

  Args:
    inputs: "logits", or "cosine" for losses on normalised scores in [-1, 1] (LDAM, ALA).
    sharding: the sharded-batch modes of `check_transformations`; with one device they are
      skipped with a `ShardingCheckSkipped` warning saying how to simulate several.
    fail_fast: True (default) stops at the first failed check and raises its `AssertionError`;
      False runs every check and raises one :class:`ChecksFailed` listing every failure.
    statistics_gradient: what a gradient reaching `class_counts` does. "warn" (default): a
      `UserWarning` (ltjax's losses stop the gradient at the class statistics, but a correct loss
      written the natural way, `jnp.log(class_counts / class_counts.sum())`, does not, and only a
      caller who differentiates with respect to the counts sees the difference); "error": the
      check fails; "skip": not checked.

  Returns:
    `{check name: report}` for the checks run, in the order run (a check that only warned is
    reported with `details["warning"]`).

  Raises:
    AssertionError: from the first check that fails (`fail_fast=True`), or
      :class:`ChecksFailed` (an AssertionError) naming every failed check.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import testing
    >>> def squared_norm(logits, labels, *, class_counts):  # not a softmax loss
    ...   return jnp.sum(logits ** 2, axis=-1)
    >>> try:
    ...   testing.check_all(squared_norm)
    ... except AssertionError as error:
    ...   print(str(error).split(":")[0])
    check_shift_invariance
  """
  if statistics_gradient not in STATISTICS_GRADIENT:
    raise ValueError(f"`statistics_gradient` must be one of {STATISTICS_GRADIENT}, got "
                     f"{statistics_gradient!r}.")
  common = {"inputs": inputs, "num_classes": num_classes, "seed": seed}
  reports, failures = {}, {}

  def run(check, *args, **kwargs):
    try:
      reports[check.__name__] = check(loss_fn, *args, **kwargs)
    except AssertionError as error:
      if fail_fast:
        raise
      failures[check.__name__] = error

  if reference_fn is not None:
    run(_properties.check_reduces_to, reference_fn, at=reference_at,
        class_counts=reference_counts, **common)
  if shift_invariant:
    run(_properties.check_shift_invariance, **common)
  if permutation_equivariant:
    run(_properties.check_class_permutation_equivariance, **common)
  run(_properties.check_gradients, closed_form=closed_form_gradient, **common)
  if statistics_gradient == "error":
    run(_properties.check_no_gradient_to_statistics, **common)
  elif statistics_gradient == "warn":
    try:
      reports["check_no_gradient_to_statistics"] = _properties.check_no_gradient_to_statistics(
          loss_fn, **common)
    except AssertionError as error:
      message = (f"{error} This is ltjax's convention, not a consistency property: pass "
                 f"statistics_gradient='error' to enforce it or 'skip' to silence this.")
      warnings.warn(message, UserWarning, stacklevel=2)
      reports["check_no_gradient_to_statistics"] = _properties.Report(
          "check_no_gradient_to_statistics", 0, 0.0, {"warning": message})
  run(_properties.check_transformations, sharding=sharding, **common)
  run(_properties.check_finite_extremes, **common)
  if target is not None:
    run(_fisher.check_fisher_consistency, target=target, posthoc=posthoc,
        **dict(fisher_options or {}))
  if failures:
    raise ChecksFailed(failures, reports)
  return reports
