"""Flax <-> PyTorch weight conversion for the reference networks (NumPy only, no torch import).

A PyTorch `state_dict` is represented as a flat `dict[str, np.ndarray]` with the keys of the
official models, so `torch_model.load_state_dict({k: torch.from_numpy(v) ...})` loads it:

* `"resnet32"`: kaidic/LDAM-DRW `models/resnet_cifar.py` `ResNet_s` (`conv1`, `bn1`,
  `layer{1,2,3}.{j}.{conv1,bn1,conv2,bn2}`; option-A shortcuts have no weights), head `linear`
  (`nn.Linear`: `weight [C, D]`, `bias [C]`; or `NormedLinear`: `weight [D, C]`, no bias).
* `"resnet34"`: Thinklab-SJTU/LOS `models/resnet.py` `ResNet` (`conv1`, `bn1`,
  `layer{1..4}.{j}.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}`), head `fc` (`nn.Linear`).

The Flax side is the `{"params": ..., "batch_stats": ...}` of `ltjax.models.Classifier`
(`build_classifier("resnet32" | "resnet34", head="linear" | "cosine")`). The head is a
`LinearHead` when it has a bias (kernel `[D, C]` = `weight.T`) and a `CosineHead` otherwise
(kernel `[D, C]` = NormedLinear's `weight`, same layout). Convolution kernels are HWIO in Flax and
OIHW in PyTorch; BatchNorm's `scale, bias, mean, var` are `weight, bias, running_mean,
running_var`. PyTorch's `num_batches_tracked` (unused with a fixed momentum) is written as given
and ignored on the way back. Values are copied exactly (no dtype change), so a round trip is
bit-identical.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

ARCHS = {
    # arch: (default head prefix, name of the projection shortcut's Sequential)
    "resnet32": ("linear", "shortcut"),
    "resnet34": ("fc", "downsample"),
}
_BN_NAMES = (("scale", "weight"), ("bias", "bias"))
_BN_STATS = (("mean", "running_mean"), ("var", "running_var"))


def _check_arch(arch: str) -> tuple[str, str]:
  if arch not in ARCHS:
    raise ValueError(f"Unknown arch {arch!r}; expected one of {sorted(ARCHS)}.")
  return ARCHS[arch]


def _block_names(backbone: Mapping[str, Any]) -> list[str]:
  names = [k for k in backbone if re.fullmatch(r"BasicBlock_\d+", k)]
  return sorted(names, key=lambda k: int(k.split("_")[1]))


def _torch_block_prefixes(params: Mapping[str, Any]) -> list[str]:
  """`layer{s}.{j}` of every Flax block, in order. A block opens a new stage when it changes
  the channel count (its first conv's input width differs from its output width); the first
  stage starts at block 0 (its width equals the stem's)."""
  backbone = params["backbone"]
  prefixes, stage, index = [], 0, 0
  for i, name in enumerate(_block_names(backbone)):
    kernel = np.asarray(backbone[name]["Conv_0"]["kernel"])
    if i == 0 or kernel.shape[2] != kernel.shape[3]:
      stage, index = stage + 1, 0
    prefixes.append(f"layer{stage}.{index}")
    index += 1
  return prefixes


def _conv_to_torch(kernel) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(np.asarray(kernel), (3, 2, 0, 1)))  # HWIO -> OIHW


def _conv_from_torch(weight) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(np.asarray(weight), (2, 3, 1, 0)))  # OIHW -> HWIO


def _modules(arch: str, params) -> list[tuple[tuple[str, ...], str, str]]:
  """`(flax path inside backbone, torch prefix, kind)` for every conv / BN of the backbone."""
  _, shortcut = _check_arch(arch)
  out: list[tuple[tuple[str, ...], str, str]] = [(("Conv_0",), "conv1", "conv"),
                                                  (("BatchNorm_0",), "bn1", "bn")]
  backbone = params["backbone"]
  for name, prefix in zip(_block_names(backbone), _torch_block_prefixes(params)):
    block = backbone[name]
    for flax_name, torch_name, kind in (("Conv_0", "conv1", "conv"), ("BatchNorm_0", "bn1", "bn"),
                                        ("Conv_1", "conv2", "conv"), ("BatchNorm_1", "bn2", "bn"),
                                        ("proj_conv", f"{shortcut}.0", "conv"),
                                        ("proj_bn", f"{shortcut}.1", "bn")):
      if flax_name in block:
        out.append(((name, flax_name), f"{prefix}.{torch_name}", kind))
  return out


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def to_torch_state_dict(params, batch_stats, *, arch: str, head_prefix: str | None = None,
                        num_batches_tracked: int = 0) -> dict[str, np.ndarray]:
  """The official model's `state_dict` (as NumPy arrays) of a Flax `Classifier`.

  Args:
    params: the Classifier's `params` (`{"backbone": ..., "head": ...}`).
    batch_stats: its `batch_stats` (`{"backbone": ...}`).
    arch: "resnet32" (kaidic/LDAM-DRW `ResNet_s`) or "resnet34" (LOS `ResNet`).
    head_prefix: the head's module name; defaults to "linear" (resnet32) / "fc" (resnet34).
    num_batches_tracked: the value of every BN's `num_batches_tracked` (int64).

  Returns:
    `dict[str, np.ndarray]` in the official key order (backbone, then head).
  """
  default_head, _ = _check_arch(arch)
  head_prefix = head_prefix or default_head
  out: dict[str, np.ndarray] = {}
  for path, prefix, kind in _modules(arch, params):
    p = _get(params["backbone"], path)
    if kind == "conv":
      out[f"{prefix}.weight"] = _conv_to_torch(p["kernel"])
      continue
    s = _get(batch_stats["backbone"], path)
    for flax_name, torch_name in _BN_NAMES:
      out[f"{prefix}.{torch_name}"] = np.array(p[flax_name])
    for flax_name, torch_name in _BN_STATS:
      out[f"{prefix}.{torch_name}"] = np.array(s[flax_name])
    out[f"{prefix}.num_batches_tracked"] = np.array(num_batches_tracked, np.int64)
  head = params["head"]
  if "bias" in head:  # LinearHead <-> nn.Linear
    out[f"{head_prefix}.weight"] = np.ascontiguousarray(np.asarray(head["kernel"]).T)
    out[f"{head_prefix}.bias"] = np.array(head["bias"])
  else:  # CosineHead <-> NormedLinear, both [D, C]
    out[f"{head_prefix}.weight"] = np.array(head["kernel"])
  return out


def from_torch_state_dict(state_dict: Mapping[str, Any], *, arch: str,
                          head_prefix: str | None = None) -> tuple[dict, dict]:
  """The Flax `(params, batch_stats)` of an official model's `state_dict`.

  Args:
    state_dict: key -> array-like (NumPy arrays, or tensors converted with `.numpy()`).
    arch: "resnet32" or "resnet34".
    head_prefix: as in :func:`to_torch_state_dict`.

  Returns:
    `(params, batch_stats)` trees of `ltjax.models.Classifier` (NumPy leaves). The head is a
    `LinearHead` tree when `<head_prefix>.bias` exists, a `CosineHead` tree otherwise.

  Raises:
    ValueError: if keys are missing or left over (a different architecture).
  """
  default_head, shortcut = _check_arch(arch)
  head_prefix = head_prefix or default_head
  sd = {k: np.asarray(v) for k, v in state_dict.items()}
  used = set()

  def take(key):
    if key not in sd:
      raise ValueError(f"state_dict has no {key!r} (is it a {arch} state_dict?).")
    used.add(key)
    return np.array(sd[key])

  backbone_p = {"Conv_0": {"kernel": _conv_from_torch(take("conv1.weight"))}}
  backbone_s = {}

  def bn(prefix, p_tree, s_tree, name):
    p_tree[name] = {f: take(f"{prefix}.{t}") for f, t in _BN_NAMES}
    s_tree[name] = {f: take(f"{prefix}.{t}") for f, t in _BN_STATS}
    used.add(f"{prefix}.num_batches_tracked")

  bn("bn1", backbone_p, backbone_s, "BatchNorm_0")
  blocks = sorted({m.group(1, 2) for k in sd if (m := re.match(r"layer(\d+)\.(\d+)\.", k))},
                  key=lambda sj: (int(sj[0]), int(sj[1])))
  for i, (stage, index) in enumerate(blocks):
    prefix, name = f"layer{stage}.{index}", f"BasicBlock_{i}"
    p_tree, s_tree = {}, {}
    p_tree["Conv_0"] = {"kernel": _conv_from_torch(take(f"{prefix}.conv1.weight"))}
    bn(f"{prefix}.bn1", p_tree, s_tree, "BatchNorm_0")
    p_tree["Conv_1"] = {"kernel": _conv_from_torch(take(f"{prefix}.conv2.weight"))}
    bn(f"{prefix}.bn2", p_tree, s_tree, "BatchNorm_1")
    if f"{prefix}.{shortcut}.0.weight" in sd:
      p_tree["proj_conv"] = {"kernel": _conv_from_torch(take(f"{prefix}.{shortcut}.0.weight"))}
      bn(f"{prefix}.{shortcut}.1", p_tree, s_tree, "proj_bn")
    backbone_p[name], backbone_s[name] = p_tree, s_tree
  if f"{head_prefix}.bias" in sd:
    head = {"kernel": np.ascontiguousarray(take(f"{head_prefix}.weight").T),
            "bias": take(f"{head_prefix}.bias")}
  else:
    head = {"kernel": take(f"{head_prefix}.weight")}
  leftover = sorted(set(sd) - used)
  if leftover:
    raise ValueError(f"state_dict keys not part of a {arch} classifier: {leftover[:5]}...")
  return {"backbone": backbone_p, "head": head}, {"backbone": backbone_s}
