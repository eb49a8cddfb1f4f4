"""Losses on cosine logits that subtract a margin from the target: LDAM and ALA."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from ltjax import _checks
from ltjax import _domains
from ltjax.losses import _inputs
from ltjax.losses import _softmax

_QUANTITY_FACTORS = _domains.QUANTITY_FACTOR.values


def ldam_margins(class_counts: jax.typing.ArrayLike, *, max_margin: float = 0.5) -> jax.Array:
  r"""LDAM's per-class margins.

  .. math::
    m_c = m_{\max} \, (n_{\min} / n_c)^{1/4},

  i.e. `n_c^(-1/4)` rescaled so that the rarest class gets `max_margin` (kaidic `LDAMLoss`).
  A zero-count class is given the rarest observed class's margin, `max_margin` (the formula
  diverges at `n = 0`; such a class never occurs as a label).

  Args:
    class_counts: `[C]` training counts (>= 0, not all zero).
    max_margin: the largest margin, a finite scalar >= 0.

  Returns:
    `f32[C]` (f64 under x64) margins in `(0, max_margin]`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import losses
    >>> jnp.set_printoptions(precision=4)
    >>> print(losses.ldam_margins(jnp.array([100, 10, 1]), max_margin=0.5))
    [0.1581 0.2812 0.5   ]
  """
  max_margin = _checks.check_hyperparameter(max_margin, "max_margin", _domains.MAX_MARGIN)
  counts = _inputs.positive_counts(class_counts, None)
  return max_margin * (jnp.min(counts) / counts) ** 0.25


def quantity_factors(class_counts: jax.typing.ArrayLike, *, quantity_factor: str = "paper"
                     ) -> jax.Array:
  r"""ALA's quantity factor per class.

  .. math::
    QF_c = \frac{1}{\log(n_c / n_{\min} + 1)} \ (\text{"paper"}), \qquad
    QF_c = \frac{\log 2}{\log(n_c / n_{\min} + 1)} \ (\text{"openlt"}).

  "openlt" (liming-ai/OpenLT, the only public code) normalises the rarest class to `QF = 1`; the
  paper's form gives it `1 / log 2`. Zero-count classes get the rarest observed class's factor.

  Args:
    class_counts: `[C]` training counts (>= 0, not all zero).
    quantity_factor: "paper" or "openlt".

  Returns:
    `f32[C]` (f64 under x64) factors, largest for the rarest class.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import losses
    >>> jnp.set_printoptions(precision=4)
    >>> print(losses.quantity_factors(jnp.array([100, 10, 1]), quantity_factor="openlt"))
    [0.1502 0.2891 1.    ]
  """
  _checks.check_choice(quantity_factor, "quantity_factor", _domains.QUANTITY_FACTOR)
  counts = _inputs.positive_counts(class_counts, None)
  numerator = 1.0 if quantity_factor == "paper" else math.log(2.0)
  return numerator / jnp.log1p(counts / jnp.min(counts))


def _scaled_target_margin_ce(cosine, labels, target_margin, scale):
  r"""CE of `scale * (cosine - target_margin[..., None] * onehot(labels))`.

  .. math::
    \ell = \mathrm{lse}(a) - t, \qquad a_j = s x_j \ (j \ne y), \quad a_y = t = s (x_y - m_y).

  Three choices keep this at optax's number of passes over `[..., C]` (each was measured in
  `experiments/bench/losses.py`):

  * the target logit is gathered from `cosine`, not from `a`, so the gradient's multiply by `s`
    fuses into the softmax pass;
  * the stabiliser is a bound, not `max(a)` (`_softmax.stabiliser`):
    `max(t, s max x if max x > x_y) <= max(a) <= max(s max x, t)`, since a non-target class at
    the row max keeps its logit `s max x`. The certified gap is 0 when the target is not the
    row's largest cosine, else `s * max(m_y, 0)`: at most 15 for LDAM (`s = 30`, `m <= 0.5`) and
    43 for ALA ("paper" factors, cosines in [-1, 1]), below the exact-max fallback's 64;
  * the target's term is written into `exp(s x - m)` afterwards (`_lse_with_target`): a
    per-element `where(onehot, ...)` inside that `exp` made it 1.8-2x the CE time at both
    (512, 100) and (128, 8142) on XLA:CPU.
  """
  target_cosine = jnp.take_along_axis(cosine, labels[..., None], axis=-1)[..., 0]
  target = scale * (target_cosine - target_margin)
  max_cosine = jnp.max(cosine, axis=-1)
  lower = jnp.maximum(target, jnp.where(max_cosine > target_cosine, scale * max_cosine, target))
  # The bound assumes scale >= 0; a negative scale takes the exact-max branch.
  upper = jnp.where(scale >= 0, jnp.maximum(scale * max_cosine, target), jnp.inf)

  def adjusted():
    is_target = labels[..., None] == jnp.arange(cosine.shape[-1])
    return jnp.where(is_target, target[..., None], scale * cosine)

  shift = _softmax.stabiliser(adjusted, lower=lower, upper=upper)
  return _lse_with_target(cosine, target, labels, shift, scale) - target


def _exp_with_target(cosine, target, labels, shift, scale):
  """`exp(a - shift)` for `a = scale * cosine` with the label entry replaced by `target`."""
  target_exp = jnp.exp(target - shift)
  exps = jnp.exp(scale * cosine - shift[..., None])
  return _set_at_labels(exps, labels, target_exp), target_exp


def _set_at_labels(values, labels, updates):
  """`values[..., labels] = updates` along the last axis, as one scatter with batch dimensions.

  (`jnp.put_along_axis` builds index grids from unsharded iotas, which fails for batch-sharded
  inputs under an explicit-axis mesh; batch dimensions keep the labels' sharding.)
  """
  batch_dims = tuple(range(labels.ndim))
  numbers = jax.lax.ScatterDimensionNumbers(
      update_window_dims=(), inserted_window_dims=(labels.ndim,),
      scatter_dims_to_operand_dims=(labels.ndim,), operand_batching_dims=batch_dims,
      scatter_indices_batching_dims=batch_dims)
  return jax.lax.scatter(values, labels[..., None], updates, numbers, indices_are_sorted=True,
                         unique_indices=True, mode=jax.lax.GatherScatterMode.FILL_OR_DROP)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _lse_with_target(cosine, target, labels, shift, scale):
  r"""`logsumexp(a)` with `a = scale * cosine` except `a_y = target`; `shift` stabilises it.

  Shapes: `cosine f[..., C]`, `target f[...]`, `labels int[...]`, `shift f[...]` (a constant
  >= about `max(a)`). The custom JVP,
  `d lse = (s sum_j e_j dx_j + e_y (dt - s dx_y)) / sum_j e_j` with `e = exp(a - shift)`, keeps
  `e` (label entry included) as the only `[..., C]` residual; differentiating the
  `put_along_axis` instead would keep the `exp` from before the write as well.
  """
  exps, _ = _exp_with_target(cosine, target, labels, shift, scale)
  return shift + jnp.log(jnp.sum(exps, axis=-1))


@_lse_with_target.defjvp
def _lse_with_target_jvp(scale, primals, tangents):
  cosine, target, labels, shift = primals
  d_cosine, d_target, _, _ = tangents
  exps, target_exp = _exp_with_target(cosine, target, labels, shift, scale)
  total = jnp.sum(exps, axis=-1)
  d_target_cosine = jnp.take_along_axis(d_cosine, labels[..., None], axis=-1)[..., 0]
  d_lse = (scale * jnp.sum(exps * d_cosine, axis=-1)
           + target_exp * (d_target - scale * d_target_cosine)) / total
  return shift + jnp.log(total), d_lse


def ldam_loss(cosine: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
              class_counts: jax.typing.ArrayLike, max_margin: float = 0.5,
              scale: float = 30.0) -> jax.Array:
  r"""Label-distribution-aware margin loss on cosine logits.

  .. math::
    \ell(x, y) = -\log \frac{e^{s (x_y - m_y)}}{e^{s (x_y - m_y)} + \sum_{j \ne y} e^{s x_j}},
    \qquad m = \text{ldam\_margins}(n).

  Matches kaidic/LDAM-DRW `LDAMLoss` (margins constant, target logit only). Class weights (DRW)
  are not applied here: combine with :func:`weighted_mean` and :func:`drw_weights`. Invariance:
  adding a per-row constant to the cosines leaves the loss unchanged (it shifts every scaled
  logit by the same amount).

  Args:
    cosine: `f[..., C]` cosine logits (NormedLinear output, unscaled); concrete values outside
      `[-1, 1]` (raw logits) warn.
    labels: `int[...]` classes in `[0, C)` (NaN losses under `jax.jit` for out-of-range labels).
    class_counts: `[C]` training counts (>= 0, not all zero); no gradient flows to them.
    max_margin: margin of the rarest class, a finite scalar >= 0.
    scale: the logit scale `s`, a finite scalar > 0.

  Returns:
    `f[...]` per-example losses, at least float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import losses
    >>> jnp.set_printoptions(precision=4)
    >>> cosine = jnp.array([[0.8, 0.1, -0.3], [0.2, 0.5, 0.4]])
    >>> print(losses.ldam_loss(cosine, jnp.array([0, 2]), class_counts=jnp.array([100, 10, 1])))
    [ 0.     18.0001]

  References:
    Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss",
    NeurIPS 2019.
  """
  num_classes = _checks.check_logits_labels(cosine, labels, logits_name="cosine")
  _checks.check_class_counts(class_counts, "class_counts", num_classes)
  scale = _checks.check_hyperparameter(scale, "scale", _domains.SCALE)
  _checks.warn_if_not_cosine(cosine)
  cosine = _inputs.upcast(cosine)
  labels = jnp.asarray(labels)
  margins = _inputs.constant(ldam_margins(class_counts, max_margin=max_margin), cosine.dtype)
  losses = _scaled_target_margin_ce(cosine, labels, _inputs.at_labels(margins, labels), scale)
  return _inputs.nan_if_out_of_range(losses, labels, num_classes)


def ala_loss(cosine: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
             class_counts: jax.typing.ArrayLike, scale: float = 30.0,
             quantity_factor: str = "paper") -> jax.Array:
  r"""Adaptive logit adjustment loss on cosine logits.

  .. math::
    DF = \tfrac12 (1 - \mathrm{sg}(x_y)), \qquad
    \ell(x, y) = \mathrm{CE}\big(s\,(x - DF \cdot QF_y \cdot \mathrm{onehot}(y)),\ y\big),

  with `QF` from :func:`quantity_factors`. The difficulty factor is a stop-gradient, so
  `d loss / d x = s * (softmax(adjusted) - onehot(y))`. No official code exists; this follows the
  paper (docs/methods.md §2.13) and, with `quantity_factor="openlt"`, OpenLT's normalisation.
  DRW weights are applied by the caller (:func:`weighted_mean`). Invariance: DF reads the absolute
  target cosine, so ALA is *not* invariant to a per-row shift `c`; the shift lowers the target
  margin by `s * c / 2 * QF_y`.

  Args:
    cosine: `f[..., C]` cosine logits in `[-1, 1]` (unscaled); concrete values outside warn.
    labels: `int[...]` classes in `[0, C)` (NaN losses under `jax.jit` for out-of-range labels).
    class_counts: `[C]` training counts (>= 0, not all zero); no gradient flows to them.
    scale: the logit scale `s`, a finite scalar > 0.
    quantity_factor: "paper" (`1 / log(n / n_min + 1)`) or "openlt" (`log 2 / ...`).

  Returns:
    `f[...]` per-example losses, at least float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import losses
    >>> jnp.set_printoptions(precision=4)
    >>> cosine = jnp.array([[0.8, 0.1, -0.3], [0.2, 0.5, 0.4]])
    >>> print(losses.ala_loss(cosine, jnp.array([0, 2]), class_counts=jnp.array([100, 10, 1])))
    [ 0.     15.9844]

  References:
    Zhao et al., "Adaptive Logit Adjustment Loss for Long-Tailed Visual Recognition", AAAI 2022.
  """
  num_classes = _checks.check_logits_labels(cosine, labels, logits_name="cosine")
  _checks.check_class_counts(class_counts, "class_counts", num_classes)
  scale = _checks.check_hyperparameter(scale, "scale", _domains.SCALE)
  _checks.warn_if_not_cosine(cosine)
  cosine = _inputs.upcast(cosine)
  labels = jnp.asarray(labels)
  factors = _inputs.constant(
      quantity_factors(class_counts, quantity_factor=quantity_factor), cosine.dtype)
  target_cosine = jnp.take_along_axis(cosine, labels[..., None], axis=-1)[..., 0]
  difficulty = (1.0 - jax.lax.stop_gradient(target_cosine)) / 2.0
  losses = _scaled_target_margin_ce(cosine, labels,
                                    difficulty * _inputs.at_labels(factors, labels), scale)
  return _inputs.nan_if_out_of_range(losses, labels, num_classes)
