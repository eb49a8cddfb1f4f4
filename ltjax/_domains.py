"""Allowed values of the hyperparameters, shared by the numerics and the method registry.

A domain is anything with `contains(value) -> bool` and a `str` for messages. The numerics
(`ltjax.losses`, `posthoc`, `priors`, `metrics`) check concrete hyperparameters against the named
domains below; `ltjax.train`'s registry declares its `HParam`s with the same classes and values,
so a value the CLI accepts is a value the loss accepts, and the other way round.
"""
from __future__ import annotations

import dataclasses
import math
import numbers


def _fmt_bound(x) -> str:
  return f"{x:g}" if isinstance(x, float) else str(x)


def _is_real(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Real:
  """A finite real number in an interval: `[lo, hi]`, either end open, either end absent."""
  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False
  hi_open: bool = False

  def contains(self, value) -> bool:
    if not _is_real(value) or not math.isfinite(value):
      return False
    if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
      return False
    if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
      return False
    return True

  def __str__(self):
    if self.lo is not None and self.hi is not None:
      return (f"a finite number in {'(' if self.lo_open else '['}{_fmt_bound(self.lo)}, "
              f"{_fmt_bound(self.hi)}{')' if self.hi_open else ']'}")
    if self.lo is not None:
      return f"a finite number {'>' if self.lo_open else '>='} {_fmt_bound(self.lo)}"
    if self.hi is not None:
      return f"a finite number {'<' if self.hi_open else '<='} {_fmt_bound(self.hi)}"
    return "a finite number"


@dataclasses.dataclass(frozen=True)
class Integer:
  """An integer `>= lo` (booleans are not integers here)."""
  lo: int = 0

  def contains(self, value) -> bool:
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and int(value) >= self.lo)

  def __str__(self):
    return f"an integer >= {self.lo}"


@dataclasses.dataclass(frozen=True)
class OneOf:
  """One of a fixed set of values (names)."""
  values: tuple

  def contains(self, value) -> bool:
    return any(type(value) is type(v) and value == v for v in self.values)

  def __str__(self):
    return "one of " + ", ".join(repr(v) for v in self.values)


@dataclasses.dataclass(frozen=True)
class Grid:
  """A non-empty sequence whose every element lies in `element` (a sweep grid)."""
  element: Real

  def contains(self, value) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) > 0
            and all(self.element.contains(v) for v in value))

  def __str__(self):
    return f"a non-empty sequence, each element {self.element}"


# The domains of the numerics' hyperparameters (the registry's `HParam`s use the same values).
NON_NEGATIVE = Real(lo=0.0)
POSITIVE = Real(lo=0.0, lo_open=True)
UNIT_INTERVAL = Real(lo=0.0, hi=1.0)
TAU = NON_NEGATIVE  # LA loss / post-hoc LA / tau-norm / PRS exponent
FOCAL_GAMMA = NON_NEGATIVE
CB_BETA = Real(lo=0.0, hi=1.0, hi_open=True)
START_EPOCH = Integer(lo=0)
MAX_MARGIN = NON_NEGATIVE  # LDAM
SCALE = POSITIVE  # LDAM / ALA cosine scale
QUANTITY_FACTOR = OneOf(("paper", "openlt"))  # ALA
EQL_THRESHOLD = UNIT_INTERVAL
EQL_GAMMA = UNIT_INTERVAL
GALA_LAMBDA = NON_NEGATIVE
GALA_MODE = OneOf(("code", "paper"))
LOS_DELTA = UNIT_INTERVAL
EPS = POSITIVE  # the floor of `priors.log_prior`
