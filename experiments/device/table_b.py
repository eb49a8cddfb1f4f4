"""Table B (CIFAR-10-LT IR 100, ResNet-32, 200 epochs, 3 seeds) on one lent accelerator.

    python -m experiments.device.table_b --bundle .bundle --out $OUT --budget_s 540

reads the data from the bundle (`experiments.device.bundle`: no TFDS, no ml_collections install,
nothing outside the working tree) and, within `--budget_s` seconds of wall clock:

1. benchmarks ltjax's ResNet-32 train step against PyTorch's on the accelerator
   (`experiments.device.bench`; once: a continued run finds it done);
2. trains the table's methods in priority order (`PRIORITY`): CE, whose runs also give the LA
   post-hoc and tau-norm rows (evaluated right after it), LA loss, LDAM-DRW, then Balanced Softmax,
   GALA (+PRS from the GALA runs), ALA and LOS (stage 2 from the CE runs). The 3 seeds of a joint
   method train as one vmapped program (`experiments.runner`), whose measured step time is printed
   before it trains;
3. after each method, writes under `--out` (at most 8 files, each <= 16 MiB, no sub-folders):
   `table_b.json` / `.md` (`experiments.report`: mean ± std over seeds, last epoch and best
   epoch on test side by side), `device.json` / `.md` (device, versions, the benchmark, step
   time and whole-run wall time of every program, the calls so far) and `carry.tar.0`,
   `carry.tar.1`, ...: what a later call needs to continue (every finished run's records; the
   checkpoints of unfinished runs and of the runs a remaining method starts from, latest step
   only).

When the budget would not fit the next epoch, every run in progress is checkpointed at the end of
its last epoch and the call ends (exit 75) well before the limit. The next call continues from
what the last returned: copy its `carry.tar.*` into a folder that travels (e.g. `.bundle/carry/`)
and pass it as `--resume`. A continued table equals an uninterrupted one
(tests/test_device_table_b.py). `--schedule=rehearsal` is the same program with a tiny model and
schedule (the CPU rehearsal in the default test run).

The lease and how to spend it: experiments/device/README.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

from experiments.device import bundle as bundle_lib
from experiments.device.carry import pack_carry
from experiments.device.carry import unpack_carry

MODULE = "experiments.device.table_b"
# Exit status of a call stopped by its budget with work left (EX_TEMPFAIL: call again).
EXIT_BUDGET = 75
DEFAULT_WORKDIR = "/tmp/ltjax-table-b"
# Rows in the order they are trained: what the issue needs first comes first. The post-hoc rows
# of a training come right after it (they cost an evaluation), LOS last.
PRIORITY = ("ce", "la_posthoc", "tau_norm", "la_loss", "ldam_drw", "balanced_softmax", "gala",
            "gala_prs", "ala", "los")
DEVICE_RECORD = "device"
# Steps timed (after 3 warm-up steps) for a program's printed step time.
TIMED_STEPS = 20

# The rehearsal: the full table's programs at toy size, for the CPU test run.
REHEARSAL_OVERRIDES = {
    "model_kwargs": {"blocks_per_stage": 1, "widths": (4, 8, 16)}, "batch_size": 16,
    "eval_batch_size": 64, "hparams.drw_start_epoch": 1, "checkpoint_every_epochs": 1,
    "lr.warmup_epochs": 0, "eval_every_epochs": 2,  # evaluated once, at the end
}


def table_spec(schedule: str = "full"):
  """Table B as this module runs it: `tables.get_table("B_full")`'s recipes and schedule, its
  rows plus tau-norm in `PRIORITY` order, under the name `table_b`; with
  `schedule="rehearsal"` at toy size (2 epochs, stage 2 of 1 epoch, a ResNet of 3 blocks)."""
  from experiments import tables  # noqa: PLC0415 (after bundle.activate)

  full = tables.get_table("B_full")
  spec = dataclasses.replace(
      full, name="table_b", methods=PRIORITY,
      title="Table B: CIFAR-10-LT IR 100, ResNet-32, the recipes' full 200 epochs, 3 seeds",
      schedule_note=full.schedule_note.replace("(experiments/device/table_b.sh)",
                                               f"(`python -m {MODULE}`, from the bundle)"))
  if schedule == "full":
    return spec
  if schedule != "rehearsal":
    raise ValueError(f"`schedule` must be 'full' or 'rehearsal', got {schedule!r}.")
  return dataclasses.replace(
      spec, title="Table B rehearsal (toy model and schedule: a pipeline check, not a result)",
      num_epochs=2, stage2_epochs=1, overrides=dict(REHEARSAL_OVERRIDES),
      schedule_note="Rehearsal: ResNet of 1 block per stage (widths 4/8/16), 2 epochs.")


class BundleSplits:
  """The runner's split cache (`runner.SplitCache`'s `get`), served from the bundle: every run's
  config must cut the bundle's split (`bundle.check_config`)."""

  def __init__(self, splits, manifest: dict):
    self.splits = splits
    self.manifest = manifest

  def get(self, config):
    bundle_lib.check_config(self.manifest, config)
    return self.splits


class EpochBudget:
  """A budget that allows its first `calls` `fits` answers and refuses every later one (the
  rehearsal's deterministic stand-in for the wall clock; `runner.Budget`'s interface)."""

  def __init__(self, calls: int):
    self.calls = calls
    self.seconds = None

  def remaining(self) -> float:
    return float(self.calls)

  def fits(self, epoch_seconds) -> bool:
    del epoch_seconds
    self.calls -= 1
    return self.calls >= 0


# The calls into the runner live in the two functions below (`run_method`, `measure_step`):
# when the runner's interface changes, these are what to re-point.


def run_method(spec, method: str, ir: float, *, workdir: str, cache, budget,
               failures: list) -> None:
  """Trains (or evaluates, or skips when finished) every seed of `method`, as
  `runner.run_table` does for one row: a method whose training is another's evaluates its
  source's runs, a stage-2 / post-hoc one starts from its stage-1 runs, a joint one trains its
  seeds as one vmapped program. Raises `runner.BudgetReached`."""
  from experiments import runner  # noqa: PLC0415 (after bundle.activate)
  from experiments import tables  # noqa: PLC0415

  if method in tables.same_training(spec):
    runner.run_same_training(spec, method, ir, workdir=workdir, cache=cache, failures=failures)
  elif method in tables.stage1_sources():
    runner.run_stage2(spec, method, ir, workdir=workdir, cache=cache, failures=failures,
                      budget=budget)
  else:
    try:
      runner.run_joint(spec, method, ir, workdir=workdir, cache=cache, vmap=True,
                       failures=failures, budget=budget)
    except runner.BudgetReached:
      raise
    except Exception as e:  # noqa: BLE001 (as runner.run_table: the table goes on)
      for seed in spec.seeds:
        runner.record_failure(tables.run_dir(workdir, spec, method, ir, seed), e, failures)


def measure_step(spec, method: str, ir: float, *, workdir: str, cache) -> dict | None:
  """Times the vmapped program of `method`'s unfinished seeds: `TIMED_STEPS` train steps of
  epoch 0 after 3 warm-up steps (compilation included in `compile_s`). None for a method that
  trains no program of its own (post-hoc, same training) or has nothing left to train."""
  import jax  # noqa: PLC0415

  from experiments import experiment  # noqa: PLC0415
  from experiments import runner  # noqa: PLC0415
  from experiments import tables  # noqa: PLC0415
  from ltjax import train as lt  # noqa: PLC0415

  if method in tables.same_training(spec) or method in tables.stage1_sources():
    return None
  configs = [tables.run_config(spec, method, ir, s, workdir=workdir) for s in spec.seeds]
  todo = [c for c in configs if not runner.is_finished(
      tables.run_dir(workdir, spec, method, ir, c.seed), c)]
  if not todo:
    return None
  exps = [experiment.build_experiment(c, cache.get(c)) for c in todo]
  first = exps[0]
  warmup = 3
  steps = min(warmup + TIMED_STEPS, first.steps_per_epoch - 1)
  if len(exps) > 1:
    program = runner.replica_program(exps, [e.state for e in exps])
    args = dict(step=program.train_step, data=program.data, stats=program.stats)
    state = program.state
  else:
    args = dict(step=first.train_step, data=first.data, stats=first.stats)
    state = first.state

  def run(state, start, stop_at):
    state, _ = lt.fit(state, num_epochs=1, start_epoch=0, start_step=start, progress=False,
                      stop=lambda g: g >= stop_at, **args)
    return jax.block_until_ready(state)

  started = time.perf_counter()
  state = run(state, 0, min(warmup, steps))
  compile_s = time.perf_counter() - started
  started = time.perf_counter()
  run(state, min(warmup, steps), steps)
  timed = max(steps - warmup, 1)
  step_s = (time.perf_counter() - started) / timed
  images = len(exps) * first.config.batch_size
  train_steps = first.steps_per_epoch * first.config.num_epochs
  return {"method": method, "replicas": len(exps), "batch_size": first.config.batch_size,
          "step_ms": 1e3 * step_s, "images_per_s": images / step_s, "timed_steps": timed,
          "warmup_s": compile_s, "steps_per_epoch": first.steps_per_epoch,
          "epochs": first.config.num_epochs,
          "estimated_train_s": step_s * train_steps}


def _device_markdown(record: dict) -> str:
  lines = ["# Table B on the accelerator: device, timings, benchmark", "",
           f"Device: {record['device']}  ",
           f"Versions: {', '.join(f'{k} {v}' for k, v in record['versions'].items())}  ",
           f"Bundle split: `{record['bundle_fingerprint'][:12]}`", "",
           "## Calls", "", "| call | date | budget (s) | wall (s) | ended |",
           "|---|---|---|---|---|"]
  for i, c in enumerate(record["calls"]):
    lines.append(f"| {i + 1} | {c['date']} | {c['budget_s']} | {c['wall_s']:.0f} | "
                 f"{c['ended']} |")
  lines += ["", "## Programs (3 seeds vmapped; step time measured before training)", "",
            "| method | replicas | step (ms) | images/s | est. train (s) | method wall (s) |",
            "|---|---|---|---|---|---|"]
  for method, t in record["methods"].items():
    s = t.get("step") or {}
    cells = [f"{s['step_ms']:.2f}" if s else "–", f"{s['images_per_s']:.0f}" if s else "–",
             f"{s['estimated_train_s']:.0f}" if s else "–"]
    lines.append(f"| {method} | {s.get('replicas', '–')} | " + " | ".join(cells)
                 + f" | {sum(t.get('wall_s', [])):.0f} |")
  bench = record.get("bench")
  if bench:
    from experiments.device import bench as bench_lib  # noqa: PLC0415

    lines += ["", bench_lib.markdown_section(bench)]
  return "\n".join(lines) + "\n"


def _write_outputs(spec, *, workdir: str, out: str, record: dict, started: float) -> None:
  """The reports and the carry under `out` (see the module docstring)."""
  from experiments import provenance  # noqa: PLC0415
  from experiments import report  # noqa: PLC0415

  record["calls"][-1]["wall_s"] = time.perf_counter() - started
  report.write_table(spec, spec.methods, workdir=workdir, results_dir=out,
                     wall_seconds=time.perf_counter() - started)
  record_path = os.path.join(workdir, DEVICE_RECORD + ".json")
  with open(record_path, "w") as f:
    json.dump(record, f, indent=1)
  provenance.write_record(os.path.join(out, DEVICE_RECORD), record, _device_markdown(record))
  pack_carry(spec, workdir, out)


def parse_args(argv):
  parser = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--bundle", required=True, help="The bundle folder.")
  parser.add_argument("--out", required=True, help="Where reports and the carry are written.")
  parser.add_argument("--budget_s", type=float, default=None,
                      help="Wall-clock budget of this call (stops cleanly before it).")
  parser.add_argument("--resume", default=None,
                      help="A folder holding the previous call's carry.tar.* parts.")
  parser.add_argument("--workdir", default=DEFAULT_WORKDIR,
                      help="Where the runs live during the call (emptied first).")
  parser.add_argument("--methods", default=None,
                      help="Comma-separated rows to run (default all, in priority order).")
  parser.add_argument("--schedule", choices=("full", "rehearsal"), default="full")
  parser.add_argument("--bench", action=argparse.BooleanOptionalAction, default=True,
                      help="Benchmark the train step against PyTorch first (once).")
  parser.add_argument("--measure_steps", action=argparse.BooleanOptionalAction, default=True,
                      help="Time each program's step before it trains.")
  parser.add_argument("--stop_after_fits", type=int, default=None,
                      help=argparse.SUPPRESS)  # the rehearsal's deterministic budget
  args = parser.parse_args(argv)
  if args.budget_s is not None and args.budget_s <= 0:
    parser.error(f"--budget_s must be > 0, got {args.budget_s}.")
  return args


def run(argv=None) -> int:
  """The entry point without process set-up; returns the exit status (0 done, 75 budget)."""
  started = time.perf_counter()
  args = parse_args(argv)
  bundle_lib.activate(args.bundle)  # before anything imports ml_collections
  from experiments import provenance  # noqa: PLC0415
  from experiments import runner  # noqa: PLC0415
  from experiments import tables  # noqa: PLC0415

  # The budget counts from the start of the call.
  budget = (EpochBudget(args.stop_after_fits) if args.stop_after_fits is not None
            else runner.Budget(seconds=args.budget_s, started=started))
  spec = table_spec(args.schedule)
  methods = tables.select_methods(spec, args.methods.split(",") if args.methods else None)
  spec = dataclasses.replace(spec, methods=methods)
  arrays, manifest = bundle_lib.load(args.bundle)
  cache = BundleSplits(bundle_lib.to_splits(arrays, manifest), manifest)
  print(f"Bundle {args.bundle}: split {manifest['fingerprint'][:12]}, "
        f"{len(arrays['train_labels'])} train images, loaded in "
        f"{time.perf_counter() - started:.0f} s.", flush=True)

  if os.path.exists(args.workdir):
    shutil.rmtree(args.workdir)
  os.makedirs(args.workdir)
  if args.resume:
    size = unpack_carry(args.resume, args.workdir)
    print(f"Continuing from {args.resume} ({size / 2**20:.1f} MiB).", flush=True)
  record_path = os.path.join(args.workdir, DEVICE_RECORD + ".json")
  if os.path.exists(record_path):
    with open(record_path) as f:
      record = json.load(f)
  else:
    record = {**provenance.provenance(MODULE), "bundle_fingerprint": manifest["fingerprint"],
              "schedule": args.schedule, "calls": [], "methods": {}}
  record["calls"].append({"date": provenance.utc_now(), "command": provenance.command_line(MODULE),
                          "budget_s": args.budget_s, "wall_s": 0.0, "ended": "running"})

  if args.bench and "bench" not in record:
    from experiments.device import bench as bench_lib  # noqa: PLC0415 (imports torch)

    record["bench"] = bench_lib.run_bench()
    print(bench_lib.markdown_section(record["bench"]), flush=True)

  failures = []
  status = 0
  try:
    for ir in spec.imbalance_ratios:
      for method in spec.methods:
        timings = record["methods"].setdefault(method, {"wall_s": []})
        if args.measure_steps and "step" not in timings:
          step = measure_step(spec, method, ir, workdir=args.workdir, cache=cache)
          if step is not None:
            timings["step"] = step
            print(f"[{time.strftime('%H:%M:%S')}] {method} x{step['replicas']} vmapped: "
                  f"{step['step_ms']:.2f} ms/step, {step['images_per_s']:.0f} images/s "
                  f"(compile + warm-up {step['warmup_s']:.0f} s); {step['epochs']} epochs x "
                  f"{step['steps_per_epoch']} steps ~ {step['estimated_train_s']:.0f} s.",
                  flush=True)
        method_started = time.perf_counter()
        try:
          run_method(spec, method, ir, workdir=args.workdir, cache=cache, budget=budget,
                     failures=failures)
        finally:
          timings["wall_s"].append(time.perf_counter() - method_started)
        print(f"[{time.strftime('%H:%M:%S')}] {method}: {timings['wall_s'][-1]:.0f} s",
              flush=True)
        record["calls"][-1]["ended"] = f"after {method}"
        _write_outputs(spec, workdir=args.workdir, out=args.out, record=record,
                       started=started)
    record["calls"][-1]["ended"] = "done" if not failures else f"done, {len(failures)} failed"
  except runner.BudgetReached as e:
    record["calls"][-1]["ended"] = f"budget: {e}"
    print(f"[{time.strftime('%H:%M:%S')}] Budget reached ({e}): call again with --resume "
          "holding this call's carry.tar.* parts.", flush=True)
    status = EXIT_BUDGET
  _write_outputs(spec, workdir=args.workdir, out=args.out, record=record, started=started)
  if failures:
    print(f"{len(failures)} run(s) failed: "
          + "; ".join(f"{f['path']}: {f['message']}" for f in failures), file=sys.stderr)
    return 1
  return status


def main(argv=None) -> None:
  # JAX would take 75 % of the accelerator's memory at start-up, PyTorch's benchmark needs some.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  from experiments import runtime  # noqa: PLC0415 (imports jax: after the line above)

  runtime.configure_jax()
  sys.exit(run(argv))


if __name__ == "__main__":
  main()
