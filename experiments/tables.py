"""The results tables of `experiments.reproduce`: what each one runs, and where its runs live.

A table is a `TableSpec`: a recipe, imbalance ratios, methods (rows), seeds and a schedule. Each
run of it (method, ratio, seed) has its own config (`run_config`: the recipe, the table's
overrides, a decoupled method's stage-1 run) and folder (`run_dir`:
`<workdir>/<table>/<dataset>_ir<IR>/<method>/seed<k>/`), where the runner writes `results.json`
and the report reads it (`read_ok_results`). Which training a method reuses comes from the
registry (`Method.stage`, `reuses`, `reuses_when`): `same_training` and `stage1_sources`.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os

from experiments import experiment
from ltjax import train as lt


def all_methods() -> tuple:
  """Every registered method, in registration order."""
  return tuple(lt.METHODS)


def stage1_sources() -> dict:
  """`{method: the joint method whose run is its stage 1}` for the decoupled methods."""
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

  @property
  def baseline(self) -> str:
    """The table's first row, the reference the figures compare other methods with."""
    return self.methods[0]


# LOS's stage 2 with its official optimizer (Thinklab-SJTU/LOS main_stage2.py: SGD lr 5e-4
# cosine, no weight decay), whatever the table's stage-1 recipe; every table with LOS uses it.
LOS_STAGE2 = {"los": {"lr": {"name": "cosine", "base_lr": 5e-4}, "weight_decay": 0.0}}
# Table A's committed cRT rows trained their 1 epoch at the recipe's lr 0.05 (the cosine stepped
# at the epoch's end); cRT now steps it at the epoch's start as classifier-balancing does
# (`Method.lr_stepped_at`), which trains a 1-epoch cosine at lr 0. The 1-epoch tables keep the
# end step so that their cRT trains at all (and Table A's spec still describes its runs).
CRT_ONE_EPOCH = {"crt": {"lr.stepped_at": "end"}}


def _table_a() -> TableSpec:
  epochs = 5  # the fmnist_cnn recipe's whole schedule
  return TableSpec(
      name="table_a", title="Table A: Fashion-MNIST-LT, small CNN (recipe fmnist_cnn)",
      recipe="fmnist_cnn", imbalance_ratios=(100.0, 10.0), methods=all_methods(),
      seeds=(0, 1, 2), num_epochs=epochs, stage2_epochs=1,
      # Deferred re-weighting over the last fifth of the schedule, as LDAM-DRW's 160 of 200.
      overrides={"hparams.drw_start_epoch": 4},
      stage2_overrides={**LOS_STAGE2, **CRT_ONE_EPOCH},
      # Measured 0.53x on this CPU (experiments/results/vmap_speedup.md): seeds run in turn.
      vmap=False,
      schedule_note=(
          f"The recipe's whole schedule: {epochs} epochs (SGD 0.9, lr 0.05 cosine, batch 128, "
          "no augmentation; the CNN flattens its 7x7 map). DRW re-weights the last of the 5 "
          "epochs (from 0-based epoch 4, as LDAM-DRW from 160 of 200). cRT and LOS re-train "
          "the CE model's classifier "
          "for 1 epoch (cRT at the recipe's lr 0.05, its cosine stepped at the epoch's end; "
          "LOS with its official stage-2 optimizer, lr 5e-4 cosine, no weight decay, delta "
          "0.98); tau-norm and LA post-hoc re-use the "
          "CE runs, GALA+PRS the GALA runs. Cost: 10 trained methods x 3 seeds x 5 epochs "
          "over 14,836 (IR 100) + 24,466 (IR 10) images, plus cRT/LOS, is 6.1M training "
          "images: an estimated 1.5 h of a quiet 2-core CPU at ~1,100 images/s. Two "
          "invocations with "
          "disjoint `--methods` and XLA:CPU single-threaded (`XLA_FLAGS=--xla_cpu_multi_thread_"
          "eigen=false intra_op_parallelism_threads=1`) train ~1.5x more images/s than one on "
          "both cores (measured on this host: 2 one-epoch runs in 40 s side by side against "
          "31 s each alone). "
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
      stage2_overrides=LOS_STAGE2,
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
      overrides={"hparams.drw_start_epoch": 1},
      stage2_overrides={**LOS_STAGE2, **CRT_ONE_EPOCH}, vmap=True,
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
      stage2_overrides=LOS_STAGE2,
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


def spec_config(spec: TableSpec, method: str | None = None):
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
  config = spec_config(spec)
  return lt.joint_reuse(lt.hparams(config.hparams), config.num_epochs)


def run_config(spec: TableSpec, method: str, imbalance_ratio: float, seed: int, *,
               workdir: str):
  """The config of one run of `spec` (stage-1 source runs resolved to their folders)."""
  config = spec_config(spec, method)
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
  """The folder of one run: `<workdir>/<table>/<dataset>_ir<IR>/<method>/seed<k>`."""
  dataset = importlib.import_module(f"experiments.configs.{spec.recipe}").get_config().dataset
  return os.path.join(workdir, spec.name, f"{dataset}_ir{imbalance_ratio:g}", method,
                      f"seed{seed}")


def trained_state_dir(spec: TableSpec, method: str, imbalance_ratio: float, seed: int, *,
                      workdir: str) -> str:
  """The run folder whose checkpoint holds the trained state `method` is evaluated on: its
  source run when its training is another's (`same_training`), its stage-1 run when it is a
  post-hoc method (it trains nothing), else its own."""
  source = same_training(spec).get(method)
  if source is None and lt.get_method(method).stage == "posthoc":
    source = lt.get_method(method).reuses
  return run_dir(workdir, spec, source or method, imbalance_ratio, seed)


def results_path(path: str) -> str:
  """The `results.json` of the run folder `path`."""
  return os.path.join(path, experiment.RESULTS_FILE)


def failure_path(path: str) -> str:
  """The `failure.json` of the run folder `path`."""
  return os.path.join(path, experiment.FAILURE_FILE)


def read_ok_results(path: str) -> dict | None:
  """The `results.json` of the run folder `path` if it records a success, else None (absent,
  unreadable, or with a `status` other than "ok": never tabulated)."""
  try:
    with open(results_path(path)) as f:
      r = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  return r if isinstance(r, dict) and r.get("status", "ok") == "ok" else None


def read_failure(path: str) -> dict | None:
  """The `failure.json` of the run folder `path`, or None (absent or unreadable)."""
  try:
    with open(failure_path(path)) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
