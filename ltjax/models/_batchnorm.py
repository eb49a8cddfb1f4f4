"""BatchNorm with PyTorch's `nn.BatchNorm2d` semantics, as a Flax Linen module.

It differs from `flax.linen.BatchNorm` (with `momentum=0.9`) in one number: the running variance
is updated with the **unbiased** batch variance `n / (n - 1) * var` (PyTorch), not the biased one
(Flax), where `n` is the number of values per channel (`B * H * W`). Normalisation itself uses
the biased variance in both. The difference is `1 / (n - 1)` relative (8.5e-5 for a ResNet-32
stage-3 map at batch 128) and shifts every evaluation that reads the running statistics.

Parameter and collection names are Flax's (`params`: `scale`, `bias`; `batch_stats`: `mean`,
`var`), and the class is named `BatchNorm`, so auto-named submodules stay `BatchNorm_<i>` and
checkpoints written with `flax.linen.BatchNorm` keep loading.
"""
from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
from flax import linen as nn


class BatchNorm(nn.Module):
  r"""`torch.nn.BatchNorm2d` (affine, tracking running stats) over the last axis.

  Train mode (`use_running_average=False`), with `x` reduced over every axis but the last:

  .. math::
    \mu = \mathrm{mean}(x), \quad \sigma^2 = \mathrm{mean}((x - \mu)^2), \quad
    y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta,

    \hat\mu \leftarrow (1 - m)\hat\mu + m\mu, \quad
    \hat\sigma^2 \leftarrow (1 - m)\hat\sigma^2 + m \frac{n}{n - 1}\sigma^2 .

  Eval mode normalises with the running `(\hat\mu, \hat\sigma^2)`. The running statistics are not
  touched while the module is initialising. Under a global-view `jax.jit` over a data mesh the
  means are global-batch means (XLA inserts the all-reduce), as one PyTorch process computes them.

  Attributes:
    use_running_average: eval mode (running statistics) instead of train mode.
    momentum: PyTorch's `momentum`, the weight of the *new* batch statistic (0.1); Flax's
      `momentum` is `1 - this`.
    epsilon: added to the variance (PyTorch's `eps`, 1e-5).
    dtype: the output dtype (e.g. bfloat16 under mixed precision; statistics, parameters and
      running averages stay float32). None: the promotion of the input's and float32.
  """
  use_running_average: bool = False
  momentum: float = 0.1
  epsilon: float = 1e-5
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    # Statistics in at least float32 (and float64 under x64 with float64 inputs).
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    xf = x.astype(dtype)
    if self.use_running_average:
      mean, var = ra_mean.value.astype(dtype), ra_var.value.astype(dtype)
    else:
      n = math.prod(x.shape[:-1])
      if n < 2:
        raise ValueError(f"BatchNorm in train mode needs more than 1 value per channel, got "
                         f"input shape {x.shape} (PyTorch raises the same).")
      mean = jnp.mean(xf, axis=axes)
      # Two-pass variance: no cancellation when |mean| >> std.
      var = jnp.mean(jnp.square(xf - mean), axis=axes)
      if not self.is_initializing():
        m = self.momentum
        unbiased = var * (n / (n - 1))
        ra_mean.value = ((1.0 - m) * ra_mean.value + m * mean).astype(ra_mean.value.dtype)
        ra_var.value = ((1.0 - m) * ra_var.value + m * unbiased).astype(ra_var.value.dtype)
    y = (xf - mean) * (scale.astype(dtype) / jnp.sqrt(var + self.epsilon)) + bias.astype(dtype)
    return y.astype(jnp.promote_types(x.dtype, scale.dtype) if self.dtype is None else self.dtype)
