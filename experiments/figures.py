r"""The figures of the reproduction, from the runs of `experiments.reproduce` (Table A).

    python -m experiments.figures [--workdir /tmp/ltjax-reproduce] [--only posthoc,per_class,...]

Each figure is a PNG under `experiments/results/` with a JSON + markdown record of its numbers
and provenance (command, runs it was drawn from, split fingerprint, device, versions). Which
methods a figure shows comes from the registry and the table, never from names written here:

- `fig_posthoc_sweep`: the LA paper's Figure 3: balanced accuracy against tau for every method
  of the table whose post-hoc step sweeps tau (`PostHoc.grid`), on the trained states it is
  evaluated on, validation and test, mean over seeds. (Figure 2, the synthetic experiment, is
  `synthetic.png` from `experiments.synthetic`.)
- `fig_per_class`: per-class test accuracy against class index for every method of the table
  that trains its own run.
- `fig_los_metrics`: LOS's Logits Magnitude (1-norm normalised, times C) and Regularized
  Standard Deviation per class, and their means per class group, for the table's classifier
  re-training (stage-2 / post-hoc) methods next to the stage-1 methods they start from.
- `fig_gala_grad_ratio`: the accumulated positive / negative gradient ratio of each class's
  classifier over training, for the table's baseline (first row) and its methods whose loss
  state accumulates per-class gradients (one seed, retrained here with a probe that accumulates
  `sum_{i: y_i = c} |dL/dz_ic|` and `sum_{i: y_i != c} |dL/dz_ic|` on the logits the loss sees).
"""
from __future__ import annotations

import os
import time

import numpy as np
from absl import app
from absl import flags
from absl import logging

from experiments import experiment
from experiments import gradient_probe
from experiments import provenance
from experiments import reproduce  # its --workdir, --results_dir, --table (default A here)
from experiments import runner
from experiments import runtime
from experiments import tables
from ltjax import checkpointing
from ltjax import train as lt

_IR = flags.DEFINE_float("imbalance_ratio", 100.0, "The imbalance ratio of the figures.")
_ONLY = flags.DEFINE_list("only", None, "Only these figures (default all of FIGURES).")

MODULE = "experiments.figures"
FIGURES = ("posthoc", "per_class", "los_metrics", "grad_ratio")


def _plt():
  # Lazy: matplotlib is slow to import and its backend must be chosen before pyplot loads.
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # noqa: PLC0415
  return plt


def _runs(spec, method, ir, workdir):
  """The successful `results.json` of every seed of `method` at `ir`."""
  runs = [tables.read_ok_results(tables.run_dir(workdir, spec, method, ir, seed))
          for seed in spec.seeds]
  return [r for r in runs if r is not None]


def _record(extra: dict) -> dict:
  record = provenance.provenance(MODULE)
  record.update(extra)
  return record


def _header(title: str, record: dict) -> list:
  return [f"# {title}", "", f"Command: `{record['command']}`  ", f"Date: {record['date']}  ",
          f"Device: {record['device']}  ",
          f"Versions: {provenance.versions_line(record['versions'])}  "]


# ------------------------------------------------------------------ LA Figure 3 (post-hoc)


def sweeping_methods(spec) -> tuple:
  """The table's methods whose post-hoc step sweeps a hyperparameter (`PostHoc.grid`)."""
  return tuple(m for m in spec.methods
               if (posthoc := lt.get_method(m).posthoc) is not None and posthoc.grid is not None)


def _sweep_curves(spec, method, ir, seed, *, workdir, cache):
  """`(state_dir, fingerprint, taus, {split: [top-1 per tau]})` of one seed of `method`, on the
  state it is evaluated on (`tables.trained_state_dir`), or None when that run has no
  checkpoint."""
  state_dir = tables.trained_state_dir(spec, method, ir, seed, workdir=workdir)
  if not os.path.isdir(os.path.join(state_dir, experiment.CHECKPOINT_DIR)):
    return None
  config = tables.run_config(spec, method, ir, seed, workdir=workdir)
  splits = cache.get(config)
  exp = experiment.build_experiment(config, splits)
  # The weights only: a post-hoc method's state was built with another optimizer than the run's.
  with checkpointing.Checkpointer(os.path.join(state_dir, experiment.CHECKPOINT_DIR)) as ckpt:
    tree, _ = ckpt.restore_tree()
  state = exp.state.replace(**lt.put_replicated(
      {"params": tree["params"], "batch_stats": tree["batch_stats"]}, exp.mesh))
  split_logits = experiment.split_logits(exp, state)
  taus = [float(t) for t in exp.hp[exp.method.posthoc.grid.name]]
  curves = {}
  for split in ("val", "test"):
    labels = getattr(splits, f"{split}_labels")
    curves[split] = [lt.evaluate_logits(split_logits(split, t), labels,
                                        class_counts=splits.class_counts)["top1"] for t in taus]
  return state_dir, splits.fingerprint, taus, curves


def posthoc_sweep(spec, ir, *, workdir, results_dir, source=None):
  """Balanced accuracy vs tau of every method of the table whose post-hoc step sweeps tau
  (`sweeping_methods`), on the trained states it is evaluated on, validation and test, mean
  over seeds. `source` reads the datasets (`runner.SplitCache`)."""
  methods = sweeping_methods(spec)
  if not methods:
    raise ValueError(f"Table {spec.name} has no method whose post-hoc step sweeps tau.")
  cache = runner.SplitCache(source)
  summary, runs, fingerprint = {}, {}, None
  for method in methods:
    per_seed = [_sweep_curves(spec, method, ir, seed, workdir=workdir, cache=cache)
                for seed in spec.seeds]
    per_seed = [r for r in per_seed if r is not None]
    if not per_seed:
      continue
    runs[method] = [r[0] for r in per_seed]
    fingerprint, taus = per_seed[0][1], per_seed[0][2]
    summary[method] = {"taus": taus, "seeds": len(per_seed), **{
        split: {"mean": (100 * np.mean([r[3][split] for r in per_seed], 0)).tolist(),
                "std": (100 * np.std([r[3][split] for r in per_seed], 0)).tolist()}
        for split in ("val", "test")}}
  if not summary:
    raise FileNotFoundError(f"No trained run of {list(methods)} in table {spec.name} at IR "
                            f"{ir:g} under {workdir}.")
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 4))
  for index, (method, curve) in enumerate(summary.items()):
    color = f"C{index}"
    step = lt.get_method(method).posthoc.name
    for split, style in (("test", "-"), ("val", ":")):
      m, sd = np.asarray(curve[split]["mean"]), np.asarray(curve[split]["std"])
      ax.plot(curve["taus"], m, style, color=color, label=f"{method}: {step} ({split})")
      if split == "test":
        ax.fill_between(curve["taus"], m - sd, m + sd, color=color, alpha=0.15)
  ax.set_xlabel("tau (each method's swept post-hoc hyperparameter)")
  ax.set_ylabel("balanced accuracy (%)")
  ax.set_title(f"Post-hoc corrections, {spec.recipe}, IR {ir:g}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  prefix = _save_figure(fig, results_dir, "fig_posthoc_sweep")
  record = _record({"figure": prefix + ".png", "table": spec.name, "imbalance_ratio": ir,
                    "runs": runs, "split_fingerprint": fingerprint,
                    "balanced_accuracy": summary})
  md = _header("LA paper Figure 3 analogue: post-hoc tau sweeps", record)
  md += [f"Split fingerprint: `{fingerprint}`; table {spec.name} (IR {ir:g}, "
         f"{spec.num_epochs} epoch(s)); each method on the trained states it is evaluated on: "
         + "; ".join(f"{m} on {os.path.basename(os.path.dirname(r[0]))} ({len(r)} seeds)"
                     for m, r in runs.items()) + ".", "",
         "![post-hoc sweep](fig_posthoc_sweep.png)", "",
         "Balanced accuracy (%), mean over seeds, at every other tau:", ""]
  for method, curve in summary.items():
    taus = curve["taus"][::2]
    md += ["| " + method + " tau | " + " | ".join(f"{t:g}" for t in taus) + " |",
           "|---|" + "---|" * len(taus)]
    for split in ("val", "test"):
      md.append(f"| {split} | " + " | ".join(f"{x:.1f}" for x in curve[split]["mean"][::2])
                + " |")
    best = curve["taus"][int(np.argmax(curve["test"]["mean"]))]
    md += ["", (f"{method}: the test curve peaks at tau = {best:g}; the tables use the tau "
            "selected on validation."), ""]
  provenance.write_record(prefix, record, "\n".join(md))
  return record


# ---------------------------------------------------------------------- per-class accuracy


def trained_methods(spec) -> tuple:
  """The table's joint methods that train their own run (not another's training)."""
  same = tables.same_training(spec)
  return tuple(m for m in spec.methods if lt.get_method(m).stage == "joint" and m not in same)


def decoupled_methods(spec) -> tuple:
  """The table's stage-2 / post-hoc methods, after the stage-1 methods they start from."""
  stage1 = tables.stage1_sources()
  decoupled = [m for m in spec.methods if m in stage1]
  sources = [m for m in spec.methods if m in {stage1[d] for d in decoupled}]
  return tuple(sources + decoupled)


def per_class(spec, *, workdir, results_dir, methods=None):
  """Per-class test accuracy vs class index, mean ± std over seeds, one panel per ratio, for
  `methods` (default: every method of the table that trains its own run, `trained_methods`)."""
  methods = trained_methods(spec) if methods is None else methods
  plt = _plt()
  irs = spec.imbalance_ratios
  fig, axes = plt.subplots(1, len(irs), figsize=(5.5 * len(irs), 4), squeeze=False)
  data = {}
  for ax, ir in zip(axes[0], irs):
    data[f"{ir:g}"] = {}
    for method in methods:
      runs = _runs(spec, method, ir, workdir)
      if not runs:
        continue
      acc = 100 * np.asarray([r["test"]["per_class"] for r in runs], np.float64)
      m, sd = acc.mean(0), acc.std(0)
      data[f"{ir:g}"][method] = {"mean": m.tolist(), "std": sd.tolist(), "seeds": len(runs),
                                 "class_counts": runs[0]["class_counts"],
                                 "split_fingerprint": runs[0]["split_fingerprint"]}
      x = np.arange(len(m))
      ax.errorbar(x, m, yerr=sd, marker="o", ms=3, capsize=2, label=method)
    ax.set_xlabel("class index (0 = most training images)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{spec.recipe}, IR {ir:g}")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  prefix = _save_figure(fig, results_dir, "fig_per_class")
  record = _record({"figure": prefix + ".png", "table": spec.name, "per_class": data})
  md = _header("Per-class test accuracy vs class index", record)
  md += ["", "![per-class accuracy](fig_per_class.png)", ""]
  for ir, block in data.items():
    if not block:
      continue
    first = next(iter(block.values()))
    md += [f"## IR {ir} (split `{first['split_fingerprint'][:12]}`)", "",
           "| method | " + " | ".join(str(n) for n in first["class_counts"]) + " |",
           "|---|" + "---|" * len(first["class_counts"])]
    for method, row in block.items():
      md.append(f"| {method} | " + " | ".join(f"{x:.1f}" for x in row["mean"]) + " |")
    md.append("")
  provenance.write_record(prefix, record, "\n".join(md))
  return record


# ------------------------------------------------------------------------ LOS's two metrics


def _groups(counts, many=100, few=20):
  return ["many" if c > many else "few" if c < few else "medium" for c in counts]


def los_metrics(spec, ir, *, workdir, results_dir, methods=None):
  """LM (|.|_1-normalised times C, docs/methods.md §7) and RSD per class and per class group,
  for `methods` (default: the table's classifier re-training methods next to the stage-1
  methods they start from, `decoupled_methods`)."""
  methods = decoupled_methods(spec) if methods is None else methods
  if not methods:
    raise ValueError(f"Table {spec.name} has no stage-2 or post-hoc method.")
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  data = {}
  for method in methods:
    runs = _runs(spec, method, ir, workdir)
    if not runs:
      continue
    lm = np.asarray([r["test"]["logits_magnitude"] for r in runs], np.float64)
    rsd = np.asarray([r["test"]["rsd"] for r in runs], np.float64)
    num_classes = lm.shape[1]
    lm_norm = lm / np.abs(lm).sum(1, keepdims=True) * num_classes
    # RSD = std / LM is unbounded when a class's LM is near 0 (LOS's magnitudes are ~0.1, one
    # seed has a class at -0.005), so averages are taken as mean(std) / mean(LM).
    std = rsd * lm
    rsd_class = std.mean(0) / lm.mean(0)
    groups = _groups(runs[0]["class_counts"])

    def group_mean(x, g, groups=groups):
      return float(x[:, [i for i, name in enumerate(groups) if name == g]].mean())

    by_group = {g: {"lm_norm": group_mean(lm_norm, g), "lm": group_mean(lm, g),
                    "rsd": group_mean(std, g) / group_mean(lm, g)}
                for g in ("many", "medium", "few") if g in groups}
    data[method] = {"lm": lm.mean(0).tolist(), "lm_norm": lm_norm.mean(0).tolist(),
                    "rsd": rsd_class.tolist(), "rsd_per_seed": rsd.tolist(), "groups": by_group,
                    "seeds": len(runs),
                    "top1": float(np.mean([r["test"]["top1"] for r in runs])),
                    "class_counts": runs[0]["class_counts"]}
    x = np.arange(num_classes)
    axes[0].plot(x, lm_norm.mean(0), marker="o", ms=3, label=method)
    axes[1].plot(x, rsd_class, marker="o", ms=3, label=method)
  for ax, name in zip(axes, ("Logits Magnitude / ||LM||_1 x C", "Regularized Std (std / LM)")):
    ax.set_xlabel("class index (0 = most training images)")
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"LOS metrics on the test set, {spec.recipe}, IR {ir:g}")
  prefix = _save_figure(fig, results_dir, "fig_los_metrics")
  record = _record({"figure": prefix + ".png", "table": spec.name, "imbalance_ratio": ir,
                    "metrics": data})
  md = _header("LOS's Logits Magnitude and Regularized Standard Deviation", record)
  md += ["", "![LOS metrics](fig_los_metrics.png)", "",
         ("Means per class group (many > 100, medium 20–100, few < 20 training images) over "
          "classes and seeds; LM-norm = LM / ||LM||_1 x C (docs/methods.md §7); RSD = mean std / "
          "mean LM (a per-class ratio blows up where LM is near 0, as for one LOS class)."), "",
         "| method | top-1 (%) | group | LM | LM-norm | RSD |", "|---|---|---|---|---|---|"]
  for method, row in data.items():
    for g, v in row["groups"].items():
      md.append(f"| {method} | {100 * row['top1']:.2f} | {g} | {v['lm']:.3f} | "
                f"{v['lm_norm']:.3f} | {v['rsd']:.3f} |")
  provenance.write_record(prefix, record, "\n".join(md))
  return record


# ------------------------------------------------------ per-classifier gradient-ratio probe


def gradient_methods(spec, num_classes: int) -> tuple:
  """The table's baseline (its first row) and its methods that train their own run with a loss
  state accumulating per-class gradients (`records_gradients`)."""
  return (spec.baseline,) + tuple(
      m for m in trained_methods(spec)
      if m != spec.baseline and gradient_probe.records_gradients(lt.get_method(m), num_classes))


def grad_ratio(spec, ir, *, workdir, results_dir, seed=0, every=5, source=None):
  """Trains the table's baseline and its methods with a gradient-accumulating loss state
  (`gradient_methods`; one seed, the table's schedule) with the probe; plots pos / neg per
  classifier every `every` steps. `source` reads the datasets (`runner.SplitCache`)."""
  cache = runner.SplitCache(source)
  config = tables.run_config(spec, spec.baseline, ir, seed, workdir=workdir)
  num_classes = cache.get(config).num_classes
  methods = gradient_methods(spec, num_classes)
  traces = {}
  for method in methods:
    traces[method], splits = gradient_probe.probe_trace(spec, method, ir, seed, workdir=workdir,
                                                        cache=cache, every=every)
  fingerprint, counts = splits.fingerprint, splits.class_counts.tolist()
  plt = _plt()
  fig, axes = plt.subplots(1, len(methods) + 1, figsize=(5 * (len(methods) + 1), 4),
                           squeeze=False)
  axes = axes[0]
  cmap = plt.get_cmap("viridis")
  for ax, method in zip(axes[:-1], methods):
    r = np.asarray(traces[method]["ratio"])
    for c in range(num_classes):
      ax.plot(traces[method]["steps"], r[:, c], color=cmap(c / max(num_classes - 1, 1)),
              label=f"class {c} (n={counts[c]})")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("accumulated positive / negative gradient")
    ax.set_title(f"{method}: per-classifier gradient ratio")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=6)
  final = {m: traces[m]["ratio"][-1] for m in methods}
  x = np.arange(num_classes)
  width = 0.8 / len(methods)
  for k, method in enumerate(methods):
    axes[-1].bar(x + (k - (len(methods) - 1) / 2) * width, final[method], width, label=method)
  axes[-1].set_yscale("log")
  axes[-1].axhline(1.0, color="k", lw=0.8)
  axes[-1].set_xlabel("class index")
  axes[-1].set_title("at the end of training")
  axes[-1].legend()
  fig.suptitle(f"{spec.recipe}, IR {ir:g}, seed {seed}, {spec.num_epochs} epoch(s)")
  prefix = _save_figure(fig, results_dir, "fig_gala_grad_ratio")
  record = _record({"figure": prefix + ".png", "table": spec.name, "imbalance_ratio": ir,
                    "seed": seed, "split_fingerprint": fingerprint, "class_counts": counts,
                    "num_epochs": spec.num_epochs, "methods": list(methods), "traces": traces})
  md = _header("Accumulated positive / negative gradient ratio per classifier: "
               + " vs ".join(methods), record)
  md += [(f"Split fingerprint: `{fingerprint}`; seed {seed}; {spec.num_epochs} epoch(s) of "
          f"`{spec.recipe}` (retrained here with the probe; same recipe and seed as the "
          "table's runs). Methods: the table's baseline and those whose loss state accumulates "
          "per-class gradients."), "", "![gradient ratio](fig_gala_grad_ratio.png)", "",
         ("For classifier c: positive = sum over class-c examples of |dL/dz_c|, negative = sum "
          "over the other examples of |dL/dz_c|, accumulated over all steps, on the logits the "
          "loss sees (each method's own loss and class weights, by autodiff)."), "",
         ("Why the ratios end near 1: with a bias in the classifier, the accumulated gradient of "
          "b_c is exactly negative_c - positive_c, and SGD keeps b_c (hence that sum, scaled by "
          "the learning rate) bounded, so for any method with a bias the *accumulated* ratio "
          "drifts to 1. The imbalance is in the early phase (tail classifiers start far below 1 "
          "under plain cross-entropy: their positive mass comes from few examples) and in how "
          "fast each method closes it."), "",
         "| class | n | " + " | ".join(f"{m} ratio" for m in methods) + " |",
         "|---|---|" + "---|" * len(methods)]
  for c in range(num_classes):
    md.append(f"| {c} | {counts[c]} | " + " | ".join(f"{final[m][c]:.3f}" for m in methods)
              + " |")
  provenance.write_record(prefix, record, "\n".join(md))
  return record


def _save_figure(fig, results_dir: str, name: str) -> str:
  """Writes `fig` as `<results_dir>/<name>.png`, closes it and returns the path prefix."""
  fig.tight_layout()
  os.makedirs(results_dir, exist_ok=True)
  prefix = os.path.join(results_dir, name)
  fig.savefig(prefix + ".png", dpi=120)
  _plt().close(fig)
  return prefix


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  runtime.configure_jax()
  only = _ONLY.value or list(FIGURES)
  unknown = [f for f in only if f not in FIGURES]
  if unknown:
    raise app.UsageError(f"Unknown figures {unknown}; expected some of {list(FIGURES)}.")
  try:
    spec = tables.get_table(reproduce._TABLE.value or "A")  # pylint: disable=protected-access
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  kw = {"workdir": reproduce._WORKDIR.value,  # pylint: disable=protected-access
        "results_dir": reproduce._RESULTS_DIR.value}  # pylint: disable=protected-access
  ir = _IR.value
  jobs = {"posthoc": lambda: posthoc_sweep(spec, ir, **kw),
          "per_class": lambda: per_class(spec, **kw),
          "los_metrics": lambda: los_metrics(spec, ir, **kw),
          "grad_ratio": lambda: grad_ratio(spec, ir, **kw)}
  for name in only:
    started = time.perf_counter()
    jobs[name]()
    print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
  app.run(main)
