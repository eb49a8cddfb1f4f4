"""Every applicable check on one loss, as one call."""
from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence

from ltjax.testing import _fisher
from ltjax.testing import _properties


def check_all(loss_fn: Callable, *, inputs: str = "logits", target: str | None = "balanced",
              posthoc: Callable | None = None, fisher_options: dict | None = None,
              reference_fn: Callable | None = None, reference_at: dict | None = None,
              reference_counts=None, shift_invariant: bool = True,
              permutation_equivariant: bool = True, closed_form_gradient: Callable | None = None,
              sharding: Sequence[str] = _properties.SHARDING_MODES, num_classes: int = 5,
              seed: int = 0) -> dict:
  """Runs every applicable check on `loss_fn(logits, labels, *, class_counts) -> f[B]`.

  Always: `check_gradients` (finite differences, or `closed_form_gradient`),
  `check_transformations`, `check_finite_extremes`, `check_no_gradient_to_statistics`.
  Unless turned off: `check_shift_invariance`, `check_class_permutation_equivariance`.
  With `target` ("balanced", "error"; None skips): `check_fisher_consistency` with `posthoc` and
  `fisher_options`. With `reference_fn`: `check_reduces_to(loss_fn, reference_fn,
  at=reference_at, class_counts=reference_counts)`.

  Args:
    inputs: "logits", or "cosine" for losses on normalised scores in [-1, 1] (LDAM, ALA).

  Returns:
    `{check name: report}` for the checks run, in the order run.

  Raises:
    AssertionError: from the first check that fails.
  """
  common = {"inputs": inputs, "num_classes": num_classes, "seed": seed}
  reports = {}

  def run(check, *args, **kwargs):
    reports[check.__name__] = check(loss_fn, *args, **kwargs)

  if reference_fn is not None:
    run(_properties.check_reduces_to, reference_fn, at=reference_at,
        class_counts=reference_counts, **common)
  if shift_invariant:
    run(_properties.check_shift_invariance, **common)
  if permutation_equivariant:
    run(_properties.check_class_permutation_equivariance, **common)
  run(_properties.check_gradients, closed_form=closed_form_gradient, **common)
  run(_properties.check_no_gradient_to_statistics, **common)
  run(_properties.check_transformations, sharding=sharding, **common)
  run(_properties.check_finite_extremes, **common)
  if target is not None:
    run(_fisher.check_fisher_consistency, target=target, posthoc=posthoc,
        **dict(fisher_options or {}))
  return reports
