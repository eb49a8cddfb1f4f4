"""GALA: gradient-aware logit adjustment (lt-project-repository/lt-project), a stateful loss.

The official code keeps two `[C, C]` matrices, `F` (cumulative absolute logit gradients, column =
label) and `P` (the cumulative sum of `F`, i.e. a double accumulation), and only ever reads
`theta = diag(P)` and `phi`, the off-diagonal column sums of `P` (docs/methods.md §2.10). Both are
linear in `F`, so the state here keeps their per-class reductions, `O(C)` instead of `O(C^2)`:

  * `grad_pos[c] = F[c, c]`, `grad_neg[c] = sum_{k != c} F[k, c]` (the step's `F` reductions),
  * `theta[c] = P[c, c]`, `phi[c] = sum_{k != c} P[k, c]` (their running sums).

`tests/test_gala.py` checks this against a NumPy replica of the full-matrix code (1e-5).

Deviations from the official code, all below float32 rounding or on inputs it cannot handle:
  * the off-diagonal sums are taken per step and then accumulated, not summed out of `P` at each
    read, and per-class sums are one-hot sums rather than a per-example loop: same maths,
    another summation order; the full `F`/`P` matrices and the logged-only statistics are not
    kept;
  * the statistics are computed in float32 whatever the logits' dtype;
  * under `jax.jit` an out-of-range label makes the new state NaN (the official code fails);
  * under `pmap`/`shard_map` the statistics are summed over `axis_name` and `B` is the global
    batch (the official code runs on one GPU).
`mode="paper"` applies the paper's formula to this same state (double accumulation, `1e-3`).
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ltjax import _checks
from ltjax import _domains
from ltjax.losses import _inputs

# The official classifier adds 1e-3 to theta and phi inside the logs.
_EPS = 1e-3
MODES = _domains.GALA_MODE.values


class GalaState(NamedTuple):
  """GALA's accumulated gradient statistics, all `f32[C]`, gradient-free.

  Attributes:
    grad_pos: `F[c, c]`: summed `|dL/dz_c|` over every example of class `c` seen so far.
    grad_neg: `sum_{k != c} F[k, c]`: summed `|dL/dz_k|`, `k != c`, over examples of class `c`.
    theta: `P[c, c]`, the running sum of `grad_pos` over steps (the official
      `accum_cls_pos_grad`).
    phi: `sum_{k != c} P[k, c]`, the running sum of `grad_neg` (the official
      `accum_sample_neg_grad`).

  Examples:
    >>> from ltjax import losses
    >>> losses.GalaState._fields
    ('grad_pos', 'grad_neg', 'theta', 'phi')
  """
  grad_pos: jax.Array
  grad_neg: jax.Array
  theta: jax.Array
  phi: jax.Array


def gala_init(num_classes: int) -> GalaState:
  """The all-zero state of the official `init_stat` (never reset afterwards, not even per epoch).

  Args:
    num_classes: C, a positive integer (static).

  Returns:
    A :class:`GalaState` of four `f32[C]` zero vectors.

  Examples:
    >>> from ltjax import losses
    >>> state = losses.gala_init(3)
    >>> print(state.theta, state.theta.dtype)
    [0. 0. 0.] float32
  """
  if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
    raise TypeError(f"`num_classes` must be an integer, got {num_classes!r}.")
  if num_classes < 1:
    raise ValueError(f"`num_classes` must be positive, got {num_classes}.")
  # Four distinct buffers, so that a jitted step may donate the state.
  return GalaState(*(jnp.zeros((num_classes,), jnp.float32) for _ in GalaState._fields))


def gala_margins(state: GalaState) -> tuple[jax.Array, jax.Array]:
  r"""The accumulated positive and negative gradients `(theta, phi)`, each `f32[C]`.

  `theta_c = P[c, c]` and `phi_c = \sum_{k \ne c} P[k, c]`, without the `1e-3` the logits add.
  For softmax cross-entropy `\sum_{k \ne y} |g_k| = |g_y|` for every example, so `phi == theta`
  up to rounding.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import losses
    >>> jnp.set_printoptions(precision=4)
    >>> logits, labels = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5]]), jnp.array([0, 2])
    >>> state = losses.gala_update(losses.gala_init(3), logits, labels)
    >>> theta, phi = losses.gala_margins(state)
    >>> print(theta)
    [0.1072 0.     0.3464]
    >>> bool(jnp.allclose(theta, phi))
    True
  """
  _check_state(state)
  return state.theta, state.phi


def gala_adjusted_logits(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike,
                         state: GalaState, *, lam1: float | jax.typing.ArrayLike = 1.0,
                         lam2: float | jax.typing.ArrayLike = 1.0, mode: str = "code") -> jax.Array:
  r"""GALA's training-time logits (the official `DotProductClassifier` forward).

  With `\log\theta_j = \log(\theta_j + 10^{-3})`, `\log\phi_y = \log(\phi_y + 10^{-3})`:

  * `mode="code"`: `z'_j = z_j + \lambda_1 \log\theta_j - \lambda_2 \log\phi_y` for **every** j,
    the target included. The `\lambda_2` term is one constant per row, so softmax cross-entropy
    and its gradient ignore it: `lam2` has no effect.
  * `mode="paper"`: `z'_j = z_j + \lambda_1 \log\theta_j - \lambda_2 \log\phi_y` for `j \ne y`,
    `z'_y = z_y`. Since `phi == theta`, this equals the code's loss iff `lam1 == lam2`.

  Args:
    logits: `f[..., C]` raw model logits (bfloat16 is computed in float32).
    labels: `int[...]` classes in `[0, C)`.
    state: the :class:`GalaState` left by the previous step; constant.
    lam1: weight of the positive-gradient term (>= 0).
    lam2: weight of the negative-gradient term (>= 0).
    mode: "code" or "paper".

  Returns:
    `f[..., C]` adjusted logits, at least float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import losses
    >>> jnp.set_printoptions(precision=4)
    >>> logits, labels = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5]]), jnp.array([0, 2])
    >>> state = losses.gala_update(losses.gala_init(3), logits, labels)
    >>> print(losses.gala_adjusted_logits(logits, labels, state))
    [[ 2.     -4.184   0.1665]
     [-1.1665 -4.8505  0.5   ]]
  """
  _check_order("gala_adjusted_logits(logits, labels, state)", logits, labels, state)
  num_classes = _check_inputs(logits, labels, state, lam1, lam2, mode)
  logits = _inputs.upcast(logits)
  labels = jnp.asarray(labels)
  state = jax.tree.map(lambda x: _inputs.constant(x, logits.dtype), state)
  log_theta = jnp.log(state.theta + _EPS)
  is_target = labels[..., None] == jnp.arange(num_classes)
  # A one-hot sum, not a gather: it stays valid under every sharding of the batch.
  log_phi_label = jnp.sum(jnp.where(is_target, jnp.log(state.phi + _EPS), 0.0), axis=-1)
  shift = lam1 * log_theta - lam2 * log_phi_label[..., None]
  if mode == "paper":
    shift = jnp.where(is_target, 0.0, shift)
  return logits + shift


def gala_loss(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, state: GalaState, *,
              lam1: float | jax.typing.ArrayLike = 1.0, lam2: float | jax.typing.ArrayLike = 1.0,
              mode: str = "code") -> jax.Array:
  r"""Per-example GALA loss: softmax cross-entropy of :func:`gala_adjusted_logits`.

  In the official code's mode this is the logit-adjusted loss with `tau = lam1` and a prior
  `pi_j \propto theta_j + 10^{-3}`, where `theta` accumulates, twice, the absolute gradients of
  the target logits (docs/methods.md §2.10). The loss at step t uses the state from step t-1: call
  this, then :func:`gala_update` with the same raw logits and the *old* state.

  Args:
    logits: `f[..., C]` raw model logits.
    labels: `int[...]` classes in `[0, C)` (eagerly out-of-range labels raise; under `jax.jit`
      they give NaN losses).
    state: :class:`GalaState` with the same C; no gradient flows into it.
    lam1: `lambda_1 >= 0` (official default 1.0).
    lam2: `lambda_2 >= 0` (official default 1.0; a no-op in "code" mode).
    mode: "code" (the official implementation, default) or "paper" (the paper's formula).

  Returns:
    `f[...]` per-example losses, at least float32 (no batch mean; the official code takes the
    plain mean).

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import losses
    >>> jnp.set_printoptions(precision=4)
    >>> logits, labels = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5]]), jnp.array([0, 2])
    >>> state = losses.gala_init(3)
    >>> print(losses.gala_loss(logits, labels, state))  # step 1: the state is still zero
    [0.2413 1.1803]
    >>> state = losses.gala_update(state, logits, labels)  # the same raw logits, old state
    >>> print(losses.gala_loss(logits, labels, state))
    [0.1501 0.177 ]

  References:
    Zhang et al., "Gradient-Aware Logit Adjustment Loss for Long-tailed Classifier", ICASSP 2024
    (arXiv:2403.09036);
    code: lt-project-repository/lt-project, `margin_mode: pos_grad`.
  """
  _check_order("gala_loss(logits, labels, state)", logits, labels, state)
  adjusted = gala_adjusted_logits(logits, labels, state, lam1=lam1, lam2=lam2, mode=mode)
  labels = jnp.asarray(labels)
  losses = optax.softmax_cross_entropy_with_integer_labels(adjusted, labels)
  return _inputs.nan_if_out_of_range(losses, jnp.asarray(labels), adjusted.shape[-1])


def gala_update(state: GalaState, logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                lam1: float | jax.typing.ArrayLike = 1.0, lam2: float | jax.typing.ArrayLike = 1.0,
                mode: str = "code", axis_name=None) -> GalaState:
  r"""Accumulates one step's logit gradients, as the official `collect_grad` does.

  With `z'` the adjusted logits of the **old** state and `B` the number of examples the batch
  mean runs over, the official code reads the gradient of the mean cross-entropy,
  `g_i = (softmax(z'_i) - onehot(y_i)) / B`, then updates `F[:, y_i] += |g_i|` and `P += F`. Here:

  .. math::
    F^{+}_c \mathrel{+}= \sum_{i: y_i = c} |g_{ic}|, \quad
    F^{-}_c \mathrel{+}= \sum_{i: y_i = c} \sum_{k \ne c} |g_{ik}|, \quad
    \theta \mathrel{+}= F^{+}, \quad \phi \mathrel{+}= F^{-}.

  `B` is the **global** batch size. The statistics are sums over the batch, so under global-view
  `jax.jit` with a batch-sharded input XLA sums them across devices by itself; under
  `jax.pmap`/`jax.shard_map` pass `axis_name`: the per-class sums are `psum`-ed over it and
  `B = psum(local batch size)`, so n devices reproduce one device exactly. The scale of `B` only
  matters against the `1e-3` in the logs (a common factor cancels in softmax), yet it is kept for
  parity. It is the number of examples given to this call (times devices): the official loop
  always passes full batches of the config's size (it drops the last partial one). Called once
  per micro-batch (gradient accumulation), each call normalises by its micro-batch and counts as
  one step of the double accumulation, so the state differs from one call on the whole batch.

  Args:
    state: the current :class:`GalaState`.
    logits: `f[..., C]` **raw** model logits of this step (the update re-applies the old state's
      adjustment itself); no gradient flows through them.
    labels: `int[...]` classes in `[0, C)`. Under `jax.jit`, an out-of-range label turns the new
      state into NaN (eagerly it raises), so a bad label can never pass silently.
    lam1, lam2, mode: as in :func:`gala_loss`; use the same values.
    axis_name: the mapped axis name (or tuple of names) of `pmap`/`shard_map` to sum over, or
      None for single-device or global-view `jit`.

  Returns:
    The new :class:`GalaState`, float32.

  Examples:
    >>> import jax.numpy as jnp
    >>> from ltjax import losses
    >>> jnp.set_printoptions(precision=4)
    >>> logits, labels = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5]]), jnp.array([0, 2])
    >>> state = losses.gala_update(losses.gala_init(3), logits, labels)
    >>> print(state.grad_pos)  # no example of class 1 yet
    [0.1072 0.     0.3464]
    >>> state = losses.gala_update(state, logits, labels)
    >>> print(state.theta)  # the double accumulation: theta sums grad_pos over steps
    [0.2841 0.     0.7739]
  """
  _check_order("gala_update(state, logits, labels)", logits, labels, state)
  adjusted = jax.lax.stop_gradient(
      gala_adjusted_logits(logits, labels, state, lam1=lam1, lam2=lam2, mode=mode))
  # No reshape to [B, C]: merging a sharded batch axis with another one is an error in Explicit
  # sharding mode, so the sums below run over all leading axes instead.
  batch_size = jnp.float32(math.prod(adjusted.shape[:-1]))
  if axis_name is not None:
    batch_size = jax.lax.psum(batch_size, axis_name)
  grad_pos, grad_neg = _gradient_mass(adjusted, jnp.asarray(labels), batch_size)
  if axis_name is not None:
    grad_pos, grad_neg = jax.lax.psum((grad_pos, grad_neg), axis_name)
  state = jax.lax.stop_gradient(state)
  grad_pos = state.grad_pos + grad_pos
  grad_neg = state.grad_neg + grad_neg
  return GalaState(grad_pos=grad_pos, grad_neg=grad_neg, theta=state.theta + grad_pos,
                   phi=state.phi + grad_neg)


def _gradient_mass(adjusted: jax.Array, labels: jax.Array,
                   batch_size: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-class sums of `|g_iy|` and `sum_{k != y} |g_ik|`, `g = (softmax - onehot) / B`.

  `adjusted` is `f[..., C]`, `labels` `int[...]`; the sums run over all leading axes.
  """
  num_classes = adjusted.shape[-1]
  examples = tuple(range(adjusted.ndim - 1))
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  abs_grad = jnp.abs(jax.nn.softmax(adjusted.astype(jnp.float32), axis=-1) - onehot) / batch_size
  pos = jnp.sum(onehot * abs_grad, axis=-1, keepdims=True)
  neg = jnp.sum((1.0 - onehot) * abs_grad, axis=-1, keepdims=True)
  # Per-class sums as one-hot sums (valid under every sharding mode, unlike scatter-adds).
  grad_pos = jnp.sum(onehot * pos, axis=examples)
  grad_neg = jnp.sum(onehot * neg, axis=examples)
  in_range = jnp.all((labels >= 0) & (labels < num_classes))
  return jnp.where(in_range, grad_pos, jnp.nan), jnp.where(in_range, grad_neg, jnp.nan)


def _check_order(signature: str, logits, labels, state) -> None:
  """Names swapped arguments: `gala_loss` takes the state last, `gala_update` first."""
  if isinstance(state, GalaState):
    return
  where = [name for name, value in (("logits", logits), ("labels", labels))
           if isinstance(value, GalaState)]
  if where:
    raise TypeError(f"The GalaState was passed as `{where[0]}`: the arguments are swapped; the "
                    f"signature is {signature}.")


def _check_state(state) -> int:
  if not isinstance(state, GalaState):
    raise TypeError(f"`state` must be a GalaState from `gala_init`, got {type(state).__name__}.")
  num_classes = None
  for name, value in zip(GalaState._fields, state):
    dtype = jnp.result_type(value)
    if dtype != jnp.float32:
      raise TypeError(f"`state.{name}` must be float32, got {dtype}.")
    _checks.check_class_vector(value, f"state.{name}", num_classes)
    num_classes = jnp.shape(value)[0]
  return jnp.shape(state.theta)[0]


def _check_inputs(logits, labels, state, lam1, lam2, mode) -> int:
  """Checks everything GALA reads; returns C."""
  _checks.check_choice(mode, "mode", _domains.GALA_MODE)
  num_classes = _checks.check_logits_labels(logits, labels)
  state_classes = _check_state(state)
  if state_classes != num_classes:
    raise ValueError(f"`state` was initialised for {state_classes} classes but the logits have "
                     f"{num_classes}; call `gala_init({num_classes})`.")
  # A negative weight would turn the adjustment around (favour the head classes).
  _checks.check_hyperparameter(lam1, "lam1", _domains.GALA_LAMBDA)
  _checks.check_hyperparameter(lam2, "lam2", _domains.GALA_LAMBDA)
  return num_classes
