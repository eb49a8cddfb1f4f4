"""ltjax.losses: equivalences between the losses and with their reference formulas; every loss
through `ltjax.testing.check_all` (invariances, float64 gradient checks, jit/vmap/grad/sharding,
finite extremes, gradient-free statistics).

Every loss is exercised under `jax.jit`. Shapes are fixed so each jitted function compiles once.
"""
import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ltjax import losses
from ltjax import priors
from ltjax import testing
from ltjax.losses import _eql

B, C = 6, 5
COUNTS = np.array([500, 120, 30, 7, 2])
RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(B, C)).astype(np.float32) * 2
COSINE = np.tanh(LOGITS).astype(np.float32)
LABELS = np.array([0, 1, 2, 3, 4, 3])
SETTINGS = hypothesis.settings(max_examples=8, deadline=None, derandomize=True)

ce = jax.jit(optax.softmax_cross_entropy_with_integer_labels)


def _la_margins(counts, tau):
  log_pi = priors.log_prior(counts)
  return tau * (log_pi[None, :] - log_pi[:, None])


# Every loss as f(logits_or_cosine, labels, counts); class statistics are derived from `counts`
# inside, so permuting the counts permutes them too.
LOSSES = {
    "logit_adjusted": lambda z, y, n: losses.logit_adjusted_loss(
        z, y, log_prior=priors.log_prior(n), tau=1.5),
    "balanced_softmax": lambda z, y, n: losses.balanced_softmax_loss(z, y, class_counts=n),
    "pairwise_margin": lambda z, y, n: losses.pairwise_margin_loss(
        z, y, margins=_la_margins(n, 0.7), class_weights=losses.class_balanced_weights(n)),
    "ldam": lambda x, y, n: losses.ldam_loss(x, y, class_counts=n),
    "ala_paper": lambda x, y, n: losses.ala_loss(x, y, class_counts=n),
    "ala_openlt": lambda x, y, n: losses.ala_loss(x, y, class_counts=n, quantity_factor="openlt"),
    "focal": lambda z, y, n: losses.focal_loss(z, y, gamma=2.0),
    "label_over_smooth": lambda z, y, n: losses.label_over_smooth_loss(z, y, delta=0.98),
    # gamma=1 makes the class mask deterministic, so it is permutation-equivariant too.
    "equalization": lambda z, y, n: losses.equalization_loss(
        z, y, class_counts=n, key=jax.random.key(1), threshold=0.05, gamma=1.0),
}
JITTED = {name: jax.jit(fn) for name, fn in LOSSES.items()}
COSINE_LOSSES = ("ldam", "ala_paper", "ala_openlt")


def _per_example(name):
  """LOSSES[name] in the kit's signature `(logits, labels, *, class_counts)`."""
  return lambda logits, labels, *, class_counts: LOSSES[name](logits, labels, class_counts)


def _ala_closed_form_gradient(quantity_factor):
  """d sum(loss) / d cos of ALA with the difficulty factor held constant (its stop_gradient):
  `s (softmax(s (cos - DF QF_y onehot)) - onehot)`, from `log(n / min n + 1)` directly."""
  def gradient(cosine, labels, *, class_counts):
    counts = jnp.asarray(class_counts, cosine.dtype)
    factors = 1.0 / jnp.log(counts / counts.min() + 1)
    if quantity_factor == "openlt":
      factors = np.log(2) * factors
    onehot = jax.nn.one_hot(labels, cosine.shape[-1], dtype=cosine.dtype)
    difficulty = (1 - jnp.sum(cosine * onehot, -1)) / 2
    adjusted = 30 * (cosine - onehot * (difficulty * factors[labels])[:, None])
    return 30 * (jax.nn.softmax(adjusted) - onehot)
  return gradient


def _ce_of_log_count_shift(logits, labels, *, class_counts):
  """Balanced Softmax as its paper writes it: CE of `logits + log(n)`, raw counts (all > 0)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits + jnp.log(class_counts), labels)


KIT_OPTIONS = {
    "logit_adjusted": {"reference_fn": optax.softmax_cross_entropy_with_integer_labels,
                       "reference_at": {"tau": 0.0}},
    "balanced_softmax": {"reference_fn": _ce_of_log_count_shift},
    "ldam": {"inputs": "cosine", "reference_fn": optax.softmax_cross_entropy_with_integer_labels,
             "reference_at": {"max_margin": 0.0, "scale": 1.0}},
    "ala_paper": {"inputs": "cosine", "shift_invariant": False,
                  "closed_form_gradient": _ala_closed_form_gradient("paper")},
    "ala_openlt": {"inputs": "cosine", "shift_invariant": False,
                   "closed_form_gradient": _ala_closed_form_gradient("openlt")},
}
KIT_LOSSES = {
    **{name: _per_example(name) for name in LOSSES},
    # With keyword hyperparameters, for check_reduces_to's `at`.
    "logit_adjusted": lambda z, y, *, class_counts, tau=1.5: losses.logit_adjusted_loss(
        z, y, log_prior=priors.log_prior(class_counts), tau=tau),
    "ldam": lambda x, y, *, class_counts, max_margin=0.5, scale=30.0: losses.ldam_loss(
        x, y, class_counts=class_counts, max_margin=max_margin, scale=scale),
}


def _inputs(name):
  return COSINE if name in COSINE_LOSSES else LOGITS


# ---------------------------------------------------------------------------------------------
# Equivalences


def test_logit_adjusted_is_cross_entropy_of_shifted_logits():
  log_pi = np.log(COUNTS / COUNTS.sum())
  got = JITTED["logit_adjusted"](LOGITS, LABELS, COUNTS)
  np.testing.assert_allclose(got, ce(LOGITS + 1.5 * log_pi, LABELS), rtol=1e-5)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_pairwise_margin_with_log_prior_ratios_is_logit_adjusted(tau):
  margins = _la_margins(COUNTS, tau) + np.diag(RNG.normal(size=C))  # diagonal must be ignored
  got = jax.jit(losses.pairwise_margin_loss)(LOGITS, LABELS, margins=margins)
  want = jax.jit(losses.logit_adjusted_loss)(LOGITS, LABELS, log_prior=priors.log_prior(COUNTS),
                                             tau=tau)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_pairwise_margin_matches_its_defining_formula():
  margins = RNG.normal(size=(C, C)).astype(np.float32)
  got = jax.jit(losses.pairwise_margin_loss)(LOGITS, LABELS, margins=margins)
  z, y = LOGITS.astype(np.float64), LABELS
  terms = np.exp(margins[y] + z - z[np.arange(B), y][:, None])
  terms[np.arange(B), y] = 0
  np.testing.assert_allclose(got, np.log1p(terms.sum(-1)), rtol=1e-5)


def test_pairwise_margin_with_class_weights_is_weighted_cross_entropy():
  weights = losses.class_balanced_weights(COUNTS)
  got = jax.jit(losses.pairwise_margin_loss)(LOGITS, LABELS, margins=np.zeros((C, C)),
                                             class_weights=weights)
  np.testing.assert_allclose(got, weights[LABELS] * ce(LOGITS, LABELS), rtol=1e-6)
  # ... and the weighted mean of plain CE is PyTorch's F.cross_entropy(weight=w).
  mean = jax.jit(losses.weighted_mean)(ce(LOGITS, LABELS), LABELS, class_weights=weights)
  np.testing.assert_allclose(mean, np.sum(got) / np.sum(weights[LABELS]), rtol=1e-6)


def test_ldam_matches_the_reference_formula():
  margins = COUNTS ** -0.25
  margins = margins * 0.5 / margins.max()
  np.testing.assert_allclose(losses.ldam_margins(COUNTS), margins, rtol=1e-6)
  adjusted = COSINE - np.eye(C)[LABELS] * margins[LABELS][:, None]
  np.testing.assert_allclose(JITTED["ldam"](COSINE, LABELS, COUNTS), ce(30 * adjusted, LABELS),
                             rtol=1e-5)


@pytest.mark.parametrize("qf", ["paper", "openlt"])
def test_ala_matches_the_reference_formula(qf):
  factors = (1.0 if qf == "paper" else np.log(2)) / np.log(COUNTS / COUNTS.min() + 1)
  np.testing.assert_allclose(losses.quantity_factors(COUNTS, quantity_factor=qf), factors,
                             rtol=1e-6)
  difficulty = (1 - COSINE[np.arange(B), LABELS]) / 2
  adjusted = COSINE - np.eye(C)[LABELS] * (difficulty * factors[LABELS])[:, None]
  got = JITTED[f"ala_{qf}"](COSINE, LABELS, COUNTS)
  np.testing.assert_allclose(got, ce(30 * adjusted, LABELS), rtol=1e-5)


def test_ala_with_target_cosine_one_is_scaled_cosine_cross_entropy():
  cosine = COSINE.copy()
  cosine[np.arange(B), LABELS] = 1.0  # difficulty factor 0
  np.testing.assert_allclose(JITTED["ala_paper"](cosine, LABELS, COUNTS), ce(30 * cosine, LABELS),
                             rtol=1e-6)


def test_label_over_smooth_with_delta_zero_is_cross_entropy_and_matches_optax_smoothing():
  los = jax.jit(losses.label_over_smooth_loss)
  np.testing.assert_allclose(los(LOGITS, LABELS, delta=0.0), ce(LOGITS, LABELS), rtol=1e-6)
  q = optax.smooth_labels(jax.nn.one_hot(LABELS, C), 0.98)
  np.testing.assert_allclose(los(LOGITS, LABELS, delta=0.98),
                             optax.softmax_cross_entropy(LOGITS, q), rtol=1e-6)
  # PyTorch's label_smoothing target, by hand: 1 - d + d/C on the label, d/C elsewhere.
  q_torch = np.full((B, C), 0.98 / C)
  q_torch[np.arange(B), LABELS] += 0.02
  log_softmax = np.asarray(jax.nn.log_softmax(LOGITS))
  np.testing.assert_allclose(los(LOGITS, LABELS, delta=0.98), -(q_torch * log_softmax).sum(-1),
                             rtol=1e-5)


def test_focal_with_gamma_zero_is_cross_entropy_and_matches_its_formula():
  focal = jax.jit(losses.focal_loss)
  np.testing.assert_allclose(focal(LOGITS, LABELS, gamma=0.0), ce(LOGITS, LABELS), rtol=1e-6)
  ce_np = np.asarray(ce(LOGITS, LABELS), np.float64)
  np.testing.assert_allclose(focal(LOGITS, LABELS, gamma=2.0),
                             (1 - np.exp(-ce_np)) ** 2 * ce_np, rtol=1e-5)


def test_equalization_drops_only_rare_negatives_with_probability_gamma():
  eql = jax.jit(losses.equalization_loss)
  key = jax.random.key(3)
  # threshold 0.05 makes classes 2, 3, 4 (frequencies 0.045, 0.011, 0.003) rare.
  rare = COUNTS / COUNTS.sum() < 0.05
  np.testing.assert_allclose(eql(LOGITS, LABELS, class_counts=COUNTS, key=key, threshold=0.05,
                                 gamma=0.0), ce(LOGITS, LABELS), rtol=1e-6)
  np.testing.assert_allclose(eql(LOGITS, LABELS, class_counts=COUNTS, key=key, threshold=0.0,
                                 gamma=1.0), ce(LOGITS, LABELS), rtol=1e-6)
  kept = ~rare[None, :] | (np.arange(C)[None, :] == LABELS[:, None])
  z = LOGITS.astype(np.float64)
  want = np.log(np.where(kept, np.exp(z), 0).sum(-1)) - z[np.arange(B), LABELS]
  got = eql(LOGITS, LABELS, class_counts=COUNTS, key=key, threshold=0.05, gamma=1.0)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_equalization_draws_a_fresh_mask_per_example_and_class():
  eql = jax.jit(functools.partial(losses.equalization_loss, threshold=0.5, gamma=0.5))
  labels = np.zeros(4000, np.int32)
  logits = np.zeros((4000, C), np.float32)
  counts = np.array([1000, 1, 1, 1, 1])  # classes 1-4 rare
  got = np.asarray(eql(logits, labels, class_counts=counts, key=jax.random.key(0)))
  # With logits 0, the loss is log(1 + number of kept negatives); kept ~ Binomial(4, 1/2).
  kept = np.round(np.exp(got) - 1).astype(int)
  np.testing.assert_allclose(np.bincount(kept, minlength=5) / 4000,
                             [1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16], atol=0.03)
  other = eql(logits, labels, class_counts=counts, key=jax.random.key(1))
  assert not np.array_equal(got, other)


def test_equalization_masks_rare_negatives_at_rate_gamma_and_nothing_else():
  # With zero logits, d loss / d z_j = 1 / (number kept) > 0 for a kept negative and exactly 0 for
  # a dropped one, so the gradient reveals the mask.
  batch, num_classes, gamma = 512, 40, 0.9
  counts = np.where(np.arange(num_classes) < 20, 1000, 1)  # classes 20-39 rare at threshold 0.01
  labels = np.arange(batch) % num_classes
  grad = jax.jit(jax.grad(lambda z: losses.equalization_loss(
      z, labels, class_counts=counts, key=jax.random.key(5), threshold=0.01, gamma=gamma).sum()))(
          np.zeros((batch, num_classes), np.float32))
  grad = np.asarray(grad)
  negative = np.arange(num_classes)[None, :] != labels[:, None]
  rare = (np.arange(num_classes) >= 20)[None, :]
  dropped = grad == 0
  assert not dropped[negative & ~rare].any()
  assert (grad[~negative] < 0).all()  # the target is kept (and a frequent negative always is)
  eligible = negative & rare
  rate = dropped[eligible].mean()
  assert abs(rate - gamma) < 5 * np.sqrt(gamma * (1 - gamma) / eligible.sum())


def test_bernoulli_mask_rate_and_independence():
  draw = jax.jit(_eql.bernoulli_mask, static_argnums=1)
  shape = (512, 1000)
  key, other_key = jax.random.split(jax.random.key(0))
  for p in (0.1, 0.5, 0.9):
    beta = np.asarray(draw(key, shape, p), np.float64)
    tolerance = 5 * np.sqrt(p * (1 - p) / beta.size)
    assert abs(beta.mean() - p) < tolerance
    # Pairwise independence: neighbouring classes, neighbouring examples, and the same entry under
    # another key (a correlation of 0 up to 5 standard errors).
    other = np.asarray(draw(other_key, shape, p), np.float64)
    for a, b in ((beta[:, 1:], beta[:, :-1]), (beta[1:], beta[:-1]), (beta, other)):
      assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5 / np.sqrt(a.size)
  assert not np.asarray(draw(key, shape, 0.0)).any()
  assert np.asarray(draw(key, shape, 1.0)).all()


def test_class_balanced_weights_match_the_float64_formula():
  cb = jax.jit(losses.class_balanced_weights)
  for beta in (0.9, 0.999, 0.9999):
    w = (1 - beta) / (1 - beta ** COUNTS.astype(np.float64))
    np.testing.assert_allclose(cb(COUNTS, beta=beta), w / w.sum() * C, rtol=1e-5)
  np.testing.assert_allclose(losses.class_balanced_weights(COUNTS, beta=0.0), np.ones(C))


def test_drw_switches_at_start_epoch_with_a_traced_epoch():
  drw = jax.jit(losses.drw_weights)
  np.testing.assert_array_equal(drw(COUNTS, epoch=jnp.int32(159)), np.ones(C))
  np.testing.assert_allclose(drw(COUNTS, epoch=jnp.int32(160)),
                             losses.class_balanced_weights(COUNTS), rtol=1e-6)
  np.testing.assert_array_equal(losses.drw_weights(COUNTS, epoch=4, start_epoch=5), np.ones(C))


# ---------------------------------------------------------------------------------------------
# The property kit on every loss


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_passes_the_property_kit(name):
  # Fisher consistency is checked in test_fisher_consistency.py for the losses that have it.
  reports = testing.check_all(KIT_LOSSES[name], target=None, **KIT_OPTIONS.get(name, {}))
  # The batch was sharded over tests/conftest.py's 8 CPU devices, with auto and explicit axes.
  assert reports["check_transformations"].details == {"devices": 8,
                                                      "sharding": ("auto", "explicit")}
  assert ("check_shift_invariance" in reports) == (not name.startswith("ala"))


def test_balanced_softmax_with_uniform_counts_is_cross_entropy():
  testing.check_reduces_to(losses.balanced_softmax_loss,
                           optax.softmax_cross_entropy_with_integer_labels,
                           class_counts=np.full(C, 7))


def test_every_public_loss_goes_through_the_kit():
  # A new loss in ltjax.losses must get a LOSSES entry (GALA's is in test_gala.py).
  covered = {losses.logit_adjusted_loss, losses.balanced_softmax_loss, losses.pairwise_margin_loss,
             losses.ldam_loss, losses.ala_loss, losses.focal_loss, losses.label_over_smooth_loss,
             losses.equalization_loss, losses.gala_loss}
  public = {getattr(losses, name) for name in dir(losses) if name.endswith("_loss")}
  assert public == covered
  assert {name.removesuffix("_paper").removesuffix("_openlt") for name in LOSSES} == {
      f.__name__.removesuffix("_loss") for f in covered - {losses.gala_loss}}


@SETTINGS
@hypothesis.given(case=testing.strategies.cases(batch_size=B, num_classes=C))
def test_logit_adjusted_is_shift_invariant_on_drawn_inputs(case):
  testing.check_shift_invariance(KIT_LOSSES["logit_adjusted"], cases=[case])


@SETTINGS
@hypothesis.given(shift=st.floats(-0.5, 0.5).filter(lambda c: abs(c) > 1e-3))
def test_ala_shift_lowers_the_target_margin_by_half_the_shift(shift):
  # ALA is not shift-invariant: DF = (1 - cos_y)/2 reads the absolute target cosine.
  factors = 1 / np.log(COUNTS / COUNTS.min() + 1)
  difficulty = (1 - COSINE[np.arange(B), LABELS]) / 2 - shift / 2
  want = ce(30 * (COSINE - np.eye(C)[LABELS] * (difficulty * factors[LABELS])[:, None]), LABELS)
  got = JITTED["ala_paper"](COSINE + np.float32(shift), LABELS, COUNTS)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert not np.allclose(got, JITTED["ala_paper"](COSINE, LABELS, COUNTS), rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Gradients


def test_focal_gradient_is_finite_for_gamma_below_one_at_certainty():
  logits = np.zeros((1, C), np.float32)
  logits[0, 0] = 200.0  # p_y == 1 in float32
  grad = jax.jit(jax.grad(lambda z: losses.focal_loss(z, np.array([0]), gamma=0.5).sum()))(logits)
  assert np.isfinite(grad).all()


@pytest.mark.parametrize("tau", [0.0, 1.0, 1.7])
def test_logit_adjusted_gradient_is_the_closed_form(tau):
  testing.check_gradients(
      functools.partial(KIT_LOSSES["logit_adjusted"], tau=tau), num_cases=2,
      closed_form=lambda z, y, *, class_counts: (
          jax.nn.softmax(z + tau * jnp.log(class_counts / jnp.sum(class_counts)))
          - jax.nn.one_hot(y, z.shape[-1], dtype=z.dtype)))


def test_no_gradient_reaches_priors_margins_or_weights():
  log_pi = priors.log_prior(COUNTS)
  g_prior = jax.grad(lambda p: losses.logit_adjusted_loss(LOGITS, LABELS, log_prior=p).sum())
  g_margin = jax.grad(
      lambda m, w: losses.pairwise_margin_loss(LOGITS, LABELS, margins=m, class_weights=w).sum(),
      argnums=(0, 1))
  g_mean = jax.grad(lambda w: losses.weighted_mean(ce(LOGITS, LABELS), LABELS, class_weights=w))
  np.testing.assert_array_equal(jax.jit(g_prior)(log_pi), np.zeros(C))
  for g in jax.jit(g_margin)(jnp.ones((C, C)), jnp.ones(C)):
    np.testing.assert_array_equal(g, np.zeros_like(g))
  np.testing.assert_array_equal(jax.jit(g_mean)(jnp.arange(1.0, C + 1)), np.zeros(C))


def test_weighted_mean_gradient_reaches_the_losses_with_normalised_weights():
  w = np.arange(1.0, C + 1, dtype=np.float32)
  grad = jax.jit(jax.grad(lambda v: losses.weighted_mean(v, LABELS, class_weights=w)))(
      np.ones(B, np.float32))
  np.testing.assert_allclose(grad, w[LABELS] / w[LABELS].sum(), rtol=1e-6)


@pytest.mark.parametrize("name", list(LOSSES))
def test_any_leading_batch_shape_works(name):
  x = _inputs(name)
  flat = JITTED[name](x, LABELS, COUNTS)
  batched = JITTED[name](x.reshape(2, 3, C), LABELS.reshape(2, 3), COUNTS)
  np.testing.assert_allclose(batched.reshape(-1), flat, rtol=1e-6)
  single = JITTED[name](x[0], LABELS[0], COUNTS)
  assert single.shape == ()


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
def test_weighted_mean_of_a_sharded_batch_equals_single_device(axis_type):
  # The per-example losses under sharding are checked by the kit's check_transformations.
  if jax.device_count() < 8:
    pytest.skip("needs the 8 simulated CPU devices of tests/conftest.py")
  mesh = jax.make_mesh((8,), ("data",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
  batch = jax.NamedSharding(mesh, jax.P("data"))
  rows = np.random.default_rng(5).normal(size=(16, C)).astype(np.float32)
  labels = np.arange(16) % C
  weights = losses.class_balanced_weights(COUNTS)
  per_example = ce(rows, labels)
  mean = jax.jit(losses.weighted_mean)
  want = mean(per_example, labels, class_weights=weights)
  with jax.set_mesh(mesh):
    got = mean(jax.device_put(per_example, batch), jax.device_put(labels, batch),
               class_weights=weights)
  np.testing.assert_allclose(got, want, rtol=1e-6)
