"""The README's main job: CE vs the logit-adjusted loss on Fashion-MNIST-LT (imbalance ratio 100),
a small CNN, a few minutes on a 2-core CPU, offline from ../shared/data.

  python -m experiments.quickstart [--workdir=/tmp/ltjax-quickstart] [--num_epochs=8]

Both runs share the data, split and seed (recipe `fmnist_cnn`); each writes its own
`results.json` under the workdir, and a comparison table is printed at the end.
"""
from __future__ import annotations

import os
import time

from absl import app
from absl import flags
from absl import logging

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/ltjax-quickstart", "Output folder.")
_NUM_EPOCHS = flags.DEFINE_integer("num_epochs", None, "Override the recipe's epochs.")
_METHODS = flags.DEFINE_list("methods", ["ce", "la_loss"], "Methods to compare.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from experiments import train  # pylint: disable=g-import-not-at-top
  from experiments.configs import fmnist_cnn  # pylint: disable=g-import-not-at-top

  config = fmnist_cnn.get_config()
  if _NUM_EPOCHS.value is not None:
    config.num_epochs = _NUM_EPOCHS.value
  started = time.perf_counter()
  train.check_prepared(config)
  splits = train.load_splits(config)
  rows = []
  for method in _METHODS.value:
    config.method = method
    workdir = os.path.join(_WORKDIR.value, method)
    results = train.train_and_evaluate(config, workdir, splits=splits,
                                       resume=os.path.isdir(os.path.join(
                                           workdir, train.CHECKPOINT_DIR)))
    rows.append((method, results["test"]))
  seconds = time.perf_counter() - started

  def pct(x):
    return "  n/a" if x is None else f"{100 * x:5.1f}"

  print(f"\nFashion-MNIST-LT, IR {config.imbalance_ratio:g}, {config.num_epochs} epochs, "
        f"split {splits.fingerprint[:12]}, {seconds:.0f} s in all")
  print("method      top-1  bal.err   many  medium   few")
  for method, r in rows:
    print(f"{method:10s}  {pct(r['top1'])}  {pct(r['balanced_error'])}  {pct(r['many'])}  "
          f"{pct(r['medium'])}  {pct(r['few'])}")
  print(f"results.json and per_class_accuracy.png under {_WORKDIR.value}/<method>/")


if __name__ == "__main__":
  app.run(main)
