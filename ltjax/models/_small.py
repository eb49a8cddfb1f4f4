"""A small CNN for 28x28 inputs (Fashion-MNIST-LT), fast enough for CPU runs."""
from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from ltjax.models import _init
from ltjax.models._batchnorm import BatchNorm as _batch_norm

POOLINGS = ("flatten", "mean")


class SmallCNN(nn.Module):
  """Two conv3x3-BN-ReLU-maxpool stages (`widths` channels), then the last map either flattened
  (`pool="flatten"`, the usual MNIST-style CNN: 28x28 -> 7x7xC keeps where a stroke is) or
  averaged over space (`pool="mean"`), and a dense layer to `features`. Returns `f[B, features]`.

  Attributes:
    widths: channels of the convolution stages.
    features: width of the returned feature.
    pool: "flatten" or "mean" (global average pooling, which throws the 7x7 layout away and
      trains markedly worse in a few epochs on Fashion-MNIST).
  """
  widths: tuple[int, ...] = (32, 64)
  features: int = 128
  pool: str = "flatten"

  @nn.compact
  def __call__(self, x, train: bool):
    if self.pool not in POOLINGS:
      raise ValueError(f"SmallCNN.pool must be one of {POOLINGS}, got {self.pool!r}.")
    for width in self.widths:
      x = nn.Conv(width, (3, 3), padding="SAME", use_bias=False,
                  kernel_init=_init.kaiming_normal)(x)
      x = nn.relu(_batch_norm(use_running_average=not train)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1) if self.pool == "flatten" else jnp.mean(x, axis=(1, 2))
    return nn.relu(nn.Dense(self.features, kernel_init=_init.kaiming_normal)(x))
