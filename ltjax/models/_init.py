"""Weight initialisers reproducing PyTorch's, so the reference recipes start from the same law."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

# `torch.nn.init.kaiming_normal_` (fan_in, gain sqrt(2)): an untruncated normal, unlike Flax's
# `he_normal`, which truncates.
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

# PyTorch's default Conv2d / Linear weight init, `kaiming_uniform_(a=sqrt(5))`:
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int):
  """PyTorch's default Linear bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / jnp.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init
