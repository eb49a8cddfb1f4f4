"""ltjax.testing itself: it catches known-bad losses with messages that say what failed, the
README's "Test your own loss" file runs as written, and the module is light and installed."""
import fnmatch
import importlib.util
import pathlib
import re
import subprocess
import sys
import tomllib

import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ltjax import losses
from ltjax import testing

ROOT = pathlib.Path(__file__).resolve().parents[1]
ce = optax.softmax_cross_entropy_with_integer_labels


def cross_entropy(logits, labels, *, class_counts):
  del class_counts
  return ce(logits, labels)


def test_plain_cross_entropy_is_not_balanced_error_consistent():
  message = (r"not Fisher consistent for the balanced error .* predicts \[0, 0, 0, 0, 0, 2\], "
             r"the Bayes rule is \[0, 0, 1, 2, 2, 2\]; they disagree at x = \[2, 3, 4\], "
             r"balanced error 0\.5700 vs Bayes 0\.3667 .*does not correct for the class prior")
  with pytest.raises(AssertionError, match=message):
    testing.check_fisher_consistency(cross_entropy)


def test_over_corrected_loss_is_not_plain_error_consistent():
  def over_corrected(logits, labels, *, class_counts):
    return ce(logits + 2.0 * jnp.log(class_counts / jnp.sum(class_counts)), labels)
  with pytest.raises(AssertionError, match="not Fisher consistent for the plain error"):
    testing.check_fisher_consistency(over_corrected, target="error")


def test_a_loss_without_finite_minimiser_fails_the_convergence_check():
  def linear(logits, labels, *, class_counts):  # unbounded below: -z_y
    del class_counts
    return -jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  with pytest.raises(AssertionError, match="did not converge"):
    testing.check_fisher_consistency(linear, max_steps=50)


def test_a_loss_that_never_penalises_a_rare_negative_is_reported_as_diverging():
  # Equalization loss with gamma = 1 drops every negative of the 5% class from the softmax: its
  # logit is never pushed down, and the minimiser predicts it everywhere with diverging logits.
  def eql(logits, labels, *, class_counts):
    return losses.equalization_loss(logits, labels, class_counts=class_counts,
                                    key=jax.random.key(0), threshold=0.1, gamma=1.0)
  with pytest.raises(AssertionError, match=r"predicts \[2, 2, 2, 2, 2, 2\].*no finite minimiser"):
    testing.check_fisher_consistency(eql)


@jax.custom_vjp
def _ce_with_gradient_off_by_a_constant(logits, labels):
  return ce(logits, labels)


def _forward(logits, labels):
  return ce(logits, labels), (logits, labels)


def _backward(residuals, g):
  logits, labels = residuals
  exact = jax.nn.softmax(logits) - jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  return g[:, None] * (exact + 0.01), None


_ce_with_gradient_off_by_a_constant.defvjp(_forward, _backward)


def test_gradient_off_by_a_constant_is_caught():
  def loss(logits, labels, *, class_counts):
    del class_counts
    return _ce_with_gradient_off_by_a_constant(logits, labels)
  with pytest.raises(AssertionError, match=r"check_gradients: case 0 .* does not match central "
                                           r"finite differences \(step 1e-06, float64"):
    testing.check_gradients(loss)
  with pytest.raises(AssertionError, match="differs from the given closed-form gradient"):
    testing.check_gradients(
        loss, closed_form=lambda z, y, *, class_counts: jax.nn.softmax(z) - jax.nn.one_hot(
            y, z.shape[-1], dtype=z.dtype))


def test_a_loss_that_is_not_shift_invariant_is_caught():
  def loss(logits, labels, *, class_counts):
    del class_counts
    return ce(logits, labels) + 1e-3 * jnp.sum(logits, -1)
  with pytest.raises(AssertionError, match=r"check_shift_invariance: case 0 .* values differ; "
                                           r"worst at index \(\d+,\).*not invariant to per-row"):
    testing.check_shift_invariance(loss)


def test_a_python_branch_on_values_fails_under_vmap():
  def loss(logits, labels, *, class_counts):
    del class_counts
    if jnp.max(logits) > 100.0:  # reads a value: fine eagerly, not when traced
      logits = logits / 2
    return ce(logits, labels)
  with pytest.raises(AssertionError, match=r"fails under jax.vmap over examples: "
                                           r"TracerBoolConversionError"):
    testing.check_transformations(loss, sharding=())


def test_a_batch_dependent_loss_fails_the_vmap_comparison():
  def loss(logits, labels, *, class_counts):
    del class_counts
    values = ce(logits, labels)
    return values - 0.1 * jnp.mean(values)
  with pytest.raises(AssertionError, match="depends on the rest of the batch"):
    testing.check_transformations(loss, sharding=())


def test_a_batch_mean_is_not_a_per_example_loss():
  with pytest.raises(AssertionError, match=r"returned shape \(\); a per-example loss"):
    testing.check_transformations(lambda z, y, *, class_counts: jnp.mean(ce(z, y)), sharding=())


def test_class_index_dependence_breaks_permutation_equivariance():
  def loss(logits, labels, *, class_counts):
    del class_counts
    return ce(logits, labels) * (1.0 + 0.1 * labels)
  with pytest.raises(AssertionError, match=r"permutation \[.*depends on the class indices"):
    testing.check_class_permutation_equivariance(loss)


def test_gradient_to_the_counts_is_caught():
  def loss(logits, labels, *, class_counts):
    return ce(logits + jnp.log(class_counts), labels)  # no stop_gradient
  with pytest.raises(AssertionError, match="a gradient reaches class_counts"):
    testing.check_no_gradient_to_statistics(loss)


def test_a_naive_softmax_overflows_at_the_extremes():
  def loss(logits, labels, *, class_counts):
    del class_counts
    p = jnp.exp(logits) / jnp.sum(jnp.exp(logits), -1, keepdims=True)
    return -jnp.log(jnp.take_along_axis(p, labels[:, None], -1)[:, 0])
  with pytest.raises(AssertionError, match=r"scenario 'huge_logits'.* losses are not finite"):
    testing.check_finite_extremes(loss)


def test_a_wrong_reduction_is_caught():
  def half_adjusted(logits, labels, *, class_counts, tau=1.0):
    return ce(logits + (tau + 0.5) * jnp.log(class_counts / jnp.sum(class_counts)), labels)
  with pytest.raises(AssertionError, match=r"check_reduces_to\(at=\{'tau': 0.0\}\).*does not "
                                           "reduce to the reference"):
    testing.check_reduces_to(half_adjusted, ce, at={"tau": 0.0})


def test_strategies_draw_valid_cases():
  @hypothesis.settings(max_examples=20, deadline=None, derandomize=True)
  @hypothesis.given(case=testing.strategies.cases(batch_size=4, num_classes=6, allow_empty=True))
  def check(case):
    counts = np.asarray(case.class_counts)
    assert case.logits.shape == (4, 6) and np.isfinite(case.logits).all()
    assert counts.shape == (6,) and (counts >= 0).all() and counts.any()
    assert (counts[case.labels] > 0).all()
  check()


def _readme_example() -> str:
  readme = (ROOT / "README.md").read_text()
  section = readme.split("## Test your own loss", 1)[1]
  return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_example_runs_as_written(tmp_path):
  path = tmp_path / "test_my_loss.py"
  path.write_text(_readme_example())
  spec = importlib.util.spec_from_file_location("test_my_loss", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  tests = [getattr(module, name) for name in dir(module) if name.startswith("test_")]
  assert tests
  for test in tests:
    test()


def test_import_is_light_and_the_module_is_packaged():
  code = ("import sys, ltjax.testing; "
          "print(sorted({'hypothesis', 'pytest', 'flax'} & set(sys.modules)))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == "[]", out.stdout + out.stderr
  # setuptools' package discovery (pyproject) takes ltjax.testing into the installed package.
  find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
  assert any(fnmatch.fnmatch("ltjax.testing", pattern) for pattern in find["find"]["include"])
  assert (ROOT / "ltjax" / "testing" / "__init__.py").is_file()


# check_all: every failure at once, the statistics-gradient convention, the sharding skip, and
# registered methods without an adapter.


def natural_la(logits, labels, *, class_counts):
  """LA written the natural way: the class statistics are not wrapped in stop_gradient."""
  return ce(logits + jnp.log(class_counts / class_counts.sum()), labels)


@pytest.mark.slow
def test_natural_la_passes_check_all_with_a_warning_unless_strict():
  with pytest.warns(UserWarning, match=r"a gradient reaches class_counts.*statistics_gradient"):
    reports = testing.check_all(natural_la, sharding=())
  assert "warning" in reports["check_no_gradient_to_statistics"].details
  assert "check_fisher_consistency" in reports
  with pytest.raises(AssertionError, match="a gradient reaches class_counts"):
    testing.check_all(natural_la, sharding=(), target=None, statistics_gradient="error")


def test_fail_fast_false_reports_every_failed_check():
  def broken(logits, labels, *, class_counts):
    # Index-dependent (breaks permutation equivariance) and plain CE (not balanced-consistent).
    del class_counts
    return ce(logits, labels) * (1.0 + 0.1 * labels)
  with pytest.raises(AssertionError, match="check_class_permutation_equivariance"):
    testing.check_all(broken, sharding=())  # fail_fast: the first failure only
  with pytest.raises(testing.ChecksFailed) as info:
    testing.check_all(broken, sharding=(), fail_fast=False)
  assert set(info.value.failures) == {"check_class_permutation_equivariance",
                                      "check_fisher_consistency"}
  assert {"check_gradients", "check_transformations"} <= set(info.value.reports)
  message = str(info.value)
  assert message.startswith("2 of ") and "permutation" in message and "Bayes" in message


def test_a_skipped_sharding_check_says_why_and_how(monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda *args: 1)
  with pytest.warns(testing.ShardingCheckSkipped, match=r"only 1 device.*jax_num_cpu_devices"):
    report = testing.check_transformations(cross_entropy, num_cases=1)
  assert "XLA_FLAGS" in report.details["sharding_skipped"]


@pytest.mark.slow
def test_registered_methods_are_checked_without_an_adapter():
  reports = testing.check_method("la_loss", target="balanced", sharding=())
  assert "check_fisher_consistency" in reports
  # Hyperparameter overrides go through the registry's domains.
  with pytest.raises(ValueError, match=r"hparams.tau=-1.0 is not allowed"):
    testing.method_loss("la_loss", hparams={"tau": -1.0})
  # The loss equals the library's, with the method's DRW weight per example after its start.
  z, y = jnp.array([[1.0, 0.0, -1.0], [0.2, 0.1, 0.0]]), jnp.array([0, 2])
  counts = jnp.array([50, 10, 2])
  la = testing.method_loss("la_loss", hparams={"tau": 0.5})
  np.testing.assert_allclose(la(z, y, class_counts=counts),
                             losses.logit_adjusted_loss(z, y, class_counts=counts, tau=0.5),
                             rtol=1e-6)
  ldam = testing.method_loss("ldam_drw", hparams={"drw_start_epoch": 0}, epoch=1)
  weights = losses.class_balanced_weights(counts)
  np.testing.assert_allclose(
      ldam(jnp.tanh(z), y, class_counts=counts),
      weights[y] * losses.ldam_loss(jnp.tanh(z), y, class_counts=counts), rtol=1e-5)
  # A stateful method (GALA): the per-example form runs under the transformations check.
  testing.check_transformations(testing.method_loss("gala"), num_cases=1)
