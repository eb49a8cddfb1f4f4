"""Hypothesis strategies for loss inputs.

hypothesis is imported only when a strategy is built: it is a test dependency (the `test` extra),
and `ltjax.testing`'s checks run without it.
"""
from __future__ import annotations

import numpy as np

from ltjax.testing import _cases


def class_counts(num_classes: int = 5, *, max_imbalance: float = 1e4, allow_empty: bool = False):
  """Strategy: long-tailed counts `[C]`, the exponential profile at a drawn imbalance ratio in
  `[1, max_imbalance]`, in a drawn class order, optionally with one class emptied."""
  import hypothesis.strategies as st  # noqa: PLC0415 (lazy: see the module doc)

  @st.composite
  def draw(draw_):
    ratio = draw_(st.floats(1.0, max_imbalance))
    counts = _cases.longtail_counts(num_classes, ratio, max_count=max(1000, int(ratio)))
    counts = np.asarray(draw_(st.permutations(counts.tolist())), np.int64)
    if allow_empty and draw_(st.booleans()):
      counts[draw_(st.integers(0, num_classes - 1))] = 0
      if not counts.any():
        counts[0] = 1
    return counts
  return draw()


def logits(batch_size: int = 8, num_classes: int = 5, *, max_abs: float = 30.0,
           inputs: str = "logits"):
  """Strategy: `f64[B, C]` finite logits in `[-max_abs, max_abs]` (cosines: in `[-1, 1]`)."""
  import hypothesis.extra.numpy as hnp  # noqa: PLC0415 (lazy: see the module doc)
  import hypothesis.strategies as st  # noqa: PLC0415 (lazy: see the module doc)
  _cases.check_inputs_kind(inputs)
  bound = 1.0 if inputs == "cosine" else max_abs
  return hnp.arrays(np.float64, (batch_size, num_classes),
                    elements=st.floats(-bound, bound, allow_nan=False, width=32))


def labels(counts, batch_size: int = 8):
  """Strategy: `int32[B]` labels among the classes whose count is positive."""
  import hypothesis.strategies as st  # noqa: PLC0415 (lazy: see the module doc)
  present = np.flatnonzero(np.asarray(counts) > 0).tolist()
  return st.lists(st.sampled_from(present), min_size=batch_size, max_size=batch_size).map(
      lambda ys: np.asarray(ys, np.int32))


def cases(batch_size: int = 8, num_classes: int = 5, *, inputs: str = "logits",
          max_imbalance: float = 1e4, allow_empty: bool = False):
  """Strategy: a `Case(logits, labels, class_counts)` for the checks' `cases=` argument."""
  import hypothesis.strategies as st  # noqa: PLC0415 (lazy: see the module doc)
  return class_counts(num_classes, max_imbalance=max_imbalance, allow_empty=allow_empty).flatmap(
      lambda n: st.tuples(logits(batch_size, num_classes, inputs=inputs), labels(n, batch_size),
                          st.just(n))).map(lambda t: _cases.Case(*t))
