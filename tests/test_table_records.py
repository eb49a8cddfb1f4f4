"""Table records name each seed's own sources (issue 23, item 8): a row's `trained_as` /
`init_checkpoint` map every seed to that seed's run folder, in the writer and in the committed
Table A record."""
import json
import pathlib

from experiments import report
from experiments import tables


def _run(seed, *, trained_as=None, init=""):
  test = {"top1": 50.0 + seed, "many": 60.0, "medium": 40.0, "few": None,
          "per_class": [50.0, 50.0]}
  return {"seed": seed, "num_epochs": 1, "recipe": "fmnist_cnn", "split_fingerprint": "f",
          "class_counts": [10, 1], "train_seconds_this_run": 1.0, "date": "2026-12-07T00:00:00Z",
          "config": {"init_checkpoint": init}, "test": test, "per_epoch": [],
          "best_test_epoch": {"epoch": 0, "test": test}, "device": "cpu", "versions": {},
          **({"trained_as": trained_as} if trained_as else {})}


def test_summary_keeps_every_seeds_sources():
  row = report.summarise_runs([_run(0, init="/w/ce/seed0"), _run(1, init="/w/ce/seed1")])
  assert row["init_checkpoint"] == {"0": "/w/ce/seed0", "1": "/w/ce/seed1"}
  assert row["trained_as"] is None
  row = report.summarise_runs([_run(s, trained_as=f"/w/gala/seed{s}") for s in (0, 1, 2)])
  assert row["trained_as"] == {str(s): f"/w/gala/seed{s}" for s in (0, 1, 2)}
  assert row["init_checkpoint"] is None


def test_committed_table_a_names_each_seeds_folder():
  path = pathlib.Path(__file__).parents[1] / "experiments" / "results" / "table_a.json"
  record = json.loads(path.read_text())
  spec = tables.get_table("A")
  checked = 0
  for ir, block in record["rows"].items():
    for method, row in block.items():
      for key in ("trained_as", "init_checkpoint"):
        if row[key] is None:
          continue
        assert set(row[key]) == {str(s) for s in row["seeds"]}
        for seed, folder in row[key].items():
          # The folder the table's runs use for this seed (tables.run_dir's naming).
          source = pathlib.PurePosixPath(folder)
          assert source.name == f"seed{seed}", (ir, method, key, folder)
          expected = tables.run_dir(record["workdir"], spec, source.parent.name, float(ir),
                                    int(seed))
          assert folder == expected
          checked += 1
  assert checked == 2 * 5 * 3  # la_posthoc, gala_prs, los, crt, tau_norm at 2 ratios, 3 seeds


def test_best_epochs_are_counted_from_1_for_old_and_new_results():
  old = _run(0)  # written before "epochs_counted_from": its best epoch 0 is the first
  new = dict(_run(1), epochs_counted_from=1, best_test_epoch=dict(_run(1)["best_test_epoch"],
                                                                   epoch=1))
  assert report.summarise_runs([old, new])["best_epochs"] == [1, 1]


def test_committed_table_a_counts_best_epochs_from_1():
  path = pathlib.Path(__file__).parents[1] / "experiments" / "results" / "table_a.json"
  record = json.loads(path.read_text())
  assert record["epochs_counted_from"] == 1
  for block in record["rows"].values():
    for row in block.values():
      assert all(e is None or 1 <= e <= row["num_epochs"] for e in row["best_epochs"]), row
