r"""Reproduces the papers' comparisons on real long-tailed data: multi-seed results tables.

    python -m experiments.reproduce --table A        # Fashion-MNIST-LT, IR 100 and 10, small CNN
    python -m experiments.reproduce --table B        # CIFAR-10-LT IR 100, ResNet-32 (shortened)
    python -m experiments.reproduce --table smoke    # a one-epoch check of the whole pipeline
    python -m experiments.reproduce --measure_vmap   # seeds vmapped vs one after another

A table is a list of (method, dataset, imbalance ratio, recipe, seeds). Every run keeps its own
folder `<workdir>/<table>/<dataset>_ir<IR>/<method>/seed<k>/` with `results.json` (and the
trained state under `checkpoints/`); a run whose `results.json` exists is skipped, so an
interrupted table resumes where it stopped. A run that fails (diverges, NaN metrics, missing
stage-1 source, ...) is recorded as failed in its folder's `failure.json` with its message, the
table goes on with the other runs and shows it as missing (listed under "Failed runs"), and the
next invocation retries it. At the end `experiments/results/<table>.json` and
`.md` are (re)written from those files: mean ± std over seeds of the last-epoch balanced test
accuracy, with many/medium/few, next to the published figure where docs/methods.md §4 gives one.

What is trained once and reused (the reuse is exact, not an approximation; declared by each
method's `stage`, `reuses` and `reuses_when` in the registry, `ltjax.train.METHODS`):
- `la_posthoc` trains plain CE; it is the CE run's state evaluated with the post-hoc step (tau
  selected on the validation split). Likewise `gala_prs` is the GALA run with PRS at evaluation.
- `tau_norm`, `crt` and `los` start from the CE run of the same (IR, seed) as their stage 1.

Seeds of a joint method are trained together as vmapped replicas (`ltjax.train.
make_replica_train_step`) when the table says so; `--measure_vmap` records whether that pays.
Model and tau selection never look at the test split; the test numbers are the last epoch's.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

_TABLE = flags.DEFINE_string("table", None, "Which table: A, B or smoke.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/ltjax-reproduce",
                               "Where the runs (results.json, checkpoints) are kept.")
_RESULTS_DIR = flags.DEFINE_string("results_dir", "experiments/results",
                                   "Where <table>.json/.md are written.")
_METHODS = flags.DEFINE_list("methods", None, "Only these methods of the table (default all).")
_VMAP = flags.DEFINE_enum("vmap", "table", ["table", "on", "off"],
                          "Train a joint method's seeds as vmapped replicas: as the table "
                          "specifies, always, or never (one run after another).")
_BUDGET_S = flags.DEFINE_float(
    "budget_s", None, "Wall-clock budget of this invocation in seconds: training stops cleanly "
    "(state checkpointed, epoch records kept) before an epoch that would not fit, and the "
    "process exits with status 75; run the same command again to continue.")
_MEASURE_VMAP = flags.DEFINE_bool(
    "measure_vmap", False, "Time one epoch of 3 seeds vmapped vs one after another (Table A's "
    "recipe, CE, IR 100) and write experiments/results/vmap_speedup.{json,md}.")

MODULE = "experiments.reproduce"
# Exit status of an invocation stopped by --budget_s with work left (EX_TEMPFAIL: try again).
EXIT_BUDGET = 75

# Which method reuses which training comes from the registry (`Method.stage`, `Method.reuses`):
# `same_training(spec)` and `stage1_sources()` below.


def all_methods() -> tuple:
  """Every registered method, in registration order."""
  from ltjax import train as lt  # pylint: disable=g-import-not-at-top
  return tuple(lt.METHODS)


def stage1_sources() -> dict:
  """`{method: the joint method whose run is its stage 1}` for the decoupled methods."""
  from ltjax import train as lt  # pylint: disable=g-import-not-at-top
  return lt.stage1_sources()

# docs/methods.md §4: top-1 (%) on the balanced CIFAR-10 test set, IR 100 (errors converted).
PUBLISHED_C10_IR100 = {
    "ce": (71.36, "LA README (ERM, own code)"),
    "la_posthoc": (77.32, "LA README"),
    "la_loss": (77.89, "LA README"),
    "ldam_drw": (77.03, "LDAM paper (22.97 % error)"),
}


@dataclasses.dataclass(frozen=True)
class TableSpec:
  """One results table.

  Attributes:
    name: file stem under the results folder.
    title: the markdown heading.
    recipe: a module of `experiments.configs`.
    imbalance_ratios: one block of rows per ratio.
    methods: rows, in order.
    seeds: the seeds averaged over.
    num_epochs: epochs of every joint (stage-1) run.
    stage2_epochs: epochs of cRT / LOS classifier re-training.
    overrides: dotted config keys set on every run (shortened schedules).
    stage2_overrides: {method: dotted config keys} set on that stage-2 method's runs only.
    vmap: train a joint method's seeds as vmapped replicas.
    schedule_note: how this schedule relates to the recipe's (printed in the markdown).
    published: {(method, imbalance_ratio): (top-1 %, source)}.
    method_recipes: {method: recipe} for methods trained with another recipe than `recipe`.
  """
  name: str
  title: str
  recipe: str
  imbalance_ratios: tuple
  methods: tuple
  seeds: tuple
  num_epochs: int
  stage2_epochs: int
  overrides: dict = dataclasses.field(default_factory=dict)
  stage2_overrides: dict = dataclasses.field(default_factory=dict)
  vmap: bool = True
  schedule_note: str = ""
  published: dict = dataclasses.field(default_factory=dict)
  method_recipes: dict = dataclasses.field(default_factory=dict)


def _table_a() -> TableSpec:
  epochs = 5  # the fmnist_cnn recipe's whole schedule
  return TableSpec(
      name="table_a", title="Table A: Fashion-MNIST-LT, small CNN (recipe fmnist_cnn)",
      recipe="fmnist_cnn", imbalance_ratios=(100.0, 10.0), methods=all_methods(),
      seeds=(0, 1, 2), num_epochs=epochs, stage2_epochs=1,
      # Deferred re-weighting over the last fifth of the schedule, as LDAM-DRW's 160 of 200.
      overrides={"hparams.drw_start_epoch": 4},
      # Measured 0.53x on this CPU (experiments/results/vmap_speedup.md): seeds run in turn.
      vmap=False,
      schedule_note=(
          f"The recipe's whole schedule: {epochs} epochs (SGD 0.9, lr 0.05 cosine, batch 128, "
          "no augmentation; the CNN flattens its 7x7 map). DRW re-weights the last of the 5 "
          "epochs (from 0-based epoch 4, as LDAM-DRW from 160 of 200). cRT and LOS re-train "
          "the CE model's classifier "
          "for 1 epoch (recipe lr 0.05; LOS delta 0.98); tau-norm and LA post-hoc re-use the "
          "CE runs, GALA+PRS the GALA runs. Cost: 10 trained methods x 3 seeds x 5 epochs "
          "over 14,836 (IR 100) + 24,466 (IR 10) images, plus cRT/LOS, is 6.1M training "
          "images; at the ~1,100 images/s the previous (mean-pooling) CNN trained at on this "
          "2-core CPU (load 1.5-2.5) that is ~95 min, and the flattening CNN has ~10 % more "
          "FLOPs, the per-epoch evaluation ~15 % more: an estimate of ~2 h, not measured. "
          "`--budget_s` runs it in resumable chunks."))


def _table_b() -> TableSpec:
  epochs = 1
  return TableSpec(
      name="table_b",
      title="Table B: CIFAR-10-LT IR 100, ResNet-32 (recipe ldam_r32), shortened CPU schedule",
      recipe="ldam_r32", imbalance_ratios=(100.0,),
      methods=("ce", "la_posthoc", "la_loss", "ldam_drw", "los", "balanced_softmax", "gala",
               "gala_prs", "ala"),
      seeds=(0,), num_epochs=epochs, stage2_epochs=1,
      # The first epoch of the recipe itself: its warm-up lr 0.1 x 1/5 = 0.02 (a compressed
      # schedule at lr 0.1 from step 0 left CE predicting class 0 only); DRW (epoch 160) is
      # never reached.
      overrides={"hparams.drw_start_epoch": epochs},
      # LOS stage 2 as its official code: lr 5e-4 cosine, no weight decay.
      stage2_overrides={"los": {"lr": {"name": "cosine", "base_lr": 5e-4}, "weight_decay": 0.0}},
      vmap=False,
      schedule_note=(
          f"**Shortened CPU schedule: {epochs} epoch instead of 200, 1 seed. The full "
          "200-epoch, 3-seed run is pending a GPU.** ResNet-32 trains at a few tens of "
          "images/s on the shared 2-core CPU, so this table checks the pipeline on the real "
          "data and split; its accuracies are far below the published ones (which need the "
          "whole schedule) and say little about the methods' ranking. The one epoch is the "
          "recipe's first (warm-up lr 0.02); DRW (from epoch 160) is never reached, so "
          "LDAM-DRW runs as LDAM and ALA "
          "without re-weighting. LOS re-trains the CE model's classifier for 1 epoch (lr "
          "5e-4 cosine, no weight decay, delta 0.98, BN in train mode) on ResNet-32, not the "
          "paper's ResNet-34; no flip-TTA (the ldam_r32 recipe's evaluation)."),
      published={(m, 100.0): v for m, v in PUBLISHED_C10_IR100.items()})


def _table_smoke() -> TableSpec:
  return TableSpec(
      name="table_smoke", title="Smoke test: Fashion-MNIST-LT, 1 epoch",
      recipe="fmnist_cnn", imbalance_ratios=(100.0,),
      methods=("ce", "ce_drw", "la_posthoc", "gala", "gala_prs", "tau_norm", "crt", "los"),
      seeds=(0, 1), num_epochs=1, stage2_epochs=1,
      overrides={"hparams.drw_start_epoch": 1}, vmap=True,
      schedule_note="A pipeline check, not a result.")


def _table_b_full() -> TableSpec:
  return TableSpec(
      name="table_b_full",
      title="Table B: CIFAR-10-LT IR 100, ResNet-32, the recipes' full 200 epochs, 3 seeds",
      recipe="ldam_r32", imbalance_ratios=(100.0,),
      methods=("ce", "la_posthoc", "la_loss", "balanced_softmax", "ldam_drw", "gala",
               "gala_prs", "ala", "los"),
      seeds=(0, 1, 2), num_epochs=200, stage2_epochs=20,
      # LOS stage 2 as its official code (los_r34:stage2): 20 epochs, lr 5e-4 cosine, no weight
      # decay, here on the ldam_r32 CE model (ResNet-32) of the same seed.
      stage2_overrides={"los": {"lr": {"name": "cosine", "base_lr": 5e-4}, "weight_decay": 0.0}},
      method_recipes={"gala": "gala_r32", "gala_prs": "gala_r32"},
      vmap=True,
      schedule_note=(
          "The recipes' full schedules: ldam_r32 (LDAM-DRW's: batch 128, SGD 0.9, wd 2e-4, lr "
          "0.1 with 5 warm-up epochs, x0.01 at 160 and 180, DRW from 160) for CE, LA, Balanced "
          "Softmax, LDAM-DRW and ALA; gala_r32 (batch 64, wd 5e-4, cosine with warm-up, crop + "
          "flip + AutoAugment + Cutout, on CIFAR-10) for GALA; LOS re-trains the CE model's "
          "classifier for 20 epochs (lr 5e-4 cosine, no weight decay, delta 0.98). 3 seeds of "
          "each method train as one vmapped program on one accelerator "
          "(experiments/device/table_b.sh), in chunks under a wall-clock budget."),
      published={(m, 100.0): v for m, v in PUBLISHED_C10_IR100.items()})


TABLES = {"A": _table_a, "B": _table_b, "B_full": _table_b_full, "smoke": _table_smoke}


def get_table(name: str) -> TableSpec:
  """The table spec called `name`; a clear error for an unknown one."""
  if name not in TABLES:
    raise ValueError(f"Unknown table {name!r}; expected one of {sorted(TABLES)}.")
  return TABLES[name]()


def select_methods(spec: TableSpec, methods) -> tuple:
  """The table's methods restricted to `methods` (None: all); unknown names raise."""
  if not methods:
    return spec.methods
  unknown = [m for m in methods if m not in spec.methods]
  if unknown:
    raise ValueError(f"Methods {unknown} are not in table {spec.name!r}; expected some of "
                     f"{list(spec.methods)}.")
  return tuple(m for m in spec.methods if m in methods)


def _set_dotted(config, key: str, value) -> None:
  *parents, leaf = key.split(".")
  node = config
  for p in parents:
    node = getattr(node, p)
  setattr(node, leaf, value)


def _spec_config(spec: TableSpec, method: str | None = None):
  """The recipe of `spec` (or `method`'s own, `spec.method_recipes`, on the table's dataset) with
  the table's overrides (no stage-2 settings)."""
  config = importlib.import_module(f"experiments.configs.{spec.recipe}").get_config()
  if method in spec.method_recipes:
    dataset = config.dataset
    config = importlib.import_module(
        f"experiments.configs.{spec.method_recipes[method]}").get_config()
    config.dataset = dataset
  config.num_epochs = spec.num_epochs
  for key, value in spec.overrides.items():
    _set_dotted(config, key, value)
  return config


def same_training(spec: TableSpec) -> dict:
  """`{method: source}` for the joint methods whose training is exactly `source`'s under this
  table's settings (`Method.reuses` / `reuses_when` in the registry; e.g. CE-DRW is CE when DRW
  starts after the last epoch): evaluated on the source run's state."""
  from ltjax import train as lt  # pylint: disable=g-import-not-at-top
  config = _spec_config(spec)
  return lt.joint_reuse(lt.hparams(config.hparams), config.num_epochs)


def run_config(spec: TableSpec, method: str, imbalance_ratio: float, seed: int, *,
               workdir: str):
  """The config of one run of `spec` (stage-1 source runs resolved to their folders)."""
  from ltjax import train as lt  # pylint: disable=g-import-not-at-top
  config = _spec_config(spec, method)
  config.method = method
  config.imbalance_ratio = float(imbalance_ratio)
  config.seed = int(seed)
  stage1 = stage1_sources()
  if method in stage1:
    config.init_checkpoint = run_dir(workdir, spec, stage1[method], imbalance_ratio, seed)
    # A post-hoc method trains nothing; a stage-2 one re-trains for the table's stage-2 epochs.
    config.num_epochs = 0 if lt.get_method(method).stage == "posthoc" else spec.stage2_epochs
    for key, value in spec.stage2_overrides.get(method, {}).items():
      _set_dotted(config, key, value)
  return config


def run_dir(workdir: str, spec: TableSpec, method: str, imbalance_ratio: float,
            seed: int) -> str:
  dataset = importlib.import_module(f"experiments.configs.{spec.recipe}").get_config().dataset
  return os.path.join(workdir, spec.name, f"{dataset}_ir{imbalance_ratio:g}", method,
                      f"seed{seed}")


def _results_path(path: str) -> str:
  from experiments import experiment  # pylint: disable=g-import-not-at-top
  return os.path.join(path, experiment.RESULTS_FILE)


def read_ok_results(path: str) -> dict | None:
  """The `results.json` of the run folder `path` if it records a success, else None (absent,
  unreadable, or with a `status` other than "ok": never tabulated)."""
  try:
    with open(_results_path(path)) as f:
      r = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  return r if isinstance(r, dict) and r.get("status", "ok") == "ok" else None


def is_finished(path: str, config) -> bool:
  """Whether `path` holds the successful results of exactly this run (same epochs, method)."""
  r = read_ok_results(path)
  return bool(r) and r.get("method") == config.method and r.get("num_epochs") == config.num_epochs


def _failure_path(path: str) -> str:
  from experiments import experiment  # pylint: disable=g-import-not-at-top
  return os.path.join(path, experiment.FAILURE_FILE)


def record_failure(path: str, error: BaseException, failures: list | None = None) -> str:
  """Writes the run folder's `failure.json` for `error` and prints one line; returns the
  message."""
  from experiments import experiment  # pylint: disable=g-import-not-at-top
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
    import ltjax  # pylint: disable=g-import-not-at-top
    key = (dataset, split, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
    if key not in self._arrays:
      read = ltjax.data.load_arrays if self._source is None else self._source
      self._arrays[key] = read(dataset, split, **kwargs)
    return self._arrays[key]

  def get(self, config):
    from experiments import experiment  # pylint: disable=g-import-not-at-top
    key = (config.dataset, config.imbalance_ratio, config.split_protocol, config.split_seed,
           config.val_per_class)
    if key not in self._splits:
      experiment.check_prepared(config)
      # load_splits reads the whole dataset each call; memoise the read for the next seeds.
      self._splits[key] = experiment.load_splits(config, source=self._load_arrays)
    return self._splits[key]


def _host_tree(tree):
  """A pytree of JAX arrays as nested lists (JSON)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda x: np.asarray(x).tolist(), jax.device_get(tree))


class BudgetReached(Exception):
  """Raised when the next epoch would not fit in the invocation's wall-clock budget; every run
  in progress has been checkpointed at the end of its last epoch."""


@dataclasses.dataclass
class Budget:
  """The wall-clock budget of one invocation (`--budget_s`; None: unlimited).

  An epoch is started only if `safety` times the longest epoch seen so far (training,
  evaluation and checkpoint included) plus `margin_s` still fits, so a chunk ends before the
  budget unless one epoch grows by more than `safety`. A group whose epoch time is not known yet
  (the first epoch compiles) needs `first_epoch_s` left to start.
  """
  seconds: float | None = None
  margin_s: float = 30.0
  safety: float = 1.5
  first_epoch_s: float = 120.0
  started: float = dataclasses.field(default_factory=time.perf_counter)

  def remaining(self) -> float:
    if self.seconds is None:
      return float("inf")
    return self.seconds - (time.perf_counter() - self.started)

  def fits(self, epoch_seconds: float | None) -> bool:
    need = self.first_epoch_s if epoch_seconds is None else self.safety * epoch_seconds
    return self.remaining() >= need + self.margin_s


def _gala_record(state) -> dict:
  """GALA's accumulated statistics after an epoch (for the gradient-ratio figure); {} for
  stateless methods."""
  from ltjax import losses  # pylint: disable=g-import-not-at-top
  if isinstance(state.loss_state, losses.GalaState):
    return {"gala_state": _host_tree(state.loss_state._asdict())}
  return {}


def also_evaluated(spec: TableSpec, method: str) -> tuple:
  """Methods that reuse `method`'s training with a post-hoc step of their own (`la_posthoc` on
  CE, `gala_prs` on GALA): evaluated on each epoch's state for their per-epoch record."""
  from ltjax import train as lt  # pylint: disable=g-import-not-at-top
  return tuple(m for m, src in same_training(spec).items()
               if src == method and lt.get_method(m).posthoc is not None)


def _resume_states(exps: list, paths: list) -> tuple[list, list]:
  """Each run's latest checkpoint under `<path>/checkpoints` (checked against its split and
  method) or its step-0 state: `(states, start_epochs)`."""
  from experiments import experiment  # pylint: disable=g-import-not-at-top
  from ltjax import checkpointing  # pylint: disable=g-import-not-at-top
  states, starts = [], []
  for exp, path in zip(exps, paths):
    if not os.path.isdir(os.path.join(path, experiment.CHECKPOINT_DIR)):
      states.append(exp.state)
      starts.append(0)
      continue
    with checkpointing.Checkpointer(os.path.join(path, experiment.CHECKPOINT_DIR)) as ckpt:
      if ckpt.latest_step() is None:
        states.append(exp.state)
        starts.append(0)
        continue
      meta = ckpt.restore_metadata()
      if (meta["split_fingerprint"] != exp.splits.fingerprint
          or meta["config"]["method"] != exp.config.method):
        raise experiment.ConfigError(f"{path} holds a checkpoint of another run (split or method "
                                "differs): delete it to start over.")
      state, meta = ckpt.restore(exp.state)
      states.append(state)
      starts.append(int(meta["epoch"]) + 1)
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
  import jax  # pylint: disable=g-import-not-at-top

  from experiments import epoch_log  # pylint: disable=g-import-not-at-top
  from experiments import experiment  # pylint: disable=g-import-not-at-top
  from ltjax import train as lt  # pylint: disable=g-import-not-at-top
  from ltjax.train import _replicas  # pylint: disable=g-import-not-at-top

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

    def save(i, state, epoch):
      with checkpointing_for(paths[i]) as ckpt:
        ckpt.save(state, metadata={"config": exps[i].config.to_dict(),
                                   "split_fingerprint": exps[i].splits.fingerprint,
                                   "epoch": epoch})

    def on_epoch_end(epoch, state, record, group=group, logs=logs, timing=timing, start=start):
      saving = (epoch + 1) % every == 0 or epoch == num_epochs - 1
      for k, i in enumerate(group):
        s_i = lt.unstack_replica(state, k) if len(group) > 1 else state
        r_i = _replica_record(record, k) if len(group) > 1 else dict(record)
        r_i.update(_gala_record(s_i))
        if experiment._evaluated_this_epoch(exps[i].config, epoch, num_epochs - 1):  # pylint: disable=protected-access
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

    common = dict(start_epoch=start, num_epochs=num_epochs,
                  steps_per_epoch=first.steps_per_epoch, batch_size=first.config.batch_size,
                  examples_per_epoch=len(first.splits.train_labels), on_epoch_end=on_epoch_end)
    try:
      if len(group) == 1:
        exp = exps[group[0]]
        lt.train_epochs(states[group[0]], train_step=exp.train_step,
                        epoch_order=exp.epoch_order, images=exp.device_data["train_images"],
                        labels=exp.device_data["train_labels"], stats=exp.device_data["stats"],
                        desc=f"{desc} seed {exp.config.seed}", last_step=exp.last_step,
                        **common)
      else:
        mesh = first.mesh
        stacked = _replicas.as_replicated(
            _replicas.stack_replicas([states[i] for i in group]), mesh)
        data = _replicas.as_replicated(_replicas.stack_replicas(
            [{k: exps[i].device_data[k] for k in ("train_images", "train_labels", "stats")}
             for i in group]), mesh)
        lt.train_epochs(stacked, train_step=lt.make_replica_train_step(first.step_fn, mesh=mesh),
                        epoch_order=lt.make_replica_epoch_order(first.order_fn, mesh=mesh),
                        images=data["train_images"], labels=data["train_labels"],
                        stats=data["stats"], desc=f"{desc} x{len(group)} vmapped",
                        last_step=None if first.last_step_fn is None
                        else lt.make_replica_train_step(first.last_step_fn, mesh=mesh),
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


def checkpointing_for(path: str):
  """The run's checkpointer (`<path>/checkpoints`)."""
  from experiments import experiment  # pylint: disable=g-import-not-at-top
  from ltjax import checkpointing  # pylint: disable=g-import-not-at-top
  return checkpointing.Checkpointer(os.path.join(path, experiment.CHECKPOINT_DIR))


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
  from experiments import experiment  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  return experiment.write_report(exp, state, path, train_seconds=seconds, history=per_epoch,
                            per_epoch=per_epoch, extra=extra)


def run_joint(spec: TableSpec, method: str, ir: float, *, workdir: str, cache: SplitCache,
              vmap: bool, failures: list | None = None, budget: Budget | None = None) -> None:
  """Trains the unfinished seeds of a joint method together and writes their results."""
  from experiments import epoch_log  # pylint: disable=g-import-not-at-top
  from experiments import experiment  # pylint: disable=g-import-not-at-top
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
  from experiments import experiment  # pylint: disable=g-import-not-at-top
  from ltjax import checkpointing  # pylint: disable=g-import-not-at-top
  source = same_training(spec)[method]
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
          src_results.get("per_epoch") or src_results.get("history") or [], method)
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
  from experiments import experiment  # pylint: disable=g-import-not-at-top
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
        raise experiment.ConfigError(f"its stage-1 run {config.init_checkpoint} has no successful "
                                "results.json.")
      # A half-written stage-2 folder from an interrupted run continues from its checkpoint.
      resume = os.path.isdir(os.path.join(path, experiment.CHECKPOINT_DIR))
      results = experiment.train_and_evaluate(config, path, splits=cache.get(config), resume=resume)
      results.update({"vmap_replicas": 1, "reproduce_table": spec.name})
      experiment.write_json_atomic(_results_path(path), results)

    _attempt(path, stage2, failures)


def run_order(methods, same: dict) -> list:
  """Methods in an order that trains every source before what reuses it."""
  stage1 = stage1_sources()
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
  same = same_training(spec)
  stage1 = stage1_sources()
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


# ------------------------------------------------------------------------------- the tables


def _mean_std(values):
  import numpy as np  # pylint: disable=g-import-not-at-top
  values = [v for v in values if v is not None]
  if not values:
    return None
  arr = 100.0 * np.asarray(values, np.float64)
  # Sample std (ddof=1) over seeds; a single seed has none.
  return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else None,
          "n": len(arr), "values": arr.tolist()}


def collect(spec: TableSpec, methods, *, workdir: str) -> dict:
  """Reads every finished run of the table into `{ir: {method: row}}`."""
  rows = {}
  for ir in spec.imbalance_ratios:
    block = {}
    for method in methods:
      runs = []
      for seed in spec.seeds:
        results = read_ok_results(run_dir(workdir, spec, method, ir, seed))
        if results is not None:
          runs.append(results)
      if not runs:
        continue
      block[method] = summarise_runs(runs, published=spec.published.get((method, ir)))
    rows[f"{ir:g}"] = block
  return rows


def collect_failures(spec: TableSpec, methods, *, workdir: str) -> list:
  """The runs of the table that failed and have not succeeded since: their `failure.json`."""
  failed = []
  for ir in spec.imbalance_ratios:
    for method in methods:
      for seed in spec.seeds:
        path = run_dir(workdir, spec, method, ir, seed)
        if read_ok_results(path) is not None:
          continue
        try:
          with open(_failure_path(path)) as f:
            failure = json.load(f)
        except (OSError, json.JSONDecodeError):
          continue
        failed.append({"method": method, "imbalance_ratio": ir, "seed": seed,
                       "status": failure.get("status", "failed"),
                       "message": failure.get("message", "")})
  return failed


def _best_test_epoch(results: dict) -> dict:
  from experiments import epoch_log  # pylint: disable=g-import-not-at-top
  return results.get("best_test_epoch") or epoch_log.best_test_epoch(
      results.get("per_epoch") or [], results["test"])


def summarise_runs(runs: list, *, published=None) -> dict:
  """One table row from the results.json of its seeds."""
  first = runs[0]
  row = {
      "seeds": [r["seed"] for r in runs], "num_epochs": first["num_epochs"],
      "recipe": first["recipe"], "split_fingerprints": {str(r["seed"]): r["split_fingerprint"]
                                                         for r in runs},
      "class_counts": first["class_counts"],
      "train_seconds": [r["train_seconds_this_run"] for r in runs],
      "dates": [r["date"] for r in runs],
      "vmap_replicas": first.get("vmap_replicas", 1),
      "trained_as": first.get("trained_as"),
      "init_checkpoint": first["config"].get("init_checkpoint") or None,
      "test": {k: _mean_std([r["test"][k] for r in runs])
               for k in ("top1", "many", "medium", "few")},
      # The official codes' protocol (the epoch with the best test accuracy), for comparison
      # with published figures only.
      "best_epoch_test": {k: _mean_std([_best_test_epoch(r)["test"][k] for r in runs])
                          for k in ("top1", "many", "medium", "few")},
      "best_epochs": [_best_test_epoch(r)["epoch"] for r in runs],
      "val_top1": _mean_std([(r.get("val") or {}).get("top1") for r in runs]),
      "per_class": [_mean_std([r["test"]["per_class"][c] for r in runs])
                    for c in range(len(first["class_counts"]))],
      "posthoc_tau": [r["posthoc"]["tau"] for r in runs if "posthoc" in r] or None,
      "device": first["device"], "versions": first["versions"],
  }
  if published:
    row["published"] = {"top1": published[0], "source": published[1]}
  return row


def _fmt(stat) -> str:
  if stat is None:
    return "–"
  if stat["std"] is None:
    return f"{stat['mean']:.2f}"
  return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def _group_counts(counts, many=100, few=20):
  many_n = sum(c > many for c in counts)
  few_n = sum(c < few for c in counts)
  return many_n, len(counts) - many_n - few_n, few_n


def markdown(spec: TableSpec, record: dict) -> str:
  """The table as markdown: one block per imbalance ratio."""
  from experiments import provenance  # pylint: disable=g-import-not-at-top
  lines = [f"# {spec.title}", "",
           f"Command: `{record['command']}`  ",
           f"Date: {record['date']}  ", f"Device: {record['device']}  ",
           f"Versions: {provenance.versions_line(record['versions'])}  ",
           f"Recipe: `{spec.recipe}`, {spec.num_epochs} epochs; seeds {list(spec.seeds)}  ",
           (f"Wall time of this invocation: {record['wall_seconds'] / 60:.1f} min "
            f"(runs found finished are skipped, not re-timed); sum of the runs' training "
            f"times: {record['sum_train_seconds'] / 60:.1f} min; run reports from "
            f"{(record['runs_span'] or {}).get('first_report')} to "
            f"{(record['runs_span'] or {}).get('last_report')}."), "",
           spec.schedule_note, "",
           ("Balanced test accuracy (%) of the **last epoch** (full balanced test set), mean ± "
            "std (sample std) over seeds; many / medium / few = classes with > 100, 20–100, "
            "< 20 training images. Post-hoc tau (LA post-hoc, tau-norm) is selected on the "
            "balanced validation split carved from discarded training images; the test split "
            "is never used for selection. The separate column **best epoch (test)** is the "
            "official codes' protocol instead (each run's epoch with the highest test accuracy, "
            "as LDAM-DRW, LA and GALA report), for comparison with published figures only."), ""]
  for ir, block in record["rows"].items():
    if not block:
      continue
    counts = next(iter(block.values()))["class_counts"]
    many_n, med_n, few_n = _group_counts(counts)
    fps = next(iter(block.values()))["split_fingerprints"]
    lines += [f"## Imbalance ratio {ir}", "",
              (f"Training counts per class: {counts} ({many_n} many / {med_n} medium / {few_n} "
               "few classes).  "),
              "Split fingerprints (seed: SHA-256 prefix): " +
              ", ".join(f"{s}: `{fp[:12]}`" for s, fp in fps.items()), ""]
    has_pub = any("published" in r for r in block.values())
    header = ["method", "top-1 (last epoch)", "many", "medium", "few", "val top-1",
              "tau (val)", "train s/run", "best epoch (test): top-1"] + (
                  ["published top-1"] if has_pub else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in block.items():
      t = row["test"]
      taus = row["posthoc_tau"]
      tau = "–" if not taus else ", ".join(f"{x:g}" for x in taus)
      secs = sum(row["train_seconds"]) / len(row["train_seconds"])
      reused = " (reused)" if row["trained_as"] else ""
      # Fewer seeds than the table's (some failed or are not run yet): said in the row.
      partial = (f" ({len(row['seeds'])}/{len(spec.seeds)} seeds)"
                 if len(row["seeds"]) < len(spec.seeds) else "")
      cells = [method + partial, _fmt(t["top1"]), _fmt(t["many"]), _fmt(t["medium"]),
               _fmt(t["few"]), _fmt(row["val_top1"]), tau, f"{secs:.0f}{reused}",
               _fmt((row.get("best_epoch_test") or {}).get("top1"))]
      if has_pub:
        pub = row.get("published")
        cells.append(f"{pub['top1']:.2f} ({pub['source']})" if pub else "–")
      lines.append("| " + " | ".join(cells) + " |")
    missing = record["missing_methods"].get(ir)
    if missing:
      lines += [f"Not run yet at this ratio: {', '.join(missing)}.", ""]
    failed = [f for f in record.get("failed_runs", []) if f"{f['imbalance_ratio']:g}" == ir]
    if failed:
      lines += ["Failed runs (not in the table; the next invocation retries them):", ""]
      lines += [f"- {f['method']} seed {f['seed']}: {f['message']}" for f in failed]
      lines.append("")
    lines.append("")
  lines += [("`(reused)`: the same training as another row (LA post-hoc = the CE run, GALA+PRS = "
             "the GALA run, CE-DRW = the CE run when DRW is never reached), so its time is that "
             "run's. cRT, LOS and tau-norm start from the CE "
             "run of the same seed. `train s/run` is each run's share of the wall time; "
             "vmapped seeds share one program.")]
  return "\n".join(lines)


def write_table(spec: TableSpec, methods, *, workdir: str, results_dir: str,
                wall_seconds: float) -> dict:
  """Collects the finished runs and writes `<results_dir>/<table>.json` and `.md`."""
  from experiments import provenance  # pylint: disable=g-import-not-at-top
  record = provenance.provenance(MODULE)
  record.update({
      "table": spec.name, "title": spec.title, "recipe": spec.recipe,
      "imbalance_ratios": list(spec.imbalance_ratios), "methods": list(methods),
      "seeds": list(spec.seeds), "num_epochs": spec.num_epochs,
      "stage2_epochs": spec.stage2_epochs, "overrides": dict(spec.overrides.items()),
      "schedule_note": spec.schedule_note, "vmap": spec.vmap, "wall_seconds": wall_seconds,
      "workdir": workdir, "rows": collect(spec, spec.methods, workdir=workdir),
  })
  record["missing_methods"] = {ir: [m for m in spec.methods if m not in block]
                               for ir, block in record["rows"].items()}
  record["failed_runs"] = collect_failures(spec, spec.methods, workdir=workdir)
  dates = sorted(d for block in record["rows"].values() for row in block.values()
                 for d in row["dates"])
  # The table's own compute: from the first run's start to the last run's report (a resumed
  # table spans its interruptions too), and the sum of the runs' training times.
  record["runs_span"] = {"first_report": dates[0], "last_report": dates[-1]} if dates else None
  record["sum_train_seconds"] = sum(
      sum(row["train_seconds"]) for block in record["rows"].values() for row in block.values()
      if not row["trained_as"])
  prefix = os.path.join(results_dir, spec.name)
  provenance.write_record(prefix, record, markdown(spec, record))
  print(f"Wrote {prefix}.json and {prefix}.md")
  return record


# ------------------------------------------------------------------------ vmap measurement


def _time_steps(step, order_fn, state, data, *, steps: int) -> float:
  """Seconds for `steps` train steps after one compiling warm-up step (state is donated)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  order = order_fn(state.rng, jnp.int32(0), data["train_labels"], data["stats"].class_counts)
  args = (data["train_images"], data["train_labels"], order, data["stats"])
  state, _ = step(state, *args)
  jax.block_until_ready(state)
  started = time.perf_counter()
  for _ in range(steps):
    state, _ = step(state, *args)
  jax.block_until_ready(state)
  return time.perf_counter() - started


def measure_vmap(*, workdir: str, results_dir: str, seeds=(0, 1, 2), steps: int = 40,
                 rounds: int = 2) -> dict:
  """Times `steps` train steps of CE on Table A's recipe (IR 100) for each of `seeds`, one run
  after another and as vmapped replicas (compilation excluded), `rounds` times interleaved,
  keeping each way's fastest round (the host is shared with other work)."""
  import jax  # pylint: disable=g-import-not-at-top

  from experiments import experiment  # pylint: disable=g-import-not-at-top
  from experiments import provenance  # pylint: disable=g-import-not-at-top
  from ltjax import train as lt  # pylint: disable=g-import-not-at-top
  from ltjax.train import _replicas  # pylint: disable=g-import-not-at-top

  spec = _table_a()
  cache = SplitCache()
  configs = [run_config(spec, "ce", 100.0, s, workdir=workdir) for s in seeds]
  record = provenance.provenance(MODULE)

  def sequential():
    exps = [experiment.build_experiment(c, cache.get(c)) for c in configs]
    return sum(_time_steps(e.train_step, e.epoch_order, e.state, e.device_data, steps=steps)
               for e in exps)

  def vmapped():
    exps = [experiment.build_experiment(c, cache.get(c)) for c in configs]
    mesh = exps[0].mesh
    state = _replicas.as_replicated(_replicas.stack_replicas([e.state for e in exps]), mesh)
    data = _replicas.as_replicated(_replicas.stack_replicas(
        [{k: e.device_data[k] for k in ("train_images", "train_labels", "stats")}
         for e in exps]), mesh)
    return _time_steps(lt.make_replica_train_step(exps[0].step_fn, mesh=mesh),
                       lt.make_replica_epoch_order(exps[0].order_fn, mesh=mesh), state, data,
                       steps=steps)

  times = {"sequential": [], "vmapped": []}
  for _ in range(rounds):
    times["sequential"].append(sequential())
    times["vmapped"].append(vmapped())
  best = {k: min(v) for k, v in times.items()}
  c = configs[0]
  images = len(seeds) * steps * c.batch_size
  record.update({
      "recipe": spec.recipe, "method": "ce", "imbalance_ratio": 100.0, "seeds": list(seeds),
      "steps_per_seed": steps, "batch_size": c.batch_size, "seconds": times,
      "best_seconds": best, "images_per_s": {k: images / v for k, v in best.items()},
      "speedup_vmapped_over_sequential": best["sequential"] / best["vmapped"],
      "jax_devices": len(jax.devices()),
  })
  md = "\n".join([
      "# Seeds in parallel: vmapped replicas vs one run after another", "",
      f"Command: `{record['command']}`  ", f"Date: {record['date']}  ",
      f"Device: {record['device']}  ",
      f"Versions: {provenance.versions_line(record['versions'])}  ",
      f"Load average at start: {record['load_average_at_start']}", "",
      (f"Recipe `{spec.recipe}` (small CNN, batch {c.batch_size}), CE, Fashion-MNIST-LT IR 100, "
       f"{len(seeds)} seeds x {steps} train steps, compilation excluded (one warm-up step each). "
       f"{rounds} interleaved rounds on a shared host; the fastest of each way is kept."), "",
      "| way | " + " | ".join(f"round {i + 1} (s)" for i in range(rounds)) +
      " | best (s) | images/s |",
      "|---|" + "---|" * (rounds + 2),
      *[f"| {k} | " + " | ".join(f"{x:.1f}" for x in v) +
        f" | {best[k]:.1f} | {record['images_per_s'][k]:.0f} |" for k, v in times.items()], "",
      (f"Speed-up of vmapped over sequential: **{record['speedup_vmapped_over_sequential']:.2f}x**"
       " (below 1: vmapping is slower, and the tables train seeds one after another)."),
  ])
  provenance.write_record(os.path.join(results_dir, "vmap_speedup"), record, md)
  print(md)
  return record


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from experiments import runtime  # pylint: disable=g-import-not-at-top
  runtime.configure_jax()
  if _MEASURE_VMAP.value:
    measure_vmap(workdir=_WORKDIR.value, results_dir=_RESULTS_DIR.value)
    return
  if _TABLE.value is None:
    raise app.UsageError("Pass --table (one of A, B, smoke) or --measure_vmap.")
  try:
    spec = get_table(_TABLE.value)
    methods = select_methods(spec, _METHODS.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  vmap = {"table": spec.vmap, "on": True, "off": False}[_VMAP.value]
  started = time.perf_counter()
  try:
    failures = run_table(spec, methods, workdir=_WORKDIR.value, vmap=vmap,
                         budget=Budget(seconds=_BUDGET_S.value))
  except BudgetReached as e:
    print(f"[{time.strftime('%H:%M:%S')}] Budget of {_BUDGET_S.value:g} s reached ({e}); "
          "progress is checkpointed: run the same command again to continue.", flush=True)
    sys.exit(EXIT_BUDGET)
  write_table(spec, methods, workdir=_WORKDIR.value, results_dir=_RESULTS_DIR.value,
              wall_seconds=time.perf_counter() - started)
  if failures:
    sys.exit(f"{len(failures)} run(s) failed (recorded in their failure.json; a re-run retries "
             "them): " + "; ".join(f"{f['path']}: {f['message']}" for f in failures))


if __name__ == "__main__":
  app.run(main)
