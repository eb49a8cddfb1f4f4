"""The wall-clock budget of one invocation of a table run (`experiments.runner`,
`experiments.reproduce --budget_s`, `experiments.device.table_b`): a table is trained in chunks,
each stopped at an epoch boundary before its budget runs out.
"""
from __future__ import annotations

import dataclasses
import time


class BudgetReached(Exception):
  """Raised when the next epoch would not fit in the invocation's wall-clock budget; every run
  in progress has been checkpointed at the end of its last epoch."""


@dataclasses.dataclass
class Budget:
  """The wall-clock budget of one invocation (`--budget_s`; None: unlimited).

  An epoch is started only if `safety` times the longest epoch seen so far (training,
  evaluation and checkpoint included) plus `margin_s` still fits, so a chunk ends before the
  budget unless one epoch grows by more than `safety`. A group whose epoch time is not known yet
  (the first epoch compiles) needs `first_epoch_s` left to start.
  """
  seconds: float | None = None
  margin_s: float = 30.0
  safety: float = 1.5
  first_epoch_s: float = 120.0
  started: float = dataclasses.field(default_factory=time.perf_counter)

  def remaining(self) -> float:
    if self.seconds is None:
      return float("inf")
    return self.seconds - (time.perf_counter() - self.started)

  def fits(self, epoch_seconds: float | None) -> bool:
    need = self.first_epoch_s if epoch_seconds is None else self.safety * epoch_seconds
    return self.remaining() >= need + self.margin_s
