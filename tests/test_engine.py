"""The one engine: every input trains through `ltjax.train.fit` and one run (`experiment.train`),
so the streamed inputs get the on-device path's guarantees: divergence stops the run with the
same one line and no results.json, the report chooses tau on validation with the NaN check,
status, plot and an atomic results.json, and checkpoints share one versioned metadata schema."""
import json

import pytest

from experiments import experiment
from experiments import provenance
from experiments import train_streaming
from experiments.configs import imagenet_lt_rx50
from ltjax import checkpointing
from ltjax import data
from ltjax import train as lt
from tests.test_checkpoint import tiny_config
from tests.test_checkpoint import tiny_splits
from tests.test_data_lists import _write_tiny_family
from tests.test_new_method import toy_source
from tests.test_pipeline_choice import _config


def _diverge(pipeline, prepared, workdir):
  config = _config(data_dir=prepared, pipeline=pipeline, num_epochs=20)
  config.lr.base_lr = 1e6
  with pytest.raises(lt.TrainingDiverged) as info:
    train_streaming.run(config, workdir, progress=False, source=toy_source)
  return info.value


def test_streamed_arrays_diverge_with_the_on_device_line_and_leave_no_results(prepared,
                                                                              tmp_path):
  errors = {p: _diverge(p, prepared, str(tmp_path / p)) for p in ("device", "streaming")}
  device, streamed = errors["device"], errors["streaming"]
  # The same batches and step: the same first bad step and message (the CLI prints this line
  # and exits 1 for either).
  assert (streamed.epoch, streamed.step) == (device.epoch, device.step) and device.epoch == 1
  line = experiment.describe_failure(streamed)
  assert line == experiment.describe_failure(device) and line.startswith("Training diverged: ")
  assert "\n" not in line
  for pipeline in errors:
    workdir = tmp_path / pipeline
    assert not (workdir / experiment.RESULTS_FILE).exists()
    assert not (workdir / experiment.PLOT_FILE).exists()
    failure = json.loads((workdir / experiment.FAILURE_FILE).read_text())
    assert failure["status"] == "diverged" and failure["message"] == line
    with checkpointing.Checkpointer(workdir / experiment.CHECKPOINT_DIR) as ckpt:
      assert ckpt.all_steps() == []  # the diverged state was never saved


@pytest.fixture(scope="module")
def tiny_lists(tmp_path_factory):
  """A 3-class list family with train, validation and test lists, prepared as `lt_lists`."""
  pytest.importorskip("tensorflow_datasets")
  from ltjax.data import _tfds_lt  # noqa: PLC0415 (imports TFDS)
  root = tmp_path_factory.mktemp("lists")
  _write_tiny_family(root / "images", {"train": [20, 8, 4], "validation": [3, 3, 3],
                                       "test": [4, 4, 4]})
  config = _tfds_lt.LongTailListConfig(
      name="tiny_engine", num_classes=3,
      lists={s: f"Tiny_{s}.txt" for s in ("train", "validation", "test")})
  return data.prepare_lt_lists(config, image_root=root / "images", data_dir=root / "tfds")


def _list_config(tmp_path, method="la_posthoc"):
  config = imagenet_lt_rx50.get_config()
  config.update({"method": method, "model": "small_cnn",
                 "model_kwargs": {"widths": (4,), "features": 8}, "num_classes": 3,
                 "image_size": 32,
                 "batch_size": 8, "eval_batch_size": 8, "num_epochs": 2,
                 "max_steps_per_epoch": 2, "data_dir": str(tmp_path / "unused")})
  return config


@pytest.mark.slow
def test_a_list_run_chooses_tau_on_validation_and_writes_the_one_report(tiny_lists, tmp_path,
                                                                         monkeypatch):
  monkeypatch.setattr(train_streaming, "prepare", lambda config: tiny_lists)
  config = _list_config(tmp_path)
  workdir = tmp_path / "run"
  results = train_streaming.train_and_evaluate(config, str(workdir), progress=False)
  assert results["status"] == "ok" and results["split_protocol"] == "list"
  grid = config.hparams.get("tau_grid") or lt.DEFAULT_HPARAMS["tau_grid"]
  sweep = results["posthoc"]["val_sweep"]
  assert sorted(float(t) for t in sweep) == sorted(float(t) for t in grid)
  assert results["posthoc"]["tau"] in [float(t) for t in grid]
  assert len(results["val"]["per_class"]) == len(results["test"]["per_class"]) == 3
  written = json.loads((workdir / experiment.RESULTS_FILE).read_text())
  assert written["status"] == "ok" and written["posthoc"] == results["posthoc"]
  assert written["test"] == results["test"] and written["val"] == results["val"]
  assert (workdir / experiment.PLOT_FILE).is_file()
  # The per-epoch record of the run (metrics.jsonl) and its checkpoint's schema.
  assert [r["epoch"] for r in results["per_epoch"]] == [1, 2]
  with checkpointing.Checkpointer(workdir / experiment.CHECKPOINT_DIR) as ckpt:
    meta = ckpt.restore_metadata()
  assert (meta["schema"], meta["epoch"], meta["step_in_epoch"]) == (lt.CHECKPOINT_SCHEMA, 1, 0)


def test_the_report_is_written_atomically(tmp_path, monkeypatch):
  exp = experiment.build_experiment(tiny_config("ce", 1), tiny_splits())
  # A value JSON cannot encode, met half-way through the record: nothing may be left behind.
  monkeypatch.setattr(provenance, "device_description", lambda: object())
  with pytest.raises(TypeError):
    experiment.write_report(exp, exp.state, str(tmp_path), train_seconds=0.0, history=[])
  assert not (tmp_path / experiment.RESULTS_FILE).exists()


def test_checkpoint_metadata_has_one_schema_and_reads_the_old_one():
  config = {"method": "ce", "split_protocol": "ldam"}
  meta = lt.checkpoint_metadata(config, "f00", epoch=3, step_in_epoch=5, loss_sum=2.5,
                                pipeline="streaming")
  assert meta["schema"] == lt.CHECKPOINT_SCHEMA == 2
  assert (meta["epoch"], meta["step_in_epoch"], meta["epoch_loss_sum"]) == (2, 5, 2.5)
  assert lt.checkpoint_position(meta) == (3, 5)
  # Schema 1: "epoch" was the last finished epoch on the array paths ...
  assert lt.checkpoint_position({"epoch": 2, "step_in_epoch": 5, "config": config}) == (3, 5)
  assert lt.checkpoint_position({"epoch": 2, "config": config}) == (3, 0)
  # ... and the epoch to resume on the streamed list path.
  listed = {"method": "ala", "split_protocol": "list"}
  assert lt.checkpoint_position({"epoch": 3, "step_in_epoch": 5, "config": listed}) == (3, 5)
  with pytest.raises(lt.ConfigError, match="schema 3, written by a newer ltjax"):
    lt.checkpoint_position({**meta, "schema": 3})
  # The position check reads both schemas alike (step 26 at 7 steps per epoch is (3, 5)).
  for m in (meta, {"epoch": 2, "step_in_epoch": 5, "config": config}):
    assert lt.check_checkpoint_position(m, 26, 7) == (3, 5)
    with pytest.raises(lt.ConfigError, match="batch size or the data changed"):
      lt.check_checkpoint_position(m, 26, 8)


@pytest.mark.integration  # a whole-CLI subprocess run (.ci/run runs the marker)
def test_cli_streamed_divergence_exits_1_with_the_on_device_line(tmp_path):
  # The on-device twin is test_reliability's test_cli_divergence_exits_1_naming_the_step_...
  from tests.test_reliability import _cli  # noqa: PLC0415
  from tests.test_reliability import _one_line_failure  # noqa: PLC0415
  workdir = tmp_path / "w"
  proc = _cli("--config.dataset=cifar10", "--config.lr.base_lr=1e6", "--config.num_epochs=200",
              "--config.batch_size=2048", "--config.model_kwargs.widths=(4,)",
              "--config.model_kwargs.features=8", "--config.val_per_class=10",
              "--config.pipeline=streaming", f"--config.data_dir={tmp_path / 'tfds'}",
              f"--workdir={workdir}")
  _one_line_failure(proc, "Training diverged: the loss or gradient norm is not finite in epoch 1")
  assert not (workdir / experiment.RESULTS_FILE).exists()
  failure = json.loads((workdir / experiment.FAILURE_FILE).read_text())
  last_line = proc.stderr.strip().splitlines()[-1]
  assert failure["status"] == "diverged" and failure["message"] == last_line
