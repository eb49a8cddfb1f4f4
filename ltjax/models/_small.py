"""A small CNN for 28x28 inputs (Fashion-MNIST-LT), fast enough for CPU runs."""
from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from ltjax.models import _init
from ltjax.models._batchnorm import BatchNorm as _batch_norm


class SmallCNN(nn.Module):
  """Two conv3x3-BN-ReLU-maxpool stages (`widths` channels), then global average pooling and a
  dense layer to `features`. Returns `f[B, features]`.

  Attributes:
    widths: channels of the convolution stages.
    features: width of the returned feature.
  """
  widths: tuple[int, ...] = (32, 64)
  features: int = 128

  @nn.compact
  def __call__(self, x, train: bool):
    for width in self.widths:
      x = nn.Conv(width, (3, 3), padding="SAME", use_bias=False,
                  kernel_init=_init.kaiming_normal)(x)
      x = nn.relu(_batch_norm(use_running_average=not train)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))
    return nn.relu(nn.Dense(self.features, kernel_init=_init.kaiming_normal)(x))
