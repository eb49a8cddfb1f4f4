"""The timing protocol every benchmark under `experiments/bench/` shares.

The benchmarks run on a shared CPU, where other jobs' load drifts while a benchmark runs. So:

* **Interleaved rounds.** Every variant is timed once per round, the rounds repeat, and a load
  drift hits every variant alike instead of whichever happened to run during it. The order within
  a round is shuffled afresh each round (no variant always follows a cache-thrashing one), or,
  with a baseline and `bracket=True`, every variant is bracketed by baseline repetitions
  (`base, v1, base, v2, ..., base`).
* **Paired ratios.** Besides the ratio of medians, each round gives a ratio to the baseline timed
  next to it: `t_v / mean(base before, base after)` when bracketed, else `median_round(v) /
  median_round(base)`; the median of these per-round ratios cancels load slower than a round.
* **CPU time next to wall clock.** Every sample also records this process's CPU time (all its
  threads, `time.process_time`), which time slices lost to other processes do not inflate.
* **Provenance.** `start_record` stamps the command, date, device, versions and host load
  (`experiments.provenance`), `finish_record` the load at the end; `write` writes
  `<out>.json` and `<out>.md`.

A *repetition* of a variant is `calls` back-to-back calls of its function, blocked on the last
result (`jax.block_until_ready`, which passes non-JAX values through), divided by `calls`: one
sample, in seconds per call. A round holds `samples_per_round` repetitions of each variant.
"""
from __future__ import annotations

import dataclasses
import os
import random
import statistics
import time
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from experiments import provenance


@dataclasses.dataclass(frozen=True)
class Sample:
  """Seconds per call of one repetition: wall clock and this process's CPU time."""
  wall: float
  cpu: float


@dataclasses.dataclass
class Timings:
  """Samples of interleaved rounds, `{variant: [[Sample of each repetition] for each round]}`,
  and the per-round paired ratios to `baseline` (None: no baseline, no ratios)."""
  samples: dict[str, list[list[Sample]]]
  baseline: str | None = None
  paired_wall: dict[str, list[float]] = dataclasses.field(default_factory=dict)
  paired_cpu: dict[str, list[float]] = dataclasses.field(default_factory=dict)

  def wall(self, name: str) -> list[float]:
    """Every wall-clock sample of `name`, rounds flattened."""
    return [s.wall for r in self.samples[name] for s in r]

  def cpu(self, name: str) -> list[float]:
    """Every CPU-time sample of `name`, rounds flattened."""
    return [s.cpu for r in self.samples[name] for s in r]


def timed(fn: Callable[[], Any], calls: int = 1) -> Sample:
  """Wall and process CPU seconds per call over `calls` back-to-back calls of `fn()`."""
  start_wall, start_cpu = time.perf_counter(), time.process_time()
  out = None
  for _ in range(calls):
    out = fn()
  jax.block_until_ready(out)
  return Sample(wall=(time.perf_counter() - start_wall) / calls,
                cpu=(time.process_time() - start_cpu) / calls)


def calls_for(fn: Callable[[], Any], target_s: float, probe_calls: int = 3) -> int:
  """Back-to-back calls of `fn` that take about `target_s` (at least 1); `fn` compiled already.

  Short functions are timed in batches of calls so that the timer's resolution and the Python
  loop do not dominate a sample.
  """
  one = timed(fn, probe_calls).wall
  return max(1, int(target_s / max(one, 1e-7)))


def interleaved(variants: Mapping[str, Callable[[], Any]], *, rounds: int, warmup: int = 0,
                calls: int | Mapping[str, int] = 1, samples_per_round: int = 1,
                baseline: str | None = None, bracket: bool = False, seed: int = 0,
                on_round: Callable[[], None] | None = None) -> Timings:
  """Times `variants` (already compiled) over `rounds` interleaved rounds after `warmup`
  untimed rounds; see the module docstring for the order and the paired ratios.

  Args:
    variants: name -> function of no arguments (its result is blocked on).
    rounds: timed rounds (>= 1).
    warmup: untimed rounds first.
    calls: back-to-back calls per repetition, one count or one per variant.
    samples_per_round: repetitions of each variant per round (not with `bracket`).
    baseline: the variant the paired ratios divide by (None: no ratios).
    bracket: bracket every other variant by repetitions of `baseline`.
    seed: seeds the per-round shuffles.
    on_round: called after every timed round (e.g. a progress bar's update).

  Returns:
    The :class:`Timings`.
  """
  if rounds < 1 or warmup < 0 or samples_per_round < 1:
    raise ValueError(f"Need rounds >= 1, warmup >= 0, samples_per_round >= 1; got {rounds}, "
                     f"{warmup}, {samples_per_round}.")
  if baseline is not None and baseline not in variants:
    raise ValueError(f"Baseline {baseline!r} is not one of the variants {list(variants)}.")
  if bracket and (baseline is None or samples_per_round != 1):
    raise ValueError("`bracket` needs a baseline and one sample per round.")
  count = {name: calls if isinstance(calls, int) else calls[name] for name in variants}
  rng = random.Random(seed)
  others = [name for name in variants if not bracket or name != baseline]
  timings = Timings(samples={name: [] for name in variants}, baseline=baseline)
  if baseline is not None:
    timings.paired_wall = {name: [] for name in variants}
    timings.paired_cpu = {name: [] for name in variants}

  def repetitions(name):
    return [timed(variants[name], count[name]) for _ in range(samples_per_round)]

  for index in range(warmup + rounds):
    rng.shuffle(others)
    record = index >= warmup
    if bracket:
      before = repetitions(baseline)[0]
      base_round = [before]
      for name in others:
        sample = repetitions(name)[0]
        after = repetitions(baseline)[0]
        base_round.append(after)
        if record:
          timings.samples[name].append([sample])
          timings.paired_wall[name].append(2 * sample.wall / (before.wall + after.wall))
          timings.paired_cpu[name].append(2 * sample.cpu / (before.cpu + after.cpu))
        before = after
      if record:
        timings.samples[baseline].append(base_round)
        timings.paired_wall[baseline].append(1.0)
        timings.paired_cpu[baseline].append(1.0)
    else:
      round_samples = {name: repetitions(name) for name in others}
      if record:
        for name, samples in round_samples.items():
          timings.samples[name].append(samples)
        if baseline is not None:
          base = round_samples[baseline]
          for name, samples in round_samples.items():
            timings.paired_wall[name].append(_median_ratio(samples, base, "wall"))
            timings.paired_cpu[name].append(_median_ratio(samples, base, "cpu"))
    if record and on_round is not None:
      on_round()
  return timings


def _median_ratio(samples: list[Sample], base: list[Sample], field: str) -> float:
  return (statistics.median(getattr(s, field) for s in samples)
          / statistics.median(getattr(s, field) for s in base))


def summary(timings: Timings) -> dict[str, dict]:
  """Per variant: wall and CPU medians (seconds per call), wall quartiles and 10th percentile,
  sample count, and, with a baseline, the ratio of medians and the paired ratios' median and
  range (all as `variant / baseline`: above 1 is slower)."""
  out = {}
  for name in timings.samples:
    wall, cpu = timings.wall(name), timings.cpu(name)
    row = {"wall_median_s": statistics.median(wall), "cpu_median_s": statistics.median(cpu),
           "wall_p10_s": float(np.percentile(wall, 10)),
           "wall_q1_s": float(np.percentile(wall, 25)),
           "wall_q3_s": float(np.percentile(wall, 75)), "samples": len(wall)}
    if timings.baseline is not None:
      base = timings.baseline
      paired, paired_cpu = timings.paired_wall[name], timings.paired_cpu[name]
      row.update({
          "ratio_of_medians": row["wall_median_s"] / statistics.median(timings.wall(base)),
          "cpu_ratio_of_medians": row["cpu_median_s"] / statistics.median(timings.cpu(base)),
          "paired_ratio_median": statistics.median(paired),
          "paired_ratio_range": [min(paired), max(paired)],
          "cpu_paired_ratio_median": statistics.median(paired_cpu)})
    out[name] = row
  return out


def start_record(module: str) -> dict:
  """The provenance every result starts with (command, date, device, versions, load)."""
  return provenance.provenance(module)


def finish_record(record: dict) -> dict:
  """Adds the host's load average at the end of the run (the machine is shared)."""
  record["load_average_at_end"] = os.getloadavg()
  return record


def provenance_lines(record: dict) -> list[str]:
  """The markdown header lines every benchmark's table starts with."""
  start, end = record["load_average_at_start"], record.get("load_average_at_end")
  load = f"{start[0]:.1f} at start" + (f", {end[0]:.1f} at end" if end else "")
  return [f"- command: `{record['command']}`", f"- date (UTC): {record['date']}",
          f"- device: {record['device']}",
          f"- versions: {provenance.versions_line(record['versions'])}",
          f"- host 1-minute load average: {load} on {os.cpu_count()} cores (shared machine)"]


def write(out: str, record: dict, markdown: str) -> None:
  """Writes `<out>.json` and `<out>.md` and prints the markdown."""
  provenance.write_record(out, record, markdown)
  print(markdown)
