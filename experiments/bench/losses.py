"""Forward+backward time of each stateless ltjax loss relative to optax's cross-entropy.

For every (batch, classes) shape, each loss is wrapped as
`jax.jit(jax.value_and_grad(lambda z: loss(z, labels, **stats).mean()))`, with the class
statistics (counts, log prior, margins, weights, PRNG key) passed as arguments, as in a train step.
The baseline is the same wrapper around `optax.softmax_cross_entropy_with_integer_labels`.

Variants are interleaved round by round (the CPU is shared, so load drifts hit every variant
alike), and every variant's repetition is bracketed by two CE repetitions
(`experiments/bench/_harness.py`). A repetition is `calls` calls back to back (about
`round_ms`), divided by `calls`. Reported: the median over
rounds after a warm-up, its ratio to the CE median of the same run, and the median of the paired
ratios `t / mean(CE before, CE after)`, both for wall-clock time and for the CPU time of this
process (all its threads; `time.process_time`), which time slices lost to other processes on a
shared machine do not inflate.

  python -m experiments.bench.losses [--rounds=40] [--runs=2] \
      [--out=experiments/results/bench_losses]
"""
from __future__ import annotations

import functools
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import app
from absl import flags

from experiments import provenance
from experiments.bench import _harness
from ltjax import losses
from ltjax import priors

_SHAPES = flags.DEFINE_list("shapes", ["512x100", "256x1000", "128x8142"],
                            "(batch)x(classes) shapes.")
_ROUNDS = flags.DEFINE_integer("rounds", 40, "Interleaved timed rounds (repetitions) per shape.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed rounds after compilation.")
_ROUND_MS = flags.DEFINE_float("round_ms", 10.0, "Target duration of one variant's round.")
_RUNS = flags.DEFINE_integer("runs", 2, "Independent runs (the machine may be noisy).")
_OUT = flags.DEFINE_string("out", "experiments/results/bench_losses", "Output path without suffix.")

TARGET_RATIO = 1.3
BASELINE = "optax_ce"


def _counts(num_classes):
  # CIFAR-style exponential profile at imbalance ratio 100.
  return np.floor(500 * 0.01 ** (np.arange(num_classes) / (num_classes - 1))).astype(np.int32)


def _variants():
  """name -> (per-example loss(z, y, stats), whether it takes cosines)."""
  return {
      "optax_ce": lambda z, y, s: optax.softmax_cross_entropy_with_integer_labels(z, y),
      "logit_adjusted": lambda z, y, s: losses.logit_adjusted_loss(z, y, log_prior=s["log_prior"]),
      "balanced_softmax": lambda z, y, s: losses.balanced_softmax_loss(
          z, y, class_counts=s["counts"]),
      "pairwise_margin": lambda z, y, s: losses.pairwise_margin_loss(
          z, y, margins=s["margins"], class_weights=s["weights"]),
      "ldam": lambda x, y, s: losses.ldam_loss(x, y, class_counts=s["counts"]),
      "ala": lambda x, y, s: losses.ala_loss(x, y, class_counts=s["counts"]),
      "focal": lambda z, y, s: losses.focal_loss(z, y, gamma=1.0),
      "label_over_smooth": lambda z, y, s: losses.label_over_smooth_loss(z, y, delta=0.98),
      "equalization": lambda z, y, s: losses.equalization_loss(
          z, y, class_counts=s["counts"], key=s["key"]),
      "ce_weighted_mean_drw": lambda z, y, s: losses.weighted_mean(
          optax.softmax_cross_entropy_with_integer_labels(z, y), y,
          class_weights=losses.drw_weights(s["counts"], epoch=s["epoch"])),
  }


def _compiled(fn):
  def mean_loss(z, y, stats):
    per_example = fn(z, y, stats)
    return per_example if per_example.ndim == 0 else per_example.mean()
  return jax.jit(jax.value_and_grad(mean_loss))


_HLO_RESULT = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]\S* (\S+)\(")
_NOT_WRITTEN = ("parameter", "bitcast", "constant", "get-tuple-element", "tuple")


def materialised_arrays(step, args, batch, num_classes):
  """{dtype: count} of `[batch, num_classes]` arrays the compiled step writes to memory.

  Counted from the top-level instructions of the compiled HLO (fusions, custom fusions, ...),
  i.e. the buffers between XLA's kernels; parameters, constants and bitcasts write nothing, and
  scatters that update the label entries in place write `B` elements, not `B * C`. Each counted
  array is at least a write and a read of `B * C` elements, so the count is a proxy (for this
  backend's compiler) for the passes over memory that bound these losses at large `C`.
  """
  text = step.lower(*args).compile().as_text()
  entry = text[text.index("\nENTRY"):]
  entry = entry[:entry.index("\n}")]
  counts = {}
  for line in entry.splitlines():
    match = _HLO_RESULT.match(line)
    # Scatters (the label entries of a gradient or of the exps) update B elements in place.
    if (match and match.group(3) == f"{batch},{num_classes}"
        and match.group(4) not in _NOT_WRITTEN and "scatter" not in match.group(1)):
      counts[match.group(2)] = counts.get(match.group(2), 0) + 1
  return counts


def bench_shape(batch, num_classes, rounds, warmup, round_ms, on_round):
  """The harness's summary of every loss at one shape, with its materialised `[B, C]` arrays."""
  rng = np.random.default_rng(0)
  counts = _counts(num_classes)
  log_pi = priors.log_prior(counts)
  stats = {
      "counts": jnp.asarray(counts),
      "log_prior": log_pi,
      # The LA margins in pairwise form; f32[C, C] (265 MB at C = 8142), gathered per example.
      "margins": log_pi[None, :] - log_pi[:, None],
      "weights": losses.class_balanced_weights(counts),
      # equalization_loss draws only two words from its key (see its docstring), so the key's
      # implementation (here the default) does not matter for its speed.
      "key": jax.random.key(0),
      "epoch": jnp.int32(170),
  }
  logits = jnp.asarray(rng.normal(size=(batch, num_classes)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, num_classes, size=batch), jnp.int32)
  steps = {name: _compiled(fn) for name, fn in _variants().items()}
  args = (logits, labels, stats)
  calls = {}
  for name, step in steps.items():
    jax.block_until_ready(step(*args))  # compile
    calls[name] = _harness.calls_for(functools.partial(step, *args), round_ms / 1e3)
  # Each loss's repetition is bracketed by CE repetitions (CE, v1, CE, v2, ..., CE), so its
  # paired ratio t_v / mean(CE before, CE after) cancels load that drifts over a round.
  timings = _harness.interleaved({name: functools.partial(step, *args)
                                  for name, step in steps.items()},
                                 rounds=rounds, warmup=warmup, calls=calls, baseline=BASELINE,
                                 bracket=True, on_round=on_round)
  summary = _harness.summary(timings)
  for name, row in summary.items():
    row["calls_per_repetition"] = calls[name]
    row["materialised_bxc_arrays"] = materialised_arrays(steps[name], args, batch, num_classes)
  return summary


def _markdown_run(run, index):
  results = run["results"]
  shapes = list(results)
  lines = [
      f"## Run {index + 1} (started {run['date']}, load average at its end "
      + ", ".join(f"{v:.1f}" for v in run["load_average_at_end"]) + ")",
      "",
      "Median time per call and its ratio to the optax CE median:",
      "",
      "| loss | " + " | ".join(f"{s}: median us (ratio)" for s in shapes) + " |",
      "|---|" + "---|" * len(shapes),
  ]
  for name in results[shapes[0]]:
    cells = []
    for shape in shapes:
      r = results[shape][name]
      flag = "" if r["ratio_of_medians"] <= TARGET_RATIO else " **over**"
      cells.append(f"{1e6 * r['wall_median_s']:.1f} ({r['ratio_of_medians']:.2f}x){flag}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += [
      "",
      ("Median over rounds of the paired ratio `t / mean(CE just before, CE just after)`, which "
      "cancels load that drifts within a round:"),
      "",
      "| loss | " + " | ".join(shapes) + " |",
      "|---|" + "---|" * len(shapes),
  ]
  lines += _ratio_table(results, shapes, "paired_ratio_median")
  lines += [
      "",
      ("The same paired ratio for the CPU time of this process (all threads), which time slices "
      "lost to other processes do not inflate:"),
      "",
      "| loss | " + " | ".join(shapes) + " |",
      "|---|" + "---|" * len(shapes),
  ]
  lines += _ratio_table(results, shapes, "cpu_paired_ratio_median")
  return lines + [""]


def _ratio_table(results, shapes, key):
  lines = []
  for name in results[shapes[0]]:
    cells = []
    for shape in shapes:
      ratio = results[shape][name][key]
      cells.append(f"{ratio:.2f}x" + ("" if ratio <= TARGET_RATIO else " **over**"))
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines


def _markdown_materialised(results):
  shapes = list(results)
  lines = [
      "## Materialised `[B, C]` arrays",
      "",
      ("Arrays of the logits' shape that the compiled `jit(value_and_grad)` writes to memory "
      "(top-level HLO instructions other than parameters, constants, bitcasts and in-place "
      "label scatters; "
      "`materialised_arrays` in the script). Each is at least one write and one read of `B * C` "
      "elements, the cost that dominates at large `C`:"),
      "",
      "| loss | " + " | ".join(shapes) + " |",
      "|---|" + "---|" * len(shapes),
  ]
  for name in results[shapes[0]]:
    cells = [", ".join(f"{n} {dtype}" for dtype, n in
                       sorted(results[shape][name]["materialised_bxc_arrays"].items()))
             for shape in shapes]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines + [""]


def _markdown(record):
  lines = ["# Forward+backward time of the stateless losses vs optax CE", "",
           *_harness.provenance_lines(record),
           f"- method: {record['method']}",
           f"- target: every loss <= {TARGET_RATIO}x optax CE in the same run",
           ("- the machine is shared with other jobs (see the load averages): medians carry "
           "interference; interquartile ranges are in the JSON file"), ""]
  lines += _markdown_materialised(record["runs"][0]["results"])
  for index, run in enumerate(record["runs"]):
    lines += _markdown_run(run, index)
  return "\n".join(lines)


def main(argv):
  del argv
  shapes = [tuple(int(v) for v in s.split("x")) for s in _SHAPES.value]
  record = _harness.start_record("experiments.bench.losses")
  record["method"] = (
      f"jit(value_and_grad(mean loss)) w.r.t. logits, block_until_ready; {_ROUNDS.value} "
      f"interleaved rounds after {_WARMUP.value} warm-up rounds, each repetition ~"
      f"{_ROUND_MS.value:g} ms of back-to-back calls, bracketed by CE repetitions; median per "
      f"call (wall clock and process CPU time); {_RUNS.value} independent run(s); "
      f"equalization's key: jax.random.key(0) ({jax.random.key_impl(jax.random.key(0))})")
  record["runs"] = []
  with tqdm.tqdm(total=_RUNS.value * len(shapes) * _ROUNDS.value, desc="rounds") as progress:
    for _ in range(_RUNS.value):
      date = provenance.utc_now()
      results = {f"{batch}x{num_classes}": bench_shape(
          batch, num_classes, _ROUNDS.value, _WARMUP.value, _ROUND_MS.value, progress.update)
                 for batch, num_classes in shapes}
      record["runs"].append({"date": date, "load_average_at_end": os.getloadavg(),
                             "results": results})
  _harness.write(_OUT.value, _harness.finish_record(record), _markdown(record))


if __name__ == "__main__":
  app.run(main)
