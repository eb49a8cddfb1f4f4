"""Inputs the checks evaluate a loss on: seeded draws of logits, labels and long-tailed counts."""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import numpy as np

INPUT_KINDS = ("logits", "cosine")


class Case(NamedTuple):
  """One input to a per-example loss: `logits f[B, C]`, `labels int[B]`, `class_counts [C]`.

  Examples:
    >>> from ltjax import testing
    >>> case = testing.draw_cases(num_cases=1, batch_size=4, num_classes=3)[0]
    >>> case.logits.shape, case.labels.shape, case.class_counts.shape
    ((4, 3), (4,), (3,))
  """
  logits: np.ndarray
  labels: np.ndarray
  class_counts: np.ndarray


@dataclasses.dataclass(frozen=True)
class Report:
  """What a passed check measured.

  Attributes:
    check: the check's name.
    cases: how many inputs (or scenarios) it evaluated.
    max_error: the largest deviation it saw from the property (0 for exact properties).
    details: check-specific measurements.

  Examples:
    >>> from ltjax import losses, priors, testing
    >>> def la_loss(logits, labels, *, class_counts):
    ...   log_prior = priors.log_prior(class_counts)
    ...   return losses.logit_adjusted_loss(logits, labels, log_prior=log_prior)
    >>> small = dict(num_cases=1, batch_size=4, num_classes=3)
    >>> report = testing.check_shift_invariance(la_loss, **small)
    >>> report.check, report.cases, report.max_error < 1e-10
    ('check_shift_invariance', 1, True)
  """
  check: str
  cases: int
  max_error: float = 0.0
  details: dict = dataclasses.field(default_factory=dict)


def longtail_counts(num_classes: int, imbalance_ratio: float, max_count: int = 1000) -> np.ndarray:
  """`n_c = max(1, floor(max_count * ratio^(-c / (C - 1))))`: LDAM-DRW's exponential profile.

  Examples:
    >>> from ltjax import testing
    >>> print(testing.longtail_counts(5, imbalance_ratio=100.0))
    [1000  316  100   31   10]
  """
  exponent = np.arange(num_classes) / max(num_classes - 1, 1)
  return np.maximum(1, np.floor(max_count * imbalance_ratio ** -exponent)).astype(np.int64)


def draw_cases(*, num_cases: int = 3, batch_size: int = 8, num_classes: int = 5,
               inputs: str = "logits", seed: int = 0) -> list[Case]:
  """Seeded inputs: logits `~ 3 N(0, 1)` (cosines `tanh` of them), every class with a count
  among the labels, counts long-tailed with imbalance ratios spread over `[10, 1000]`.

  Examples:
    >>> from ltjax import testing
    >>> cases = testing.draw_cases(num_cases=2, batch_size=4, num_classes=3, seed=0)
    >>> len(cases), set(cases[0].labels.tolist()) == {0, 1, 2}  # every class is a label
    (2, True)
  """
  check_inputs_kind(inputs)
  rng = np.random.default_rng(seed)
  cases = []
  for i in range(num_cases):
    ratio = 10.0 ** (1.0 + 2.0 * i / max(num_cases - 1, 1))
    counts = rng.permutation(longtail_counts(num_classes, ratio))
    labels = rng.integers(0, num_classes, size=batch_size)
    labels[:min(batch_size, num_classes)] = rng.permutation(num_classes)[:batch_size]
    scores = 3.0 * rng.standard_normal((batch_size, num_classes))
    cases.append(Case(to_inputs(scores, inputs), labels.astype(np.int32), counts))
  return cases


def to_inputs(scores: np.ndarray, inputs: str) -> np.ndarray:
  """Raw scores as the loss's input kind: unchanged logits, or cosines in (-1, 1)."""
  return np.tanh(scores / 3.0) if inputs == "cosine" else scores


def check_inputs_kind(inputs: str) -> None:
  if inputs not in INPUT_KINDS:
    raise ValueError(f"`inputs` must be one of {INPUT_KINDS}, got {inputs!r}.")


def call(fn: Callable, logits: Any, labels: Any, class_counts: Any, **kwargs):
  """`fn(logits, labels, class_counts=..., **kwargs)`, or `fn(logits, labels, **kwargs)` for a
  reference that takes no counts (e.g. `optax.softmax_cross_entropy_with_integer_labels`)."""
  if takes_class_counts(fn):
    return fn(logits, labels, class_counts=class_counts, **kwargs)
  return fn(logits, labels, **kwargs)


def takes_class_counts(fn: Callable) -> bool:
  try:
    parameters = inspect.signature(fn).parameters
  except (TypeError, ValueError):  # builtins and some wrappers have no signature: assume the API
    return True
  return "class_counts" in parameters or any(
      p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def assert_close(got, want, *, rtol: float, atol: float, check: str, where: str,
                 hint: str = "") -> float:
  """Raises AssertionError naming the check, the input and the worst example unless
  `|got - want| <= atol + rtol |want|` everywhere (NaN never passes); returns the max |diff|."""
  got = np.asarray(got, np.float64)
  want = np.asarray(want, np.float64)
  if got.shape != want.shape:
    raise AssertionError(f"{check}: {where}: shape {got.shape}, expected {want.shape}.")
  error = np.abs(got - want)
  bound = atol + rtol * np.abs(want)
  bad = ~(error <= bound)
  if bad.any():
    excess = np.where(np.isnan(error), np.inf, error - bound)
    worst = np.unravel_index(np.argmax(excess), error.shape) if error.ndim else ()
    index = f" at index {tuple(int(i) for i in worst)}" if worst else ""
    raise AssertionError(
        f"{check}: {where}: {int(bad.sum())} of {bad.size} values differ; worst{index}: "
        f"got {got[worst]:.8g}, expected {want[worst]:.8g} (|diff| {error[worst]:.3g} > "
        f"tolerance {bound[worst]:.3g}).{(' ' + hint) if hint else ''}")
  return float(np.max(error)) if error.size else 0.0


def describe(case_index: int, case: Case) -> str:
  counts = np.asarray(case.class_counts)
  return (f"case {case_index} (batch {len(case.labels)}, {counts.size} classes, "
          f"counts {counts.tolist()})")


def tolerance(dtype) -> float:
  """Default rtol = atol: loose enough for float32 rounding of a loss of scale ~30, far below
  what a wrong formula gives."""
  return 1e-6 if np.dtype(dtype) == np.float64 else 1e-4


def resolve_cases(cases: Sequence[Case] | None, **draw_options) -> list[Case]:
  if cases is None:
    return draw_cases(**draw_options)
  return [Case(*c) for c in cases]
