"""ltjax.train's evaluation: per-split post-hoc logits, tau chosen on validation only."""
import types

import jax.numpy as jnp
import numpy as np
import pytest

from ltjax import train as lt

COUNTS = np.array([90, 9, 1])


def _split_logits(method, logits_by_split, calls=None):
  """SplitLogits over a fake network that returns fixed logits per split (the images are the
  split's name)."""
  def eval_logits(params, batch_stats, images):
    del params, batch_stats
    if calls is not None:
      calls.append(images)
    return jnp.asarray(logits_by_split[images], jnp.float32)

  state = types.SimpleNamespace(params={}, batch_stats={})
  log_prior = jnp.log(jnp.asarray(COUNTS / COUNTS.sum(), jnp.float32))
  return lt.SplitLogits(eval_logits=eval_logits, state=state,
                        images={s: s for s in logits_by_split}, log_prior=log_prior,
                        method=method)


def _prior_biased_logits(labels):
  """A correct margin of 0.5 plus the log prior: only tau near 1 removes the bias."""
  return 0.5 * np.eye(3)[labels] + np.log(COUNTS / COUNTS.sum())


def test_select_tau_uses_validation_only_and_the_network_runs_once_per_split():
  method, hp = lt.get_method("la_posthoc"), lt.hparams()
  labels = np.repeat(np.arange(3), 4)
  calls = []
  split_logits = _split_logits(method, {"val": _prior_biased_logits(labels),
                                        "test": _prior_biased_logits(labels)}, calls)
  tau, sweep = lt.select_tau(lambda s, t: split_logits("val", t) if s == "val" else 1 / 0,
                             method, hp, val_labels=labels, class_counts=COUNTS)
  assert sorted(sweep) == [float(t) for t in hp["tau_grid"]]
  assert sweep[tau] == max(sweep.values()) == 1.0 and sweep[0.0] < 0.5 and tau == 1.0
  out = lt.evaluate(split_logits, method, hp, labels={"val": labels, "test": labels},
                    class_counts=COUNTS)
  assert out["posthoc"]["step"] == "adjust" and out["posthoc"]["tau"] == tau
  assert out["test"]["top1"] == 1.0
  assert calls == ["val", "test"]  # raw logits computed once per split, reused for every tau


def test_no_validation_keeps_the_configured_tau_and_non_finite_logits_raise():
  method, hp = lt.get_method("la_posthoc"), lt.hparams({"tau": 0.5})
  labels = np.arange(3)
  split_logits = _split_logits(method, {"test": np.eye(3)})
  assert lt.select_tau(split_logits, method, hp, val_labels=None,
                       class_counts=COUNTS) == (0.5, {})
  bad = _split_logits(method, {"test": np.full((3, 3), np.nan)})
  with pytest.raises(lt.NonFiniteMetrics, match="test logits are not finite"):
    lt.evaluate(bad, method, hp, labels={"test": labels}, class_counts=COUNTS)
  with pytest.raises(KeyError, match="val"):
    split_logits("val", 1.0)
