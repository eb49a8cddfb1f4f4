"""ImageNet ResNets in torchvision's layout: ResNet-50, ResNeXt-50 (32x4d) and ResNet-152.

The long-tailed ImageNet-LT / iNaturalist 2018 / Places-LT results of ALA, GALA and LOS use
torchvision's `resnet50`, `resnext50_32x4d` and `resnet152` (the latter ImageNet-pre-trained for
Places-LT). This module reproduces them block for block so that torchvision state dicts load one to
one (`load_torchvision_state_dict`) and the parameter counts agree (25,557,032 / 25,028,904 /
60,192,808 with a 1000-way fc head, the head being `ltjax.models.LinearHead`):

  stem   conv7x7(64, stride 2, pad 3) - BN - ReLU - maxpool3x3(stride 2, pad 1)
  layer1..4  [3, 4, 6, 3] (ResNet-50 / ResNeXt-50) or [3, 8, 36, 3] (ResNet-152) bottlenecks of
         conv1x1(width) - BN - ReLU - conv3x3(width, stride s, groups g) - BN - ReLU -
         conv1x1(4 * planes) - BN, + shortcut (conv1x1(stride s) - BN when the shape changes), ReLU
         with planes 64 / 128 / 256 / 512, width = planes * width_per_group / 64 * groups and the
         stride on the 3x3 convolution ("ResNet v1.5", as torchvision).
  global average pooling -> f[B, 2048]

Initialisation as torchvision: convolutions `kaiming_normal_(mode="fan_out", nonlinearity="relu")`,
BatchNorm gamma 1 / beta 0, no zero-init of the last BN. Inputs are NHWC.

Mixed precision: `dtype` is the compute dtype of the convolutions and activations (bf16 on
accelerators); parameters and BatchNorm statistics stay float32 (`param_dtype`), Flax's BatchNorm
reduces its batch statistics in float32, and the pooled feature is returned as float32 so the head
and the loss see float32 logits.
"""
from __future__ import annotations

import functools
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ltjax.models._batchnorm import BatchNorm
from ltjax.models._grouped_conv import grouped_conv_general_dilated

# torchvision ResNets: kaiming_normal_(mode="fan_out", nonlinearity="relu"), untruncated.
_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch BatchNorm2d semantics (momentum 0.1, eps 1e-5, unbiased running variance), the same
# module as the CIFAR ResNets'; parameters and statistics stay float32 under mixed precision.
batch_norm = BatchNorm


def _conv(features: int, kernel: int, strides: int, *, groups: int = 1, dtype=jnp.float32,
          name: str):
  pad = kernel // 2
  # Grouped (ResNeXt) convolutions: XLA's own kernel gradient is ~30x slower on CPU.
  conv = grouped_conv_general_dilated if groups > 1 else None
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), use_bias=False, feature_group_count=groups,
                 kernel_init=_kaiming_fan_out, dtype=dtype, param_dtype=jnp.float32, name=name,
                 conv_general_dilated=conv)


class Bottleneck(nn.Module):
  """torchvision's `Bottleneck` (expansion 4, stride on the 3x3 convolution).

  Attributes:
    planes: 64, 128, 256 or 512; the block outputs `4 * planes` channels.
    strides: stride of the 3x3 convolution and of the projection shortcut.
    groups: groups of the 3x3 convolution (32 for ResNeXt-50 32x4d).
    width_per_group: 64 for ResNet, 4 for ResNeXt-50 32x4d.
    dtype: compute dtype.
  """
  planes: int
  strides: int = 1
  groups: int = 1
  width_per_group: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    width = int(self.planes * (self.width_per_group / 64.0)) * self.groups
    out_channels = 4 * self.planes
    norm = functools.partial(batch_norm, use_running_average=not train, dtype=self.dtype)
    y = _conv(width, 1, 1, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(norm(name="bn1")(y))
    y = _conv(width, 3, self.strides, groups=self.groups, dtype=self.dtype, name="conv2")(y)
    y = nn.relu(norm(name="bn2")(y))
    y = _conv(out_channels, 1, 1, dtype=self.dtype, name="conv3")(y)
    y = norm(name="bn3")(y)
    if self.strides != 1 or x.shape[-1] != out_channels:
      x = _conv(out_channels, 1, self.strides, dtype=self.dtype, name="downsample_0")(x)
      x = norm(name="downsample_1")(x)
    return nn.relu(y + x)


class ImageNetResNet(nn.Module):
  """torchvision's ImageNet ResNet / ResNeXt with bottleneck blocks, without the fc layer.

  Parameter names follow torchvision's state-dict keys with "." between a module and its index
  replaced by "_" (`layer1.0.downsample.0.weight` -> `layer1_0/downsample_0/kernel`).

  Attributes:
    stage_sizes: bottlenecks per stage ([3, 4, 6, 3] for 50 layers, [3, 8, 36, 3] for 152).
    groups, width_per_group: ResNeXt's cardinality and per-group width (1, 64 for ResNet).
    planes: the bottleneck planes per stage (torchvision: 64 .. 512; smaller for tiny tests).
    dtype: compute dtype (`jnp.bfloat16` for mixed precision); parameters stay float32.

  Returns `f32[B, 4 * planes[-1]]` (2048), the globally average-pooled feature.
  """
  stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
  groups: int = 1
  width_per_group: int = 64
  planes: tuple[int, ...] = (64, 128, 256, 512)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = jnp.asarray(x, self.dtype)
    x = _conv(self.planes[0], 7, 2, dtype=self.dtype, name="conv1")(x)
    x = batch_norm(use_running_average=not train, dtype=self.dtype, name="bn1")(x)
    x = nn.relu(x)
    # flax annotates `padding` as str; its docstring and code also take (low, high) pairs.
    x = nn.max_pool(x, (3, 3), strides=(2, 2),
                    padding=((1, 1), (1, 1)))  # pyright: ignore[reportArgumentType]
    for stage, (blocks, planes) in enumerate(zip(self.stage_sizes, self.planes, strict=True)):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = Bottleneck(planes, strides, self.groups, self.width_per_group, dtype=self.dtype,
                       name=f"layer{stage + 1}_{block}")(x, train)
    # Pool in float32: the feature feeds the head and the loss at full precision.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


ResNet50 = functools.partial(ImageNetResNet, stage_sizes=(3, 4, 6, 3))
ResNeXt50_32x4d = functools.partial(ImageNetResNet, stage_sizes=(3, 4, 6, 3), groups=32,
                                    width_per_group=4)
ResNet152 = functools.partial(ImageNetResNet, stage_sizes=(3, 8, 36, 3))


def _flax_path(torch_key: str) -> tuple[tuple[str, ...], str]:
  """`"layer1.0.downsample.1.running_var"` -> `(("layer1_0", "downsample_1"), "running_var")`."""
  *modules, leaf = torch_key.split(".")
  path: list[str] = []
  for part in modules:
    if part.isdigit() and path:
      path[-1] = f"{path[-1]}_{part}"
    else:
      path.append(part)
  return tuple(path), leaf


def _convert(leaf: str, value: np.ndarray) -> tuple[str, str]:
  """(collection, Flax name) of a torch parameter/buffer, by its name and rank."""
  if leaf == "weight":
    return "params", {4: "kernel", 2: "kernel", 1: "scale"}[value.ndim]
  if leaf == "bias":
    return "params", "bias"
  if leaf == "running_mean":
    return "batch_stats", "mean"
  if leaf == "running_var":
    return "batch_stats", "var"
  raise KeyError(leaf)


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:  # conv (O, I / groups, kh, kw) -> (kh, kw, I / groups, O)
    return np.transpose(value, (2, 3, 1, 0))
  if value.ndim == 2:  # linear (C, D) -> (D, C)
    return value.T
  return value


def load_torchvision_state_dict(variables, state_dict, *, head: bool = True):
  """Flax variables of a `Classifier` with an `ImageNetResNet` backbone, filled from a torchvision
  state dict.

  Keys map as `conv1.weight -> params/backbone/conv1/kernel` (transposed OIHW -> HWIO),
  `bnX.weight/bias -> params/.../scale/bias`, `running_mean/var -> batch_stats/.../mean/var`,
  `fc.weight/bias -> params/head/kernel (transposed)/bias`; `num_batches_tracked` is dropped (Flax's
  BatchNorm has a fixed momentum).

  Args:
    variables: the template, e.g. `model.init(...)` or its `jax.eval_shape`; gives the tree and the
      expected shapes. Its head entries are kept when `head=False`.
    state_dict: mapping torchvision key -> array (NumPy, or torch tensors converted with
      `.numpy()`).
    head: load `fc.*` into the head (False: skip them, e.g. ImageNet weights under a 365-way
      Places-LT head, and keep the template's head).

  Returns:
    A new `{"params": ..., "batch_stats": ...}` tree of float32 NumPy arrays.

  Raises:
    ValueError: a key of the state dict has no place in `variables`, a variable is not covered by
      the state dict, or a shape differs.
  """
  filled: dict[tuple[str, ...], np.ndarray] = {}
  for key, value in state_dict.items():
    value = np.asarray(value)
    path, leaf = _flax_path(key)
    if leaf == "num_batches_tracked":
      continue
    if path == ("fc",):
      if not head:
        continue
      path = ("head",)
    else:
      path = ("backbone",) + path
    try:
      collection, name = _convert(leaf, value)
    except KeyError:
      raise ValueError(f"State-dict key {key!r} is not a torchvision ResNet parameter.") from None
    filled[(collection,) + path + (name,)] = _to_flax_layout(value).astype(np.float32)

  def walk(tree, prefix):
    out = {}
    for name, sub in tree.items():
      where = prefix + (name,)
      if isinstance(sub, dict) or hasattr(sub, "items"):
        out[name] = walk(sub, where)
      elif where in filled:
        value = filled.pop(where)
        if tuple(value.shape) != tuple(sub.shape):
          raise ValueError(f"{'/'.join(where)}: the state dict gives shape {value.shape}, the "
                           f"model expects {tuple(sub.shape)}.")
        out[name] = value
      elif not head and len(where) > 1 and where[1] == "head":
        out[name] = sub  # the template's head, untouched
      else:
        raise ValueError(f"{'/'.join(where)} is not in the state dict.")
    return out

  result = {collection: walk(variables[collection], (collection,))
            for collection in ("params", "batch_stats")}
  if filled:
    extra = sorted("/".join(k) for k in filled)
    raise ValueError(f"State-dict entries without a place in the model: {extra[:5]}"
                     f"{' ...' if len(extra) > 5 else ''}.")
  return result
