"""A backbone followed by a head, with the parameter tree `{"backbone": ..., "head": ...}` that
stage-2 training (freeze the backbone) and tau-normalisation (rewrite the head) rely on."""
from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from ltjax import posthoc
from ltjax.models import _heads
from ltjax.models import _imagenet_resnet
from ltjax.models import _resnet
from ltjax.models import _small


class Classifier(nn.Module):
  """`head(backbone(x, train))`; returns logits `f[B, C]` (cosines for a cosine head)."""
  backbone: nn.Module
  head: nn.Module

  def __call__(self, x, train: bool):
    return self.head(self.backbone(x, train))


BACKBONES = {
    "resnet32": _resnet.ResNet32,
    "resnet34": _resnet.ResNet34,
    "resnet50": _imagenet_resnet.ResNet50,
    "resnext50_32x4d": _imagenet_resnet.ResNeXt50_32x4d,
    "resnet152": _imagenet_resnet.ResNet152,
    "small_cnn": _small.SmallCNN,
}


def build_classifier(backbone: str, *, num_classes: int, head: str = "linear",
                     head_init: str = "torch", **backbone_kwargs) -> Classifier:
  """Builds a `Classifier` by name.

  Args:
    backbone: one of `BACKBONES` ("resnet32", "resnet34", "small_cnn", and torchvision's
      "resnet50", "resnext50_32x4d", "resnet152", which take `dtype=jnp.bfloat16` for mixed
      precision).
    num_classes: C.
    head: "linear" (with bias) or "cosine" (normed linear, no bias, no scale).
    head_init: the linear head's kernel init, "torch" or "kaiming" (see `LinearHead`).
    **backbone_kwargs: passed to the backbone (e.g. `blocks_per_stage=1` for tiny tests).

  Returns:
    The Linen module.
  """
  if backbone not in BACKBONES:
    raise ValueError(f"Unknown backbone {backbone!r}; expected one of {sorted(BACKBONES)}.")
  if head not in _heads.HEADS:
    raise ValueError(f"Unknown head {head!r}; expected one of {sorted(_heads.HEADS)}.")
  head_kwargs = {"kernel_init": head_init} if head == "linear" else {}
  return Classifier(backbone=BACKBONES[backbone](**backbone_kwargs),
                    head=_heads.HEADS[head](num_classes, **head_kwargs))


def tau_normalized_params(params, *, tau):
  r"""Kang et al.'s tau-normalised classifier: `W_c / ||W_c||^tau`, bias dropped.

  Returns a copy of `params` (a `Classifier` tree) whose head kernel is replaced by
  `ltjax.posthoc.tau_normalize(kernel, tau=tau)` and whose bias (if any) is zero, as the official
  `tau_norm.py` computes `feat @ W_tilde.T` without the bias.
  """
  head = dict(params["head"])
  head["kernel"] = posthoc.tau_normalize(head["kernel"], tau=tau)
  if "bias" in head:
    head["bias"] = jnp.zeros_like(head["bias"])
  return {**params, "head": head}
