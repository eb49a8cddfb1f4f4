"""Forward+backward time of each stateless ltjax loss relative to optax's cross-entropy.

For every (batch, classes) shape, each loss is wrapped as
`jax.jit(jax.value_and_grad(lambda z: loss(z, labels, **stats).mean()))`, with the class
statistics (counts, log prior, margins, weights, PRNG key) passed as arguments, as in a train step.
The baseline is the same wrapper around `optax.softmax_cross_entropy_with_integer_labels`.

Variants are interleaved round by round (the CPU is shared, so load drifts hit every variant
alike), and every variant's repetition is bracketed by two CE repetitions. A repetition is
`inner` calls back to back (about `round_ms`), divided by `inner`. Reported: the median over
rounds after a warm-up, its ratio to the CE median of the same run, and the median of the paired
ratios `t / mean(CE before, CE after)`, both for wall-clock time and for the CPU time of this
process (all its threads; `time.process_time`), which time slices lost to other processes on a
shared machine do not inflate.

  python -m experiments.bench.losses [--rounds=40] [--runs=2] \
      [--out=experiments/results/bench_losses]
"""
from __future__ import annotations

import datetime
import json
import os
import re
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from experiments import provenance
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


def _block(out):
  return jax.block_until_ready(out)


def _time_round(step, args, inner):
  """(wall seconds, process CPU seconds) per call over `inner` back-to-back calls."""
  start, start_cpu = time.perf_counter(), time.process_time()
  out = None
  for _ in range(inner):
    out = step(*args)
  _block(out)
  return (time.perf_counter() - start) / inner, (time.process_time() - start_cpu) / inner


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


def bench_shape(batch, num_classes, rounds, warmup, round_ms, progress):
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
  inner = {}
  for name, step in steps.items():
    _block(step(*args))  # compile
    one, _ = _time_round(step, args, 3)
    inner[name] = max(1, int(round_ms / 1e3 / max(one, 1e-7)))
  for _ in range(warmup):
    for name, step in steps.items():
      _time_round(step, args, inner[name])
  # Each variant's repetition is bracketed by CE repetitions (CE, v1, CE, v2, ..., CE), so a
  # paired ratio t_v / mean(CE before, CE after) cancels load that drifts over a round.
  times = {name: [] for name in steps}
  cpu_times = {name: [] for name in steps}
  paired = {name: [] for name in steps}
  cpu_paired = {name: [] for name in steps}
  for _ in range(rounds):
    ce_before, ce_before_cpu = _time_round(steps["optax_ce"], args, inner["optax_ce"])
    times["optax_ce"].append(ce_before)
    cpu_times["optax_ce"].append(ce_before_cpu)
    paired["optax_ce"].append(1.0)
    cpu_paired["optax_ce"].append(1.0)
    for name, step in steps.items():
      if name == "optax_ce":
        continue
      t, t_cpu = _time_round(step, args, inner[name])
      ce_after, ce_after_cpu = _time_round(steps["optax_ce"], args, inner["optax_ce"])
      times[name].append(t)
      cpu_times[name].append(t_cpu)
      times["optax_ce"].append(ce_after)
      cpu_times["optax_ce"].append(ce_after_cpu)
      paired[name].append(2 * t / (ce_before + ce_after))
      cpu_paired[name].append(2 * t_cpu / (ce_before_cpu + ce_after_cpu))
      ce_before, ce_before_cpu = ce_after, ce_after_cpu
    progress.update(1)
  ce = statistics.median(times["optax_ce"])
  ce_cpu = statistics.median(cpu_times["optax_ce"])
  return {
      name: {
          "median_us": statistics.median(t) * 1e6,
          "q1_us": float(np.percentile(t, 25)) * 1e6,
          "q3_us": float(np.percentile(t, 75)) * 1e6,
          "repetitions": len(t),
          "ratio_to_optax_ce": statistics.median(t) / ce,
          "paired_ratio_median": statistics.median(paired[name]),
          "cpu_median_us": statistics.median(cpu_times[name]) * 1e6,
          "cpu_ratio_to_optax_ce": statistics.median(cpu_times[name]) / ce_cpu,
          "cpu_paired_ratio_median": statistics.median(cpu_paired[name]),
          "calls_per_repetition": inner[name],
          "materialised_bxc_arrays": materialised_arrays(steps[name], args, batch, num_classes),
      } for name, t in times.items()
  }


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
      flag = "" if r["ratio_to_optax_ce"] <= TARGET_RATIO else " **over**"
      cells.append(f"{r['median_us']:.1f} ({r['ratio_to_optax_ce']:.2f}x){flag}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += [
      "",
      "Median over rounds of the paired ratio `t / mean(CE just before, CE just after)`, which "
      "cancels load that drifts within a round:",
      "",
      "| loss | " + " | ".join(shapes) + " |",
      "|---|" + "---|" * len(shapes),
  ]
  lines += _ratio_table(results, shapes, "paired_ratio_median")
  lines += [
      "",
      "The same paired ratio for the CPU time of this process (all threads), which time slices "
      "lost to other processes do not inflate:",
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
      "Arrays of the logits' shape that the compiled `jit(value_and_grad)` writes to memory "
      "(top-level HLO instructions other than parameters, constants, bitcasts and in-place "
      "label scatters; "
      "`materialised_arrays` in the script). Each is at least one write and one read of `B * C` "
      "elements, the cost that dominates at large `C`:",
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
  lines = [
      "# Forward+backward time of the stateless losses vs optax CE",
      "",
      f"- command: `{record['command']}`",
      f"- date (UTC): {record['date']}",
      f"- device: {record['device']}",
      f"- versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()),
      f"- method: {record['method']}",
      f"- target: every loss <= {TARGET_RATIO}x optax CE in the same run",
      "- the machine is shared with other jobs (see the load averages): medians carry "
      "interference; interquartile ranges are in the JSON file",
      "",
  ]
  lines += _markdown_materialised(record["runs"][0]["results"])
  for index, run in enumerate(record["runs"]):
    lines += _markdown_run(run, index)
  return "\n".join(lines)


def main(argv):
  del argv
  shapes = [tuple(int(v) for v in s.split("x")) for s in _SHAPES.value]
  runs = []
  with tqdm.tqdm(total=_RUNS.value * len(shapes) * _ROUNDS.value, desc="rounds") as progress:
    for _ in range(_RUNS.value):
      date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
      results = {f"{batch}x{num_classes}": bench_shape(
          batch, num_classes, _ROUNDS.value, _WARMUP.value, _ROUND_MS.value, progress)
                 for batch, num_classes in shapes}
      runs.append({"date": date, "load_average_at_end": os.getloadavg(), "results": results})
  record = {
      "command": "python -m experiments.bench.losses " + " ".join(sys.argv[1:]),
      "date": runs[0]["date"],
      "device": provenance.device_description(),
      "versions": provenance.library_versions(),
      "method": (f"jit(value_and_grad(mean loss)) w.r.t. logits, block_until_ready; "
                 f"{_ROUNDS.value} interleaved rounds after {_WARMUP.value} warm-up rounds, each "
                 f"~{_ROUND_MS.value:g} ms of back-to-back calls, each bracketed by CE "
                 f"repetitions; "
                 f"median per call (wall clock and process CPU time); {_RUNS.value} independent "
                 f"run(s); equalization's key: jax.random.key(0) "
                 f"({jax.random.key_impl(jax.random.key(0))})"),
      "runs": runs,
  }
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value + ".json", "w") as f:
    json.dump(record, f, indent=2)
  with open(_OUT.value + ".md", "w") as f:
    f.write(_markdown(record))
  print(_markdown(record))


if __name__ == "__main__":
  app.run(main)
