"""Evaluation of a trained state: post-hoc-adjusted logits per split, the post-hoc tau chosen on
the validation split only, and the metrics of every split.

`SplitLogits` runs the network once per split (except for a step that changes the weights, whose
tau is applied to the params); `select_tau` sweeps the method's grid on validation logits;
`evaluate` puts the two together. The method's post-hoc step comes from the registry
(`Method.posthoc`); nothing here branches on a method's name.
"""
from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from ltjax.train import _report


class NonFiniteMetrics(RuntimeError):
  """An evaluation metric came out NaN or infinite: an error, never a number in a table."""


class SplitLogits:
  """`split_logits(split, tau)`: the post-hoc-adjusted evaluation logits `f32[N, C]` of one split.

  Args:
    eval_logits: `(params, batch_stats, images) -> f32[N, C]` (`make_eval_logits`).
    state: the trained state (`params`, `batch_stats`).
    images: evaluation images by split name ("val", "test"), already on device.
    log_prior: `f32[C]`, log of the training class frequencies.
    method: the registered `Method` whose post-hoc step is applied.

  The raw logits of a split are computed once and reused for every tau, unless the step acts on
  the params (tau-norm), where each tau runs the network again.

  Raises (on call):
    KeyError: an unknown split.
    NonFiniteMetrics: the logits hold NaN / inf (the metrics would turn them into "no value").
  """

  def __init__(self, *, eval_logits: Callable, state, images: Mapping, log_prior, method):
    self._eval_logits, self._state, self._images = eval_logits, state, dict(images)
    self._log_prior, self._method, self._raw = log_prior, method, {}

  @property
  def splits(self) -> tuple:
    return tuple(self._images)

  def _network(self, split, params):
    return self._eval_logits(params, self._state.batch_stats, self._images[split])

  def __call__(self, split: str, tau) -> jax.Array:
    if split not in self._images:
      raise KeyError(f"No evaluation images for split {split!r}; have {sorted(self._images)}.")
    posthoc = self._method.posthoc
    if posthoc is not None and posthoc.params is not None:
      logits = self._network(split, posthoc.params(self._state.params, tau=tau))
    else:
      if split not in self._raw:
        self._raw[split] = self._network(split, self._state.params)
      logits = self._raw[split]
    if posthoc is not None and posthoc.logits is not None:
      logits = posthoc.logits(logits, log_prior=self._log_prior, tau=tau)
    # The metrics turn a NaN into "no value" (an empty many/few group is legitimately one), so
    # non-finite logits must be caught here, before they become a plausible-looking table.
    if not bool(jnp.isfinite(logits).all()):
      step = "none" if posthoc is None else posthoc.name
      raise NonFiniteMetrics(f"the {split} logits are not finite (post-hoc {step!r}, tau "
                             f"{tau}): the trained state holds NaN/inf; no results written.")
    return logits


def select_tau(split_logits: Callable, method, hp: Mapping, *, val_labels, class_counts):
  """The post-hoc tau with the best validation balanced accuracy (never the test set).

  `split_logits("val", tau)` gives the validation logits for a tau; `val_labels` is None when
  there is no validation split. Ties go to the tau nearest the configured one.

  Returns:
    `(tau, sweep)`: `sweep` maps each tried tau to its validation top-1. Without a validation
    split, or for a step whose tau is fixed by the recipe (`PostHoc.grid` None: GALA's PRS),
    the configured value (`hp[PostHoc.tau.name]`) and an empty sweep; `(None, {})` for a method
    without a post-hoc step.
  """
  posthoc = method.posthoc
  if posthoc is None:
    return None, {}
  fixed = hp[posthoc.tau.name]
  if posthoc.grid is None or val_labels is None:
    return fixed, {}
  sweep = {}
  for tau in hp[posthoc.grid.name]:
    sweep[float(tau)] = _report.evaluate_logits(split_logits("val", tau), val_labels,
                                                class_counts=class_counts)["top1"]
  best = max(sweep, key=lambda t: (sweep[t], -abs(t - fixed)))
  return best, sweep


def evaluate(split_logits: SplitLogits, method, hp: Mapping, *, labels: Mapping,
             class_counts) -> dict:
  """Metrics of every split in `labels` ("val" first when present, then "test"), with the
  post-hoc tau chosen on "val" only (`select_tau`).

  Returns:
    `{split: evaluate_logits(...)}` plus, for a method with a post-hoc step,
    `"posthoc": {"step", "tau", "val_sweep"}` (sweep keys as strings, JSON-ready).
  """
  tau, sweep = select_tau(split_logits, method, hp, val_labels=labels.get("val"),
                          class_counts=class_counts)
  out = {}
  if method.posthoc is not None:
    out["posthoc"] = {"step": method.posthoc.name, "tau": tau,
                      "val_sweep": {str(k): v for k, v in sweep.items()}}
  for split, split_labels in labels.items():
    out[split] = _report.evaluate_logits(split_logits(split, tau), split_labels,
                                         class_counts=class_counts)
  return out
