r"""Benchmark: a table's seeds trained as vmapped replicas against one run after another.

    python -m experiments.bench.vmap [--vmap_steps=40] [--vmap_rounds=3] [--vmap_seeds=0,1,2]
    python -m experiments.reproduce --measure_vmap      # the same, with reproduce's folders

Table A's recipe (`fmnist_cnn`, small CNN) and first method (its baseline) at IR 100, one run
per seed, built as the table's runner builds them (`experiments.runner`): `--vmap_steps` steps
of every seed, one seed after another with its own compiled step, against the same steps of all
seeds as one vmapped program (`ltjax.train.replica_program`, the runner's vmapped path). The two
ways are timed in interleaved rounds after a compiling warm-up round, with paired per-round
ratios and process CPU time (`experiments/bench/_harness.py`). Writes `<out>.json` and `.md`.
"""
from __future__ import annotations

import jax.numpy as jnp
from absl import app
from absl import flags

from experiments import experiment
from experiments import runner
from experiments import runtime
from experiments import tables
from experiments.bench import _harness

MODULE = "experiments.bench.vmap"
OUT_NAME = "vmap_speedup"
IMBALANCE_RATIO = 100.0

# Prefixed: `experiments.reproduce` imports this module for --measure_vmap, and its process must
# not clash with the other benchmarks' --steps / --rounds / --out (one pytest process imports
# several).
_STEPS = flags.DEFINE_integer("vmap_steps", 40, "Train steps of every seed per timed repetition.")
_ROUNDS = flags.DEFINE_integer("vmap_rounds", 3, "Interleaved timed rounds (after one warm-up).")
_SEEDS = flags.DEFINE_list("vmap_seeds", ["0", "1", "2"], "The seeds trained side by side.")
_OUT = flags.DEFINE_string("vmap_out", f"experiments/results/{OUT_NAME}",
                           "Output path without suffix.")


def _epoch_order(order_fn, state, labels, stats):
  return order_fn(state.rng, jnp.int32(0), labels, stats.class_counts)


def measure_vmap(*, out: str, workdir: str = "/tmp/ltjax-reproduce", seeds=(0, 1, 2),
                 steps: int = 40, rounds: int = 3, source=None) -> dict:
  """Times `steps` train steps of each of `seeds`, sequential vs vmapped, and writes the record.

  Args:
    out: output path without suffix.
    workdir: the table's run folder (only for the runs' configs; nothing is written there).
    seeds: one run per seed.
    steps: steps of every seed per repetition (the state carries on across repetitions).
    rounds: timed interleaved rounds.
    source: reads the dataset (`runner.SplitCache`; default `ltjax.data.load_arrays`).

  Returns:
    The record written to `<out>.json`.
  """
  spec = tables.get_table("A")
  method = spec.baseline
  record = _harness.start_record(MODULE)
  cache = runner.SplitCache(source)
  configs = [tables.run_config(spec, method, IMBALANCE_RATIO, s, workdir=workdir)
             for s in seeds]
  exps = [experiment.build_experiment(c, cache.get(c)) for c in configs]
  program = runner.replica_program(exps, [e.state for e in exps])
  data = [e.device_data for e in exps]
  orders = [_epoch_order(e.epoch_order, e.state, d["train_labels"], d["stats"])
            for e, d in zip(exps, data)]
  replica_order = _epoch_order(program.epoch_order, program.state, program.labels,
                               program.stats)
  # The steps donate their state: each way keeps its latest one here.
  states = {"sequential": [e.state for e in exps], "vmapped": program.state}

  def sequential():
    for i, (e, d) in enumerate(zip(exps, data)):
      for _ in range(steps):
        states["sequential"][i], _ = e.train_step(
            states["sequential"][i], e.device_batch(orders[i]), d["stats"])
    return states["sequential"]

  def vmapped():
    for _ in range(steps):
      states["vmapped"], _ = program.train_step(
          states["vmapped"], {"images": program.images, "labels": program.labels,
                              "order": replica_order}, program.stats)
    return states["vmapped"]

  timings = _harness.interleaved({"sequential": sequential, "vmapped": vmapped}, rounds=rounds,
                                 warmup=1, baseline="sequential")
  summary = _harness.summary(timings)
  batch_size = configs[0].batch_size
  images = len(seeds) * steps * batch_size
  record.update({
      "recipe": spec.recipe, "method": method, "imbalance_ratio": IMBALANCE_RATIO,
      "seeds": list(seeds), "steps_per_seed": steps, "batch_size": batch_size,
      "rounds": rounds, "variants": summary,
      "images_per_s": {k: images / v["wall_median_s"] for k, v in summary.items()},
      # vmapped time / sequential time per round, inverted: above 1, vmapping pays.
      "speedup_vmapped_over_sequential": 1.0 / summary["vmapped"]["paired_ratio_median"],
  })
  _harness.finish_record(record)
  _harness.write(out, record, markdown(record))
  return record


def markdown(record: dict) -> str:
  """The record as a markdown table."""
  rows = [f"| {name} | {1e3 * v['wall_median_s']:.0f} | {1e3 * v['cpu_median_s']:.0f} | "
          f"{record['images_per_s'][name]:.0f} | {v['paired_ratio_median']:.2f} "
          f"({v['paired_ratio_range'][0]:.2f}–{v['paired_ratio_range'][1]:.2f}) |"
          for name, v in record["variants"].items()]
  return "\n".join([
      "# Seeds in parallel: vmapped replicas vs one run after another", "",
      *_harness.provenance_lines(record), "",
      (f"Recipe `{record['recipe']}` (batch {record['batch_size']}), {record['method']}, "
       f"IR {record['imbalance_ratio']:g}, {len(record['seeds'])} seeds x "
       f"{record['steps_per_seed']} train steps per repetition; {record['rounds']} interleaved "
       "rounds after a compiling warm-up round."), "",
      ("| way | wall ms (median) | CPU ms (median) | images/s | time / sequential, paired "
       "per round (range) |"), "|---|---|---|---|---|", *rows, "",
      (f"Speed-up of vmapped over sequential: **{record['speedup_vmapped_over_sequential']:.2f}x**"
       " (below 1: vmapping is slower, and the tables train seeds one after another).")])


def measure_from_flags(*, out: str, workdir: str = "/tmp/ltjax-reproduce") -> dict:
  """`measure_vmap` with this module's --vmap_steps, --vmap_rounds and --vmap_seeds (also under
  `python -m experiments.reproduce --measure_vmap`)."""
  return measure_vmap(out=out, workdir=workdir, seeds=tuple(int(s) for s in _SEEDS.value),
                      steps=_STEPS.value, rounds=_ROUNDS.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.configure_jax()
  measure_from_flags(out=_OUT.value)


if __name__ == "__main__":
  app.run(main)
