r"""`ltjax-posthoc`: the post-hoc long-tail report for a model trained anywhere (bring your logits).

The LA paper's promise is a fix for *any* trained model: subtract `tau * log(prior)` from its
logits. This command takes a model's validation and test logits and labels (`.npz` / `.npy`, e.g.
from PyTorch: `np.savez("val.npz", logits=out.numpy(), labels=y.numpy())`) and the training class
counts, chooses `tau` on the **validation** split only for post-hoc logit adjustment (Menon et al.,
ICLR 2021) and for GALA's prediction re-balancing (PRS), and writes the report ltjax's runs write:

.. code-block:: text

  ltjax-posthoc --val=val.npz --test=test.npz --class_counts=counts.npy --out=report/

  report/posthoc.json    every number below, per method ("none", "la", "prs") and split
  report/posthoc.md      the same as markdown tables
  report/per_class.png   per-class test accuracy against training count, per method
  report/tau_sweep.png   validation balanced accuracy against tau (LA and PRS)

Per method and split: balanced top-1 (`top1`, the mean per-class accuracy), `balanced_error`, plain
`accuracy`, `many` / `medium` / `few` (training count `> many`, `[few, many]`, `< few`),
`per_class`, `ece` (15 bins), LOS's `logits_magnitude` and `rsd` per class (with their means).
Ties in the sweep go to the tau nearest 1. Imports jax, numpy and the ltjax numerics only;
matplotlib, when installed, for the PNGs.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from collections.abc import Sequence

import numpy as np

# The default grid: tau-norm's and the registry's `tau_grid`, linspace(0, 2, 21).
DEFAULT_TAUS = tuple(round(0.1 * i, 1) for i in range(21))
METHODS = ("none", "la", "prs")
_METHOD_TITLES = {"none": "no correction", "la": "post-hoc logit adjustment",
                  "prs": "prediction re-balancing (GALA PRS)"}


class InputError(ValueError):
  """A bad input file or argument: reported as one line, exit status 2."""


def _load_array(path: str, key: str, what: str) -> np.ndarray:
  """`key` of an `.npz`, or the array of an `.npy` / `.txt` / `.json` file."""
  if not os.path.isfile(path):
    raise InputError(f"{what}: no such file {path!r}.")
  try:
    if path.endswith(".npz"):
      with np.load(path, allow_pickle=False) as data:
        if key not in data.files:
          raise InputError(f"{what}: {path!r} has no array {key!r} (it has {sorted(data.files)}).")
        return np.asarray(data[key])
    if path.endswith(".npy"):
      return np.load(path, allow_pickle=False)
    if path.endswith(".json"):
      with open(path) as f:
        return np.asarray(json.load(f))
    return np.loadtxt(path, delimiter="," if path.endswith(".csv") else None, ndmin=1)
  except InputError:
    raise
  except Exception as error:  # noqa: BLE001  # any unreadable file becomes one line
    raise InputError(f"{what}: cannot read {path!r}: {type(error).__name__}: {error}") from None


def _split(args, name: str) -> tuple[np.ndarray, np.ndarray]:
  """The `(logits f[N, C], labels int[N])` of a split, from `--<name>` or the two `.npy` flags."""
  bundle = getattr(args, name)
  logits_path = getattr(args, f"{name}_logits") or bundle
  labels_path = getattr(args, f"{name}_labels") or bundle
  if logits_path is None or labels_path is None:
    raise InputError(f"--{name}: give --{name}=FILE.npz (arrays 'logits' and 'labels') or both "
                     f"--{name}_logits and --{name}_labels.")
  logits = _load_array(logits_path, "logits", f"--{name} logits")
  labels = _load_array(labels_path, "labels", f"--{name} labels")
  if logits.ndim != 2 or logits.shape[0] == 0:
    raise InputError(f"--{name} logits must be [examples, classes], got shape {logits.shape}.")
  if not np.issubdtype(logits.dtype, np.floating) and not np.issubdtype(logits.dtype, np.integer):
    raise InputError(f"--{name} logits must be numbers, got dtype {logits.dtype}.")
  if not np.all(np.isfinite(logits)):
    raise InputError(f"--{name} logits hold {int(np.sum(~np.isfinite(logits)))} NaN/inf values.")
  labels = np.ravel(labels)
  if labels.shape[0] != logits.shape[0]:
    raise InputError(f"--{name}: {logits.shape[0]} rows of logits but {labels.shape[0]} labels.")
  if not np.all(np.equal(np.mod(labels, 1), 0)):
    raise InputError(f"--{name} labels must be class indices (integers).")
  labels = labels.astype(np.int64)
  num_classes = logits.shape[1]
  if labels.min() < 0 or labels.max() >= num_classes:
    raise InputError(f"--{name} labels must lie in [0, {num_classes}), got values in "
                     f"[{labels.min()}, {labels.max()}].")
  return logits.astype(np.float32), labels.astype(np.int32)


def _class_counts(path: str, num_classes: int) -> np.ndarray:
  counts = np.ravel(_load_array(path, "class_counts", "--class_counts"))
  if counts.shape[0] != num_classes:
    raise InputError(f"--class_counts has {counts.shape[0]} entries but the logits have "
                     f"{num_classes} classes.")
  if not np.all(np.isfinite(counts)) or np.any(counts < 0) or not np.any(counts > 0):
    raise InputError("--class_counts must be finite, non-negative and not all zero.")
  return counts.astype(np.float64)


def _taus(text: str) -> tuple[float, ...]:
  """`0,0.5,1` or `start:stop:step` (stop included)."""
  try:
    if ":" in text:
      start, stop, step = (float(x) for x in text.split(":"))
      count = math.floor((stop - start) / step + 1e-9) + 1
      taus = tuple(round(start + i * step, 10) for i in range(count))
    else:
      taus = tuple(float(x) for x in text.split(","))
  except (ValueError, ZeroDivisionError):
    raise argparse.ArgumentTypeError(f"--taus: expected 'a,b,c' or 'start:stop:step', got "
                                     f"{text!r}.") from None
  if not taus or not all(math.isfinite(t) and t >= 0 for t in taus):
    raise argparse.ArgumentTypeError(f"--taus: every tau must be finite and >= 0, got {text!r}.")
  return taus


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="ltjax-posthoc",
      description="Post-hoc logit adjustment and prediction re-balancing of any model's logits: "
                  "tau chosen on validation, report on test (JSON, markdown, PNG).",
      epilog="Example: ltjax-posthoc --val=val.npz --test=test.npz --class_counts=counts.npy "
             "--out=report/   (np.savez('val.npz', logits=..., labels=...))")
  for split in ("val", "test"):
    parser.add_argument(f"--{split}", metavar="FILE.npz",
                        help=f"{split} arrays 'logits' f[N, C] and 'labels' int[N]")
    parser.add_argument(f"--{split}_logits", metavar="FILE.npy", help=f"{split} logits alone")
    parser.add_argument(f"--{split}_labels", metavar="FILE.npy", help=f"{split} labels alone")
  parser.add_argument("--class_counts", required=True, metavar="FILE",
                      help="training examples per class, [C] (.npy, .npz key 'class_counts', "
                           ".json, .txt or .csv)")
  parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
  parser.add_argument("--taus", type=_taus, default=DEFAULT_TAUS, metavar="GRID",
                      help="tau grid swept on validation: 'a,b,c' or 'start:stop:step' "
                           "(default 0:2:0.1)")
  parser.add_argument("--many", type=float, default=100, help="many-shot: train count > MANY")
  parser.add_argument("--few", type=float, default=20, help="few-shot: train count < FEW")
  parser.add_argument("--num_bins", type=int, default=15, help="ECE bins")
  parser.add_argument("--noplot", action="store_true", help="skip the PNG plots")
  return parser


def _number(x) -> float | None:
  x = float(x)
  return None if math.isnan(x) else x


def _mean(values) -> float | None:
  defined = [v for v in values if v is not None]
  return float(np.mean(defined)) if defined else None


@functools.cache
def _compiled():
  """The jitted metric and sweep functions (built on first use: `--help` imports no jax)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from ltjax import metrics  # noqa: PLC0415

  @functools.partial(jax.jit, static_argnames=("many", "few", "num_bins"))
  def split_arrays(scores, labels, class_counts, *, many, few, num_bins):
    num_classes = scores.shape[-1]
    predictions = jnp.argmax(scores, axis=-1)
    confusion = metrics.confusion_matrix(labels, predictions, num_classes=num_classes)
    return {
        "top1": metrics.balanced_accuracy(confusion),
        "balanced_error": metrics.balanced_error(confusion),
        "accuracy": jnp.mean(predictions == labels),
        **metrics.shot_accuracy(confusion, class_counts=class_counts, many=many, few=few),
        "ece": metrics.expected_calibration_error(scores, labels, num_bins=num_bins),
        "per_class": metrics.per_class_accuracy(confusion),
        "logits_magnitude": metrics.logits_magnitude(scores, labels, num_classes=num_classes),
        "rsd": metrics.regularized_std(scores, labels, num_classes=num_classes),
    }

  @functools.partial(jax.jit, static_argnames=("method",))
  def sweep(logits, labels, log_prior, taus, *, method):
    def balanced_accuracy(tau):
      predictions = jnp.argmax(corrected(method, logits, log_prior=log_prior, tau=tau), axis=-1)
      return metrics.balanced_accuracy_score(labels, predictions, num_classes=logits.shape[-1])
    return jax.lax.map(balanced_accuracy, taus)

  return split_arrays, sweep


def split_metrics(scores, labels, *, class_counts, many: float = 100, few: float = 20,
                  num_bins: int = 15) -> dict:
  """The metrics of one split from its (corrected) scores `f[N, C]`, JSON-ready (NaN -> None).

  The same fields as `ltjax.train`'s `evaluate_logits` (`top1`, `balanced_error`, `many`,
  `medium`, `few`, `per_class`, `logits_magnitude`, `rsd`) plus `accuracy`, `ece` and the means of
  the per-class LM and RSD.
  """
  split_arrays, _ = _compiled()
  arrays = split_arrays(np.asarray(scores, np.float32), np.asarray(labels, np.int32),
                        np.asarray(class_counts, np.float32), many=float(many), few=float(few),
                        num_bins=int(num_bins))
  out = {k: ([_number(x) for x in np.asarray(v)] if np.ndim(v) else _number(v))
         for k, v in arrays.items()}
  out["logits_magnitude_mean"] = _mean(out["logits_magnitude"])
  out["rsd_mean"] = _mean(out["rsd"])
  return out


def corrected(method: str, logits, *, log_prior, tau):
  """The scores of `method` ("none", "la", "prs") at `tau` for a whole split's logits."""
  from ltjax import posthoc  # noqa: PLC0415

  if method == "none":
    return logits
  if method == "la":
    return posthoc.adjust_logits(logits, log_prior=log_prior, tau=tau)
  if method == "prs":
    return posthoc.rebalance(logits, tau=tau)
  raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")


def select_tau(method: str, logits, labels, *, log_prior, taus: Sequence[float]
               ) -> tuple[float, dict]:
  """The tau of `taus` with the best balanced accuracy of `method` on these (validation) logits,
  ties to the tau nearest 1 (the paper's value), as `ltjax.train.select_tau`.

  Returns:
    `(tau, {tau: balanced accuracy})`.
  """
  _, sweep = _compiled()
  accuracies = sweep(np.asarray(logits, np.float32), np.asarray(labels, np.int32),
                     np.asarray(log_prior, np.float32), np.asarray(taus, np.float32),
                     method=method)
  found = {float(t): float(a) for t, a in zip(taus, np.asarray(accuracies))}
  best = max(found, key=lambda t: (found[t], -abs(t - 1.0)))
  return best, found


def report(val: tuple, test: tuple, *, class_counts, taus: Sequence[float] = DEFAULT_TAUS,
           many: float = 100, few: float = 20, num_bins: int = 15) -> dict:
  """The report as a dict: `{"methods": {method: {"tau", "val_sweep", "val", "test"}}, ...}`.

  `val` and `test` are `(logits f[N, C], labels int[N])`; tau is chosen on `val` only.
  """
  from ltjax import priors  # noqa: PLC0415

  log_prior = priors.log_prior(np.asarray(class_counts))
  out = {"class_counts": [float(c) for c in class_counts], "taus": [float(t) for t in taus],
         "many": many, "few": few, "num_examples": {"val": len(val[1]),
                                                    "test": len(test[1])},
         "methods": {}}
  for method in METHODS:
    if method == "none":
      tau, sweep = None, {}
    else:
      tau, sweep = select_tau(method, val[0], val[1], log_prior=log_prior, taus=taus)
    entry = {"tau": tau, "val_sweep": {str(k): v for k, v in sweep.items()}}
    for split, (logits, labels) in (("val", val), ("test", test)):
      scores = corrected(method, logits, log_prior=log_prior, tau=tau or 0.0)
      entry[split] = split_metrics(scores, labels, class_counts=class_counts, many=many,
                                   few=few, num_bins=num_bins)
    out["methods"][method] = entry
  return out


def markdown(results: dict) -> str:
  """`results` (from :func:`report`) as markdown tables."""
  def pct(x):
    return "n/a" if x is None else f"{100 * x:.2f}"

  def num(x):
    return "n/a" if x is None else f"{x:.3f}"

  lines = ["# Post-hoc report (ltjax-posthoc)", "",
           (f"{results['num_examples']['val']} validation and {results['num_examples']['test']} "
           f"test examples, {len(results['class_counts'])} classes; tau chosen on validation "
           f"over {len(results['taus'])} values. Accuracies in %; many/few: training count "
           f"> {results['many']:g} / < {results['few']:g}."), ""]
  for split in ("test", "val"):
    lines += [f"## {split}", "",
              ("| method | tau | top-1 (balanced) | balanced error | accuracy | many | medium | "
              "few | ECE | LM mean | RSD mean |"),
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for method, entry in results["methods"].items():
      r = entry[split]
      tau = "-" if entry["tau"] is None else f"{entry['tau']:g}"
      lines.append(f"| {method} | {tau} | {pct(r['top1'])} | {pct(r['balanced_error'])} | "
                   f"{pct(r['accuracy'])} | {pct(r['many'])} | {pct(r['medium'])} | "
                   f"{pct(r['few'])} | {num(r['ece'])} | {num(r['logits_magnitude_mean'])} | "
                   f"{num(r['rsd_mean'])} |")
    lines.append("")
  lines += ["## tau sweep (validation balanced top-1)", "", "| tau | la | prs |", "|---|---|---|"]
  for tau in results["taus"]:
    key = str(float(tau))
    lines.append(f"| {tau:g} | " + " | ".join(
        pct(results["methods"][m]["val_sweep"].get(key)) for m in ("la", "prs")) + " |")
  lines += ["", "## per-class test accuracy", "",
            "| class | train count | " + " | ".join(results["methods"]) + " |",
            "|---|---|" + "---|" * len(results["methods"])]
  for c, count in enumerate(results["class_counts"]):
    lines.append(f"| {c} | {count:g} | " + " | ".join(
        pct(e["test"]["per_class"][c]) for e in results["methods"].values()) + " |")
  return "\n".join(lines) + "\n"


def plot(results: dict, out_dir: str) -> list[str]:
  """Writes `per_class.png` and `tau_sweep.png`; returns their paths (empty without matplotlib)."""
  try:
    # The object API, not pyplot: no backend is selected and no global figure state is shared.
    from matplotlib import figure  # noqa: PLC0415
  except ImportError:
    return []
  counts = np.asarray(results["class_counts"], np.float64)
  paths = []
  fig = figure.Figure(figsize=(6.5, 4))
  ax = fig.subplots()
  for method, entry in results["methods"].items():
    acc = np.asarray([np.nan if a is None else a for a in entry["test"]["per_class"]])
    tau = "" if entry["tau"] is None else f", tau {entry['tau']:g}"
    ax.scatter(counts, acc, s=16, label=f"{method}{tau}", alpha=0.8)
  if np.all(counts > 0):
    ax.set_xscale("log")
  ax.set_xlabel("training examples of the class")
  ax.set_ylabel("test accuracy")
  ax.set_ylim(-0.02, 1.02)
  ax.set_title("per-class test accuracy")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  paths.append(os.path.join(out_dir, "per_class.png"))
  fig.savefig(paths[-1], dpi=120)

  fig = figure.Figure(figsize=(6.5, 4))
  ax = fig.subplots()
  for method in ("la", "prs"):
    entry = results["methods"][method]
    taus = [float(t) for t in entry["val_sweep"]]
    ax.plot(taus, list(entry["val_sweep"].values()), marker="o", ms=3,
            label=f"{_METHOD_TITLES[method]} (chosen {entry['tau']:g})")
    ax.axvline(entry["tau"], ls=":", lw=1, color=ax.lines[-1].get_color())
  ax.set_xlabel("tau")
  ax.set_ylabel("validation balanced accuracy")
  ax.set_title("tau sweep on validation")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  paths.append(os.path.join(out_dir, "tau_sweep.png"))
  fig.savefig(paths[-1], dpi=120)
  return paths


def run(args: argparse.Namespace) -> dict:
  """Loads the inputs named by `args`, writes the report files, returns the report dict."""
  val = _split(args, "val")
  test = _split(args, "test")
  if val[0].shape[1] != test[0].shape[1]:
    raise InputError(f"--val logits have {val[0].shape[1]} classes but --test logits have "
                     f"{test[0].shape[1]}.")
  counts = _class_counts(args.class_counts, val[0].shape[1])
  if args.num_bins < 1:
    raise InputError(f"--num_bins must be >= 1, got {args.num_bins}.")
  if not (math.isfinite(args.many) and math.isfinite(args.few) and args.many >= args.few >= 0):
    raise InputError(f"--many ({args.many}) must be >= --few ({args.few}) >= 0.")
  results = report(val, test, class_counts=counts, taus=args.taus, many=args.many, few=args.few,
                   num_bins=args.num_bins)
  os.makedirs(args.out, exist_ok=True)
  plots = [] if args.noplot else plot(results, args.out)
  results["plots"] = [os.path.basename(p) for p in plots]
  # Written to a temporary name and renamed: a reader never sees half a report.
  for name, text in (("posthoc.json", json.dumps(results, indent=1) + "\n"),
                     ("posthoc.md", markdown(results))):
    path = os.path.join(args.out, name)
    with open(path + ".tmp", "w") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
  return results


def main(argv: Sequence[str] | None = None) -> int:
  """The console script: `ltjax-posthoc --help`. Returns the exit status (2 on bad input)."""
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    results = run(args)
  except InputError as error:
    print(f"ltjax-posthoc: error: {error}", file=sys.stderr)
    return 2
  la, none = results["methods"]["la"], results["methods"]["none"]
  print(f"test balanced error: {100 * none['test']['balanced_error']:.2f}% without correction, "
        f"{100 * la['test']['balanced_error']:.2f}% with post-hoc LA (tau {la['tau']:g}, chosen "
        f"on validation); report in {args.out}/posthoc.md")
  if not args.noplot and not results["plots"]:
    print("ltjax-posthoc: matplotlib is not installed: no PNG written "
          "(pip install matplotlib, or ltjax[train]).", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
