"""The table of bad calls: every public numerics function names the argument it rejects.

Each row is a call a user could plausibly make, the exception type and a regex of the one-line
message (which must name the argument). Concrete hyperparameters are checked eagerly and under
`jax.jit` when passed as Python constants; traced ones are checked for shape only.
"""
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import _domains
from ltjax import losses
from ltjax import metrics
from ltjax import posthoc
from ltjax import priors

Z = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5], [0.3, -0.2, 0.1], [1.0, 0.0, 0.0]])
COS = jnp.tanh(Z / 3)
Y = jnp.array([0, 1, 2, 0])
COUNTS = jnp.array([100, 10, 1])
LP = priors.log_prior(COUNTS)
NAN = float("nan")
KEY = jax.random.key(0)

BAD_CALLS = {
    # tau of the LA loss and of post-hoc LA: finite, >= 0, scalar or [C].
    "la_tau_negative": (lambda: losses.logit_adjusted_loss(Z, Y, log_prior=LP, tau=-1.0),
                        ValueError, r"`tau` must be a finite number >= 0, got -1.0"),
    "la_tau_nan": (lambda: losses.logit_adjusted_loss(Z, Y, log_prior=LP, tau=NAN),
                   ValueError, r"`tau` must be a finite number >= 0, got nan"),
    "la_tau_inf": (lambda: losses.logit_adjusted_loss(Z, Y, log_prior=LP, tau=float("inf")),
                   ValueError, r"`tau` must be a finite number"),
    "la_tau_wrong_shape": (lambda: losses.logit_adjusted_loss(Z, Y, log_prior=LP, tau=jnp.ones(2)),
                           ValueError, (r"`tau` must be a scalar or one value per class, shape "
                                       r"\(3,\).*got shape \(2,\)")),
    "la_tau_per_class_negative": (
        lambda: losses.logit_adjusted_loss(Z, Y, log_prior=LP, tau=jnp.array([1.0, -1.0, 1.0])),
        ValueError, r"`tau` must be a finite number >= 0, got -1.0"),
    "la_tau_bool": (lambda: losses.logit_adjusted_loss(Z, Y, log_prior=LP, tau=True),
                    TypeError, r"`tau` must be a number"),
    "la_tau_complex": (lambda: losses.logit_adjusted_loss(Z, Y, log_prior=LP, tau=1j),
                       TypeError, r"`tau`"),
    "la_both_statistics": (
        lambda: losses.logit_adjusted_loss(Z, Y, log_prior=LP, class_counts=COUNTS),
        TypeError, r"exactly one of `log_prior=`.*and `class_counts=`, not both"),
    "la_no_statistics": (lambda: losses.logit_adjusted_loss(Z, Y),
                         TypeError, r"exactly one of `log_prior=`"),
    "la_log_prior_dict": (lambda: losses.logit_adjusted_loss(Z, Y, log_prior={"a": LP}),
                          TypeError, r"`log_prior` must be an array.*got dict"),
    "la_log_prior_length": (lambda: losses.logit_adjusted_loss(Z, Y, log_prior=LP[:2]),
                            ValueError, r"`log_prior` has 2 entries but the logits have 3"),
    "adjust_tau_negative": (lambda: posthoc.adjust_logits(Z, log_prior=LP, tau=-0.5),
                            ValueError, r"`tau` must be a finite number >= 0, got -0.5"),
    "adjust_tau_nan": (lambda: posthoc.adjust_logits(Z, log_prior=LP, tau=NAN),
                       ValueError, r"`tau` must be a finite number >= 0, got nan"),
    "adjust_tau_matrix": (lambda: posthoc.adjust_logits(Z, log_prior=LP, tau=jnp.ones((3, 3))),
                          ValueError, r"`tau` must be a scalar or one value per class"),
    "adjust_logits_none": (lambda: posthoc.adjust_logits(None, log_prior=LP),
                           TypeError, r"`logits` must be an array.*got NoneType"),
    "rebalance_tau_negative": (lambda: posthoc.rebalance(Z, tau=-1.0),
                               ValueError, r"`tau` must be a finite number >= 0"),
    "rebalance_tau_vector": (lambda: posthoc.rebalance(Z, tau=jnp.ones(3)),
                             ValueError, r"`tau` must be a scalar, got shape \(3,\)"),
    "tau_normalize_nan": (lambda: posthoc.tau_normalize(Z, tau=NAN),
                          ValueError, r"`tau` must be a finite number >= 0, got nan"),
    # The other losses' hyperparameters.
    "focal_gamma_negative": (lambda: losses.focal_loss(Z, Y, gamma=-1.0),
                             ValueError, r"`gamma` must be a finite number >= 0, got -1.0"),
    "focal_gamma_vector": (lambda: losses.focal_loss(Z, Y, gamma=jnp.ones(3)),
                           ValueError, r"`gamma` must be a scalar, got shape \(3,\)"),
    "los_delta_above_one": (lambda: losses.label_over_smooth_loss(Z, Y, delta=1.5),
                            ValueError, r"`delta` must be a finite number in \[0, 1\], got 1.5"),
    "ldam_scale_zero": (lambda: losses.ldam_loss(COS, Y, class_counts=COUNTS, scale=0.0),
                        ValueError, r"`scale` must be a finite number > 0, got 0.0"),
    "ldam_margin_nan": (lambda: losses.ldam_loss(COS, Y, class_counts=COUNTS, max_margin=NAN),
                        ValueError, r"`max_margin` must be a finite number >= 0, got nan"),
    "ala_scale_negative": (lambda: losses.ala_loss(COS, Y, class_counts=COUNTS, scale=-30.0),
                           ValueError, r"`scale` must be a finite number > 0"),
    "ala_quantity_factor": (lambda: losses.ala_loss(COS, Y, class_counts=COUNTS,
                                                    quantity_factor="ldam"),
                            ValueError, r"`quantity_factor` must be one of 'paper', 'openlt'"),
    "eql_gamma_above_one": (lambda: losses.equalization_loss(Z, Y, class_counts=COUNTS, key=KEY,
                                                             gamma=2.0),
                            ValueError, r"`gamma` must be a finite number in \[0, 1\]"),
    "eql_threshold_negative": (
        lambda: losses.equalization_loss(Z, Y, class_counts=COUNTS, key=KEY, threshold=-0.1),
        ValueError, r"`threshold` must be a finite number in \[0, 1\]"),
    "cb_beta_one": (lambda: losses.class_balanced_weights(COUNTS, beta=1.0),
                    ValueError, r"`beta` must be a finite number in \[0, 1\), got 1.0"),
    "cb_beta_array_nan": (lambda: losses.class_balanced_weights(COUNTS, beta=jnp.array(NAN)),
                          ValueError, r"`beta` must be a finite number in \[0, 1\)"),
    "drw_start_epoch_negative": (lambda: losses.drw_weights(COUNTS, epoch=3, start_epoch=-1),
                                 ValueError, r"`start_epoch` must be an integer >= 0, got -1"),
    "drw_epoch_float": (lambda: losses.drw_weights(COUNTS, epoch=1.5),
                        TypeError, r"`epoch` must have an integer dtype"),
    "pairwise_margins_nan": (lambda: losses.pairwise_margin_loss(
        Z, Y, margins=jnp.full((3, 3), NAN)), ValueError, r"`margins` must be finite"),
    "pairwise_weights_shape": (lambda: losses.pairwise_margin_loss(
        Z, Y, margins=jnp.zeros((3, 3)), class_weights=jnp.ones(4)),
        ValueError, r"`class_weights` has 4 entries but the logits have 3"),
    "gala_lam1_negative": (lambda: losses.gala_loss(Z, Y, losses.gala_init(3), lam1=-1.0),
                           ValueError, r"`lam1` must be a finite number >= 0, got -1.0"),
    "gala_mode": (lambda: losses.gala_loss(Z, Y, losses.gala_init(3), mode="official"),
                  ValueError, r"`mode` must be one of 'code', 'paper'"),
    # Swapped arguments and wrong pytrees.
    "gala_update_swapped": (lambda: losses.gala_update(Z, losses.gala_init(3), Y),
                            TypeError, (r"GalaState was passed as `logits`.*swapped.*"
                                       r"gala_update\(state, logits, labels\)")),
    "gala_loss_swapped": (lambda: losses.gala_loss(losses.gala_init(3), Z, Y),
                          TypeError, (r"GalaState was passed as `logits`.*"
                                     r"gala_loss\(logits, labels, state\)")),
    "gala_loss_state_as_labels": (lambda: losses.gala_loss(Z, losses.gala_init(3), Y),
                                  TypeError, r"GalaState was passed as `labels`"),
    "ldam_logits_dict": (lambda: losses.ldam_loss({"a": COS}, Y, class_counts=COUNTS),
                         TypeError, r"`cosine` must be an array.*got dict"),
    "focal_ragged_list": (lambda: losses.focal_loss([[1.0, 2.0], [1.0]], [0, 0]),
                          TypeError, r"`logits` must be an array; the sequence given is ragged"),
    "balanced_softmax_counts_none": (
        lambda: losses.balanced_softmax_loss(Z, Y, class_counts=None),
        TypeError, r"`class_counts` must be an array.*got NoneType"),
    "class_prior_strings": (lambda: priors.class_prior(["a", "b"]),
                            TypeError, r"`class_counts` must be an array of numbers.*holds str"),
    "log_prior_negative_counts": (lambda: priors.log_prior([10, -1]),
                                  ValueError, r"`class_counts` must be non-negative"),
    "log_prior_eps_zero": (lambda: priors.log_prior([10, 1], eps=0.0),
                           ValueError, r"`eps` must be a finite number > 0"),
    # Metrics: the scikit-learn habit, and shapes.
    "balanced_accuracy_sklearn_style": (lambda: metrics.balanced_accuracy(Y, Y),
                                        TypeError, r"balanced_accuracy_score\(labels, predictions"),
    "balanced_error_sklearn_style": (lambda: metrics.balanced_error(Y, Y),
                                     TypeError, r"balanced_error_score\(labels, predictions"),
    "per_class_accuracy_sklearn_style": (lambda: metrics.per_class_accuracy(Y, Y),
                                         TypeError, r"per_class_accuracy_score"),
    "balanced_accuracy_of_labels": (lambda: metrics.balanced_accuracy(Y),
                                    ValueError, (r"`confusion` must be a square.*"
                                                r"balanced_accuracy_score\(labels, predictions\)")),
    "shot_accuracy_many_nan": (lambda: metrics.shot_accuracy(jnp.eye(3), class_counts=COUNTS,
                                                             many=NAN),
                               ValueError, r"`many` must be a finite number >= 0"),
    "confusion_float_labels": (lambda: metrics.confusion_matrix([0.0, 1.0], [0, 1], num_classes=2),
                               TypeError, r"`labels` must have an integer dtype"),
}


@pytest.mark.parametrize("name", sorted(BAD_CALLS))
def test_bad_call_raises_one_line_naming_the_argument(name):
  call, error, message = BAD_CALLS[name]
  with pytest.raises(error, match=message) as info:
    call()
  assert "\n" not in str(info.value), str(info.value)


# Python-constant hyperparameters are concrete inside jit too: the same errors at trace time.
JITTED = {
    "la_tau_negative": lambda z, y: losses.logit_adjusted_loss(z, y, log_prior=LP, tau=-1.0),
    "focal_gamma_nan": lambda z, y: losses.focal_loss(z, y, gamma=NAN),
    "adjust_tau_negative": lambda z, y: posthoc.adjust_logits(z, log_prior=LP, tau=-1.0),
}


@pytest.mark.parametrize("name", sorted(JITTED))
def test_constant_hyperparameters_are_checked_under_jit(name):
  with pytest.raises(ValueError, match=r"must be a finite number >= 0"):
    jax.jit(JITTED[name])(Z, Y)


def test_traced_hyperparameters_skip_the_value_check_but_not_the_shape_check():
  la = jax.jit(lambda tau: losses.logit_adjusted_loss(Z, Y, log_prior=LP, tau=tau))
  # The value is unknown at trace time: a traced negative tau runs (its value is the caller's).
  assert np.all(np.isfinite(la(jnp.float32(-1.0))))
  # A per-class traced tau is allowed, and equals the scalar one when constant.
  np.testing.assert_allclose(la(jnp.full(3, 0.5)), la(jnp.float32(0.5)), rtol=1e-6)
  with pytest.raises(ValueError, match=r"`tau` must be a scalar or one value per class"):
    la(jnp.ones(2))


def test_lists_work_like_arrays():
  np.testing.assert_allclose(priors.log_prior([1000, 100, 10]),
                             priors.log_prior(jnp.array([1000, 100, 10])))
  z, y = np.asarray(Z).tolist(), np.asarray(Y).tolist()
  np.testing.assert_allclose(losses.balanced_softmax_loss(z, y, class_counts=[100, 10, 1]),
                             losses.balanced_softmax_loss(Z, Y, class_counts=COUNTS), rtol=1e-6)
  np.testing.assert_allclose(losses.focal_loss(z, y, gamma=2.0), losses.focal_loss(Z, Y, gamma=2.0),
                             rtol=1e-6)
  np.testing.assert_array_equal(metrics.confusion_matrix(y, y, num_classes=3),
                                metrics.confusion_matrix(Y, Y, num_classes=3))
  assert np.isfinite(metrics.expected_calibration_error(z, y))


def test_class_counts_is_accepted_wherever_log_prior_is():
  for tau in (0.0, 0.5, 1.0):
    np.testing.assert_allclose(
        losses.logit_adjusted_loss(Z, Y, class_counts=COUNTS, tau=tau),
        losses.logit_adjusted_loss(Z, Y, log_prior=LP, tau=tau), rtol=1e-6)
    np.testing.assert_allclose(posthoc.adjust_logits(Z, class_counts=COUNTS, tau=tau),
                               posthoc.adjust_logits(Z, log_prior=LP, tau=tau), rtol=1e-6)
  # Under jit with traced counts (the kit's convention), and through functools.partial.
  loss_fn = jax.jit(functools.partial(losses.logit_adjusted_loss, tau=1.0))
  np.testing.assert_allclose(loss_fn(Z, Y, class_counts=COUNTS),
                             losses.balanced_softmax_loss(Z, Y, class_counts=COUNTS), rtol=1e-6)


def test_a_prior_passed_as_log_prior_warns():
  prior = priors.class_prior(COUNTS)
  with pytest.warns(UserWarning, match=r"`log_prior` looks like a prior"):
    losses.logit_adjusted_loss(Z, Y, log_prior=prior)
  with pytest.warns(UserWarning, match=r"`log_prior` looks like a prior"):
    posthoc.adjust_logits(Z, log_prior=prior)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    losses.logit_adjusted_loss(Z, Y, log_prior=LP)
    # log(counts) is a valid log prior up to a constant (Balanced Softmax's form): no warning.
    losses.logit_adjusted_loss(Z, Y, log_prior=jnp.log(COUNTS.astype(jnp.float32)))
    jax.jit(lambda p: losses.logit_adjusted_loss(Z, Y, log_prior=p))(prior)  # traced: unknown


def test_raw_logits_into_cosine_losses_warn():
  with pytest.warns(UserWarning, match=r"`cosine` has values up to \|2\b.*outside \[-1, 1\]"):
    losses.ldam_loss(Z, Y, class_counts=COUNTS)
  with pytest.warns(UserWarning, match=r"outside \[-1, 1\]"):
    losses.ala_loss(Z, Y, class_counts=COUNTS)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    losses.ldam_loss(COS, Y, class_counts=COUNTS)
    losses.ldam_loss(jnp.clip(COS * 1.0005, -1.0005, 1.0005), Y, class_counts=COUNTS)


def test_sklearn_style_metrics_match_the_confusion_matrix_functions():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 200)
  predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 5, 200))
  confusion = metrics.confusion_matrix(labels, predictions, num_classes=5)
  recall = np.array([np.mean(predictions[labels == c] == c) for c in range(5)])
  np.testing.assert_allclose(metrics.per_class_accuracy_score(labels, predictions), recall,
                             rtol=1e-6)
  np.testing.assert_allclose(metrics.balanced_accuracy_score(labels, predictions), recall.mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(metrics.balanced_error_score(labels, predictions),
                             metrics.balanced_error(confusion))
  counts = np.array([500, 200, 50, 10, 5])
  got = metrics.shot_accuracy_score(labels, predictions, class_counts=counts)
  want = metrics.shot_accuracy(confusion, class_counts=counts)
  assert {k: float(v) for k, v in got.items()} == {k: float(v) for k, v in want.items()}
  jitted = jax.jit(functools.partial(metrics.balanced_accuracy_score, num_classes=5))
  np.testing.assert_allclose(jitted(labels, predictions), recall.mean(), rtol=1e-6)
  with pytest.raises(ValueError, match="`num_classes` is required"):
    jax.jit(metrics.balanced_accuracy_score)(labels, predictions)


def test_the_registry_declares_the_numerics_domains():
  train = pytest.importorskip("ltjax.train")
  hp = train.declared_hparams()
  assert train.Real is _domains.Real
  for name, domain in {"tau": _domains.TAU, "focal_gamma": _domains.FOCAL_GAMMA,
                       "cb_beta": _domains.CB_BETA, "drw_start_epoch": _domains.START_EPOCH,
                       "ldam_max_margin": _domains.MAX_MARGIN, "scale": _domains.SCALE,
                       "ala_quantity_factor": _domains.QUANTITY_FACTOR,
                       "eql_threshold": _domains.EQL_THRESHOLD, "eql_gamma": _domains.EQL_GAMMA,
                       "gala_lam1": _domains.GALA_LAMBDA, "gala_lam2": _domains.GALA_LAMBDA,
                       "gala_mode": _domains.GALA_MODE, "prs_tau": _domains.TAU,
                       "los_delta": _domains.LOS_DELTA}.items():
    assert hp[name].domain == domain, name
