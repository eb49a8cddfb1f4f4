"""The benchmarks' timing protocol (experiments/bench/_harness.py), on a simulated clock."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.bench import _harness
from experiments.bench import gala
from ltjax import losses


class DriftingClock:
  """Stands in for `_harness.timed`: a call of a variant costs `cost[name] * load`, and the load
  grows by `drift` after every repetition (a shared machine getting busier), in wall time only;
  the CPU time stays `cost[name]`. Records the order the variants ran in."""

  def __init__(self, cost, drift):
    self.cost, self.drift, self.load, self.calls = cost, drift, 1.0, []

  def variants(self):
    return {name: (lambda name=name: name) for name in self.cost}

  def timed(self, fn, calls=1):
    name = fn()
    self.calls.append((name, calls))
    sample = _harness.Sample(wall=self.cost[name] * self.load, cpu=self.cost[name])
    self.load += self.drift
    return sample


@pytest.fixture
def clock(monkeypatch):
  clock = DriftingClock({"base": 1.0, "twice": 2.0, "half": 0.5}, drift=0.1)
  monkeypatch.setattr(_harness, "timed", clock.timed)
  return clock


def test_bracketed_paired_ratio_cancels_a_linear_drift(clock):
  timings = _harness.interleaved(clock.variants(), rounds=5, warmup=2, baseline="base",
                                 bracket=True, calls={"base": 3, "twice": 1, "half": 7})
  names = [name for name, _ in clock.calls]
  # Each round (2 warm-up + 5) is base, v1, base, v2, base: every other variant's repetition
  # sits between two baseline repetitions.
  rounds = [names[i:i + 5] for i in range(0, len(names), 5)]
  assert len(rounds) == 7
  for r in rounds:
    assert r[::2] == ["base"] * 3 and sorted(r[1::2]) == ["half", "twice"]
  assert all(calls == {"base": 3, "twice": 1, "half": 7}[name] for name, calls in clock.calls)
  # Under a load that grows linearly, t / mean(before, after) is the true cost ratio...
  assert timings.paired_wall["twice"] == pytest.approx([2.0] * 5)
  assert timings.paired_wall["half"] == pytest.approx([0.5] * 5)
  # ... while the ratio of medians is not (the drift biases it).
  summary = _harness.summary(timings)
  assert summary["twice"]["paired_ratio_median"] == pytest.approx(2.0)
  assert summary["half"]["ratio_of_medians"] != pytest.approx(0.5, rel=1e-3)
  assert summary["twice"]["cpu_ratio_of_medians"] == pytest.approx(2.0)
  # Warm-up rounds are not recorded: 5 rounds of one sample, the baseline 3 per round.
  assert [len(r) for r in timings.samples["twice"]] == [1] * 5
  assert summary["base"]["samples"] == 15 and summary["twice"]["samples"] == 5


def test_shuffled_rounds_run_every_variant_each_round_in_varying_orders(clock):
  timings = _harness.interleaved(clock.variants(), rounds=12, warmup=1, samples_per_round=2,
                                 baseline="base", seed=3)
  names = [name for name, _ in clock.calls]
  rounds = [names[i:i + 6] for i in range(0, len(names), 6)]
  assert len(rounds) == 13
  for r in rounds:  # each variant's two repetitions back to back, each variant once per round
    assert sorted(r[::2]) == ["base", "half", "twice"] and r[::2] == r[1::2]
  assert len({tuple(r[::2]) for r in rounds}) > 1
  assert all(len(timings.samples[name]) == 12 for name in clock.cost)
  assert timings.paired_cpu["twice"] == pytest.approx([2.0] * 12)
  assert timings.paired_wall["base"] == [1.0] * 12


def test_summary_statistics_and_input_checks():
  samples = [[_harness.Sample(wall=w, cpu=w / 2)] for w in (1.0, 2.0, 3.0, 4.0, 100.0)]
  timings = _harness.Timings(samples={"a": samples})
  row = _harness.summary(timings)["a"]
  assert row["wall_median_s"] == 3.0 and row["cpu_median_s"] == 1.5
  assert row["wall_q1_s"] == 2.0 and row["wall_q3_s"] == 4.0 and row["samples"] == 5
  assert "ratio_of_medians" not in row  # no baseline, no ratios
  with pytest.raises(ValueError, match="Baseline"):
    _harness.interleaved({"a": lambda: None}, rounds=1, baseline="b")
  with pytest.raises(ValueError, match="bracket"):
    _harness.interleaved({"a": lambda: None}, rounds=1, bracket=True)
  with pytest.raises(ValueError, match="rounds"):
    _harness.interleaved({"a": lambda: None}, rounds=0)


def test_timed_measures_per_call_seconds():
  calls = []
  sample = _harness.timed(lambda: calls.append(1), calls=4)
  assert len(calls) == 4 and sample.wall >= 0 and sample.cpu >= 0


def test_gala_benchmark_full_matrices_hold_the_o_c_state():
  """The benchmark's `gala_full` variant (the official [C, C] F and P) carries the same theta and
  phi as ltjax's O(C) GalaState step after step, so the two time the same computation."""
  num_classes, batch = 5, 8
  full = gala.initial_loss_state("gala_full", num_classes)
  state = gala.initial_loss_state("gala", num_classes)
  keys = jax.random.split(jax.random.key(0), 4)
  for key in keys:
    logits = 2 * jax.random.normal(key, (batch, num_classes))
    labels = jax.random.randint(jax.random.fold_in(key, 1), (batch,), 0, num_classes)
    full = gala.full_matrix_update(full, logits, labels)
    state = losses.gala_update(state, logits, labels)
  view = gala.full_matrix_view(full)
  assert float(jnp.min(state.theta)) > 0  # every class seen: a non-trivial comparison
  np.testing.assert_allclose(view.theta, state.theta, rtol=1e-5)
  np.testing.assert_allclose(view.phi, state.phi, rtol=1e-5)
