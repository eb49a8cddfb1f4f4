"""Mixed precision (bf16 compute, float32 state): one training step and every registry loss
against float32.

Tolerances (bf16 has an 8-bit mantissa, relative rounding 2^-8 = 0.4%): the loss of one step within
1% relative; the head's update within 5% (relative L2) of the float32 update; the backbone's update
within 50% relative L2 and at cosine > 0.9 of the float32 one (at initialisation the backbone
gradients are sums that cancel heavily: measured 30% / cosine 0.95 on CPU); BatchNorm
statistics and GALA's state within 5%; each registry loss on bf16 features within 2% relative
(0.02 absolute near zero).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ltjax
from experiments import experiment as experiments_train
from experiments.configs import imagenet_lt_rx50
from ltjax import models
from ltjax import train as lt
from ltjax.models import _heads

pytestmark = pytest.mark.slow  # compiles a (tiny) ResNet-50 step twice

C = 10
STAGES = (1, 1, 1, 1)
PLANES = (8, 16, 32, 64)  # every block type at a fraction of the cost


def _batch(n=16, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, size, size, 3)).astype(np.float32),
          rng.integers(0, C, size=n).astype(np.int32))


def _tree_dtypes(tree):
  return {x.dtype for x in jax.tree.leaves(tree) if hasattr(x, "dtype")}


def _one_step(dtype, method_name="gala"):
  method, hp = lt.get_method(method_name), lt.hparams()
  model = models.build_classifier("resnet50", num_classes=C, head=method.head,
                                  stage_sizes=STAGES, planes=PLANES, dtype=dtype)
  images, labels = _batch()
  params, batch_stats = lt.init_variables(model, jax.random.PRNGKey(0), images.shape[1:])
  tx = lt.sgd_coupled(0.1, momentum=0.9, weight_decay=5e-4)
  state = lt.create_train_state(params, batch_stats, tx, loss_state=method.init_state(C, hp),
                                rng=jax.random.PRNGKey(1))
  counts = np.geomspace(100, 5, C).astype(np.float32)
  stats = lt.ClassStats(class_counts=counts,
                        log_prior=np.asarray(ltjax.priors.log_prior(counts), np.float32))
  step = lt.train_step_fn(
      model, tx, method, hp, steps_per_epoch=1, lr_fn=lambda s: 0.1,
      batch_fn=lambda key, batch, step, size: batch)
  new_state, metrics = jax.jit(step)(state, {"image": images, "label": labels}, stats)
  return state, new_state, metrics


def test_one_bf16_step_matches_the_float32_step():
  start, f32, m32 = _one_step(jnp.float32)
  _, b16, m16 = _one_step(jnp.bfloat16)
  # Everything that persists stays float32 under bf16 compute.
  for part in (b16.params, b16.batch_stats, b16.opt_state, b16.loss_state):
    assert _tree_dtypes(part) <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
  np.testing.assert_allclose(float(m16["loss"]), float(m32["loss"]), rtol=1e-2)
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  # The head sees float32 features: its update is float32-accurate to a few percent.
  head32, head16 = (flat(t.params["head"]) - flat(start.params["head"]) for t in (f32, b16))
  assert np.linalg.norm(head16 - head32) / np.linalg.norm(head32) < 0.05
  # Backbone gradients at initialisation are sums that cancel heavily (BatchNorm in train mode),
  # so bf16 activations perturb the backbone update by about 30% (measured on CPU); its direction
  # stays (cosine about 0.95).
  bb32, bb16 = (flat(t.params["backbone"]) - flat(start.params["backbone"]) for t in (f32, b16))
  assert np.linalg.norm(bb16 - bb32) / np.linalg.norm(bb32) < 0.5
  assert bb16 @ bb32 / (np.linalg.norm(bb16) * np.linalg.norm(bb32)) > 0.9
  # GALA's accumulated gradient state follows the float32 logits closely too.
  np.testing.assert_allclose(flat(b16.loss_state), flat(f32.loss_state), rtol=0.05, atol=1e-3)
  np.testing.assert_allclose(flat(b16.batch_stats), flat(f32.batch_stats), rtol=0.05, atol=2e-2)


@pytest.fixture(scope="module")
def features():
  images, labels = _batch(n=32, seed=3)
  out = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    backbone = models.ImageNetResNet(stage_sizes=STAGES, planes=PLANES, dtype=dtype)
    variables = backbone.init(jax.random.PRNGKey(0), images, train=False)
    out[dtype] = jax.jit(lambda v, x, b=backbone: b.apply(v, x, train=True,
                                                          mutable=["batch_stats"])[0])(
                                                              variables, images)
  return out, labels


@pytest.mark.parametrize("name", sorted(lt.METHODS))
def test_every_registry_loss_is_finite_and_close_on_bf16_features(name, features):
  feats, labels = features
  method, hp = lt.get_method(name), lt.hparams()
  if method.stage == "posthoc":
    pytest.skip("post-hoc methods train no loss")
  head = _heads.HEADS[method.head](C)
  head_params = head.init(jax.random.PRNGKey(2), feats[jnp.float32])
  counts = jnp.asarray(np.geomspace(500, 5, C), jnp.float32)
  inputs = lt.LossInputs(class_counts=counts, log_prior=ltjax.priors.log_prior(counts),
                         loss_state=method.init_state(C, hp), key=jax.random.PRNGKey(4),
                         epoch=jnp.int32(0))
  losses = {}
  for dtype, f in feats.items():
    assert f.dtype == jnp.float32  # the backbone hands float32 features to the head
    logits = head.apply(head_params, f)
    losses[dtype] = np.asarray(method.loss(logits, jnp.asarray(labels), inputs, hp))
  assert np.all(np.isfinite(losses[jnp.bfloat16]))
  np.testing.assert_allclose(losses[jnp.bfloat16], losses[jnp.float32], rtol=2e-2, atol=2e-2)


def test_recipe_key_turns_bf16_on_and_cpu_default_is_float32():
  config = imagenet_lt_rx50.get_config()
  assert experiments_train.precision_kwargs(config) == {}  # None -> off on CPU
  config.mixed_precision = True
  assert experiments_train.precision_kwargs(config) == {"dtype": jnp.bfloat16}
  config.model = "resnet32"
  with pytest.raises(experiments_train.ConfigError, match="compute dtype"):
    experiments_train.precision_kwargs(config)

