"""Models: architecture facts of the reference networks, PyTorch-matching init and BN, heads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import models


def _shapes(module, input_shape=(2, 32, 32, 3)):
  return jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(input_shape), train=False))


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_resnet32_has_31_convs_and_the_published_size():
  variables = _shapes(models.ResNet32())
  convs = [x for x in jax.tree.leaves(variables["params"]) if x.ndim == 4]
  assert len(convs) == 31  # stem + 3 stages x 5 blocks x 2; option-A shortcuts add no conv
  # 464,154 parameters with a 10-class linear head is He et al.'s "0.46M" ResNet-32.
  clf = models.build_classifier("resnet32", num_classes=10, head="linear")
  assert _count(_shapes(clf)["params"]) == 464_154


def test_resnet34_size_and_feature_width():
  clf = models.build_classifier("resnet34", num_classes=100)
  variables = _shapes(clf)
  assert variables["params"]["head"]["kernel"].shape == (512, 100)
  # torchvision-style CIFAR ResNet-34 with a 100-class fc: 21,328,292 parameters.
  assert _count(variables["params"]) == 21_328_292


def test_option_a_shortcut_subsamples_and_zero_pads():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 16))
  y = models.option_a_shortcut(x, 32)
  assert y.shape == (2, 4, 4, 32)
  np.testing.assert_array_equal(y[..., 8:24], x[:, ::2, ::2, :])
  assert not np.any(y[..., :8]) and not np.any(y[..., 24:])


def test_kaiming_normal_conv_init_has_he_std():
  params = models.ResNet32().init(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)),
                                  train=False)["params"]
  kernels = [x for x in jax.tree.leaves(params) if x.shape == (3, 3, 64, 64)]
  w = np.concatenate([np.ravel(k) for k in kernels])
  fan_in = 3 * 3 * 64
  # Untruncated normal: std sqrt(2 / fan_in) and a visible tail beyond 2 std.
  np.testing.assert_allclose(w.std(), np.sqrt(2.0 / fan_in), rtol=0.02)
  assert np.mean(np.abs(w) > 2 * np.sqrt(2.0 / fan_in)) > 0.03


def test_batchnorm_follows_pytorch_momentum():
  block = models.SmallCNN(widths=(4,), features=3)
  x = jax.random.normal(jax.random.PRNGKey(2), (8, 28, 28, 1)) + 5.0
  variables = block.init(jax.random.PRNGKey(3), x, train=False)
  _, updates = block.apply(variables, x, train=True, mutable=["batch_stats"])
  # running = 0.9 * 0 + 0.1 * batch_mean (PyTorch momentum 0.1).
  kernel = variables["params"]["Conv_0"]["kernel"]
  pre = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(updates["batch_stats"]["BatchNorm_0"]["mean"],
                             0.1 * pre.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)


def test_batchnorm_running_variance_is_unbiased_as_pytorch():
  # PyTorch's BatchNorm2d puts n / (n - 1) * var into running_var (n values per channel); Flax
  # puts the biased var. Normalisation uses the biased var in both.
  bn = models.BatchNorm()
  x = jax.random.normal(jax.random.PRNGKey(6), (3, 2, 2, 5)) * 2.0 + 1.0
  variables = bn.init(jax.random.PRNGKey(7), x)
  y, updates = bn.apply(variables, x, mutable=["batch_stats"])
  n = 3 * 2 * 2
  var = np.var(np.asarray(x), axis=(0, 1, 2))
  np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * var * n / (n - 1),
                             rtol=1e-5)
  np.testing.assert_allclose(y, (x - x.mean((0, 1, 2))) / np.sqrt(var + 1e-5), rtol=1e-4,
                             atol=1e-5)
  with pytest.raises(ValueError, match="more than 1 value per channel"):
    bn.apply(variables, x[:1, :1, :1], mutable=["batch_stats"])


def test_cosine_head_is_scale_free_and_bounded():
  head = models.CosineHead(num_classes=5)
  x = jax.random.normal(jax.random.PRNGKey(4), (6, 16))
  variables = head.init(jax.random.PRNGKey(5), x)
  np.testing.assert_allclose(np.linalg.norm(variables["params"]["kernel"], axis=0), 1.0,
                             rtol=1e-5)
  z = jax.jit(head.apply)(variables, x)
  assert np.all(np.abs(z) <= 1.0 + 1e-6)
  np.testing.assert_allclose(head.apply(variables, 7.5 * x), z, rtol=1e-5, atol=1e-6)
  assert "bias" not in variables["params"]


@pytest.mark.parametrize("kernel_init", ["torch", "kaiming"])
def test_linear_head_bias_and_kernel_follow_pytorch(kernel_init):
  head = models.LinearHead(num_classes=200, kernel_init=kernel_init)
  params = head.init(jax.random.PRNGKey(6), jnp.zeros((1, 64)))["params"]
  bound = 1 / np.sqrt(64)
  assert np.all(np.abs(params["bias"]) <= bound) and np.abs(params["bias"]).max() > 0.8 * bound
  std = np.sqrt(2 / 64) if kernel_init == "kaiming" else bound / np.sqrt(3)
  np.testing.assert_allclose(np.std(params["kernel"]), std, rtol=0.05)


def test_tau_normalized_params_drop_bias_and_normalise_columns():
  clf = models.build_classifier("small_cnn", num_classes=4, widths=(4,), features=8)
  x = jax.random.normal(jax.random.PRNGKey(7), (3, 28, 28, 1))
  variables = clf.init(jax.random.PRNGKey(8), x, train=False)
  params = models.tau_normalized_params(variables["params"], tau=1.0)
  np.testing.assert_allclose(np.linalg.norm(params["head"]["kernel"], axis=0), 1.0, rtol=1e-5)
  assert not np.any(params["head"]["bias"])
  same = models.tau_normalized_params(variables["params"], tau=0.0)
  np.testing.assert_allclose(same["head"]["kernel"], variables["params"]["head"]["kernel"])
  assert params["backbone"] is variables["params"]["backbone"]


def test_build_classifier_rejects_unknown_names():
  with pytest.raises(ValueError, match="backbone"):
    models.build_classifier("vgg", num_classes=3)
  with pytest.raises(ValueError, match="head"):
    models.build_classifier("resnet32", num_classes=3, head="mlp")
