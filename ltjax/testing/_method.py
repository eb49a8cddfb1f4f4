"""A registered `ltjax.train.Method` as the kit's per-example loss, and `check_all` on it.

The registry's losses read `(logits, labels, inputs: LossInputs, hp)`; the kit's checks call
`loss_fn(logits, labels, *, class_counts)`. `method_loss` builds the `LossInputs` a training step
would (log prior from the counts, the method's loss state, a fixed key, an epoch) and applies the
method's class weights per example, so any registered method, including one you register, is
checked without a hand-written adapter. `ltjax.train` (Flax) is imported on first call only.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ltjax import priors
from ltjax.testing import _all
from ltjax.testing import _stateful


def _resolve(method):
  from ltjax import train  # noqa: PLC0415  # the training stack only when a method is checked

  if isinstance(method, str):
    return train, method, train.get_method(method)
  if not isinstance(method, train.Method):
    raise TypeError(f"`method` must be a registered method name or an ltjax.train.Method, got "
                    f"{type(method).__name__}.")
  return train, "method", method


def method_loss(method, *, hparams: dict | None = None, epoch: int = 0,
                key: jax.Array | None = None) -> Callable:
  """`loss_fn(logits, labels, *, class_counts) -> f[B]` of a registered method.

  Per example, the method's loss times its class weight `w_y` when it has a class-weight schedule
  (CB, DRW at `epoch`): the weighted batch mean `sum w_y l / sum w_y` of training has the same
  minimiser as the mean of `w_y l`. A stateful method (GALA) gets the state one update leaves
  after a batch with the counts' class frequencies (:func:`stateful_per_example`).

  Args:
    method: a name in `ltjax.train.METHODS`, or a `Method`.
    hparams: overrides of the registry's defaults (checked against their domains).
    epoch: the 0-based epoch the class weights are taken at (DRW switches at its start epoch).
    key: the PRNG key of a stochastic loss (EQL); default `jax.random.key(0)`.

  Returns:
    The per-example loss, for `check_all` or any single check.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from ltjax import losses, priors, testing
    >>> logits, labels = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5]]), jnp.array([0, 2])
    >>> counts = jnp.array([100, 10, 1])
    >>> loss_fn = jax.jit(testing.method_loss("la_loss"))
    >>> expected = losses.logit_adjusted_loss(logits, labels, log_prior=priors.log_prior(counts))
    >>> bool(jnp.allclose(loss_fn(logits, labels, class_counts=counts), expected, atol=1e-6))
    True
  """
  train, _, method = _resolve(method)
  hp = train.hparams(hparams, method=method)
  key = jax.random.key(0) if key is None else key

  def loss_with_state(logits, labels, state, class_counts):
    counts = jax.lax.stop_gradient(jnp.asarray(class_counts, jnp.float32))
    inputs = train.LossInputs(class_counts=counts, log_prior=priors.log_prior(counts),
                              loss_state=state, key=key, epoch=jnp.int32(epoch))
    per_example = method.loss(logits, labels, inputs, hp)
    if method.class_weights is None:
      return per_example
    weights = method.class_weights(inputs, hp)
    # A one-hot sum, not `weights[labels]`: valid with a batch-sharded input in every mode.
    onehot = jax.nn.one_hot(labels, weights.shape[0], dtype=per_example.dtype)
    return jnp.sum(onehot * weights.astype(per_example.dtype), axis=-1) * per_example

  def loss_fn(logits, labels, *, class_counts):
    num_classes = jnp.shape(logits)[-1]
    if not jax.tree.leaves(method.init_state(num_classes, hp)):
      return loss_with_state(logits, labels, (), class_counts)
    stateful = _stateful.stateful_per_example(
        lambda c: method.init_state(c, hp),
        lambda z, y, state: loss_with_state(z, y, state, class_counts),
        lambda state, z, y: method.update_state(state, z, y, hp))
    return stateful(logits, labels, class_counts=class_counts)

  return loss_fn


def check_method(method, *, hparams: dict | None = None, epoch: int = 0,
                 key: jax.Array | None = None, **options) -> dict:
  """`check_all` on a registered method: `check_all(method_loss(method, ...), **options)`.

  Defaults taken from the method: `inputs="cosine"` for a cosine head, and for a method with a
  post-hoc step on the logits (post-hoc LA, PRS) that step at its configured tau as the Fisher
  check's `posthoc`. The Fisher check runs only when `target` is given ("balanced" or "error"):
  the registry does not say which error a method is consistent for.

  Returns / Raises:
    as :func:`check_all`.

  Examples:
    >>> from ltjax import testing
    >>> try:  # ALA's difficulty factor reads the absolute target cosine
    ...   testing.check_method("ala")
    ... except AssertionError as error:
    ...   print(str(error).split(":")[0])
    check_shift_invariance
  """
  train, _, method = _resolve(method)
  hp = train.hparams(hparams, method=method)
  options.setdefault("inputs", "cosine" if method.head == "cosine" else "logits")
  options.setdefault("target", None)
  step = method.posthoc
  step_logits = None if step is None else step.logits
  if step is not None and step_logits is not None and "posthoc" not in options:
    tau = hp[step.tau.name]
    options["posthoc"] = lambda logits, *, class_counts: step_logits(
        logits, log_prior=priors.log_prior(class_counts), tau=tau)
  return _all.check_all(method_loss(method, hparams=hparams, epoch=epoch, key=key), **options)
