"""The method registry: what each long-tailed method trains with and how it predicts.

One `Method` entry per name declares the head, the per-example loss, the loss state (GALA's
accumulators) and its update, the class-weight schedule (DRW, CB), the post-hoc step applied at
evaluation and whether it is a joint or a decoupled stage-2 method. The train loop reads these
fields and never branches on the method's name; adding a method is one entry in `METHODS`.

Hyperparameters live in `DEFAULT_HPARAMS` (the official defaults, docs/methods.md §2) and are
overridden by a recipe's `config.hparams`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import optax

import ltjax

# Stages: "joint" trains the whole network; "stage2" restores a stage-1 checkpoint and trains the
# head with the backbone frozen (BN in train mode, as the official code); "posthoc" trains nothing
# and only re-evaluates a stage-1 checkpoint (tau-norm).
STAGES = ("joint", "stage2", "posthoc")
# Post-hoc steps, applied to evaluation logits/params; `tau` is selected on the validation split.
POSTHOCS = ("none", "adjust", "tau_norm", "rebalance")
SAMPLERS = ("instance", "class_balanced")

DEFAULT_HPARAMS = {
    "tau": 1.0,  # LA loss / LA post-hoc temperature (LA code default).
    "focal_gamma": 1.0,  # kaidic LDAM-DRW hard-codes gamma = 1.
    "cb_beta": 0.9999,  # CB / DRW beta.
    "drw_start_epoch": 160,  # 0-based epoch from which DRW weights apply.
    "ldam_max_margin": 0.5,
    "scale": 30.0,  # LDAM / ALA cosine scale s.
    "ala_quantity_factor": "paper",
    "eql_threshold": 5e-3,
    "eql_gamma": 0.9,
    "gala_lam1": 1.0,
    "gala_lam2": 1.0,
    "gala_mode": "code",
    "prs_tau": 1.0,  # GALA's prediction re-balancing exponent (CIFAR configs).
    "los_delta": 0.98,  # LOS label over-smoothing for CIFAR-100-LT IR 100.
    # Post-hoc sweep grid for tau (tau-norm's script sweeps linspace(0, 2, 21)).
    "tau_grid": tuple(round(0.1 * i, 1) for i in range(21)),
}


class LossInputs(NamedTuple):
  """Everything a loss may read besides logits and labels, all arrays (traced in the step)."""
  class_counts: jax.Array  # f32[C], training counts of the long-tailed split
  log_prior: jax.Array  # f32[C]
  loss_state: Any  # the method's state pytree (GALA), () when stateless
  key: jax.Array  # PRNG key for stochastic losses (EQL)
  epoch: jax.Array  # i32[], 0-based


def _no_state(num_classes, hp):
  del num_classes, hp
  return ()


def _keep_state(state, logits, labels, hp):
  del logits, labels, hp
  return state


@dataclasses.dataclass(frozen=True)
class Method:
  """A method's declaration.

  Attributes:
    head: "linear" (with bias) or "cosine" (normed linear).
    loss: `(logits f[B, C], labels i32[B], inputs: LossInputs, hp) -> f[B]`, per example.
    class_weights: `(inputs, hp) -> f32[C]` for PyTorch's weighted mean `sum w_y l / sum w_y`,
      or None for the plain mean.
    init_state: `(num_classes, hp) -> pytree`, the loss state at step 0.
    update_state: `(state, logits, labels, hp) -> state`, run after the loss on the raw logits.
    posthoc: one of `POSTHOCS`.
    stage: one of `STAGES`.
    reinit_head: stage 2 starts from a freshly initialised head (cRT) instead of stage 1's.
    sampler: "instance" (shuffle) or "class_balanced" (classes drawn uniformly).
  """
  head: str
  loss: Callable
  class_weights: Callable | None = None
  init_state: Callable = _no_state
  update_state: Callable = _keep_state
  posthoc: str = "none"
  stage: str = "joint"
  reinit_head: bool = False
  sampler: str = "instance"

  def __post_init__(self):
    for field, allowed in (("posthoc", POSTHOCS), ("stage", STAGES), ("sampler", SAMPLERS),
                           ("head", ("linear", "cosine"))):
      if getattr(self, field) not in allowed:
        raise ValueError(f"Method.{field} must be one of {allowed}, got {getattr(self, field)!r}.")


def _ce(logits, labels, inputs, hp):
  del inputs, hp
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _focal(logits, labels, inputs, hp):
  del inputs
  return ltjax.losses.focal_loss(logits, labels, gamma=hp["focal_gamma"])


def _balanced_softmax(logits, labels, inputs, hp):
  del hp
  return ltjax.losses.balanced_softmax_loss(logits, labels, class_counts=inputs.class_counts)


def _la(logits, labels, inputs, hp):
  return ltjax.losses.logit_adjusted_loss(logits, labels, log_prior=inputs.log_prior,
                                         tau=hp["tau"])


def _ldam(cosine, labels, inputs, hp):
  return ltjax.losses.ldam_loss(cosine, labels, class_counts=inputs.class_counts,
                                      max_margin=hp["ldam_max_margin"], scale=hp["scale"])


def _ala(cosine, labels, inputs, hp):
  return ltjax.losses.ala_loss(cosine, labels, class_counts=inputs.class_counts,
                               scale=hp["scale"], quantity_factor=hp["ala_quantity_factor"])


def _eql(logits, labels, inputs, hp):
  return ltjax.losses.equalization_loss(logits, labels, class_counts=inputs.class_counts,
                                        key=inputs.key, threshold=hp["eql_threshold"],
                                        gamma=hp["eql_gamma"])


def _los(logits, labels, inputs, hp):
  del inputs
  return ltjax.losses.label_over_smooth_loss(logits, labels, delta=hp["los_delta"])


def _gala_kwargs(hp):
  return {"lam1": hp["gala_lam1"], "lam2": hp["gala_lam2"], "mode": hp["gala_mode"]}


def _gala(logits, labels, inputs, hp):
  return ltjax.losses.gala_loss(logits, labels, inputs.loss_state, **_gala_kwargs(hp))


def _gala_init(num_classes, hp):
  del hp
  return ltjax.losses.gala_init(num_classes)


def _gala_update(state, logits, labels, hp):
  return ltjax.losses.gala_update(state, logits, labels, **_gala_kwargs(hp))


def _cb_weights(inputs, hp):
  return ltjax.losses.class_balanced_weights(inputs.class_counts, beta=hp["cb_beta"])


def _drw_weights(inputs, hp):
  return ltjax.losses.drw_weights(inputs.class_counts, epoch=inputs.epoch,
                                  start_epoch=hp["drw_start_epoch"], beta=hp["cb_beta"])


_GALA = {"loss": _gala, "init_state": _gala_init, "update_state": _gala_update}

METHODS: dict[str, Method] = {
    "ce": Method(head="linear", loss=_ce),
    "focal": Method(head="linear", loss=_focal),
    "cb": Method(head="linear", loss=_ce, class_weights=_cb_weights),
    "ce_drw": Method(head="linear", loss=_ce, class_weights=_drw_weights),
    "ldam_drw": Method(head="cosine", loss=_ldam, class_weights=_drw_weights),
    "balanced_softmax": Method(head="linear", loss=_balanced_softmax),
    "la_loss": Method(head="linear", loss=_la),
    "la_posthoc": Method(head="linear", loss=_ce, posthoc="adjust"),
    "eql": Method(head="linear", loss=_eql),
    "gala": Method(head="linear", **_GALA),
    "gala_prs": Method(head="linear", posthoc="rebalance", **_GALA),
    "ala": Method(head="cosine", loss=_ala, class_weights=_drw_weights),
    "los": Method(head="linear", loss=_los, stage="stage2"),
    "crt": Method(head="linear", loss=_ce, stage="stage2", reinit_head=True,
                  sampler="class_balanced"),
    "tau_norm": Method(head="linear", loss=_ce, stage="posthoc", posthoc="tau_norm"),
}


def get_method(name: str) -> Method:
  """The registered method `name`; raises ValueError listing the known names otherwise."""
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}; expected one of {sorted(METHODS)}.")
  return METHODS[name]


def hparams(overrides=None) -> dict:
  """`DEFAULT_HPARAMS` updated with `overrides` (a dict or ConfigDict); unknown keys raise."""
  hp = dict(DEFAULT_HPARAMS)
  for key, value in dict(overrides or {}).items():
    if key not in hp:
      raise ValueError(f"Unknown hyperparameter {key!r}; expected one of {sorted(hp)}.")
    hp[key] = tuple(value) if isinstance(value, list) else value
  return hp


# Logit-level post-hoc steps on a whole evaluation set `f[N, C]` (tau-norm acts on the params).
POSTHOC_LOGITS = {
    "none": lambda logits, *, log_prior, tau: logits,
    "tau_norm": lambda logits, *, log_prior, tau: logits,
    "adjust": lambda logits, *, log_prior, tau: ltjax.posthoc.adjust_logits(
        logits, log_prior=log_prior, tau=tau),
    "rebalance": lambda logits, *, log_prior, tau: ltjax.posthoc.rebalance(logits, tau=tau),
}
