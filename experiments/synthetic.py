r"""The LA paper's synthetic experiment (Menon et al., ICLR 2021, §6.1 and Figure 2).

  python -m experiments.synthetic [--seeds 5] [--out experiments/results/synthetic]

Two isotropic 2-D Gaussians, class 0 (majority) at mean (-1, -1), class 1 (minority) at (+1, +1),
unit variance, `P(y = 1) = 5%`. The balanced-error Bayes rule is linear and its balanced error is
`Phi(-sqrt(2))` ~ 7.86% (`ltjax.data.synthetic`). (This is the paper's set-up as recalled, means
`y * (1, 1)` for `y = +-1`; it was not re-checked against the PDF, and the paper's training-sample
size and optimiser are not used here: 10k examples and L-BFGS are this script's choices.) For
each seed a linear model `z = x W + b` is fit on a long-tailed training sample with

  * CE: softmax cross-entropy;
  * LA loss: `ltjax.losses.logit_adjusted_loss` with the training sample's log prior, tau = 1;
  * CE + post-hoc LA: the CE model's logits through `ltjax.posthoc.adjust_logits`, tau = 1;
  * CE + weight normalisation (the paper's baseline): the CE kernel through
    `ltjax.posthoc.tau_normalize`, bias kept, tau picked from linspace(0, 2, 21) (the official
    `tau_norm.py` grid) on a separate balanced validation sample, never on the test sample;
  * CE + tau-norm without bias (Kang et al.'s code drops the bias): reported for completeness.

and each one's balanced error is measured on a large balanced test sample (100k by default) next to
the Bayes rule's on the same sample. Training is full-batch L-BFGS (optax) from zeros to
convergence, i.e. the empirical risk minimiser the paper's analysis is about. Writes OUT.json,
OUT.md and OUT.png (Figure-2 style: data and decision boundaries, balanced error per method with
the Bayes line, and balanced error against tau for the two post-hoc corrections).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from experiments import provenance
from ltjax import checkpointing
from ltjax import losses
from ltjax import metrics
from ltjax import posthoc
from ltjax import priors
from ltjax.data import synthetic

NUM_CLASSES = 2
TAU_GRID = np.linspace(0.0, 2.0, 21)
METHODS = ("ce", "la_loss", "ce_posthoc_la", "ce_weight_norm", "ce_tau_norm_no_bias")
METHOD_NAMES = {
    "bayes": "Bayes (balanced)",
    "ce": "CE (ERM)",
    "la_loss": "LA loss (tau=1)",
    "ce_posthoc_la": "CE + post-hoc LA (tau=1)",
    "ce_weight_norm": "CE + weight norm (bias kept)",
    "ce_tau_norm_no_bias": "CE + tau-norm, bias dropped",
}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seeds", type=int, default=5, help="Independent trials (seeds 0..n-1).")
  parser.add_argument("--train-size", type=int, default=10_000, help="Long-tailed training sample.")
  parser.add_argument("--val-size", type=int, default=10_000,
                      help="Balanced validation sample (weight-norm tau selection only).")
  parser.add_argument("--test-size", type=int, default=100_000, help="Balanced test sample.")
  parser.add_argument("--steps", type=int, default=100, help="Full-batch L-BFGS iterations.")
  parser.add_argument("--minority-prior", type=float, default=0.05, help="P(y = 1).")
  parser.add_argument("--out", default="experiments/results/synthetic",
                      help="Output path without extension ('' writes nothing).")
  parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
  return parser.parse_args(argv)


def linear_logits(params, x):
  return x @ params["kernel"] + params["bias"]


def fit_linear(loss_fn, x, y, *, steps: int):
  """Full-batch L-BFGS on the mean of `loss_fn(logits, labels)`, from zero parameters.

  Returns the zero-sum (over classes) parameters and the final gradient norm (a convergence
  check recorded in the results).
  """
  dim = x.shape[-1]
  params = {"kernel": jnp.zeros((dim, NUM_CLASSES)), "bias": jnp.zeros((NUM_CLASSES,))}

  def objective(p):
    return jnp.mean(loss_fn(linear_logits(p, x), y))

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry, _):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=objective)
    return (optax.apply_updates(p, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, solver.init(params)), length=steps)
  # Softmax is unchanged by adding one vector to every class column, so the minimiser is a line;
  # L-BFGS drifts along it by rounding. Keep the zero-sum representative (the one gradient descent
  # from zero stays on), so the per-class norms that weight normalisation reads are well defined.
  params = jax.tree.map(lambda p: p - jnp.mean(p, axis=-1, keepdims=True), params)
  grad_norm = optax.tree.norm(jax.grad(objective)(params))
  return params, grad_norm


def balanced_error(logits, labels):
  predictions = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return metrics.balanced_error(
      metrics.confusion_matrix(labels, predictions, num_classes=NUM_CLASSES))


def _tau_normalized(params, tau, *, keep_bias: bool):
  bias = params["bias"] if keep_bias else jnp.zeros_like(params["bias"])
  return {"kernel": posthoc.tau_normalize(params["kernel"], tau=tau), "bias": bias}


def _tau_curve(params, x, y, *, keep_bias: bool):
  """Balanced error of the tau-normalised model for every tau in TAU_GRID: f32[len(TAU_GRID)]."""
  return jax.vmap(lambda tau: balanced_error(
      linear_logits(_tau_normalized(params, tau, keep_bias=keep_bias), x), y))(TAU_GRID)


def _posthoc_curve(params, x, y, log_prior):
  return jax.vmap(lambda tau: balanced_error(
      posthoc.adjust_logits(linear_logits(params, x), log_prior=log_prior, tau=tau), y))(TAU_GRID)


def make_trial(mixture, args):
  """The jitted function `key -> dict` running one seed of every method."""

  def ce_loss(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)

  def trial(key):
    train_key, val_key, test_key = jax.random.split(key, 3)
    x, y = synthetic.sample(train_key, mixture, args.train_size)
    x_val, y_val = synthetic.sample(val_key, mixture, args.val_size, balanced=True)
    x_test, y_test = synthetic.sample(test_key, mixture, args.test_size, balanced=True)
    counts = jnp.sum(jax.nn.one_hot(y, NUM_CLASSES, dtype=jnp.int32), axis=0)
    log_prior = priors.log_prior(counts)

    def la_loss(logits, labels):
      return losses.logit_adjusted_loss(logits, labels, log_prior=log_prior, tau=1.0)

    ce_params, ce_grad_norm = fit_linear(ce_loss, x, y, steps=args.steps)
    la_params, la_grad_norm = fit_linear(la_loss, x, y, steps=args.steps)

    ce_test = linear_logits(ce_params, x_test)
    curves = {
        "weight_norm_val": _tau_curve(ce_params, x_val, y_val, keep_bias=True),
        "tau_norm_no_bias_val": _tau_curve(ce_params, x_val, y_val, keep_bias=False),
        "weight_norm_test": _tau_curve(ce_params, x_test, y_test, keep_bias=True),
        "tau_norm_no_bias_test": _tau_curve(ce_params, x_test, y_test, keep_bias=False),
        "posthoc_la_test": _posthoc_curve(ce_params, x_test, y_test, log_prior),
    }
    # Ties go to the smallest tau (the least change to the CE model).
    wn_tau = jnp.asarray(TAU_GRID)[jnp.argmin(curves["weight_norm_val"])]
    nb_tau = jnp.asarray(TAU_GRID)[jnp.argmin(curves["tau_norm_no_bias_val"])]
    errors = {
        "bayes": balanced_error(synthetic.bayes_balanced_scores(mixture, x_test), y_test),
        "ce": balanced_error(ce_test, y_test),
        "la_loss": balanced_error(linear_logits(la_params, x_test), y_test),
        "ce_posthoc_la": balanced_error(
            posthoc.adjust_logits(ce_test, log_prior=log_prior, tau=1.0), y_test),
        "ce_weight_norm": balanced_error(linear_logits(
            _tau_normalized(ce_params, wn_tau, keep_bias=True), x_test), y_test),
        "ce_tau_norm_no_bias": balanced_error(linear_logits(
            _tau_normalized(ce_params, nb_tau, keep_bias=False), x_test), y_test),
    }
    return {
        "balanced_error": errors, "tau": {"ce_weight_norm": wn_tau, "ce_tau_norm_no_bias": nb_tau},
        "curves": curves, "train_counts": counts,
        "grad_norm": {"ce": ce_grad_norm, "la_loss": la_grad_norm},
        "params": {"ce": ce_params, "la_loss": la_params},
    }

  return jax.jit(trial)


def run(args):
  mixture = synthetic.two_gaussians(minority_prior=args.minority_prior)
  trial = make_trial(mixture, args)
  trials = []
  for seed in tqdm(range(args.seeds), desc="synthetic trials", unit="seed",
                   disable=args.no_progress):
    out = jax.device_get(trial(jax.random.key(seed)))
    trials.append(jax.tree.map(lambda a: np.asarray(a).tolist(), out))
  return mixture, trials


def summarize(mixture, trials, args) -> dict:
  errors = {m: np.array([t["balanced_error"][m] for t in trials]) for m in ("bayes",) + METHODS}
  bayes_closed_form = synthetic.bayes_balanced_error(mixture)
  summary = {
      m: {"mean": float(np.mean(e)), "std": float(np.std(e)),
          "excess_over_bayes_same_sample": float(np.mean(e - errors["bayes"]))}
      for m, e in errors.items()
  }
  excess = {m: summary[m]["excess_over_bayes_same_sample"] for m in METHODS}
  acceptance = {
      "la_loss_within_0.5pt_of_bayes": bool(abs(excess["la_loss"]) < 0.005),
      "posthoc_la_within_0.5pt_of_bayes": bool(abs(excess["ce_posthoc_la"]) < 0.005),
      "ce_worse_by_more_than_0.5pt": bool(excess["ce"] > 0.005),
      "weight_norm_worse_by_more_than_0.5pt": bool(excess["ce_weight_norm"] > 0.005),
  }
  return {
      "experiment": "LA paper §6.1 synthetic: two isotropic 2-D Gaussians, 5% minority",
      "command": " ".join(shlex.quote(a) for a in ["python", "-m", "experiments.synthetic"]
                          + sys.argv[1:]),
      "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      # Described exactly as every other result of the suite (experiments/experiment.py).
      "device": provenance.device_description(),
      "versions": provenance.library_versions(),
      "config": {**{k: v for k, v in vars(args).items() if k not in ("out", "no_progress")},
                 "means": np.asarray(mixture.means).tolist(), "scale": mixture.scale,
                 "prior": np.asarray(mixture.prior).tolist(), "tau_grid": TAU_GRID.tolist(),
                 "optimizer": "optax.lbfgs (full batch, zero init)", "posthoc_tau": 1.0,
                 "la_loss_tau": 1.0},
      "bayes_balanced_error_closed_form": bayes_closed_form,
      "balanced_error": summary,
      "acceptance": acceptance,
      "trials": trials,
  }


def markdown_table(results: dict) -> str:
  summary = results["balanced_error"]
  num_seeds = len(results["trials"])
  lines = [
      "| method | balanced error (%) | excess over Bayes, same test sample (pt) |",
      "|---|---|---|",
  ]
  for m in ("bayes",) + METHODS:
    s = summary[m]
    lines.append(f"| {METHOD_NAMES[m]} | {100 * s['mean']:.2f} ± {100 * s['std']:.2f} | "
                 f"{100 * s['excess_over_bayes_same_sample']:+.2f} |")
  lines.append("")
  lines.append(f"Mean ± std over {num_seeds} seeds; Bayes closed form "
               f"{100 * results['bayes_balanced_error_closed_form']:.2f}%.")
  return "\n".join(lines)


def write_markdown(results: dict, path: str) -> None:
  config = results["config"]
  taus = {m: [t["tau"][m] for t in results["trials"]]
          for m in ("ce_weight_norm", "ce_tau_norm_no_bias")}
  text = [
      "# LA paper §6.1 synthetic experiment",
      "",
      f"Command: `{results['command']}`  ",
      f"Date: {results['date']}  ",
      f"Device: {results['device']}  ",
      "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
      "",
      (f"Data: two isotropic Gaussians, means {config['means']}, sigma {config['scale']}, prior "
       f"{config['prior']}; {config['train_size']} long-tailed training examples, "
       f"{config['val_size']} balanced validation examples (weight-norm tau selection only), "
       f"{config['test_size']} balanced test examples per seed. Linear model, "
       f"{config['optimizer']}, {config['steps']} iterations."),
      "",
      markdown_table(results),
      "",
      (f"Weight-norm tau chosen on validation per seed: {taus['ce_weight_norm']} (bias kept); "
       f"{taus['ce_tau_norm_no_bias']} (bias dropped)."),
      "",
      "Acceptance: " + ", ".join(f"{k}: {v}" for k, v in results["acceptance"].items()),
      "",
      f"Wall time (all seeds, compilation included): {results['wall_time_s']} s.",
      "",
      "Notes:",
      "",
      "- The CE classifier is stored as its zero-sum representative (`w_1 = -w_0`, `b_1 = -b_0`,",
      "  what gradient descent from zero reaches), so both class columns have the same norm.",
      "  Weight normalisation with the bias kept then only rescales `w` against `b`; on this",
      "  problem `||w_y|| > 1`, so every tau > 0 moves the boundary further from Bayes (right",
      "  panel of the figure) and validation picks tau = 0, i.e. the CE model itself.",
      "- Dropping the bias (Kang et al.'s `tau_norm.py`) puts the boundary through the origin,",
      "  orthogonal to the CE direction. Logistic regression is well specified for Gaussian",
      "  classes with a shared covariance, so that direction is the Bayes direction and, the means",
      "  being symmetric about the origin, the result is Bayes-optimal for every tau. This is a",
      "  property of this symmetric problem, not a general one.",
      "- The tau curves in the figure are measured on the test sample for illustration only; no",
      "  reported number is selected on it.",
      "",
  ]
  with open(path, "w") as f:
    f.write("\n".join(text))


def plot(results: dict, mixture, path: str, *, seed_index: int = 0) -> None:
  # matplotlib is imported for the plot only (~0.5 s), after selecting its file backend.
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, (ax_data, ax_bar, ax_tau) = plt.subplots(1, 3, figsize=(16, 4.8))
  trial = results["trials"][seed_index]
  x, y = synthetic.sample(jax.random.split(jax.random.key(seed_index), 3)[0], mixture,
                          results["config"]["train_size"])
  x, y = np.asarray(x), np.asarray(y)
  for c, colour in ((0, "tab:blue"), (1, "tab:red")):
    ax_data.scatter(*x[y == c].T, s=2, alpha=0.3, color=colour, label=f"class {c} (train)")
  grid = np.linspace(-4, 4, 2)
  log_prior = np.log(np.asarray(trial["train_counts"]) / np.sum(trial["train_counts"]))

  def boundary(kernel, bias, label, style):
    w = np.asarray(kernel)[:, 1] - np.asarray(kernel)[:, 0]
    b = bias[1] - bias[0]
    ax_data.plot(grid, -(w[0] * grid + b) / w[1], style, label=label)

  ce, la = trial["params"]["ce"], trial["params"]["la_loss"]
  boundary([[0, 1], [0, 1]], [0, 0], "Bayes (balanced)", "k-")
  boundary(ce["kernel"], ce["bias"], "CE", "C0--")
  boundary(la["kernel"], la["bias"], "LA loss", "C1-.")
  boundary(ce["kernel"], np.asarray(ce["bias"]) - log_prior, "CE + post-hoc LA", "C2:")
  ax_data.set(xlim=(-4, 4), ylim=(-4, 4), aspect="equal",
              title=f"Training sample, seed {seed_index}")
  ax_data.legend(fontsize=7, loc="lower right", markerscale=4)

  summary = results["balanced_error"]
  names = list(METHODS)
  means = [100 * summary[m]["mean"] for m in names]
  stds = [100 * summary[m]["std"] for m in names]
  ax_bar.bar(range(len(names)), means, yerr=stds, color=[f"C{i}" for i in range(len(names))])
  ax_bar.axhline(100 * results["bayes_balanced_error_closed_form"], color="k", ls="--",
                 label="Bayes (closed form)")
  ax_bar.set_xticks(range(len(names)), [METHOD_NAMES[m] for m in names], rotation=20, ha="right",
                    fontsize=7)
  ax_bar.set(ylabel="balanced error (%)",
             title=f"Test balanced error, mean ± std over {len(results['trials'])} seeds")
  ax_bar.legend(fontsize=8)

  curves = {name: 100 * np.mean([t["curves"][key] for t in results["trials"]], axis=0)
            for name, key in (("CE + post-hoc LA", "posthoc_la_test"),
                              ("CE + weight norm (bias kept)", "weight_norm_test"),
                              ("CE + tau-norm, bias dropped", "tau_norm_no_bias_test"))}
  for (name, curve), style in zip(curves.items(), ("C2-o", "C3-s", "C4-^")):
    ax_tau.plot(TAU_GRID, curve, style, ms=3, label=name)
  ax_tau.axhline(100 * results["bayes_balanced_error_closed_form"], color="k", ls="--",
                 label="Bayes")
  ax_tau.set(xlabel="tau", ylabel="balanced error (%)",
             title="Post-hoc corrections against tau (test; illustration only)")
  ax_tau.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  args = parse_args(argv)
  for name in ("seeds", "train_size", "val_size", "test_size", "steps"):
    if getattr(args, name) < 1:
      sys.exit(f"--{name.replace('_', '-')} must be >= 1.")
  start = time.perf_counter()
  mixture, trials = run(args)
  results = summarize(mixture, trials, args)
  results["wall_time_s"] = round(time.perf_counter() - start, 2)
  print(markdown_table(results))
  print("Acceptance:", json.dumps(results["acceptance"]))
  if args.out:
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    checkpointing.atomic_write_text(args.out + ".json", json.dumps(results, indent=1))
    write_markdown(results, args.out + ".md")
    plot(results, mixture, args.out + ".png")
    print(f"Wrote {args.out}.json, .md and .png")
  return results


if __name__ == "__main__":
  main()
