"""CIFAR ResNets: He et al.'s ResNet-32 (LDAM-DRW / GALA) and the ResNet-34 used by LOS.

Both follow PyTorch's conventions where they change the numbers: BatchNorm with momentum 0.1 (Flax
0.9), eps 1e-5 and the unbiased batch variance in the running variance (`_batchnorm.BatchNorm`),
bias-free convolutions, and the initialisers of the official code (docs/methods.md §1.4).
Inputs are NHWC.
"""
from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from flax import linen as nn

from ltjax.models import _init

# PyTorch BatchNorm2d: momentum 0.1, eps 1e-5, unbiased running variance, gamma 1, beta 0.
from ltjax.models._batchnorm import BatchNorm as _batch_norm


def _conv(features, kernel, strides, kernel_init, name=None):
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=kernel_init,
                 name=name)


def option_a_shortcut(x, planes: int):
  """He et al.'s parameter-free shortcut: `x[:, ::2, ::2]` zero-padded with `planes // 4`
  channels on each side (NHWC)."""
  pad = planes // 4
  return jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN, + shortcut, ReLU.

  Attributes:
    planes: output channels.
    strides: stride of the first convolution.
    shortcut: "A" (zero-padded identity, ResNet-32) or "B" (1x1 conv + BN, ResNet-34); only used
      when the shape changes.
    kernel_init: convolution initialiser.
  """
  planes: int
  strides: int = 1
  shortcut: str = "A"
  kernel_init: Callable = _init.kaiming_normal

  @nn.compact
  def __call__(self, x, train: bool):
    y = _conv(self.planes, 3, self.strides, self.kernel_init)(x)
    y = nn.relu(_batch_norm(use_running_average=not train)(y))
    y = _conv(self.planes, 3, 1, self.kernel_init)(y)
    y = _batch_norm(use_running_average=not train)(y)
    if self.strides != 1 or x.shape[-1] != self.planes:
      if self.shortcut == "A":
        x = option_a_shortcut(x, self.planes)
      else:
        x = _conv(self.planes, 1, self.strides, self.kernel_init, name="proj_conv")(x)
        x = _batch_norm(use_running_average=not train, name="proj_bn")(x)
    return nn.relu(y + x)


class ResNet32(nn.Module):
  """He et al.'s CIFAR ResNet-32 as in LDAM-DRW and GALA: stem conv3x3(16), three stages of 5
  basic blocks (16/32/64 channels, strides 1/2/2), option-A shortcuts, global average pooling.
  Kaiming-normal (fan_in) convolutions. Returns the 64-d feature `f[B, 64]`.

  Attributes:
    blocks_per_stage: 5 gives ResNet-32 (6n + 2 layers); smaller values give tiny test networks.
    widths: channels per stage.
  """
  blocks_per_stage: int = 5
  widths: tuple[int, ...] = (16, 32, 64)

  @nn.compact
  def __call__(self, x, train: bool):
    x = _conv(self.widths[0], 3, 1, _init.kaiming_normal)(x)
    x = nn.relu(_batch_norm(use_running_average=not train)(x))
    for stage, planes in enumerate(self.widths):
      for block in range(self.blocks_per_stage):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(planes, strides, shortcut="A")(x, train)
    return jnp.mean(x, axis=(1, 2))


class ResNet34(nn.Module):
  """The CIFAR ResNet-34 of LOS: ImageNet basic blocks [3, 4, 6, 3] at 64-512 channels, a
  stride-1 conv3x3 stem without max-pool, 1x1-conv+BN projection shortcuts, `AvgPool2d(4)` on the
  4x4 map (= global average pooling for 32x32 inputs). PyTorch default init. Returns `f[B, 512]`.

  Attributes:
    stage_sizes: blocks per stage.
    widths: channels per stage.
  """
  stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
  widths: tuple[int, ...] = (64, 128, 256, 512)

  @nn.compact
  def __call__(self, x, train: bool):
    init = _init.torch_default_kernel
    x = _conv(self.widths[0], 3, 1, init)(x)
    x = nn.relu(_batch_norm(use_running_average=not train)(x))
    for stage, (blocks, planes) in enumerate(zip(self.stage_sizes, self.widths)):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(planes, strides, shortcut="B", kernel_init=init)(x, train)
    return jnp.mean(x, axis=(1, 2))
