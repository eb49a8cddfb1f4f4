"""Softmax equalization loss v1 (Tan et al., 2020), as in the BALMS/GALA code."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ltjax import _checks
from ltjax import _domains
from ltjax.losses import _inputs
from ltjax.losses import _softmax


def equalization_loss(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                      class_counts: jax.typing.ArrayLike, key: jax.Array,
                      threshold: float = 5e-3, gamma: float = 0.9) -> jax.Array:
  r"""Cross-entropy with rare negative classes randomly dropped from the softmax denominator.

  .. math::
    T_j = [n_j / N < \lambda], \quad \beta_{ij} \sim \mathrm{Bernoulli}(\gamma), \quad
    \ell_i = -z_{iy} + \log \sum_{j:\ \neg(\beta_{ij} T_j [j \ne y_i])} e^{z_{ij}}.

  A fresh Bernoulli draw per (example, class) comes from `key` (see :func:`bernoulli_mask`: a
  keyed hash, not `jax.random.bernoulli`, for speed; `P(beta = 1)` is `gamma` to within
  `2^-24`); the target is never dropped, so every row keeps at least one term. As in the official
  `EQV1SoftmaxLoss` (which adds `log(w) = -inf`), dropped logits become `-inf`, but by
  `jnp.where` rather than by addition, so their gradient is exactly zero instead of NaN. The row
  max that stabilises the softmax is `max z` of the unmasked logits (an upper bound; see
  `_softmax.bounded_logsumexp`), so the masked logits are never materialised (only the one-byte
  mask is, for the backward pass).

  Args:
    logits: `f[..., C]` model scores.
    labels: `int[...]` classes in `[0, C)` (NaN losses under `jax.jit` for out-of-range labels).
    class_counts: `[C]` training counts (>= 0, not all zero); no gradient flows to them.
    key: a PRNG key of any implementation (two words are drawn from it); split it every step.
    threshold: frequency `lambda` below which a class is rare, a scalar in `[0, 1]`.
    gamma: probability of dropping a rare negative class, a scalar in `[0, 1]`.

  Returns:
    `f[...]` per-example losses, at least float32.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ltjax import losses
    >>> jnp.set_printoptions(precision=4)
    >>> logits, labels = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5]]), jnp.array([0, 2])
    >>> counts, key = jnp.array([100, 10, 1]), jax.random.key(0)
    >>> # gamma=1 drops the rare class 2 (1/111 < 0.05) from every row it is not the label of.
    >>> print(losses.equalization_loss(logits, labels, class_counts=counts, key=key,
    ...                                threshold=0.05, gamma=1.0))
    [0.2014 1.1803]

  References:
    Tan et al., "Equalization Loss for Long-Tailed Object Recognition", CVPR 2020.
  """
  num_classes = _checks.check_logits_labels(logits, labels)
  _checks.check_class_counts(class_counts, "class_counts", num_classes)
  threshold = _checks.check_hyperparameter(threshold, "threshold", _domains.EQL_THRESHOLD)
  gamma = _checks.check_hyperparameter(gamma, "gamma", _domains.EQL_GAMMA)
  logits = _inputs.upcast(logits)
  labels = jnp.asarray(labels)
  counts = _inputs.constant(class_counts, jnp.float32)
  rare = counts / jnp.sum(counts) < threshold

  def masked_logits():
    # Built inside the closure (not passed in) so that the draw fuses into its consumers.
    is_target = labels[..., None] == jnp.arange(num_classes)
    dropped = bernoulli_mask(key, logits.shape, gamma) & rare & ~is_target
    return jnp.where(dropped, -jnp.inf, logits)

  target = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  # The target is never dropped, so max(masked) lies in [z_y, max z].
  lse = _softmax.bounded_logsumexp(masked_logits, lower=target, upper=jnp.max(logits, axis=-1))
  return _inputs.nan_if_out_of_range(lse - target, labels, num_classes)


def _fmix32(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 in which every input bit flips every
  output bit with probability ~1/2."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
  """`uint32[shape]` row-major flat index of every entry (modulo 2^32), built from iotas."""
  index = jax.lax.broadcasted_iota(jnp.uint32, shape, len(shape) - 1)
  stride = 1
  for axis in range(len(shape) - 2, -1, -1):
    stride = stride * shape[axis + 1] % 2 ** 32
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
  return index


def bernoulli_mask(key: jax.Array, shape: tuple[int, ...], p: float | jax.Array) -> jax.Array:
  r"""`bool[shape]` independent Bernoulli(`p`) draws from a keyed hash of each entry's index.

  .. math::
    h = f(f(c \oplus k_0) \oplus k_1), \qquad \beta = [\lfloor h / 2^8 \rfloor 2^{-24} < p],

  with `c` the entry's row-major flat index (uint32), `(k_0, k_1) = jax.random.bits(key, (2,))`
  and `f` MurmurHash3's 32-bit finaliser. `P(beta = 1) = ceil(p 2^24) / 2^24`, within `2^-24` of
  `p` (`jax.random.bernoulli` quantises to `2^-23`). For a fixed key the map `c -> h` is a
  bijection, so draws repeat only past `2^32` entries (16 GiB of float32 logits).

  Why not `jax.random.bernoulli`: it runs one threefry2x32 block (20 rounds) per entry, which on
  CPU cost 3-13x a whole cross-entropy forward+backward in `experiments/bench/losses.py`; the
  hash is 18 integer operations per entry, computed inside XLA's fused mask computation. The
  statistical checks (rate, independence across neighbouring entries and across keys) are in
  `tests/test_losses.py`.

  Args:
    key: a PRNG key of any implementation (only two words are drawn from it).
    shape: the output shape.
    p: the probability of `True`, in [0, 1].

  Returns:
    `bool[shape]`.
  """
  key_words = jax.random.bits(key, (2,), jnp.uint32)
  hashed = _fmix32(_fmix32(_flat_index(shape) ^ key_words[0]) ^ key_words[1])
  # The top 24 bits as a float32 in [0, 1) (exact: 24 bits fit the mantissa).
  uniform = (hashed >> 8).astype(jnp.float32) * (2.0 ** -24)
  return uniform < p
