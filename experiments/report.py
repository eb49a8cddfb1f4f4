"""The report of a results table: its finished runs aggregated over seeds, as JSON and markdown.

Reads the runs' `results.json` / `failure.json` (`experiments.tables.run_dir`) and writes
`<results_dir>/<table>.json` and `.md` once per invocation: mean ± std over seeds of the
last-epoch balanced test accuracy, with many/medium/few, next to the published figure where
docs/methods.md §4 gives one, plus the runs that failed.
"""
from __future__ import annotations

import os

import numpy as np

from experiments import epoch_log
from experiments import provenance
from experiments import tables
from experiments.tables import TableSpec
from experiments.tables import read_failure
from experiments.tables import read_ok_results
from experiments.tables import run_dir

# The command recorded in a table's provenance is the CLI's.
MODULE = "experiments.reproduce"


def mean_std(values):
  """Mean and sample std over seeds, in percent, of the non-None `values`; None if none."""
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
        failure = read_failure(path)
        if failure is None:
          continue
        failed.append({"method": method, "imbalance_ratio": ir, "seed": seed,
                       "status": failure.get("status", "failed"),
                       "message": failure.get("message", "")})
  return failed


def _best_test_epoch(results: dict) -> dict:
  """The run's best epoch on test, counted from 1 also for results.json of older ltjax."""
  return epoch_log.best_epoch(results)


def _per_seed(runs: list, field) -> dict | None:
  """`{seed: field(run)}` over the runs, or None when no run has the field."""
  values = {str(r["seed"]): field(r) for r in runs}
  return values if any(v is not None for v in values.values()) else None


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
      # Per seed: each seed's run reuses / starts from its own seed's run folder.
      "trained_as": _per_seed(runs, lambda r: r.get("trained_as")),
      "init_checkpoint": _per_seed(runs, lambda r: r["config"].get("init_checkpoint") or None),
      "test": {k: mean_std([r["test"][k] for r in runs])
               for k in ("top1", "many", "medium", "few")},
      # The official codes' protocol (the epoch with the best test accuracy), for comparison
      # with published figures only.
      "best_epoch_test": {k: mean_std([_best_test_epoch(r)["test"][k] for r in runs])
                          for k in ("top1", "many", "medium", "few")},
      "best_epochs": [_best_test_epoch(r)["epoch"] for r in runs],
      "val_top1": mean_std([(r.get("val") or {}).get("top1") for r in runs]),
      "per_class": [mean_std([r["test"]["per_class"][c] for r in runs])
                    for c in range(len(first["class_counts"]))],
      "posthoc_tau": [r["posthoc"]["tau"] for r in runs if "posthoc" in r] or None,
      "device": first["device"], "versions": first["versions"],
  }
  if published:
    row["published"] = {"top1": published[0], "source": published[1]}
  return row


def fmt(stat) -> str:
  """`mean ± std` of a `mean_std` stat, `mean` for one seed, "–" for none."""
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
            "< 20 training images. A post-hoc step's tau is selected on the "
            "balanced validation split carved from discarded training images; the test split "
            "is never used for selection. The separate column **best epoch (test)** is the "
            "official codes' protocol instead (each run's epoch with the highest test accuracy, "
            "as LDAM-DRW, LA and GALA report), for comparison with published figures only."), ""]
  for ir, block in record["rows"].items():
    if not block:  # said, so that a table still running does not read as complete
      lines += [f"## Imbalance ratio {ir}", "",
                f"Not run yet at this ratio: {', '.join(record['missing_methods'][ir])}.", ""]
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
      cells = [method + partial, fmt(t["top1"]), fmt(t["many"]), fmt(t["medium"]),
               fmt(t["few"]), fmt(row["val_top1"]), tau, f"{secs:.0f}{reused}",
               fmt((row.get("best_epoch_test") or {}).get("top1"))]
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
  lines.append(reuse_note(spec))
  return "\n".join(lines)


def reuse_note(spec: TableSpec) -> str:
  """The markdown note on which rows reuse another row's training (from the registry)."""
  same = {m: src for m, src in tables.same_training(spec).items() if m in spec.methods}
  stage1 = {m: src for m, src in tables.stage1_sources().items() if m in spec.methods}
  note = ("`(reused)`: the same training as another row ("
          + (", ".join(f"{m} = the {src} run" for m, src in same.items()) or "none")
          + "), so its time is that run's.")
  if stage1:
    note += " " + ", ".join(f"{m} starts from the {src} run" for m, src in stage1.items()) + (
        " of the same seed.")
  return note + (" `train s/run` is each run's share of the wall time; vmapped seeds share "
                 "one program.")


def write_table(spec: TableSpec, methods, *, workdir: str, results_dir: str,
                wall_seconds: float) -> dict:
  """Collects the finished runs and writes `<results_dir>/<table>.json` and `.md`."""
  record = provenance.provenance(MODULE)
  record.update({
      "table": spec.name, "title": spec.title, "recipe": spec.recipe,
      "imbalance_ratios": list(spec.imbalance_ratios), "methods": list(methods),
      "seeds": list(spec.seeds), "num_epochs": spec.num_epochs,
      "epochs_counted_from": epoch_log.EPOCHS_COUNTED_FROM,  # the rows' best_epochs
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
