"""Runs a results table (`experiments.tables`): trains, reuses and evaluates every run of it.

Every run keeps its own folder (`tables.run_dir`) with `results.json`, written once when the run
is finished, and its trained state under `checkpoints/`; a run whose `results.json` exists is
skipped, so an interrupted table resumes where it stopped. A run that fails (diverges, NaN
metrics, missing stage-1 source, ...) is recorded in its folder's `failure.json` with its
message, the table goes on with the other runs, and the next invocation retries it.

What is trained once and reused (exactly, declared by each method's `stage`, `reuses` and
`reuses_when` in the registry): a joint method whose training is another's (`same_training`) is
that run's state evaluated with its own evaluation; a stage-2 / post-hoc method starts from its
stage-1 method's run of the same (IR, seed). The seeds of a joint method train together as
vmapped replicas (`ltjax.train.replica_program`) when asked to.
"""
from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np

import ltjax
from experiments import epoch_log
from experiments import experiment
from experiments import tables
from experiments.budget import Budget
from experiments.budget import BudgetReached
from experiments.tables import TableSpec
from experiments.tables import read_ok_results
from experiments.tables import run_config
from experiments.tables import run_dir
from ltjax import checkpointing
from ltjax import losses
from ltjax import train as lt


def is_finished(path: str, config) -> bool:
  """Whether `path` holds the successful results of exactly this run: the same method and every
  configuration key both record (`experiment.config_changes`).

  A folder holding a run of another configuration (a recipe or table changed since: its
  results.json or, unfinished, its latest checkpoint says so) is first moved aside to
  `<path>.stale-<UTC time>`, with one printed line naming the changed keys, so that the run is
  redone from scratch instead of reported or resumed under the new settings.
  """
  _retire_if_stale(path, config)
  r = read_ok_results(path)
  return bool(r) and r.get("method") == config.method and r.get("num_epochs") == config.num_epochs


def _recorded_config(path: str) -> dict | None:
  """The configuration the run in folder `path` recorded: its results.json's, else its latest
  checkpoint's; None when it recorded none."""
  r = read_ok_results(path)
  if r is not None:
    return r.get("config")
  return (experiment.latest_checkpoint_metadata(path) or {}).get("config")


def _retire_if_stale(path: str, config) -> None:
  """Moves the run folder `path` aside when it holds a run of another configuration."""
  recorded = _recorded_config(path)
  # config_changes compares the method too (it is not a resumable change).
  changes = experiment.config_changes(recorded, config) if recorded else []
  if not changes:
    return
  stale = f"{path}.stale-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
  os.rename(path, stale)
  print(f"[{time.strftime('%H:%M:%S')}] {path} held a run of another configuration ("
        + "; ".join(changes) + f"); moved to {stale}, running it again.", flush=True)


def record_failure(path: str, error: BaseException, failures: list | None = None) -> str:
  """Writes the run folder's `failure.json` for `error` and prints one line; returns the
  message."""
  message = experiment.describe_failure(error) or f"{type(error).__name__}: {error}"
  os.makedirs(path, exist_ok=True)
  experiment.write_failure(path, error)
  print(f"[{time.strftime('%H:%M:%S')}] FAILED {path}: {message}", file=sys.stderr, flush=True)
  if failures is not None:
    failures.append({"path": path, "message": message})
  return message


def _attempt(path: str, fn, failures: list | None = None):
  """Runs `fn()`; a failure of the run is recorded (not raised) so the sweep goes on."""
  try:
    return fn()
  except Exception as e:  # noqa: BLE001 (one run's failure never stops a sweep)
    record_failure(path, e, failures)
    return None


class SplitCache:
  """Long-tailed splits by (dataset, IR, split seed): each is cut once per process, and the full
  dataset is read from disk once (reading Fashion-MNIST's train split takes ~15 s)."""

  def __init__(self, source=None):
    """`source`: what reads one split of a dataset (`experiment.load_splits`'s; default
    `ltjax.data.load_arrays`)."""
    self._splits = {}
    self._arrays = {}
    self._source = source

  def _load_arrays(self, dataset, split, **kwargs):
    key = (dataset, split, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
    if key not in self._arrays:
      read = ltjax.data.load_arrays if self._source is None else self._source
      self._arrays[key] = read(dataset, split, **kwargs)
    return self._arrays[key]

  def get(self, config):
    key = (config.dataset, config.imbalance_ratio, config.split_protocol, config.split_seed,
           config.val_per_class)
    if key not in self._splits:
      experiment.check_prepared(config)
      # load_splits reads the whole dataset each call; memoise the read for the next seeds.
      self._splits[key] = experiment.load_splits(config, source=self._load_arrays)
    return self._splits[key]


def _host_tree(tree):
  """A pytree of JAX arrays as nested lists (JSON)."""
  return jax.tree.map(lambda x: np.asarray(x).tolist(), jax.device_get(tree))


def _gradient_state_record(state) -> dict:
  """The accumulated per-class gradient statistics of a loss state that keeps them (a
  `GalaState`), under the record's "gala_state"; {} for other states."""
  if isinstance(state.loss_state, losses.GalaState):
    return {"gala_state": _host_tree(state.loss_state._asdict())}
  return {}


def also_evaluated(spec: TableSpec, method: str) -> tuple:
  """Methods that reuse `method`'s training with a post-hoc step of their own (post-hoc LA on
  CE, PRS on GALA): evaluated on each epoch's state for their per-epoch record."""
  return tuple(m for m, src in tables.same_training(spec).items()
               if src == method and lt.get_method(m).posthoc is not None)


def _resume_states(exps: list, paths: list) -> tuple[list, list]:
  """Each run's latest readable checkpoint under `<path>/checkpoints` (`lt.RunCheckpoints`: its
  split, method and configuration, at its step counter's position) or its step-0 state:
  `(states, start_epochs)`."""
  states, starts = [], []
  for exp, path in zip(exps, paths):
    if not os.path.isdir(os.path.join(path, experiment.CHECKPOINT_DIR)):
      states.append(exp.state)
      starts.append(0)
      continue
    with checkpoints_for(exp, path) as ckpts:
      try:
        state, _, (epoch, step_in_epoch), _ = ckpts.restore_for_resume(
            exp.state, steps_per_epoch=exp.steps_per_epoch, resume=True)
      except experiment.ConfigError as e:
        raise experiment.ConfigError(f"{path}: {e} Or delete its checkpoints/ to start "
                                     "over.") from None
    if step_in_epoch:  # only the CLI stops mid-epoch (pre-emption)
      raise experiment.ConfigError(f"{path} holds a mid-epoch checkpoint (a pre-empted CLI "
                                   "run): finish it with its CLI command, or delete its "
                                   "checkpoints/ to start over.")
    states.append(state)
    starts.append(epoch)
  return states, starts


def train_replicas(exps: list, paths: list, *, vmap: bool, desc: str,
                   also: tuple = (), budget: Budget | None = None) -> list:
  """Trains the experiments `exps` (one per seed, same method and shapes) to their last epoch,
  each continuing from its checkpoint in `paths[i]` when it has one.

  A seed that diverges comes back as its `TrainingDiverged` in place of its state (a vmapped
  group with a diverged replica is re-trained one seed after another).

  With `vmap`, all of them step together as replicas of one compiled program; otherwise one
  after another. After every epoch each run's record (train loss, lr, validation and test
  accuracy of its own state, and of the methods in `also`) is appended to its metrics.jsonl and
  TensorBoard events; states are checkpointed every `checkpoint_every_epochs`, at the end, and
  before raising `BudgetReached` when the next epoch would not fit in `budget`.

  Returns the final states.
  """
  budget = budget or Budget()
  first = exps[0]
  num_epochs = first.config.num_epochs
  every = max(int(first.config.checkpoint_every_epochs), 1)
  states, starts = _resume_states(exps, paths)
  groups = [list(range(len(exps)))] if vmap and len(exps) > 1 else [[i] for i in range(len(exps))]
  if len(groups) == 1 and len(set(starts)) > 1:
    raise experiment.ConfigError(f"Vmapped runs {paths} stopped at different epochs {starts}: "
                                 "delete their checkpoints/ to start the group over.")
  for group in groups:
    start = starts[group[0]]
    if start >= num_epochs:
      continue
    if not budget.fits(None):
      raise BudgetReached(f"{desc}: not started, {budget.remaining():.0f} s left")
    logs = {i: epoch_log.EpochLog(paths[i], start_epoch=start) for i in group}
    timing = {"last": time.perf_counter(), "longest": None}

    def save(i, state, epoch, logs=logs):
      with checkpoints_for(exps[i], paths[i]) as ckpts:
        ckpts.save(state, epoch=epoch + 1, history=logs[i].records())

    def on_epoch_end(epoch, state, record, group=group, logs=logs, timing=timing, start=start):
      saving = (epoch + 1) % every == 0 or epoch == num_epochs - 1
      for k, i in enumerate(group):
        s_i = lt.unstack_replica(state, k) if len(group) > 1 else state
        r_i = _replica_record(record, k) if len(group) > 1 else dict(record)
        r_i.update(_gradient_state_record(s_i))
        if experiment.evaluated_this_epoch(exps[i].config, epoch, num_epochs - 1):
          r_i.update(experiment.epoch_metrics(exps[i], s_i, also=also))
        logs[i].write(r_i)
        states[i] = s_i
      now = time.perf_counter()
      seconds, timing["last"] = now - timing["last"], now
      # The first epoch compiles; later ones are what the next epoch will cost.
      if epoch > start or timing["longest"] is not None:
        timing["longest"] = max(timing["longest"] or 0.0, seconds)
      stop = epoch < num_epochs - 1 and not budget.fits(timing["longest"] or seconds)
      if saving or stop:
        for i in group:
          save(i, states[i], epoch)
      if stop:
        raise BudgetReached(f"{desc}: stopped after epoch {epoch + 1}/{num_epochs}, "
                            f"{budget.remaining():.0f} s left")

    common = dict(start_epoch=start, num_epochs=num_epochs, on_epoch_end=on_epoch_end)
    try:
      if len(group) == 1:
        exp = exps[group[0]]
        lt.fit(states[group[0]], step=exp.train_step, last_step=exp.last_step, data=exp.data,
               stats=exp.stats, desc=f"{desc} seed {exp.config.seed}", **common)
      else:
        program = replica_program([exps[i] for i in group], [states[i] for i in group])
        lt.fit(program.state, step=program.train_step, last_step=program.last_step,
               data=program.data, stats=program.stats, desc=f"{desc} x{len(group)} vmapped",
               **common)
        jax.block_until_ready([states[i] for i in group])
    except lt.TrainingDiverged as e:
      if len(group) > 1:
        # A replica diverged: the seeds go on one after another from their last checkpoints
        # (saved before the divergence), so the others finish and the bad one is named.
        return train_replicas(exps, paths, vmap=False, desc=desc, also=also, budget=budget)
      states[group[0]] = e  # this seed failed (no checkpoint of the diverged state)
    finally:
      for log in logs.values():
        log.close()
  return states


def replica_program(exps: list, states: list) -> lt.ReplicaProgram:
  """The experiments `exps` (one per seed, same method and shapes) at `states`, as one vmapped
  program on the first one's mesh (`ltjax.train.replica_program`)."""
  first = exps[0]
  return lt.replica_program(states, [e.device_data for e in exps], step_fn=first.step_fn,
                            order_fn=first.order_fn, mesh=first.mesh,
                            last_step_fn=first.last_step_fn, pipeline=first.pipeline)


def checkpoints_for(exp, path: str) -> lt.RunCheckpoints:
  """The run's checkpoints (`<path>/checkpoints`, schema 2, written as "replicas")."""
  return lt.RunCheckpoints(os.path.join(path, experiment.CHECKPOINT_DIR), config=exp.config,
                           fingerprint=exp.fingerprint, pipeline="replicas")


def _replica_record(record: dict, index: int) -> dict:
  """Replica `index`'s view of a vmapped epoch record (per-replica lists indexed)."""
  out = dict(record)
  for key in ("loss", "lr"):
    out[key] = record[key][index]
  return out


def _train_seconds(per_epoch: list, replicas: int) -> float:
  """A run's training time from its epoch records (all chunks); a vmapped group's epoch time is
  shared by its replicas."""
  return sum(r.get("seconds", 0.0) for r in per_epoch) / replicas


def _finish(exp, state, path: str, *, seconds: float, per_epoch: list, extra: dict) -> dict:
  """Evaluates and writes one run's results.json (with the reproduce-specific fields)."""
  os.makedirs(path, exist_ok=True)
  return experiment.write_report(exp, state, path, train_seconds=seconds, history=per_epoch,
                                 per_epoch=per_epoch, extra=extra)


def run_joint(spec: TableSpec, method: str, ir: float, *, workdir: str, cache: SplitCache,
              vmap: bool, failures: list | None = None, budget: Budget | None = None) -> None:
  """Trains the unfinished seeds of a joint method together and writes their results."""
  configs = [run_config(spec, method, ir, s, workdir=workdir) for s in spec.seeds]
  todo = [c for c in configs if not is_finished(run_dir(workdir, spec, method, ir, c.seed), c)]
  if not todo:
    return
  exps = [experiment.build_experiment(c, cache.get(c)) for c in todo]
  paths = [run_dir(workdir, spec, method, ir, c.seed) for c in todo]
  use_vmap = vmap and len(exps) > 1
  states = train_replicas(exps, paths, vmap=use_vmap, desc=f"{method} IR {ir:g}",
                          also=also_evaluated(spec, method), budget=budget)
  replicas = len(exps) if use_vmap else 1
  for exp, state, path in zip(exps, states, paths):
    if isinstance(state, BaseException):  # diverged: no checkpoint of the diverged state
      record_failure(path, state, failures)
      continue

    def finish(exp=exp, state=state, path=path):
      per_epoch = epoch_log.EpochLog(path, start_epoch=exp.config.num_epochs,
                                     tensorboard=False).records()
      _finish(exp, state, path, seconds=_train_seconds(per_epoch, replicas),
              per_epoch=per_epoch, extra={"vmap_replicas": replicas, "reproduce_table": spec.name})

    _attempt(path, finish, failures)


def _reused_per_epoch(source_per_epoch: list, method: str) -> list:
  """`method`'s per-epoch record from its source run's: the training numbers, and the
  evaluation the source recorded for `method` under "also" (or its own when `method`'s
  evaluation is the source's, e.g. CE-DRW as CE)."""
  out = []
  for r in source_per_epoch:
    evaluated = (r.get("also") or {}).get(method)
    keep = {k: v for k, v in r.items() if k not in ("also", "val", "test", "tau", "gala_state")}
    if evaluated is not None:
      keep.update(evaluated)
    else:
      keep.update({k: r[k] for k in ("val", "test", "tau") if k in r})
    out.append(keep)
  return out


def run_same_training(spec: TableSpec, method: str, ir: float, *, workdir: str,
                      cache: SplitCache, failures: list | None = None) -> None:
  """A method whose training is another's (`same_training`): the source run's trained state
  evaluated with the method (e.g. its post-hoc step)."""
  source = tables.same_training(spec)[method]
  for seed in spec.seeds:
    config = run_config(spec, method, ir, seed, workdir=workdir)
    path = run_dir(workdir, spec, method, ir, seed)
    if is_finished(path, config):
      continue
    src = run_dir(workdir, spec, source, ir, seed)

    def evaluate_source(config=config, path=path, src=src):
      src_results = read_ok_results(src)
      if src_results is None:
        raise experiment.ConfigError(f"its source run {src} has no successful results.json.")
      exp = experiment.build_experiment(config, cache.get(config))
      with checkpointing.Checkpointer(os.path.join(src, experiment.CHECKPOINT_DIR)) as ckpt:
        state, _ = ckpt.restore(exp.state)
      per_epoch = _reused_per_epoch(
          epoch_log.per_epoch(src_results), method)
      _finish(exp, state, path, seconds=src_results["train_seconds_this_run"],
              per_epoch=per_epoch,
              extra={"trained_as": src, "vmap_replicas": src_results.get("vmap_replicas", 1),
                     "reproduce_table": spec.name})

    _attempt(path, evaluate_source, failures)


def run_stage2(spec: TableSpec, method: str, ir: float, *, workdir: str,
               cache: SplitCache, failures: list | None = None,
               budget: Budget | None = None) -> None:
  """A stage-2 / post-hoc method (cRT, LOS, tau-norm) from its stage-1 run of the same (IR,
  seed), one seed after another.

  Under a budget, a run starts only if its whole stage 2 fits at its stage-1 run's epoch time
  (stage 2 trains the head alone, so this overestimates)."""
  budget = budget or Budget()
  for seed in spec.seeds:
    config = run_config(spec, method, ir, seed, workdir=workdir)
    path = run_dir(workdir, spec, method, ir, seed)
    if is_finished(path, config):
      continue
    src = read_ok_results(config.init_checkpoint)
    if src is not None:
      epoch_s = _train_seconds(src.get("per_epoch") or [], 1) / max(src["num_epochs"], 1)
      if not budget.fits(config.num_epochs * epoch_s):
        raise BudgetReached(f"{method} IR {ir:g} seed {seed}: not started, "
                            f"{budget.remaining():.0f} s left")

    def stage2(config=config, path=path):
      if read_ok_results(config.init_checkpoint) is None:
        raise experiment.ConfigError(f"its stage-1 run {config.init_checkpoint} has no "
                                     "successful results.json.")
      # A half-written stage-2 folder from an interrupted run continues from its checkpoint.
      resume = os.path.isdir(os.path.join(path, experiment.CHECKPOINT_DIR))
      experiment.train_and_evaluate(config, path, splits=cache.get(config), resume=resume,
                                    extra={"vmap_replicas": 1, "reproduce_table": spec.name})

    _attempt(path, stage2, failures)


def run_order(methods, same: dict) -> list:
  """Methods in an order that trains every source before what reuses it."""
  stage1 = tables.stage1_sources()
  sources = {same.get(m) or stage1.get(m) for m in methods} - {None}
  first = [m for m in methods if m in sources]
  joint = [m for m in methods if m not in sources and m not in same and m not in stage1]
  return first + joint + [m for m in methods if m in same or m in stage1]


def run_table(spec: TableSpec, methods, *, workdir: str, vmap: bool, source=None,
              budget: Budget | None = None) -> list:
  """Runs (or skips, when finished) every run of the table; a failed run is recorded in its
  folder and the table goes on. Returns the failures of this invocation (`path`, `message`).
  `source` reads the datasets (`SplitCache`; default `ltjax.data.load_arrays`). Raises
  `BudgetReached` when `budget` runs out (everything in progress checkpointed: call again to
  continue)."""
  failures = []
  cache = SplitCache(source)
  same = tables.same_training(spec)
  stage1 = tables.stage1_sources()
  needed = set(methods) | {same.get(m) or stage1.get(m) for m in methods} - {None}
  ordered = run_order([m for m in spec.methods if m in needed], same)
  for ir in spec.imbalance_ratios:
    for method in ordered:
      started = time.perf_counter()
      if method in same:
        run_same_training(spec, method, ir, workdir=workdir, cache=cache, failures=failures)
      elif method in stage1:
        run_stage2(spec, method, ir, workdir=workdir, cache=cache, failures=failures,
                   budget=budget)
      else:
        # Building the group can fail too (e.g. a bad override): recorded for every seed.
        try:
          run_joint(spec, method, ir, workdir=workdir, cache=cache, vmap=vmap,
                    failures=failures, budget=budget)
        except BudgetReached:
          raise
        except Exception as e:  # noqa: BLE001 (as in _attempt: the sweep goes on)
          for seed in spec.seeds:
            record_failure(run_dir(workdir, spec, method, ir, seed), e, failures)
      print(f"[{time.strftime('%H:%M:%S')}] {spec.name} IR {ir:g} {method}: "
            f"{time.perf_counter() - started:.0f} s", flush=True)
  return failures
