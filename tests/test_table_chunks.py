"""experiments.reproduce under a wall-clock budget: a table stopped between epochs (vmapped
seeds checkpointed) and run again equals the same table run in one go; per-epoch records and the
best-epoch-on-test column come through the reuse (post-hoc LA) and stage-2 (LOS) paths."""
import collections
import json
import os

import pytest

from experiments import epoch_log
from experiments import report
from experiments import runner
from experiments import tables
from experiments import training
from tests import test_checkpoint as tc

pytestmark = pytest.mark.slow


class _TinySplits:
  def __init__(self, source=None):
    del source

  def get(self, config):
    del config
    return tc.tiny_splits()


def _spec():
  return tables.TableSpec(
      name="tiny", title="tiny", recipe="fmnist_cnn", imbalance_ratios=(100.0,),
      methods=("ce", "la_posthoc", "los"), seeds=(0, 1), num_epochs=3, stage2_epochs=1,
      overrides={"batch_size": 16, "eval_batch_size": 16, "checkpoint_every_epochs": 10,
                 "model_kwargs": {"widths": (4,), "features": 8}},
      vmap=True)


class _StopAfter(runner.Budget):
  """A budget that lets `n` epochs (or group starts) pass, then reports it is spent."""

  def __init__(self, n):
    super().__init__(seconds=1e9)
    self.n = n

  def fits(self, epoch_seconds):
    self.n -= 1
    return self.n >= 0


def _results(workdir, method, seed):
  path = tables.run_dir(workdir, _spec(), method, 100.0, seed)
  with open(os.path.join(path, "results.json")) as f:
    return json.load(f)


def test_budgeted_table_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
  monkeypatch.setattr(runner, "SplitCache", _TinySplits)
  written = collections.Counter()
  write = training.write_json_atomic

  def counted(path, record):
    written[str(path)] += 1
    write(path, record)

  monkeypatch.setattr(training, "write_json_atomic", counted)
  spec, chunked, whole = _spec(), str(tmp_path / "chunked"), str(tmp_path / "whole")
  runner.run_table(spec, spec.methods, workdir=whole, vmap=True)
  # Every run's results.json is written once, complete (the stage-2 run's table fields too).
  results_files = {os.path.join(tables.run_dir(whole, spec, m, 100.0, s), "results.json")
                   for m in spec.methods for s in spec.seeds}
  assert written == dict.fromkeys(results_files, 1)
  assert _results(whole, "los", 0)["reproduce_table"] == "tiny"
  # Group start + epoch 1 pass; after epoch 2 the next epoch "does not fit".
  with pytest.raises(runner.BudgetReached, match="after epoch 2/3"):
    runner.run_table(spec, spec.methods, workdir=chunked, vmap=True, budget=_StopAfter(2))
  ce0 = tables.run_dir(chunked, spec, "ce", 100.0, 0)
  assert not os.path.exists(os.path.join(ce0, "results.json"))
  log = epoch_log.EpochLog(ce0, start_epoch=99, tensorboard=False)
  assert [r["epoch"] for r in log.records()] == [1, 2]
  # Resumed, the group needs one start and its last epoch (no check after it), then one check
  # per LOS seed: 3 passes. Retraining from epoch 0 would need 5 and stop again.
  runner.run_table(spec, spec.methods, workdir=chunked, vmap=True, budget=_StopAfter(3))

  for method in spec.methods:
    for seed in spec.seeds:
      a, b = _results(whole, method, seed), _results(chunked, method, seed)
      assert a["test"] == b["test"], (method, seed)
      strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
                          for r in rs]
      assert strip(a["per_epoch"]) == strip(b["per_epoch"]), (method, seed)
      assert b["best_test_epoch"]["test"]["top1"] == max(
          r["test"]["top1"] for r in b["per_epoch"])
  ce, la = _results(chunked, "ce", 1), _results(chunked, "la_posthoc", 1)
  assert [r["epoch"] for r in ce["per_epoch"]] == [1, 2, 3] and ce["vmap_replicas"] == 2
  # Post-hoc LA's per-epoch record is its own evaluation of the CE run's states.
  assert [r["loss"] for r in la["per_epoch"]] == [r["loss"] for r in ce["per_epoch"]]
  assert [r["test"] for r in la["per_epoch"]] == [
      r["also"]["la_posthoc"]["test"] for r in ce["per_epoch"]]
  assert la["per_epoch"][-1]["test"]["top1"] == la["test"]["top1"]
  assert len(_results(chunked, "los", 0)["per_epoch"]) == 1

  record = report.write_table(spec, spec.methods, workdir=chunked,
                                 results_dir=str(tmp_path), wall_seconds=1.0)
  row = record["rows"]["100"]["la_posthoc"]
  assert row["best_epoch_test"]["top1"]["mean"] >= row["test"]["top1"]["mean"]
  with open(tmp_path / "tiny.md") as f:
    assert "best epoch (test)" in f.read()


def test_a_spent_budget_starts_nothing(tmp_path, monkeypatch):
  monkeypatch.setattr(runner, "SplitCache", _TinySplits)
  spec = _spec()
  with pytest.raises(runner.BudgetReached, match="not started"):
    runner.run_table(spec, spec.methods, workdir=str(tmp_path),
                        vmap=True, budget=runner.Budget(seconds=100.0))
  assert not os.path.exists(tables.run_dir(str(tmp_path), spec, "ce", 100.0, 0) +
                            "/checkpoints")


def test_budget_needs_room_for_the_longest_epoch_and_a_margin():
  budget = runner.Budget(seconds=100.0, margin_s=10.0, safety=1.5, first_epoch_s=50.0)
  assert budget.fits(50.0) and not budget.fits(61.0)
  assert budget.fits(None) and not runner.Budget(seconds=59.0, margin_s=10.0,
                                                    first_epoch_s=50.0).fits(None)
  assert runner.Budget().fits(1e12)


def test_full_table_b_is_the_issue_list_with_three_seeds_and_200_epochs():
  spec = tables.get_table("B_full")
  assert set(spec.methods) == {"ce", "la_posthoc", "la_loss", "balanced_softmax", "ldam_drw",
                               "gala", "gala_prs", "ala", "los"}
  assert spec.seeds == (0, 1, 2) and spec.num_epochs == 200 and spec.vmap
  gala = tables.run_config(spec, "gala_prs", 100.0, 0, workdir="/w")
  assert gala.recipe == "gala_r32" and gala.num_epochs == 200
  los = tables.run_config(spec, "los", 100.0, 0, workdir="/w")
  assert los.num_epochs == 20
  assert los.init_checkpoint.endswith("table_b_full/cifar10_ir100/ce/seed0")
