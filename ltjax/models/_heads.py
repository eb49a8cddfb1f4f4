"""Classifier heads: linear with bias, cosine ("normed linear") and tau-normalised evaluation.

Every head keeps its weight as `kernel f[D, C]` (Flax Dense layout), so the post-hoc tools in
`ltjax.posthoc` (e.g. `tau_normalize`) apply to any of them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from ltjax.models import _init

_NORM_EPS = 1e-12


class LinearHead(nn.Module):
  """`z = x @ W + b`, `W f[D, C]`, `b f[C]`.

  Attributes:
    num_classes: C.
    kernel_init: "kaiming" (LDAM-DRW's re-initialised `nn.Linear`: kaiming normal weight) or
      "torch" (PyTorch's default `nn.Linear` init, used by GALA/BALMS and LOS). The bias follows
      PyTorch's default U(-1/sqrt(D), 1/sqrt(D)) in both cases.
  """
  num_classes: int
  kernel_init: str = "torch"

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    inits = {"kaiming": _init.kaiming_normal, "torch": _init.torch_default_kernel}
    if self.kernel_init not in inits:
      raise ValueError(f"`kernel_init` must be one of {sorted(inits)}, got {self.kernel_init!r}.")
    kernel = self.param("kernel", inits[self.kernel_init], (fan_in, self.num_classes))
    bias = self.param("bias", _init.torch_default_bias(fan_in), (self.num_classes,))
    return x @ kernel + bias


def _unit_columns(key, shape, dtype=jnp.float32):
  # LDAM-DRW's NormedLinear: U(-1, 1), then every class column renormalised to unit L2 norm.
  w = jax.random.uniform(key, shape, dtype, -1.0, 1.0)
  return w / jnp.linalg.norm(w, axis=0, keepdims=True)


class CosineHead(nn.Module):
  r"""Cosine classifier (LDAM-DRW's `NormedLinear`), no bias and no scale.

  .. math:: z_{ic} = \frac{x_i}{\|x_i\|} \cdot \frac{W_{:, c}}{\|W_{:, c}\|}

  The logits lie in [-1, 1]; the loss (LDAM, ALA) applies its scale `s`.

  Attributes:
    num_classes: C.
  """
  num_classes: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", _unit_columns, (x.shape[-1], self.num_classes))
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _NORM_EPS)
    w = kernel / jnp.maximum(jnp.linalg.norm(kernel, axis=0, keepdims=True), _NORM_EPS)
    return x @ w


HEADS = {"linear": LinearHead, "cosine": CosineHead}
