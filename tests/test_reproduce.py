"""experiments.tables and experiments.report: table specs, reuse rules, aggregation and clear
errors (no training here)."""
import json
import subprocess
import sys
from typing import NamedTuple

import jax.numpy as jnp
import pytest

from experiments import report
from experiments import runner
from experiments import tables
from ltjax import checkpointing
from ltjax import train as lt


def test_unknown_table_and_method_raise_clear_errors():
  with pytest.raises(ValueError, match="Unknown table 'Z'"):
    tables.get_table("Z")
  spec = tables.get_table("B")
  with pytest.raises(ValueError, match="not in table 'table_b'"):
    tables.select_methods(spec, ["ce", "focal"])
  assert tables.select_methods(spec, ["la_loss", "ce"]) == ("ce", "la_loss")


def test_table_a_covers_every_method_with_three_seeds():
  spec = tables.get_table("A")
  assert set(spec.methods) == set(lt.METHODS)
  assert spec.seeds == (0, 1, 2) and spec.imbalance_ratios == (100.0, 10.0)


def test_sources_run_before_what_reuses_them():
  spec = tables.get_table("A")
  same = tables.same_training(spec)
  order = runner.run_order(list(spec.methods), same)
  stage1 = tables.stage1_sources()
  for method in order:
    source = same.get(method) or stage1.get(method)
    if source:
      assert order.index(source) < order.index(method), method
  # Table A's DRW starts in its last epoch, so CE-DRW trains; a schedule that never reaches
  # DRW evaluates the CE run again instead.
  assert "ce_drw" not in same and spec.overrides["hparams.drw_start_epoch"] < spec.num_epochs
  assert tables.same_training(tables.get_table("B"))["ce_drw"] == "ce"


def test_stage2_configs_point_at_their_stage1_run(tmp_path):
  spec = tables.get_table("A")
  config = tables.run_config(spec, "tau_norm", 100.0, 2, workdir=str(tmp_path))
  assert config.num_epochs == 0
  assert config.init_checkpoint == tables.run_dir(str(tmp_path), spec, "ce", 100.0, 2)
  assert config.init_checkpoint.endswith("table_a/fashion_mnist_ir100/ce/seed2")
  # LOS re-trains with its official stage-2 optimizer in every table, not the stage-1 recipe's.
  for name in tables.TABLES:
    spec = tables.get_table(name)
    if "los" in spec.methods:
      los = tables.run_config(spec, "los", spec.imbalance_ratios[0], 0, workdir=str(tmp_path))
      assert los.lr.base_lr == 5e-4 and los.weight_decay == 0.0, name
      assert los.num_epochs == spec.stage2_epochs, name


def test_mean_std_over_seeds_in_percent():
  stat = report.mean_std([0.5, 0.7, None])
  assert stat["mean"] == pytest.approx(60.0) and stat["std"] == pytest.approx(14.1421356)
  assert report.fmt(stat) == "60.00 ± 14.14"
  assert report.mean_std([None]) is None


def test_report_only_writes_the_table_of_finished_runs_and_trains_nothing(tmp_path):
  workdir, results = tmp_path / "runs", tmp_path / "results"
  workdir.mkdir()
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.reproduce", "--table", "smoke", "--report_only",
       f"--workdir={workdir}", f"--results_dir={results}"],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert not any(workdir.iterdir())  # nothing trained, not even a run folder
  with open(results / "table_smoke.json") as f:
    record = json.load(f)
  spec = tables.get_table("smoke")
  assert record["missing_methods"] == {f"{ir:g}": list(spec.methods)
                                       for ir in spec.imbalance_ratios}
  assert "Not run yet at this ratio" in (results / "table_smoke.md").read_text()


def _write_results(path, config):
  path.mkdir(parents=True)
  (path / "results.json").write_text(json.dumps(
      {"status": "ok", "method": config.method, "num_epochs": config.num_epochs,
       "config": config.to_dict()}))


def test_a_finished_run_counts_only_under_the_configuration_it_ran_with(tmp_path, capsys):
  spec = tables.get_table("A")
  config = tables.run_config(spec, "los", 100.0, 0, workdir=str(tmp_path))
  same = tmp_path / "same"
  _write_results(same, config)
  assert runner.is_finished(str(same), config) and same.is_dir()
  # A run of the table before its LOS optimizer changed: moved aside and redone, never reported
  # under the new settings.
  old = config.copy_and_resolve_references()
  old.lr.base_lr, old.weight_decay = 0.05, 5e-4
  stale = tmp_path / "stale"
  _write_results(stale, old)
  assert not runner.is_finished(str(stale), config)
  assert not stale.exists()
  [moved] = list(tmp_path.glob("stale.stale-*"))
  assert json.loads((moved / "results.json").read_text())["config"]["lr"]["base_lr"] == 0.05
  out = capsys.readouterr().out
  assert "config.lr.base_lr: 0.05 -> 0.0005" in out and "config.weight_decay" in out


class _Step(NamedTuple):
  step: jnp.ndarray
  w: jnp.ndarray


def test_an_unfinished_run_of_another_configuration_is_not_resumed(tmp_path):
  spec = tables.get_table("A")
  config = tables.run_config(spec, "focal", 100.0, 0, workdir=str(tmp_path))
  old = config.copy_and_resolve_references()
  old.hparams.focal_gamma = 2.0 if config.hparams.focal_gamma != 2.0 else 1.0
  path = tmp_path / "run"
  with checkpointing.Checkpointer(str(path / "checkpoints")) as ckpt:
    ckpt.save(_Step(jnp.asarray(1), jnp.zeros(3)), metadata={"config": old.to_dict(), "epoch": 0})
  assert not runner.is_finished(str(path), config) and not path.exists()
