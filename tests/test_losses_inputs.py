"""ltjax.losses bad input: clear TypeError/ValueError naming the argument, at trace time."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import losses
from ltjax import priors

B, C = 4, 3
LOGITS = np.linspace(-1, 1, B * C, dtype=np.float32).reshape(B, C)
LABELS = np.array([0, 1, 2, 1])
COUNTS = np.array([50, 10, 2])


def _all(counts=COUNTS):
  """Every loss as f(logits, labels) with well-formed statistics."""
  log_pi = priors.log_prior(COUNTS)
  return {
      "logit_adjusted": lambda z, y: losses.logit_adjusted_loss(z, y, log_prior=log_pi),
      "balanced_softmax": lambda z, y: losses.balanced_softmax_loss(z, y, class_counts=counts),
      "pairwise_margin": lambda z, y: losses.pairwise_margin_loss(z, y, margins=np.zeros((C, C))),
      "ldam": lambda x, y: losses.ldam_loss(x, y, class_counts=counts),
      "ala": lambda x, y: losses.ala_loss(x, y, class_counts=counts),
      "focal": lambda z, y: losses.focal_loss(z, y),
      "label_over_smooth": lambda z, y: losses.label_over_smooth_loss(z, y, delta=0.5),
      "equalization": lambda z, y: losses.equalization_loss(z, y, class_counts=counts,
                                                            key=jax.random.key(0)),
  }


COUNT_LOSSES = ("balanced_softmax", "ldam", "ala", "equalization")


def _raises_eager_and_jit(fn, args, error, match):
  with pytest.raises(error, match=match):
    fn(*args)
  with pytest.raises(error, match=match):
    jax.jit(fn)(*args)


@pytest.mark.parametrize("name", list(_all()))
def test_float_labels_raise_type_error(name):
  _raises_eager_and_jit(_all()[name], (LOGITS, LABELS.astype(np.float32)), TypeError, "labels")


@pytest.mark.parametrize("name", list(_all()))
def test_integer_logits_raise_type_error(name):
  _raises_eager_and_jit(_all()[name], (LABELS[:, None] * np.ones((1, C), int), LABELS),
                        TypeError, "logits|cosine")


@pytest.mark.parametrize("name", list(_all()))
def test_labels_shape_mismatch_raises(name):
  fn = _all()[name]
  _raises_eager_and_jit(fn, (LOGITS, LABELS[:3]), ValueError, "labels")
  _raises_eager_and_jit(fn, (LOGITS, LABELS[:, None]), ValueError, "labels")
  _raises_eager_and_jit(fn, (LOGITS[0, 0], LABELS[0]), ValueError, "logits|cosine")


@pytest.mark.parametrize("name", list(_all()))
def test_out_of_range_labels_raise_eagerly_and_give_nan_under_jit(name):
  fn = _all()[name]
  for bad in (np.array([0, 1, 3, 1]), np.array([0, -1, 2, 1])):
    with pytest.raises(ValueError, match=r"labels.*\[0, 3\)"):
      fn(LOGITS, bad)
    # Under jit the values are unknown at trace time: documented NaN, never a finite number.
    got = np.asarray(jax.jit(fn)(LOGITS, jnp.asarray(bad)))
    bad_rows = (bad < 0) | (bad >= C)
    assert np.isnan(got[bad_rows]).all() and np.isfinite(got[~bad_rows]).all(), got


@pytest.mark.parametrize("name", COUNT_LOSSES)
@pytest.mark.parametrize("counts, error, match", [
    (np.array([50, 10]), ValueError, "class_counts.*2 entries"),
    (np.ones((1, C)), ValueError, "class_counts.*1-D"),
    (np.array([50, -1, 2]), ValueError, "class_counts.*non-negative"),
    (np.zeros(C), ValueError, "class_counts.*positive"),
    (np.array([True, True, False]), TypeError, "class_counts"),
])
def test_bad_class_counts_raise_at_trace_time(name, counts, error, match):
  fn = _all(counts)[name]
  with pytest.raises(error, match=match):
    fn(LOGITS, LABELS)
  # Concrete statistics closed over by jit are validated while tracing.
  with pytest.raises(error, match=match):
    jax.jit(fn)(LOGITS, LABELS)


def test_shape_checks_fire_for_traced_class_statistics():
  with pytest.raises(ValueError, match="class_counts"):
    jax.jit(lambda n: losses.ldam_loss(LOGITS, LABELS, class_counts=n))(np.ones(C + 1))
  with pytest.raises(ValueError, match="log_prior"):
    jax.jit(lambda p: losses.logit_adjusted_loss(LOGITS, LABELS, log_prior=p))(np.zeros(C - 1))
  with pytest.raises(ValueError, match="margins"):
    jax.jit(lambda m: losses.pairwise_margin_loss(LOGITS, LABELS, margins=m))(np.zeros((C, C + 1)))
  with pytest.raises(ValueError, match="class_weights"):
    jax.jit(lambda w: losses.pairwise_margin_loss(
        LOGITS, LABELS, margins=np.zeros((C, C)), class_weights=w))(np.ones(C + 1))
  with pytest.raises(TypeError, match="log_prior"):
    losses.logit_adjusted_loss(LOGITS, LABELS, log_prior=np.zeros(C, int))


def test_weights_and_weighted_mean_validate_their_arguments():
  with pytest.raises(ValueError, match="beta"):
    losses.class_balanced_weights(COUNTS, beta=1.0)
  with pytest.raises(ValueError, match=r"class_counts.*non-negative"):
    losses.drw_weights(np.array([3, -1]), epoch=0)
  with pytest.raises(ValueError, match="losses"):
    losses.weighted_mean(np.ones(3), LABELS, class_weights=np.ones(C))
  with pytest.raises(ValueError, match="labels"):
    losses.weighted_mean(np.ones(B), LABELS + 1, class_weights=np.ones(C))
  with pytest.raises(ValueError, match="class_weights"):
    jax.jit(lambda w: losses.weighted_mean(np.ones(B), LABELS, class_weights=w))(np.ones((C, 1)))
  with pytest.raises(TypeError, match="labels"):
    losses.weighted_mean(np.ones(B), LABELS.astype(float), class_weights=np.ones(C))


def test_unknown_quantity_factor_is_rejected():
  with pytest.raises(ValueError, match="quantity_factor"):
    losses.ala_loss(LOGITS, LABELS, class_counts=COUNTS, quantity_factor="pape")
