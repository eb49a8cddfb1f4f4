"""The README's main job: CE vs the logit-adjusted loss on Fashion-MNIST-LT (imbalance ratio 100),
a small CNN, 5 epochs, a few minutes on a 2-core CPU, offline from ../shared/data.

  python -m experiments.quickstart [--workdir=/tmp/ltjax-quickstart] [--seeds=0,1] [--parallel=2]

Every run shares the data and split (recipe `fmnist_cnn`); each (method, seed) writes its own
`results.json`, `metrics.jsonl` and TensorBoard events under `<workdir>/<method>/seed<k>/`,
and a comparison table (mean over seeds) is printed at the end.
"""
from __future__ import annotations

import concurrent.futures
import os
import time

from absl import app
from absl import flags
from absl import logging

from experiments import epoch_log
from experiments import experiment
from experiments import provenance
from experiments import runtime
from experiments.configs import fmnist_cnn

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/ltjax-quickstart", "Output folder.")
_NUM_EPOCHS = flags.DEFINE_integer("num_epochs", None, "Override the recipe's epochs.")
_METHODS = flags.DEFINE_list("methods", ["ce", "la_loss"], "Methods to compare.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"],
                          "Training seeds (the split is the same for all).")
_RESULTS = flags.DEFINE_string(
    "results", None, "Also write the comparison as RESULTS.json and RESULTS.md (e.g. "
    "experiments/results/fmnist_quickstart).")
_NOTE = flags.DEFINE_string("note", "", "A note on the conditions (host load), for --results.")
_PARALLEL = flags.DEFINE_integer(
    "parallel", 2, "Runs trained at once, each from its own thread. The small CNN's operations "
    "are too small for XLA:CPU to keep 2 cores busy from one run: 2 at once train ~1.4x more "
    "images/s on a 2-core CPU. The runs are the same, bit for bit, at any value.")

MODULE = "experiments.quickstart"
SHOTS = ("top1", "many", "medium", "few")


def _mean(values):
  values = [v for v in values if v is not None]
  return sum(values) / len(values) if values else None


def summarise(runs: dict) -> dict:
  """`{method: [results.json per seed]}` -> `{method: row}` of means over seeds: the last epoch
  (`test`), the official codes' best epoch on test (`best_epoch_test`, never used to select),
  validation top-1, per-class test accuracy and training seconds; per-seed values kept."""
  rows = {}
  for method, seed_runs in runs.items():
    rows[method] = {
        "seeds": [r["seed"] for r in seed_runs],
        "test": {k: _mean([r["test"][k] for r in seed_runs]) for k in SHOTS},
        "test_per_seed": [r["test"]["top1"] for r in seed_runs],
        "best_epoch_test": {k: _mean([epoch_log.best_epoch(r)["test"][k] for r in seed_runs])
                            for k in SHOTS},
        # Counted from 1 (`epoch_log.best_epoch` also for results.json of older ltjax).
        "best_epoch": [epoch_log.best_epoch(r)["epoch"] for r in seed_runs],
        "val_top1": _mean([(r.get("val") or {}).get("top1") for r in seed_runs]),
        "per_class": [_mean(list(c)) for c in zip(*[r["test"]["per_class"] for r in seed_runs])],
        # Summed over the epoch records, so that a run finished by a resumed invocation
        # counts its earlier epochs too.
        "train_seconds": [sum(e["seconds"] for e in r["per_epoch"]) for r in seed_runs],
        "images_per_s": [[round(e["images_per_s"]) for e in r["per_epoch"]] for r in seed_runs],
    }
  return rows


def write_comparison(path_prefix: str, runs: dict, *, wall_seconds: float,
                     note: str = "") -> dict:
  """Writes `runs` ({method: [results.json per seed]}) as `<prefix>.json` and `.md`."""
  first = next(iter(runs.values()))[0]
  record = provenance.provenance(MODULE)
  record.update({
      "wall_seconds": wall_seconds, "note": note, "load_average_at_end": os.getloadavg(),
      "dataset": first["dataset"], "imbalance_ratio": first["imbalance_ratio"],
      "recipe": first["recipe"], "num_epochs": first["num_epochs"],
      "epochs_counted_from": epoch_log.EPOCHS_COUNTED_FROM,
      "split_fingerprint": first["split_fingerprint"], "class_counts": first["class_counts"],
      "config": first["config"], "rows": summarise(runs),
  })

  def pct(x):
    return "n/a" if x is None else f"{100 * x:.2f}"

  seeds = next(iter(record["rows"].values()))["seeds"]
  lines = [
      (f"# Quickstart: {first['dataset']}-LT, IR {first['imbalance_ratio']:g}, recipe "
       f"`{first['recipe']}`, {first['num_epochs']} epochs, seeds {seeds}"), "",
      f"Command: `{record['command']}`  ", f"Date: {record['date']}  ",
      f"Device: {record['device']}  ",
      f"Versions: {provenance.versions_line(record['versions'])}  ",
      f"Split fingerprint: `{first['split_fingerprint']}`  ",
      (f"Wall time, all runs and data preparation: {wall_seconds:.0f} s; load average "
       f"{record['load_average_at_start'][0]:.1f} at the start, "
       f"{record['load_average_at_end'][0]:.1f} at the end (2 cores shared with other jobs). "
       f"{note}"), "",
      ("Balanced accuracy (%) on the balanced test set (10,000 images), mean over seeds. "
       "**last epoch** is ours (nothing is selected on the test set); **best epoch (test)** is "
       "the official codes' protocol (the epoch with the highest test accuracy), shown only to "
       "compare with published figures. many = classes with more than 100 training images, "
       "medium = 20 to 100, few = fewer than 20 (none here)."), "",
      ("| method | last epoch | per seed | many | medium | best epoch (test) | its epoch | "
       "val top-1 | train s/run |"),
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for method, row in record["rows"].items():
    t = row["test"]
    lines.append(
        f"| {method} | **{pct(t['top1'])}** | {', '.join(pct(x) for x in row['test_per_seed'])} "
        f"| {pct(t['many'])} | {pct(t['medium'])} | {pct(row['best_epoch_test']['top1'])} | "
        f"{', '.join(str(e) if e is not None else '-' for e in row['best_epoch'])} | "
        f"{pct(row['val_top1'])} | {_mean(row['train_seconds']):.0f} |")
  lines += ["", "Images/s per epoch (per seed): " + "; ".join(
      f"{m} {row['images_per_s']}" for m, row in record["rows"].items()), "",
            "Per-class test accuracy (%), mean over seeds, class 0 (most images) first:", "",
            "| method | " + " | ".join(str(n) for n in first["class_counts"]) + " |",
            "|---|" + "---|" * len(first["class_counts"])]
  for method, row in record["rows"].items():
    lines.append(f"| {method} | " + " | ".join(pct(a) for a in row["per_class"]) + " |")
  provenance.write_record(path_prefix, record, "\n".join(lines))
  return record


def _train(config, method: str, seed: int, splits) -> dict:
  """Trains and evaluates one (method, seed) of the recipe `config` into its own workdir
  (resuming its checkpoints if an earlier invocation was interrupted); returns its results."""
  config = config.copy_and_resolve_references()
  config.method, config.seed = method, seed
  workdir = os.path.join(_WORKDIR.value, method, f"seed{seed}")
  return experiment.train_and_evaluate(
      config, workdir, splits=splits,
      resume=os.path.isdir(os.path.join(workdir, experiment.CHECKPOINT_DIR)))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  runtime.configure_jax()
  config = fmnist_cnn.get_config()
  if _NUM_EPOCHS.value is not None:
    config.num_epochs = _NUM_EPOCHS.value
  started = time.perf_counter()
  experiment.check_prepared(config)
  splits = experiment.load_splits(config)
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(_PARALLEL.value, 1)) as pool:
    futures = {(method, seed): pool.submit(_train, config, method, int(seed), splits)
               for method in _METHODS.value for seed in _SEEDS.value}
    runs = {method: [futures[method, seed].result() for seed in _SEEDS.value]
            for method in _METHODS.value}
  seconds = time.perf_counter() - started
  rows = summarise(runs)

  def pct(x):
    return "  n/a" if x is None else f"{100 * x:5.1f}"

  print(f"\nFashion-MNIST-LT, IR {config.imbalance_ratio:g}, {config.num_epochs} epochs, "
        f"seeds {_SEEDS.value} (mean), split {splits.fingerprint[:12]}, {seconds:.0f} s in all")
  print("balanced test accuracy (%): last epoch, then the best epoch on test (official protocol)")
  print("method      last   many  medium   few   best-on-test")
  for method, row in rows.items():
    t = row["test"]
    print(f"{method:10s}  {pct(t['top1'])}  {pct(t['many'])}  {pct(t['medium'])}  "
          f"{pct(t['few'])}   {pct(row['best_epoch_test']['top1'])}")
  print(f"results.json, metrics.jsonl, tensorboard/ and per_class_accuracy.png under "
        f"{_WORKDIR.value}/<method>/seed<k>/")
  if _RESULTS.value:
    write_comparison(_RESULTS.value, runs, wall_seconds=seconds, note=_NOTE.value)


if __name__ == "__main__":
  app.run(main)
