"""ImageNet ResNets: torchvision's parameter counts and layout, and loading torch state dicts.

The torch reference below is written from torchvision's architecture description (bottleneck v1.5,
stride on the 3x3 conv, projection shortcut `downsample.0/1`), without torchvision itself; its
parameter counts equal torchvision's published ones, which pins the layout.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import models

torch = pytest.importorskip("torch")
tnn = torch.nn

# torchvision's counts with a 1000-way fc (torchvision.models docs, "Params" column).
TORCHVISION_PARAMS = {"resnet50": 25_557_032, "resnext50_32x4d": 25_028_904,
                      "resnet152": 60_192_808}
SPECS = {"resnet50": ((3, 4, 6, 3), 1, 64), "resnext50_32x4d": ((3, 4, 6, 3), 32, 4),
         "resnet152": ((3, 8, 36, 3), 1, 64)}


class _TorchBottleneck(tnn.Module):

  def __init__(self, inplanes, planes, stride, groups, width_per_group):
    super().__init__()
    width = int(planes * width_per_group / 64) * groups
    self.conv1 = tnn.Conv2d(inplanes, width, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(width)
    self.conv2 = tnn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
    self.bn2 = tnn.BatchNorm2d(width)
    self.conv3 = tnn.Conv2d(width, planes * 4, 1, bias=False)
    self.bn3 = tnn.BatchNorm2d(planes * 4)
    self.downsample = None
    if stride != 1 or inplanes != planes * 4:
      self.downsample = tnn.Sequential(tnn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                       tnn.BatchNorm2d(planes * 4))

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = torch.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _TorchResNet(tnn.Module):

  def __init__(self, stage_sizes, groups, width_per_group, num_classes):
    super().__init__()
    self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = tnn.BatchNorm2d(64)
    self.maxpool = tnn.MaxPool2d(3, 2, 1)
    inplanes = 64
    for stage, blocks in enumerate(stage_sizes):
      planes, layer = 64 * 2 ** stage, []
      for block in range(blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        layer.append(_TorchBottleneck(inplanes, planes, stride, groups, width_per_group))
        inplanes = planes * 4
      setattr(self, f"layer{stage + 1}", tnn.Sequential(*layer))
    self.fc = tnn.Linear(inplanes, num_classes)

  def forward(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    for stage in range(1, 5):
      x = getattr(self, f"layer{stage}")(x)
    return self.fc(x.mean(dim=(2, 3)))


def _template(clf, size=64):
  return jax.eval_shape(
      lambda: clf.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False))


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_counts_equal_torchvision(name):
  clf = models.build_classifier(name, num_classes=1000)
  variables = _template(clf)
  assert _count(variables["params"]) == TORCHVISION_PARAMS[name]
  assert variables["params"]["head"]["kernel"].shape == (2048, 1000)


def test_torch_reference_matches_torchvision_counts():
  # The reference below is only a faithful stand-in for torchvision if its sizes agree.
  for name in ("resnet50", "resnext50_32x4d"):
    net = _TorchResNet(*SPECS[name], num_classes=1000)
    assert sum(p.numel() for p in net.parameters()) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", ["resnext50_32x4d", "resnet152"])
def test_full_state_dict_fills_every_variable(name):
  net = _TorchResNet(*SPECS[name], num_classes=1000)
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  variables = models.load_torchvision_state_dict(
      _template(models.build_classifier(name, num_classes=1000)), state)
  block = "layer3_35" if name == "resnet152" else "layer3_5"
  np.testing.assert_array_equal(variables["params"]["backbone"][block]["conv2"]["kernel"],
                                np.transpose(state["layer3.35.conv2.weight" if name == "resnet152"
                                                   else "layer3.5.conv2.weight"], (2, 3, 1, 0)))
  assert _count(variables) == _count(_template(models.build_classifier(name, num_classes=1000)))


def _randomised(net, seed):
  # Random BN statistics and affine parameters, so the test sees every loaded buffer.
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, tnn.BatchNorm2d):
        module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
        module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
        module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
        module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
  return net.eval()


@pytest.mark.parametrize("groups,width", [(1, 64), (32, 4)])
def test_loaded_weights_give_the_torch_forward(groups, width):
  stages = (1, 1, 1, 1)  # every block type (stride, projection, groups) at a fraction of the cost
  net = _randomised(_TorchResNet(stages, groups, width, num_classes=7), seed=groups)
  x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(x)).numpy()
  clf = models.build_classifier("resnet50", num_classes=7, stage_sizes=stages, groups=groups,
                                width_per_group=width)
  variables = models.load_torchvision_state_dict(
      _template(clf), {k: v.numpy() for k, v in net.state_dict().items()})
  logits = clf.apply(variables, np.transpose(x, (0, 2, 3, 1)), train=False)
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-4, atol=1e-4)


def test_resnext_gradients_equal_torch():
  """The grouped 3x3 kernels' gradients (ltjax's own kernel-gradient rule on CPU) and the first
  convolution's equal torch's backward of the same network and loss."""
  stages = (1, 1, 1, 1)
  net = _randomised(_TorchResNet(stages, 32, 4, num_classes=7), seed=3)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 64, 64)).astype(np.float32)
  weights = rng.normal(size=(2, 7)).astype(np.float32)
  (net(torch.from_numpy(x)) * torch.from_numpy(weights)).sum().backward()
  clf = models.build_classifier("resnet50", num_classes=7, stage_sizes=stages, groups=32,
                                width_per_group=4)
  variables = models.load_torchvision_state_dict(
      _template(clf), {k: v.detach().numpy() for k, v in net.state_dict().items()})

  def loss(params):
    logits = clf.apply({**variables, "params": params}, np.transpose(x, (0, 2, 3, 1)),
                       train=False)
    return jnp.sum(logits * weights)

  grads = jax.jit(jax.grad(loss))(variables["params"])["backbone"]
  for block in ("layer1_0", "layer2_0", "layer3_0", "layer4_0"):
    torch_grad = getattr(net, block.replace("_0", ""))[0].conv2.weight.grad.numpy()
    expected = np.transpose(torch_grad, (2, 3, 1, 0))
    np.testing.assert_allclose(grads[block]["conv2"]["kernel"], expected, rtol=1e-3,
                               atol=1e-4 * np.abs(expected).max(), err_msg=block)
  expected = np.transpose(net.conv1.weight.grad.numpy(), (2, 3, 1, 0))
  np.testing.assert_allclose(grads["conv1"]["kernel"], expected, rtol=1e-3,
                             atol=1e-4 * np.abs(expected).max())


def test_head_false_keeps_the_template_head_for_a_new_class_count():
  stages = (1, 1, 1, 1)
  net = _TorchResNet(stages, 1, 64, num_classes=1000)
  clf = models.build_classifier("resnet152", num_classes=365, stage_sizes=stages)
  init = _template(clf)
  init["params"]["head"] = {"kernel": np.ones((2048, 365), np.float32),
                            "bias": np.zeros(365, np.float32)}
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  variables = models.load_torchvision_state_dict(init, state, head=False)
  assert variables["params"]["head"]["kernel"] is init["params"]["head"]["kernel"]
  with pytest.raises(ValueError, match="shape"):
    models.load_torchvision_state_dict(init, state)  # a 1000-way fc does not fit 365 classes


def test_loader_rejects_missing_and_unknown_keys():
  stages = (1, 1, 1, 1)
  net = _TorchResNet(stages, 1, 64, num_classes=5)
  template = _template(models.build_classifier("resnet50", num_classes=5, stage_sizes=stages))
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  missing = dict(state)
  del missing["layer2.0.bn2.running_var"]
  with pytest.raises(ValueError, match="layer2_0/bn2/var is not in the state dict"):
    models.load_torchvision_state_dict(template, missing)
  with pytest.raises(ValueError, match="without a place"):
    models.load_torchvision_state_dict(template, {**state, "layer9.0.conv1.weight": np.zeros(
        (1, 1, 1, 1), np.float32)})


def test_bf16_compute_keeps_float32_parameters_and_features():
  clf = models.build_classifier("resnet50", num_classes=3, stage_sizes=(1, 1, 1, 1),
                                dtype=jnp.bfloat16)
  x = jnp.ones((2, 32, 32, 3))
  variables = clf.init(jax.random.PRNGKey(0), x, train=False)
  assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  logits, updates = clf.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.dtype == jnp.float32
  assert {v.dtype for v in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}
