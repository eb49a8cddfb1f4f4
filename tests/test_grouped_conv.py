"""`grouped_conv_general_dilated`: `lax.conv_general_dilated`'s values and gradients, with the
kernel gradient of grouped NHWC convolutions computed from patches on CPU."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ltjax.models._grouped_conv import grouped_conv_general_dilated

NHWC = ("NHWC", "HWIO", "NHWC")


def _loss_and_grads(conv, x, kernel, **kw):
  """jit(value_and_grad) of sum(sin(conv(x, kernel))) in both arguments (sin: a cotangent that
  varies across outputs, so every kernel tap and group is checked)."""
  loss = lambda x, k: jnp.sum(jnp.sin(conv(x, k, dimension_numbers=NHWC, **kw)))
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, kernel)


def _inputs(groups, *, channels=64, outputs=96, kernel=3, dtype=jnp.float32):
  kx, kk = jax.random.split(jax.random.key(groups))
  x = jax.random.normal(kx, (3, 9, 10, channels), dtype)
  return x, jax.random.normal(kk, (kernel, kernel, channels // groups, outputs), dtype)


@pytest.mark.parametrize("groups", [2, 32])
@pytest.mark.parametrize("strides,padding", [((1, 1), ((1, 1), (1, 1))),
                                             ((2, 2), ((1, 1), (1, 1))),
                                             ((2, 1), ((0, 2), (1, 0)))])
def test_values_and_gradients_equal_lax(groups, strides, padding):
  x, kernel = _inputs(groups)
  kw = dict(window_strides=strides, padding=padding, feature_group_count=groups)
  (value, (dx, dk)) = _loss_and_grads(grouped_conv_general_dilated, x, kernel, **kw)
  (ref, (ref_dx, ref_dk)) = _loss_and_grads(lax.conv_general_dilated, x, kernel, **kw)
  # The forward and the input gradient are XLA's own programs: identical.
  np.testing.assert_array_equal(value, ref)
  np.testing.assert_array_equal(dx, ref_dx)
  # The kernel gradient sums the same products in another order: float32 rounding only.
  np.testing.assert_allclose(dk, ref_dk, rtol=1e-5, atol=1e-5 * float(jnp.abs(ref_dk).max()))


def test_bf16_kernel_gradient_stays_bf16_and_within_bf16_rounding():
  x, kernel = _inputs(32, dtype=jnp.bfloat16)
  kw = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), feature_group_count=32)
  _, (_, dk) = _loss_and_grads(grouped_conv_general_dilated, x, kernel, **kw)
  _, (_, ref) = _loss_and_grads(lax.conv_general_dilated, x.astype(jnp.float32),
                                kernel.astype(jnp.float32), **kw)
  assert dk.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(dk, np.float32), ref, rtol=0.05,
                             atol=0.02 * float(jnp.abs(ref).max()))


@pytest.mark.parametrize("kw", [
    dict(feature_group_count=1, padding=((1, 1), (1, 1))),
    dict(feature_group_count=4, padding="SAME"),
    dict(feature_group_count=4, padding=((1, 1), (1, 1)), rhs_dilation=(2, 2)),
], ids=["ungrouped", "string-padding", "dilated"])
def test_other_convolutions_are_lax_itself(kw):
  x, kernel = _inputs(kw["feature_group_count"], channels=8, outputs=8)
  conv = functools.partial(grouped_conv_general_dilated, window_strides=(1, 1),
                           dimension_numbers=NHWC, **kw)
  assert "custom_vjp" not in str(jax.make_jaxpr(conv)(x, kernel))
  _, (_, dk) = _loss_and_grads(grouped_conv_general_dilated, x, kernel, window_strides=(1, 1),
                               **kw)
  _, (_, ref) = _loss_and_grads(lax.conv_general_dilated, x, kernel, window_strides=(1, 1), **kw)
  np.testing.assert_array_equal(dk, ref)


def test_grouped_nhwc_convolutions_take_the_custom_gradient():
  x, kernel = _inputs(4, channels=8, outputs=8)
  jaxpr = jax.make_jaxpr(functools.partial(
      grouped_conv_general_dilated, window_strides=(1, 1), padding=((1, 1), (1, 1)),
      dimension_numbers=NHWC, feature_group_count=4))(x, kernel)
  assert "custom_vjp" in str(jaxpr)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU lowering")
def test_cpu_kernel_gradient_is_the_patch_matmul():
  # XLA:CPU runs the kernel gradient XLA derives itself (a `batch_group_count` convolution) as a
  # naive loop, ~30x slower (module docstring). On CPU the compiled kernel gradient must be the
  # patches' batched matmul: a dot, which XLA's own gradient has none of.
  x, kernel = _inputs(32)
  kw = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), feature_group_count=32,
            dimension_numbers=NHWC)

  def compiled(conv):
    grad = jax.grad(lambda k: jnp.sum(jnp.sin(conv(x, k, **kw))))
    return jax.jit(grad).lower(kernel).compile().as_text()

  assert " dot(" not in compiled(lax.conv_general_dilated)
  assert " dot(" in compiled(grouped_conv_general_dilated)
