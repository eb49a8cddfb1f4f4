"""The README's main job: CE vs the logit-adjusted loss on Fashion-MNIST-LT (imbalance ratio 100),
a small CNN, a few minutes on a 2-core CPU, offline from ../shared/data.

  python -m experiments.quickstart [--workdir=/tmp/ltjax-quickstart] [--num_epochs=8]

Both runs share the data, split and seed (recipe `fmnist_cnn`); each writes its own
`results.json` under the workdir, and a comparison table is printed at the end.
"""
from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/ltjax-quickstart", "Output folder.")
_NUM_EPOCHS = flags.DEFINE_integer("num_epochs", None, "Override the recipe's epochs.")
_METHODS = flags.DEFINE_list("methods", ["ce", "la_loss"], "Methods to compare.")
_RESULTS = flags.DEFINE_string(
    "results", None, "Also write the comparison as RESULTS.json and RESULTS.md (e.g. "
    "experiments/results/fmnist_quickstart).")


def write_comparison(path_prefix: str, runs: dict, *, command: str, wall_seconds: float,
                     note: str = "") -> None:
  """Writes `runs` ({method: results.json dict}) as `<prefix>.json` and a markdown table."""
  import json  # pylint: disable=g-import-not-at-top

  first = next(iter(runs.values()))
  summary = {
      "command": command, "wall_seconds": wall_seconds, "note": note, "date": first["date"],
      "device": first["device"], "versions": first["versions"], "dataset": first["dataset"],
      "imbalance_ratio": first["imbalance_ratio"], "recipe": first["recipe"],
      "num_epochs": first["num_epochs"], "seed": first["seed"],
      "split_fingerprint": first["split_fingerprint"], "class_counts": first["class_counts"],
      "runs": {m: {"test": r["test"], "val": r.get("val"),
                   "train_seconds": r["train_seconds_this_run"]} for m, r in runs.items()},
  }
  with open(path_prefix + ".json", "w") as f:
    json.dump(summary, f, indent=1)

  def pct(x):
    return "n/a" if x is None else f"{100 * x:.2f}"

  lines = [
      f"# Quickstart: {first['dataset']}-LT, IR {first['imbalance_ratio']:g}, recipe "
      f"`{first['recipe']}`, {first['num_epochs']} epochs, seed {first['seed']}", "",
      f"Command: `{command}`  ", f"Date: {first['date']}  ", f"Device: {first['device']}  ",
      "Versions: " + ", ".join(f"{k} {v}" for k, v in first["versions"].items()) + "  ",
      f"Split fingerprint: `{first['split_fingerprint']}`  ",
      f"Wall time, both runs and data preparation: {wall_seconds:.0f} s. {note}", "",
      "Last-epoch accuracy (%) on the balanced test set (10,000 images); many = classes with "
      "more than 100 training images, medium = 20 to 100, few = fewer than 20 (none here).", "",
      "| method | top-1 | balanced error | many | medium | val top-1 | train time (s) |",
      "|---|---|---|---|---|---|---|",
  ]
  for method, r in runs.items():
    t, v = r["test"], r.get("val") or {}
    lines.append(f"| {method} | {pct(t['top1'])} | {pct(t['balanced_error'])} | "
                 f"{pct(t['many'])} | {pct(t['medium'])} | {pct(v.get('top1'))} | "
                 f"{r['train_seconds_this_run']:.0f} |")
  lines += ["", "Per-class test accuracy (%), class 0 (most images) first:", "",
            "| method | " + " | ".join(str(n) for n in first["class_counts"]) + " |",
            "|---|" + "---|" * len(first["class_counts"])]
  for method, r in runs.items():
    lines.append(f"| {method} | " + " | ".join(pct(a) for a in r["test"]["per_class"]) + " |")
  with open(path_prefix + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from experiments import runtime  # pylint: disable=g-import-not-at-top
  from experiments import train  # pylint: disable=g-import-not-at-top

  runtime.configure_jax()
  from experiments.configs import fmnist_cnn  # pylint: disable=g-import-not-at-top

  config = fmnist_cnn.get_config()
  if _NUM_EPOCHS.value is not None:
    config.num_epochs = _NUM_EPOCHS.value
  started = time.perf_counter()
  train.check_prepared(config)
  splits = train.load_splits(config)
  runs = {}
  for method in _METHODS.value:
    config.method = method
    workdir = os.path.join(_WORKDIR.value, method)
    results = train.train_and_evaluate(config, workdir, splits=splits,
                                       resume=os.path.isdir(os.path.join(
                                           workdir, train.CHECKPOINT_DIR)))
    runs[method] = results
  seconds = time.perf_counter() - started

  def pct(x):
    return "  n/a" if x is None else f"{100 * x:5.1f}"

  print(f"\nFashion-MNIST-LT, IR {config.imbalance_ratio:g}, {config.num_epochs} epochs, "
        f"split {splits.fingerprint[:12]}, {seconds:.0f} s in all")
  print("method      top-1  bal.err   many  medium   few")
  for method, results in runs.items():
    r = results["test"]
    print(f"{method:10s}  {pct(r['top1'])}  {pct(r['balanced_error'])}  {pct(r['many'])}  "
          f"{pct(r['medium'])}  {pct(r['few'])}")
  print(f"results.json and per_class_accuracy.png under {_WORKDIR.value}/<method>/")
  if _RESULTS.value:
    write_comparison(_RESULTS.value, runs, command=" ".join(["python -m experiments.quickstart",
                                                             *sys.argv[1:]]),
                     wall_seconds=seconds)


if __name__ == "__main__":
  app.run(main)
