"""GALA in raw JAX + optax: a linear classifier on a synthetic long-tailed problem (10 classes,
imbalance ratio 100), evaluated on a balanced test set with and without prediction re-balancing.

Run: `python -m experiments.examples.gala_linear` (a few seconds on a CPU).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ltjax import losses
from ltjax import metrics
from ltjax import posthoc

C, D, STEPS, BATCH = 10, 8, 400, 128
rng = np.random.default_rng(0)
centres = 1.5 * rng.standard_normal((C, D))
train_counts = (1000 * 0.01 ** (np.arange(C) / (C - 1))).astype(int)  # 1000 ... 10 per class
y_train, y_test = np.repeat(np.arange(C), train_counts), np.repeat(np.arange(C), 500)
x_train, x_test = (centres[y] + rng.standard_normal((len(y), D)) for y in (y_train, y_test))
optimizer = optax.sgd(0.1, momentum=0.9)


@jax.jit(static_argnames="use_gala")
def train_step(params, opt_state, gala_state, x, y, use_gala):
  def mean_loss(params):
    logits = x @ params["w"] + params["b"]
    per_example = (losses.gala_loss(logits, y, gala_state) if use_gala else
                   optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return jnp.mean(per_example), logits

  grads, logits = jax.grad(mean_loss, has_aux=True)(params)
  updates, opt_state = optimizer.update(grads, opt_state)
  # The state for the next step: gradients of this step's loss, measured with the old state.
  gala_state = losses.gala_update(gala_state, logits, y)
  return optax.apply_updates(params, updates), opt_state, gala_state


for use_gala in (False, True):
  params = {"w": jnp.zeros((D, C)), "b": jnp.zeros((C,))}
  opt_state, gala_state = optimizer.init(params), losses.gala_init(C)
  for _ in range(STEPS):
    batch = rng.choice(len(y_train), BATCH, replace=False)
    params, opt_state, gala_state = train_step(params, opt_state, gala_state, x_train[batch],
                                               y_train[batch], use_gala)
  logits = x_test @ params["w"] + params["b"]
  for name, scores in (("argmax", logits), ("rebalance", posthoc.rebalance(logits, tau=1.0))):
    confusion = metrics.confusion_matrix(y_test, jnp.argmax(scores, -1), num_classes=C)
    print(f"{'GALA' if use_gala else 'CE':>4} + {name:<9}: balanced accuracy "
          f"{float(metrics.balanced_accuracy(confusion)):.3f}")
