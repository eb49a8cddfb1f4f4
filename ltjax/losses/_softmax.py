"""Log-sum-exp of shifted or masked logits in as many passes over `[..., C]` as optax's CE."""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# Largest certified gap `upper - lower` for which the bound is used as the stabiliser. The row's
# largest term is then >= e^-64 ~ 1.6e-28, a normal float32, so the sum keeps its relative
# precision; a term that the larger shift flushes to zero (below e^-87.3 after the shift) has
# softmax probability < e^(64 - 87.3) ~ 8e-11.
MAX_GAP = 64.0


def bounded_logsumexp(make_adjusted: Callable[[], jax.Array], *, lower: jax.Array,
                      upper: jax.Array) -> jax.Array:
  r"""`logsumexp(a, axis=-1)` of `a = make_adjusted()`, stabilised by an upper bound of `max(a)`.

  .. math::
    \mathrm{lse}(a) = m + \log \sum_j e^{a_j - m} \quad \text{for any } m,
    \qquad m = U \ \text{if}\ \max_{\text{rows}} (U - L) \le 64, \ \text{else}\ m = \max_j a_j,

  where `L <= max_j a_j <= U` per row. Why not `jax.nn.logsumexp(a)`: on XLA:CPU the row max is
  a library reduction that reads its input from memory, so a shifted or masked `a` (`z + b`,
  `where(drop, -inf, z)`) is written out and read back once more than optax's CE does with the
  plain logits (measured 1.3-1.7x the CE time at (128, 8142) in `experiments/bench/losses.py`).
  Here the only full reduction before the `exp` is the caller's `max(z)`, which reads the logits
  directly, and `a` appears only inside the `exp`, where XLA fuses it.

  The value and the gradient (`softmax(a)`; `m` is a constant) do not depend on `m` except
  through rounding; `MAX_GAP` bounds that rounding (see the module constant). When some row's
  certified gap is larger (e.g. a logit-adjusted loss with a large `tau`), the whole call takes
  the exact max under `lax.cond` (one more pass; under `vmap` both branches run).

  Args:
    make_adjusted: builds `a`, `f[..., C]`, from the caller's arrays. It is traced twice (for the
      sum, and inside the fallback branch), so that `a` is never an operand of the cond, which
      would materialise it.
    lower: `f[...]` a lower bound of each row's max, e.g. the target's adjusted logit.
    upper: `f[...]` an upper bound of each row's max.

  Returns:
    `f[...]` the log-sum-exp of each row; no gradient flows to `lower` or `upper`.
  """
  shift = stabiliser(make_adjusted, lower=lower, upper=upper)
  return shift + jnp.log(jnp.sum(jnp.exp(make_adjusted() - shift[..., None]), axis=-1))


def stabiliser(make_adjusted: Callable[[], jax.Array], *, lower: jax.Array,
               upper: jax.Array) -> jax.Array:
  """The shift `m` of :func:`bounded_logsumexp`: `upper`, or the exact row max of
  `make_adjusted()` when some row's `upper - lower` exceeds `MAX_GAP` (under `lax.cond`).

  Returns:
    `f[...]`, without gradient.
  """
  lower = jax.lax.stop_gradient(lower)
  upper = jax.lax.stop_gradient(upper)
  # NaN gaps (NaN logits, out-of-range labels) fail the test and take the exact branch.
  use_bound = jnp.all(upper - lower <= MAX_GAP)
  shift = jax.lax.cond(use_bound, lambda: upper,
                       lambda: jax.lax.stop_gradient(jnp.max(make_adjusted(), axis=-1)))
  return jax.lax.stop_gradient(shift)
