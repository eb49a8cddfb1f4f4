"""The end-of-run report: balanced top-1, many/medium/few, per-class accuracy against class
frequency, and LOS's Logits Magnitude / Regularized Standard Deviation."""
from __future__ import annotations

import threading

import jax.numpy as jnp
import numpy as np

from ltjax import metrics


def evaluate_logits(logits, labels, *, class_counts, many: int = 100, few: int = 20) -> dict:
  """Metrics of one evaluation split from its (post-hoc adjusted) logits `f[N, C]`.

  Returns:
    A JSON-ready dict: `top1` (mean per-class accuracy, which on a balanced split is top-1),
    `balanced_error`, `many`, `medium`, `few` (NaN when a group is empty, stored as None),
    `per_class` (list of C accuracies), `logits_magnitude` and `rsd` (per class).
  """
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels, jnp.int32)
  num_classes = logits.shape[-1]
  confusion = metrics.confusion_matrix(labels, jnp.argmax(logits, -1), num_classes=num_classes)
  shots = metrics.shot_accuracy(confusion, class_counts=jnp.asarray(class_counts), many=many,
                                few=few)

  def number(x):
    x = float(x)
    return None if np.isnan(x) else x

  return {
      "top1": number(metrics.balanced_accuracy(confusion)),
      "balanced_error": number(metrics.balanced_error(confusion)),
      **{k: number(shots[k]) for k in ("many", "medium", "few")},
      "per_class": [number(a) for a in metrics.per_class_accuracy(confusion)],
      "logits_magnitude": [number(a) for a in metrics.logits_magnitude(
          logits, labels, num_classes=num_classes)],
      "rsd": [number(a) for a in metrics.regularized_std(logits, labels, num_classes=num_classes)],
  }


def format_report(results: dict) -> str:
  """A short human-readable summary of `results.json`."""
  lines = [(f"{results['method']} on {results['dataset']} (IR {results['imbalance_ratio']}, "
            f"recipe {results['recipe']}, seed {results['seed']}, "
            f"split {results['split_fingerprint'][:12]})")]
  for split in ("val", "test"):
    if split not in results:
      continue
    r = results[split]

    def pct(x):
      return "  n/a" if x is None else f"{100 * x:5.2f}"

    lm = [x for x in r["logits_magnitude"] if x is not None]
    rsd = [x for x in r["rsd"] if x is not None]
    lines.append(
        f"  {split:4s} top-1 {pct(r['top1'])}%  balanced error {pct(r['balanced_error'])}%  "
        f"many {pct(r['many'])}  medium {pct(r['medium'])}  few {pct(r['few'])}  "
        f"LM mean {np.mean(lm):.3f}  RSD mean {np.mean(rsd):.3f}")
  if "posthoc" in results:
    lines.append(f"  post-hoc: {results['posthoc']}")
  return "\n".join(lines)


# matplotlib is not thread-safe ("if you work with threads, it is your responsibility to set up
# the proper locks"): runs trained from several threads (experiments.quickstart --parallel) plot
# one at a time. Two unlocked pyplot plots at once crashed in tight_layout.
_PLOT_LOCK = threading.Lock()


def plot_per_class(per_class, class_counts, path, *, title: str = "") -> None:
  """Saves a PNG of per-class test accuracy against training frequency (log x axis)."""
  # matplotlib is imported for the plot only (~0.5 s); its object API, not pyplot, so that no
  # backend is selected for the user and no global figure state is shared.
  from matplotlib import figure  # noqa: PLC0415

  counts = np.asarray(class_counts, np.float64)
  acc = np.asarray([np.nan if a is None else a for a in per_class], np.float64)
  with _PLOT_LOCK:
    fig = figure.Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.scatter(counts, acc, s=18)
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
