"""The method registry: what each long-tailed method trains with and how it predicts.

One `Method` entry per name declares the head, the per-example loss, the loss state (GALA's
accumulators) and its update, the class-weight schedule (DRW, CB), the post-hoc step applied at
evaluation (a `PostHoc`: the function and the hyperparameter it sweeps), whether it is a joint or
a decoupled stage-2 method, which training it can reuse, and the hyperparameters it reads
(each an `HParam`: name, default, domain). The train loop reads these fields and never branches on
the method's name; adding a method is one `register_method` call.

Hyperparameters share one flat namespace across methods (a recipe's `config.hparams.<name>`, e.g.
`cb_beta` is read by CB, DRW, LDAM-DRW and ALA): a name declared by two methods must be the same
declaration. Defaults are the official codes' (docs/methods.md §2). `hparams(overrides)` checks
every value against its domain, whatever the method, so a bad value fails before anything is built.
"""
from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ltjax import _domains
from ltjax import losses
from ltjax import models
from ltjax import posthoc
from ltjax import priors
from ltjax._domains import Grid
from ltjax._domains import Integer as Integer  # re-exported by ltjax.train
from ltjax._domains import OneOf as OneOf  # re-exported by ltjax.train
from ltjax._domains import Real as Real  # re-exported by ltjax.train
from ltjax.data._device import SAMPLERS

# Stages: "joint" trains the whole network; "stage2" restores a stage-1 checkpoint and trains the
# head with the backbone frozen (BN in train mode, as the official code); "posthoc" trains nothing
# and only re-evaluates a stage-1 checkpoint (tau-norm).
STAGES = ("joint", "stage2", "posthoc")


@dataclasses.dataclass(frozen=True)
class HParam:
  """One hyperparameter: its name under `config.hparams`, default and domain.

  Attributes:
    name: the key (`config.hparams.<name>`).
    default: the official code's value; must lie in `domain`.
    domain: `Real`, `Integer`, `OneOf` or `Grid` (anything with `contains(value)` and `str`).
    doc: what it is, for messages and docs.
  """
  name: str
  default: Any
  domain: Any
  doc: str = ""

  def __post_init__(self):
    if not self.domain.contains(self.default):
      raise ValueError(f"HParam {self.name!r}: default {self.default!r} is not {self.domain}.")

  def check(self, value) -> None:
    """Raises ValueError naming `hparams.<name>`, the value and the allowed values."""
    if not self.domain.contains(value):
      raise ValueError(f"hparams.{self.name}={value!r} is not allowed: expected "
                       f"{self.domain} ({self.doc}).")


# The hyperparameters of the registered methods (docs/methods.md §2 gives the defaults' sources).
TAU = HParam("tau", 1.0, _domains.TAU, "LA loss temperature / fixed post-hoc tau")
TAU_GRID = HParam("tau_grid", tuple(round(0.1 * i, 1) for i in range(21)), Grid(_domains.TAU),
                  "post-hoc tau sweep on validation (tau-norm's linspace(0, 2, 21))")
FOCAL_GAMMA = HParam("focal_gamma", 1.0, _domains.FOCAL_GAMMA, "focal gamma; kaidic hard-codes 1")
CB_BETA = HParam("cb_beta", 0.9999, _domains.CB_BETA, "class-balanced / DRW beta")
DRW_START_EPOCH = HParam("drw_start_epoch", 160, _domains.START_EPOCH,
                         "0-based epoch from which DRW weights apply")
LDAM_MAX_MARGIN = HParam("ldam_max_margin", 0.5, _domains.MAX_MARGIN, "LDAM largest margin")
SCALE = HParam("scale", 30.0, _domains.SCALE, "LDAM / ALA cosine scale s")
# ALA's quantity factor: "paper" (the default), QF = 1 / log(n / n_min + 1) as ALA's paper
# defines it (Zhao et al., AAAI 2022, §3), because its authors published no code; "openlt" is
# the only code there is, the third-party liming-ai/OpenLT model/loss.py (line 363 @33fa2a9),
# log(2) / log(...): every margin times log 2 (the rarest class's 1 instead of 1.44), the paper's
# line left commented out below it. Both are compared with OpenLT's loss step in
# tests/parity; a recipe that follows OpenLT's configs sets "openlt".
ALA_QUANTITY_FACTOR = HParam("ala_quantity_factor", "paper", _domains.QUANTITY_FACTOR,
                             "ALA quantity-factor normalisation")
EQL_THRESHOLD = HParam("eql_threshold", 5e-3, _domains.EQL_THRESHOLD,
                       "EQL rare-class frequency threshold lambda")
EQL_GAMMA = HParam("eql_gamma", 0.9, _domains.EQL_GAMMA,
                   "EQL probability of dropping a rare negative")
GALA_LAM1 = HParam("gala_lam1", 1.0, _domains.GALA_LAMBDA, "GALA lambda_1")
GALA_LAM2 = HParam("gala_lam2", 1.0, _domains.GALA_LAMBDA, "GALA lambda_2")
GALA_MODE = HParam("gala_mode", "code", _domains.GALA_MODE, "GALA formula")
PRS_TAU = HParam("prs_tau", 1.0, _domains.TAU, "GALA prediction re-balancing exponent")
LOS_DELTA = HParam("los_delta", 0.98, _domains.LOS_DELTA, "LOS label over-smoothing delta")



@dataclasses.dataclass(frozen=True)
class PostHoc:
  """A post-hoc step applied at evaluation, with the hyperparameter it sweeps.

  Attributes:
    name: what results record as the step (e.g. "adjust").
    logits: `(logits f32[N, C], *, log_prior f32[C], tau) -> f32[N, C]` on a whole evaluation
      split, or None.
    params: `(params, *, tau) -> params`, a step on the weights (tau-norm: the network runs
      again for every tau), or None.
    tau: the `HParam` giving the configured tau (used as is when nothing is swept).
    grid: the `HParam` whose values are swept on the validation split (the best balanced
      accuracy wins, ties to the configured tau), or None when the recipe fixes tau (PRS).
  """
  name: str
  tau: HParam
  logits: Callable | None = None
  params: Callable | None = None
  grid: HParam | None = None

  def __post_init__(self):
    if self.logits is None and self.params is None:
      raise ValueError(f"PostHoc {self.name!r} needs a `logits` or a `params` step.")
    for field in ("tau", "grid"):
      value = getattr(self, field)
      if value is not None and not isinstance(value, HParam):
        raise TypeError(f"PostHoc.{field} must be an HParam, got {value!r}.")

  @property
  def hparams(self) -> tuple:
    return (self.tau,) + ((self.grid,) if self.grid is not None else ())


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
    posthoc: the `PostHoc` step applied at evaluation, or None.
    stage: one of `STAGES`.
    reuses: the method whose training run this one can reuse. For a joint method, its training
      is exactly that method's (only the evaluation differs: `reproduce` evaluates that run's
      state); for a stage-2 / post-hoc method, that method's run is its stage 1.
    reuses_when: for a joint method, `(hp, num_epochs) -> bool`: whether the training equals
      `reuses`'s under these settings (None: always).
    reinit_head: stage 2 starts from a freshly initialised head (cRT) instead of stage 1's.
    sampler: "instance" (shuffle) or "class_balanced" (classes drawn uniformly).
    lr_stepped_at: when its official loop steps a per-epoch cosine schedule: "end" (after the
      epoch's batches, LOS) or "start" (before them: classifier-balancing's run_networks.py,
      cRT), passed to `cosine_epoch_lr(stepped_at=...)` unless the recipe's `lr` sets it.
    hparams: the `HParam`s its loss, weights, state or post-hoc step read.
  """
  head: str
  loss: Callable
  class_weights: Callable | None = None
  init_state: Callable = _no_state
  update_state: Callable = _keep_state
  posthoc: PostHoc | None = None
  stage: str = "joint"
  reuses: str | None = None
  reuses_when: Callable | None = None
  reinit_head: bool = False
  sampler: str = "instance"
  lr_stepped_at: str = "end"
  hparams: tuple = ()

  def __post_init__(self):
    object.__setattr__(self, "hparams", tuple(self.hparams))
    for hp in self.hparams:
      if not isinstance(hp, HParam):
        raise TypeError(f"Method.hparams must hold HParam declarations, got {hp!r}.")
    if self.posthoc is not None and not isinstance(self.posthoc, PostHoc):
      raise TypeError(f"Method.posthoc must be a PostHoc or None, got {self.posthoc!r}.")
    if self.posthoc is not None:
      missing = [hp.name for hp in self.posthoc.hparams if hp not in self.hparams]
      if missing:
        raise ValueError(f"Method.hparams must declare its post-hoc step's {missing}.")
    if self.reuses is not None and (not isinstance(self.reuses, str) or not self.reuses):
      raise ValueError(f"Method.reuses must be a method name or None, got {self.reuses!r}.")
    if self.stage != "joint" and not self.reuses:
      raise ValueError(f"A {self.stage} method must name its stage-1 method in `reuses`.")
    if self.reuses_when is not None and (self.stage != "joint" or not self.reuses):
      raise ValueError("Method.reuses_when applies to a joint method that `reuses` another.")
    for field, allowed in (("stage", STAGES), ("sampler", SAMPLERS),
                           ("head", ("linear", "cosine")), ("lr_stepped_at", ("start", "end"))):
      if getattr(self, field) not in allowed:
        raise ValueError(f"Method.{field} must be one of {allowed}, got {getattr(self, field)!r}.")


def _ce(logits, labels, inputs, hp):
  del inputs, hp
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _focal(logits, labels, inputs, hp):
  del inputs
  return losses.focal_loss(logits, labels, gamma=hp["focal_gamma"])


def _balanced_softmax(logits, labels, inputs, hp):
  del hp
  return losses.balanced_softmax_loss(logits, labels, class_counts=inputs.class_counts)


# google-research logit_adjustment (utils.py / main.py @1d4d2f1) shifts by log(pi^tau + 1e-12):
# the epsilon after the power. `losses.logit_adjusted_loss` / `posthoc.adjust_logits` take a log
# prior and scale it, tau * log(pi + 1e-12) (design.md), which differs where pi^tau nears 1e-12:
# at tau = 2 by 0.047 on iNat18's rarest class (2 of 437,513 images), 5e-4 on ImageNet-LT's. The
# registry's LA methods hold the counts (or the log prior with this epsilon) and pass the official
# shift with tau = 1 (tests/parity/test_parity_la_tau.py).
LA_EPS = 1e-12


def _official_la_shift(prior, tau):
  """`log(prior ** tau + 1e-12)`, the LA code's adjustment (`0 ** 0 = 1`, as NumPy's)."""
  return jnp.log(jnp.power(prior, tau) + LA_EPS)


def _la(logits, labels, inputs, hp):
  shift = _official_la_shift(priors.class_prior(inputs.class_counts), hp["tau"])
  return losses.logit_adjusted_loss(logits, labels, log_prior=shift, tau=1.0)


def _ldam(cosine, labels, inputs, hp):
  return losses.ldam_loss(cosine, labels, class_counts=inputs.class_counts,
                          max_margin=hp["ldam_max_margin"], scale=hp["scale"])


def _ala(cosine, labels, inputs, hp):
  return losses.ala_loss(cosine, labels, class_counts=inputs.class_counts,
                         scale=hp["scale"], quantity_factor=hp["ala_quantity_factor"])


def _eql(logits, labels, inputs, hp):
  return losses.equalization_loss(logits, labels, class_counts=inputs.class_counts,
                                  key=inputs.key, threshold=hp["eql_threshold"],
                                  gamma=hp["eql_gamma"])


def _los(logits, labels, inputs, hp):
  del inputs
  return losses.label_over_smooth_loss(logits, labels, delta=hp["los_delta"])


def _gala_kwargs(hp):
  return {"lam1": hp["gala_lam1"], "lam2": hp["gala_lam2"], "mode": hp["gala_mode"]}


def _gala(logits, labels, inputs, hp):
  return losses.gala_loss(logits, labels, inputs.loss_state, **_gala_kwargs(hp))


def _gala_init(num_classes, hp):
  del hp
  return losses.gala_init(num_classes)


def _gala_update(state, logits, labels, hp):
  return losses.gala_update(state, logits, labels, **_gala_kwargs(hp))


def _cb_weights(inputs, hp):
  return losses.class_balanced_weights(inputs.class_counts, beta=hp["cb_beta"])


def _drw_weights(inputs, hp):
  return losses.drw_weights(inputs.class_counts, epoch=inputs.epoch,
                            start_epoch=hp["drw_start_epoch"], beta=hp["cb_beta"])


_GALA = {"loss": _gala, "init_state": _gala_init, "update_state": _gala_update}
_GALA_HP = (GALA_LAM1, GALA_LAM2, GALA_MODE)
_DRW_HP = (CB_BETA, DRW_START_EPOCH)
_POSTHOC_TAU_HP = (TAU, TAU_GRID)


def _adjust(logits, *, log_prior, tau):
  # The train loop passes `priors.log_prior(counts)` = log(pi + LA_EPS), from which pi comes back
  # to rounding; a zero-count class leaves a residue of rounding (< 1e-6 LA_EPS, where no class
  # with a count lies), set to 0 as the official prior's.
  raw = jnp.exp(log_prior) - LA_EPS
  prior = jnp.where(raw > 1e-6 * LA_EPS, raw, 0.0)
  return posthoc.adjust_logits(logits, log_prior=_official_la_shift(prior, tau), tau=1.0)


def _rebalance(logits, *, log_prior, tau):
  del log_prior
  return posthoc.rebalance(logits, tau=tau)


def _tau_norm(params, *, tau):
  return models.tau_normalized_params(params, tau=tau)


def _drw_never_starts(hp, num_epochs) -> bool:
  """DRW from an epoch the run never reaches: weights are ones throughout, i.e. plain CE."""
  return hp["drw_start_epoch"] >= num_epochs


# Post-hoc LA (LA paper) and tau-norm (decoupling paper) sweep tau on validation; GALA's PRS
# keeps the recipe's exponent.
ADJUST = PostHoc("adjust", tau=TAU, logits=_adjust, grid=TAU_GRID)
TAU_NORM = PostHoc("tau_norm", tau=TAU, params=_tau_norm, grid=TAU_GRID)
REBALANCE = PostHoc("rebalance", tau=PRS_TAU, logits=_rebalance)

METHODS: dict[str, Method] = {}
"""Every registered method by name (mutated only through `register_method`)."""


def _declared(methods) -> dict[str, HParam]:
  """Every hyperparameter the `methods` declare, by name."""
  return {hp.name: hp for m in methods for hp in m.hparams}


def _check_consistent(name: str, method: Method) -> None:
  known = _declared(m for n, m in METHODS.items() if n != name)
  for hp in method.hparams:
    if hp.name in known and known[hp.name] != hp:
      raise ValueError(f"Method {name!r} declares hyperparameter {hp.name!r} as {hp}, but it "
                       f"is already declared as {known[hp.name]}; one name, one declaration.")


class _Registration(contextlib.AbstractContextManager):
  """Returned by `register_method`; as a context manager it undoes the registration on exit."""

  def __init__(self, name: str, method: Method, previous: Method | None):
    self.name, self.method, self._previous = name, method, previous

  def __enter__(self) -> Method:
    return self.method

  def __exit__(self, *exc):
    if self._previous is None:
      METHODS.pop(self.name, None)
    else:
      METHODS[self.name] = self._previous


def register_method(name: str, method: Method, *, replace: bool = False) -> _Registration:
  """Adds `method` to the registry under `name`.

  Used as a statement it registers for good; used as `with register_method(name, m):` the
  method is registered inside the block only (the previous entry, if replaced, comes back).
  A hyperparameter name it shares with a registered method must be the same `HParam`.

  Raises:
    ValueError: `name` already registered (unless `replace`), or a conflicting `HParam`.
    TypeError: `method` is not a `Method`.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"A method name must be a non-empty string, got {name!r}.")
  if not isinstance(method, Method):
    raise TypeError(f"register_method({name!r}, ...) needs an ltjax.train.Method, got "
                    f"{type(method).__name__}.")
  previous = METHODS.get(name)
  if previous is not None and not replace:
    raise ValueError(f"Method {name!r} is already registered; pass replace=True to replace it.")
  _check_consistent(name, method)
  METHODS[name] = method
  return _Registration(name, method, previous)


for _name, _method in {
    "ce": Method(head="linear", loss=_ce),
    "focal": Method(head="linear", loss=_focal, hparams=(FOCAL_GAMMA,)),
    "cb": Method(head="linear", loss=_ce, class_weights=_cb_weights, hparams=(CB_BETA,)),
    "ce_drw": Method(head="linear", loss=_ce, class_weights=_drw_weights, hparams=_DRW_HP,
                     reuses="ce", reuses_when=_drw_never_starts),
    "ldam_drw": Method(head="cosine", loss=_ldam, class_weights=_drw_weights,
                       hparams=(LDAM_MAX_MARGIN, SCALE) + _DRW_HP),
    "balanced_softmax": Method(head="linear", loss=_balanced_softmax),
    "la_loss": Method(head="linear", loss=_la, hparams=(TAU,)),
    "la_posthoc": Method(head="linear", loss=_ce, posthoc=ADJUST, hparams=_POSTHOC_TAU_HP,
                         reuses="ce"),
    "eql": Method(head="linear", loss=_eql, hparams=(EQL_THRESHOLD, EQL_GAMMA)),
    "gala": Method(head="linear", hparams=_GALA_HP, **_GALA),
    "gala_prs": Method(head="linear", posthoc=REBALANCE, hparams=_GALA_HP + (PRS_TAU,),
                       reuses="gala", **_GALA),
    "ala": Method(head="cosine", loss=_ala, class_weights=_drw_weights,
                  hparams=(SCALE, ALA_QUANTITY_FACTOR) + _DRW_HP),
    "los": Method(head="linear", loss=_los, stage="stage2", hparams=(LOS_DELTA,), reuses="ce"),
    # classifier-balancing run_networks.py @f162ade steps its scheduler at each epoch's start.
    "crt": Method(head="linear", loss=_ce, stage="stage2", reinit_head=True,
                  sampler="class_balanced", lr_stepped_at="start", reuses="ce"),
    "tau_norm": Method(head="linear", loss=_ce, stage="posthoc", posthoc=TAU_NORM,
                       hparams=_POSTHOC_TAU_HP, reuses="ce"),
}.items():
  register_method(_name, _method)


def joint_reuse(hp, num_epochs: int) -> dict[str, str]:
  """`{method: source}` for every joint method whose training equals `source`'s under the
  hyperparameters `hp` and `num_epochs` (its `reuses`, when `reuses_when` holds)."""
  return {name: m.reuses for name, m in METHODS.items()
          if m.stage == "joint" and m.reuses is not None
          and (m.reuses_when is None or m.reuses_when(hp, num_epochs))}


def stage1_sources() -> dict[str, str]:
  """`{method: stage-1 method}` for every stage-2 / post-hoc method."""
  return {name: m.reuses for name, m in METHODS.items()
          if m.stage != "joint" and m.reuses is not None}


def get_method(name: str) -> Method:
  """The registered method `name`; raises ValueError listing the known names otherwise."""
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}; expected one of {sorted(METHODS)}.")
  return METHODS[name]


def declared_hparams() -> dict[str, HParam]:
  """Every hyperparameter declared by a registered method, by name."""
  return _declared(METHODS.values())


class _DefaultHParams(collections.abc.Mapping):
  """The defaults of every registered method's hyperparameters, read live from the registry
  (so a method registered later contributes its own)."""

  def __getitem__(self, key):
    return declared_hparams()[key].default

  def __iter__(self):
    return iter(declared_hparams())

  def __len__(self):
    return len(declared_hparams())

  def __repr__(self):
    return f"DEFAULT_HPARAMS({dict(self)!r})"


DEFAULT_HPARAMS = _DefaultHParams()


def hparams(overrides=None, *, method: Method | None = None) -> dict:
  """Every registered hyperparameter: its default, updated with `overrides` (a dict or
  ConfigDict, e.g. a recipe's `config.hparams`). `method`, when given, adds the hyperparameters
  of a method that is not (or not yet) registered.

  Every value is checked against its declared domain whatever the method, so a bad value in an
  unused key fails too (a sweep never carries a silently ignored NaN).

  Raises:
    ValueError: an unknown key (listing the known ones) or a value outside its domain (naming
      `hparams.<name>`, the value and the allowed values).
  """
  declared = declared_hparams()
  if method is not None:
    declared.update({p.name: p for p in method.hparams})
  hp = {name: p.default for name, p in declared.items()}
  for key, value in dict(overrides or {}).items():
    if key not in declared:
      raise ValueError(f"Unknown hyperparameter {key!r}; expected one of {sorted(declared)}.")
    value = tuple(value) if isinstance(value, list) else value
    declared[key].check(value)
    hp[key] = value
  return hp
