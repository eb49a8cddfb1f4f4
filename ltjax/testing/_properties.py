"""Exact properties of a per-example softmax loss: reductions, invariances, gradients,
transformations, finiteness, and gradient-free class statistics.

Every check takes `loss_fn(logits f[B, C], labels int[B], *, class_counts) -> f[B]`, evaluates it
on seeded inputs (or on `cases` you pass, e.g. drawn by the hypothesis strategies), raises
`AssertionError` saying what failed, on which input and by how much, and returns a `Report`.
Exact properties are evaluated in float64 (inside `jax.enable_x64`), so their tolerance (1e-6 by
default, 1e-4 if the loss returns float32) is far below what a wrong formula produces.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from ltjax import _mesh
from ltjax.testing import _cases
from ltjax.testing._cases import Case
from ltjax.testing._cases import Report

SHARDING_MODES = ("auto", "explicit")
SHARDING_HOWTO = (
    "to simulate devices on a CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=8 or "
    "call jax.config.update('jax_num_cpu_devices', 8) before JAX first uses its backend (e.g. "
    "in conftest.py); pass sharding=() to skip this check without a warning")


class ShardingCheckSkipped(UserWarning):
  """`check_transformations` could not shard the batch: only one device is visible.

  Examples:
    >>> import warnings
    >>> from ltjax import testing
    >>> issubclass(testing.ShardingCheckSkipped, UserWarning)
    True
    >>> with warnings.catch_warnings():  # e.g. accept the skip on a one-device machine
    ...   warnings.simplefilter("ignore", testing.ShardingCheckSkipped)
  """


def _float64(case: Case) -> tuple:
  return (jnp.asarray(case.logits, jnp.float64), jnp.asarray(case.labels),
          jnp.asarray(case.class_counts))


def _evaluator(loss_fn: Callable, **kwargs) -> Callable:
  """`jax.jit((z, y, n) -> loss_fn(z, y, class_counts=n, **kwargs))`, one per loss and kwargs, so
  that the checks of `check_all` share its compilations."""
  try:
    return _cached_evaluator(loss_fn, tuple(sorted(kwargs.items())))
  except TypeError:  # unhashable hyperparameters
    return jax.jit(lambda z, y, n: _cases.call(loss_fn, z, y, n, **kwargs))


@functools.lru_cache(maxsize=32)
def _cached_evaluator(loss_fn: Callable, kwargs: tuple) -> Callable:
  return jax.jit(lambda z, y, n: _cases.call(loss_fn, z, y, n, **dict(kwargs)))


def _tolerances(values, rtol, atol) -> tuple[float, float]:
  default = _cases.tolerance(jnp.asarray(values).dtype)
  return (default if rtol is None else rtol), (default if atol is None else atol)


def _draw_options(cases, *, inputs, num_cases, batch_size, num_classes, seed) -> list[Case]:
  return _cases.resolve_cases(cases, num_cases=num_cases, batch_size=batch_size,
                              num_classes=num_classes, inputs=inputs, seed=seed)


def _compare_each_case(draws: list[Case], evaluate: Callable, *, check: str, rtol, atol,
                       hint: str) -> float:
  """Runs `evaluate(i, case, z, y, n) -> (got, want, where)` on every drawn case in float64 and
  asserts `got == want`; returns the worst relative difference."""
  worst = 0.0
  for i, case in enumerate(draws):
    z, y, n = _float64(case)
    got, want, where = evaluate(i, case, z, y, n)
    r, a = _tolerances(got, rtol, atol)
    worst = max(worst, _cases.assert_close(got, want, rtol=r, atol=a, check=check, where=where,
                                           hint=hint))
  return worst


def check_reduces_to(loss_fn: Callable, reference_fn: Callable, *, at: dict | None = None,
                     class_counts=None, cases: Sequence[Case] | None = None,
                     inputs: str = "logits", num_cases: int = 3, batch_size: int = 16,
                     num_classes: int = 5, seed: int = 0, rtol: float | None = None,
                     atol: float | None = None) -> Report:
  """Checks `loss_fn(z, y, class_counts=n, **at) == reference_fn(z, y[, class_counts=n])`.

  The equivalence of a loss with a known one at neutral hyperparameters, e.g. the LA loss at
  `tau = 0` is cross-entropy (Menon et al. 2021, eq. (10)), or Balanced Softmax with uniform counts
  (`class_counts=np.full(C, 10)`) is cross-entropy. `reference_fn` may omit `class_counts`
  (e.g. `optax.softmax_cross_entropy_with_integer_labels`).

  Examples:
    >>> import optax
    >>> from ltjax import losses, testing
    >>> report = testing.check_reduces_to(  # focal loss at gamma = 0 is cross-entropy
    ...     losses.focal_loss, optax.softmax_cross_entropy_with_integer_labels, at={"gamma": 0.0},
    ...     num_cases=1, batch_size=4, num_classes=3)
    >>> report.check, report.max_error < 1e-10
    ('check_reduces_to', True)
  """
  at = dict(at or {})
  draws = _draw_options(cases, inputs=inputs, num_cases=num_cases, batch_size=batch_size,
                        num_classes=len(class_counts) if class_counts is not None else num_classes,
                        seed=seed)
  if class_counts is not None:
    draws = [c._replace(class_counts=np.asarray(class_counts)) for c in draws]
  with jax.enable_x64(True):
    loss, reference = _evaluator(loss_fn, **at), _evaluator(reference_fn)
    worst = _compare_each_case(
        draws, lambda i, case, z, y, n: (loss(z, y, n), reference(z, y, n),
                                         _cases.describe(i, case)),
        check=f"check_reduces_to(at={at})", rtol=rtol, atol=atol,
        hint="The loss does not reduce to the reference there.")
  return Report("check_reduces_to", len(draws), worst, {"at": at})


def check_shift_invariance(loss_fn: Callable, *, max_shift: float = 50.0,
                           cases: Sequence[Case] | None = None, inputs: str = "logits",
                           num_cases: int = 3, batch_size: int = 16, num_classes: int = 5,
                           seed: int = 0, rtol: float | None = None,
                           atol: float | None = None) -> Report:
  """Checks `loss(z + c 1^T, y) == loss(z, y)` for a per-example constant `c in [-max_shift,
  max_shift]`: softmax is unchanged by a per-row constant, so every softmax-based loss whose
  adjustments are per-class constants must be too (true of LA, Balanced Softmax, the pairwise
  margin form, LDAM on cosines; false of ALA, whose difficulty factor reads the target cosine).

  Examples:
    >>> from ltjax import losses, priors, testing
    >>> def la_loss(logits, labels, *, class_counts):
    ...   log_prior = priors.log_prior(class_counts)
    ...   return losses.logit_adjusted_loss(logits, labels, log_prior=log_prior)
    >>> small = dict(num_cases=1, batch_size=4, num_classes=3)
    >>> report = testing.check_shift_invariance(la_loss, max_shift=50.0, **small)
    >>> report.details, report.max_error < 1e-10
    ({'max_shift': 50.0}, True)
  """
  draws = _draw_options(cases, inputs=inputs, num_cases=num_cases, batch_size=batch_size,
                        num_classes=num_classes, seed=seed)
  rng = np.random.default_rng(seed + 1)

  def shifted(i, case, z, y, n):
    shift = rng.uniform(-max_shift, max_shift, size=(z.shape[0], 1))
    return (loss(z + shift, y, n), loss(z, y, n),
            f"{_cases.describe(i, case)}, per-example shifts up to {max_shift:g}")

  with jax.enable_x64(True):
    loss = _evaluator(loss_fn)
    worst = _compare_each_case(
        draws, shifted, check="check_shift_invariance", rtol=rtol, atol=atol,
        hint="Adding a constant to every logit of an example changes its loss: the loss is "
             "not invariant to per-row shifts as a softmax loss is.")
  return Report("check_shift_invariance", len(draws), worst, {"max_shift": max_shift})


def check_class_permutation_equivariance(loss_fn: Callable, *,
                                         cases: Sequence[Case] | None = None,
                                         inputs: str = "logits", num_cases: int = 3,
                                         batch_size: int = 16, num_classes: int = 5,
                                         seed: int = 0, rtol: float | None = None,
                                         atol: float | None = None) -> Report:
  """Checks `loss(z[:, p], p^-1[y], n[p]) == loss(z, y, n)` for random permutations `p`: renaming
  the classes (logits, labels and class statistics jointly) must not change any loss. Fails for
  a loss that depends on class indices rather than class statistics.

  Examples:
    >>> from ltjax import losses, priors, testing
    >>> def la_loss(logits, labels, *, class_counts):
    ...   log_prior = priors.log_prior(class_counts)
    ...   return losses.logit_adjusted_loss(logits, labels, log_prior=log_prior)
    >>> small = dict(num_cases=1, batch_size=4, num_classes=3)
    >>> report = testing.check_class_permutation_equivariance(la_loss, **small)
    >>> report.check, report.max_error < 1e-10
    ('check_class_permutation_equivariance', True)
  """
  draws = _draw_options(cases, inputs=inputs, num_cases=num_cases, batch_size=batch_size,
                        num_classes=num_classes, seed=seed)
  rng = np.random.default_rng(seed + 2)

  def permuted(i, case, z, y, n):
    perm = rng.permutation(z.shape[-1])
    inverse = jnp.asarray(np.argsort(perm))
    return (loss(z[:, perm], inverse[y], n[perm]), loss(z, y, n),
            f"{_cases.describe(i, case)}, permutation {perm.tolist()}")

  with jax.enable_x64(True):
    loss = _evaluator(loss_fn)
    worst = _compare_each_case(
        draws, permuted, check="check_class_permutation_equivariance", rtol=rtol, atol=atol,
        hint="Permuting classes in the logits, labels and counts jointly changes the loss: it "
             "depends on the class indices, not only on the class statistics.")
  return Report("check_class_permutation_equivariance", len(draws), worst)


def check_gradients(loss_fn: Callable, *, closed_form: Callable | None = None,
                    eps: float = 1e-6, cases: Sequence[Case] | None = None,
                    inputs: str = "logits", num_cases: int = 3, batch_size: int = 16,
                    num_classes: int = 5, seed: int = 0, rtol: float | None = None,
                    atol: float | None = None) -> Report:
  """Checks the loss's gradient with respect to the logits, in float64.

  Without `closed_form`: `jax.test_util.check_grads` (reverse mode, order 1) compares the VJP of
  the per-example losses with central finite differences of step `eps` along random directions;
  in float64 the truncation and rounding errors (~1e-9) are far below the default tolerance, so a
  wrong gradient (a custom VJP off by a constant, a misplaced `stop_gradient`) cannot pass. With
  `closed_form(logits, labels, *, class_counts) -> f[B, C]`, compares `grad sum(loss)` with it
  instead: for losses whose gradient is deliberately not the derivative (e.g. ALA stops the
  gradient at its difficulty factor). A loss that returns float32 from float64 inputs is checked
  with step 1e-3 and tolerance 1e-2, what float32 differences allow.

  Examples:
    >>> from ltjax import losses, priors, testing
    >>> def la_loss(logits, labels, *, class_counts):
    ...   log_prior = priors.log_prior(class_counts)
    ...   return losses.logit_adjusted_loss(logits, labels, log_prior=log_prior)
    >>> small = dict(num_cases=1, batch_size=4, num_classes=3)
    >>> report = testing.check_gradients(la_loss, **small)
    >>> report.details["reference"]
    'finite differences, eps 1e-06'
  """
  draws = _draw_options(cases, inputs=inputs, num_cases=num_cases, batch_size=batch_size,
                        num_classes=num_classes, seed=seed)
  worst = 0.0
  with jax.enable_x64(True):
    grad = jax.jit(jax.grad(lambda z, y, n: jnp.sum(_cases.call(loss_fn, z, y, n))))
    loss = _evaluator(loss_fn)  # compiled once: check_grads calls it and its VJP repeatedly
    step = eps
    for i, case in enumerate(draws):
      z, y, n = _float64(case)
      where = _cases.describe(i, case)
      if closed_form is not None:
        got = grad(z, y, n)
        r, a = _tolerances(got, rtol, atol)
        worst = max(worst, _cases.assert_close(
            got, _cases.call(closed_form, z, y, n), rtol=r, atol=a, check="check_gradients",
            where=f"{where}, against the closed form",
            hint="jax.grad of the summed loss differs from the given closed-form gradient."))
        continue
      values = loss(z, y, n)
      r, a = _tolerances(values, rtol, atol)
      step = eps
      if values.dtype != jnp.float64:  # a loss that computes in float32 whatever its inputs
        step, r, a = max(eps, 1e-3), max(r, 1e-2), max(a, 1e-2)
      try:
        check_grads(lambda v, y=y, n=n: loss(v, y, n), (z,), order=1,
                    modes=("rev",), eps=step, atol=a, rtol=r)
      except AssertionError as error:
        raise AssertionError(
            f"check_gradients: {where}: the gradient of the losses w.r.t. the logits does not "
            f"match central finite differences (step {step:g}, {values.dtype}, tolerance "
            f"{r:g}): "
            f"{error}") from error
  reference = "closed form" if closed_form else f"finite differences, eps {step:g}"
  return Report("check_gradients", len(draws), worst, {"reference": reference})


def check_no_gradient_to_statistics(loss_fn: Callable, *, cases: Sequence[Case] | None = None,
                                    inputs: str = "logits", num_cases: int = 2,
                                    batch_size: int = 16, num_classes: int = 5,
                                    seed: int = 0) -> Report:
  """Checks that `d sum(loss) / d class_counts == 0` exactly: the class statistics are data, not
  parameters (ltjax's and optax's convention), so a loss must `stop_gradient` them; otherwise a
  caller that differentiates through a learnt prior or counts gets a silent extra term.

  Examples:
    >>> from ltjax import losses, priors, testing
    >>> def la_loss(logits, labels, *, class_counts):
    ...   log_prior = priors.log_prior(class_counts)
    ...   return losses.logit_adjusted_loss(logits, labels, log_prior=log_prior)
    >>> small = dict(num_cases=1, batch_size=4, num_classes=3)
    >>> testing.check_no_gradient_to_statistics(la_loss, **small).max_error
    0.0
  """
  draws = _draw_options(cases, inputs=inputs, num_cases=num_cases, batch_size=batch_size,
                        num_classes=num_classes, seed=seed)
  with jax.enable_x64(True):
    grad = jax.jit(jax.grad(lambda n, z, y: jnp.sum(_cases.call(loss_fn, z, y, n))))
    for i, case in enumerate(draws):
      z, y, n = _float64(case)
      g = np.asarray(grad(n.astype(jnp.float64), z, y))
      if not np.all(g == 0):
        raise AssertionError(
            f"check_no_gradient_to_statistics: {_cases.describe(i, case)}: a gradient reaches "
            f"class_counts: d sum(loss) / d counts = {np.round(g, 6).tolist()}; wrap the class "
            f"statistics in jax.lax.stop_gradient.")
  return Report("check_no_gradient_to_statistics", len(draws))


def check_finite_extremes(loss_fn: Callable, *, inputs: str = "logits", batch_size: int = 16,
                          num_classes: int = 5, seed: int = 0, bfloat16_rtol: float = 5e-2
                          ) -> Report:
  """Checks that losses and their logit gradients stay finite in float32 at the extremes:

  - "huge_logits": `|logits| = 1e4` (cosine inputs: `|cos| = 1`) at imbalance ratio 100;
  - "bfloat16": bfloat16 inputs give finite losses within `bfloat16_rtol` of the float32 call on
    the same values, and bfloat16 gradients;
  - "empty_class": a class with count 0 (never a label);
  - "imbalance_1e4": counts from 1e4 down to 1.

  Examples:
    >>> from ltjax import losses, priors, testing
    >>> def la_loss(logits, labels, *, class_counts):
    ...   log_prior = priors.log_prior(class_counts)
    ...   return losses.logit_adjusted_loss(logits, labels, log_prior=log_prior)
    >>> testing.check_finite_extremes(la_loss, batch_size=4, num_classes=3).details["scenarios"]
    ('huge_logits', 'bfloat16', 'empty_class', 'imbalance_1e4')
  """
  _cases.check_inputs_kind(inputs)
  rng = np.random.default_rng(seed + 3)
  scores = rng.standard_normal((batch_size, num_classes))
  labels = (np.arange(batch_size) % num_classes).astype(np.int32)
  ratio_100 = _cases.longtail_counts(num_classes, 100.0)
  empty = _cases.longtail_counts(num_classes, 100.0)
  empty[num_classes // 2] = 0
  with_label = np.flatnonzero(empty)
  empty_labels = with_label[np.arange(batch_size) % len(with_label)].astype(np.int32)
  huge = np.sign(scores) if inputs == "cosine" else np.sign(scores) * 1e4
  scenarios = {
      "huge_logits": (huge, labels, ratio_100, jnp.float32),
      "bfloat16": (_cases.to_inputs(scores * 4, inputs), labels, ratio_100, jnp.bfloat16),
      "empty_class": (_cases.to_inputs(scores * 5, inputs), empty_labels, empty, jnp.float32),
      "imbalance_1e4": (_cases.to_inputs(scores * 5, inputs), labels,
                        _cases.longtail_counts(num_classes, 1e4, max_count=10_000), jnp.float32),
  }

  @jax.jit
  def value_and_grad(z, y, n):
    values = _cases.call(loss_fn, z, y, n)
    return values, jax.grad(lambda v: jnp.sum(_cases.call(loss_fn, v, y, n)))(z)

  for scenario, (x, y, n, dtype) in scenarios.items():
    where = f"scenario {scenario!r} (counts {n.tolist()})"
    values, grad = value_and_grad(jnp.asarray(x, dtype), y, n)
    for what, array in (("losses", values), ("gradients", grad)):
      bad = ~np.isfinite(np.asarray(array, np.float32))
      if bad.any():
        raise AssertionError(
            f"check_finite_extremes: {where}: {int(bad.sum())} of {bad.size} {what} are not "
            f"finite (first at index {np.argwhere(bad)[0].tolist()}).")
    if dtype == jnp.bfloat16:
      if grad.dtype != jnp.bfloat16:
        raise AssertionError(f"check_finite_extremes: {where}: gradient dtype {grad.dtype}, "
                             "expected the inputs' bfloat16.")
      want, _ = value_and_grad(jnp.asarray(x, dtype).astype(jnp.float32), y, n)
      _cases.assert_close(values, want, rtol=bfloat16_rtol, atol=bfloat16_rtol,
                          check="check_finite_extremes", where=where,
                          hint="bfloat16 inputs give losses far from float32 inputs with the "
                               "same values: compute the loss in float32.")
  return Report("check_finite_extremes", len(scenarios), 0.0, {"scenarios": tuple(scenarios)})


def check_transformations(loss_fn: Callable, *, sharding: Sequence[str] = SHARDING_MODES,
                          cases: Sequence[Case] | None = None, inputs: str = "logits",
                          num_cases: int = 2, batch_size: int | None = None,
                          num_classes: int = 5, seed: int = 0, rtol: float | None = None,
                          atol: float | None = None) -> Report:
  """Checks that the loss gives the same losses and gradients under `jax.jit`, `jax.vmap`,
  `jax.grad` and with the batch sharded over every available device.

  - `jax.jit` with the class counts traced (statistics are arrays, not Python constants): one
    loss per example (`f[B]` for `B` labels);
  - `jax.vmap` over examples (each example as a batch of one), value and `jax.grad`: equal to the
    batched call and the gradient of the summed loss, i.e. an example's loss does not depend on
    the rest of the batch and no Python control flow reads values; gradients finite;
  - sharded: the batch split over a 1-D mesh of all `jax.devices()` on axis "data" (with
    `jax.sharding.AxisType.Auto` and, under `jax.set_mesh`, `Explicit`, as listed in `sharding`),
    counts replicated, loss and gradient equal to the single-device result. With one device
    this part is skipped with a :class:`ShardingCheckSkipped` warning that says how to simulate
    several, and the report's `details["sharding_skipped"]` says why.

  Examples:
    >>> from ltjax import losses, priors, testing
    >>> def la_loss(logits, labels, *, class_counts):
    ...   log_prior = priors.log_prior(class_counts)
    ...   return losses.logit_adjusted_loss(logits, labels, log_prior=log_prior)
    >>> small = dict(num_cases=1, batch_size=4, num_classes=3)
    >>> report = testing.check_transformations(la_loss, sharding=(), **small)
    >>> report.check, report.details["sharding"]
    ('check_transformations', ())
  """
  unknown = set(sharding) - set(SHARDING_MODES)
  if unknown:
    raise ValueError(f"`sharding` entries must be in {SHARDING_MODES}, got {sorted(unknown)}.")
  devices = jax.device_count()
  if batch_size is None:
    batch_size = 2 * devices
  draws = _draw_options(cases, inputs=inputs, num_cases=num_cases, batch_size=batch_size,
                        num_classes=num_classes, seed=seed)
  name = "check_transformations"
  worst = 0.0

  def attempt(transformation, where, fn, *args):
    try:
      return fn(*args)
    except Exception as error:  # re-raised as the check's AssertionError
      first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
      raise AssertionError(f"{name}: {where}: the loss fails under {transformation}: "
                           f"{type(error).__name__}: {first_line}") from error

  with jax.enable_x64(True):
    grad_fn = jax.grad(lambda z, y, n: jnp.sum(_cases.call(loss_fn, z, y, n)))
    jitted = jax.jit(lambda z, y, n: (_cases.call(loss_fn, z, y, n), grad_fn(z, y, n)))
    # Each example as a batch of one, and its gradient: rows of the batched call and its grad.
    def per_example(zi, yi, n):
      return _cases.call(loss_fn, zi[None], yi[None], n)[0]
    vmapped = jax.jit(jax.vmap(jax.value_and_grad(per_example), in_axes=(0, 0, None)))
    sharded_fns = {mode: _sharded(loss_fn, mode) for mode in sharding if devices > 1}
    for i, case in enumerate(draws):
      z, y, n = _float64(case)
      where = _cases.describe(i, case)
      try:
        shape = jax.eval_shape(lambda z, y, n: _cases.call(loss_fn, z, y, n), z, y, n).shape
      except Exception:  # noqa: BLE001  # any failure is reported by the transformations below
        shape = y.shape
      if shape != y.shape:
        raise AssertionError(f"{name}: {where}: the loss returned shape {shape}; a per-example "
                             f"loss returns one value per label, {y.shape}.")
      # vmap first: a Python branch on values is then reported as the vmap failure it also is.
      vmap_value, vmap_grad = attempt("jax.vmap over examples", where, vmapped, z, y, n)
      value, grad = attempt("jax.jit", where, jitted, z, y, n)
      r, a = _tolerances(value, rtol, atol)
      close = functools.partial(_cases.assert_close, rtol=r, atol=a, check=name)
      hint = ("vmap over single examples differs from the batched call: an example's loss "
              "depends on the rest of the batch.")
      worst = max(worst, close(vmap_value, value, where=f"{where}, jax.vmap over examples",
                               hint=hint))
      worst = max(worst, close(vmap_grad, grad, where=f"{where}, jax.vmap(jax.grad) over "
                               "examples against jax.grad of the summed loss", hint=hint))
      if not np.isfinite(np.asarray(grad)).all():
        raise AssertionError(f"{name}: {where}: jax.grad gives non-finite gradients.")
      if devices == 1:
        continue
      if z.shape[0] % devices:
        raise ValueError(f"{name}: batch {z.shape[0]} is not divisible by {devices} devices.")
      for mode in sharding:
        got, got_grad = attempt(f"a batch sharded over {devices} devices ({mode} axes)", where,
                                sharded_fns[mode], z, y, n)
        label = f"{where}, batch sharded over {devices} devices ({mode} axes)"
        worst = max(worst, close(got, value, where=label))
        worst = max(worst, close(got_grad, grad, where=f"{label}, gradient"))
  details = {"devices": devices, "sharding": tuple(sharding) if devices > 1 else ()}
  if devices == 1 and sharding:
    details["sharding_skipped"] = (f"only 1 device is visible, so the sharded-batch check "
                                   f"({', '.join(sharding)} axes) did not run; {SHARDING_HOWTO}.")
    warnings.warn(f"{name}: {details['sharding_skipped']}", ShardingCheckSkipped, stacklevel=2)
  return Report(name, len(draws), worst, details)


def _sharded(loss_fn, mode):
  """`(z, y, n) -> (loss, grad)` on host, computed with the batch sharded over all devices."""
  axis_type = getattr(jax.sharding.AxisType, mode.capitalize())
  mesh = jax.make_mesh((jax.device_count(),), (_mesh.DATA_AXIS,), axis_types=(axis_type,))
  batch, replicated = _mesh.batch_sharded(mesh), _mesh.replicated(mesh)

  @jax.jit
  def value_and_grad(z, y, n):
    values = _cases.call(loss_fn, z, y, n)
    return values, jax.grad(lambda v: jnp.sum(_cases.call(loss_fn, v, y, n)))(z)

  def run(z, y, n):
    args = (jax.device_put(z, batch), jax.device_put(y, batch), jax.device_put(n, replicated))
    if mode == "explicit":
      with jax.set_mesh(mesh):
        return jax.device_get(value_and_grad(*args))
    return jax.device_get(value_and_grad(*args))
  return run
