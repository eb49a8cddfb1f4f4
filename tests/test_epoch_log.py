"""The per-epoch record: metrics.jsonl, TensorBoard events, results.json "per_epoch" and the
best-epoch-on-test protocol, through a kill and a resume."""
import json
import os
import struct

import pytest

from experiments import epoch_log
from experiments import experiment
from tests import test_checkpoint as tc


def _event_scalars(folder):
  """{tag: {step: value}} from the TFRecord-framed event files in `folder` (no TensorFlow)."""
  from tensorboardX.proto import event_pb2  # noqa: PLC0415 (tensorboardX takes 2-3 s to import: only this test reads events)
  out = {}
  for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4  # length, its CRC, the record, its CRC
      for value in event.summary.value:
        out.setdefault(value.tag, {})[event.step] = value.simple_value
  return out


@pytest.mark.integration  # a whole-CLI subprocess run (.ci/run runs the marker)
def test_per_epoch_record_survives_kill_and_resume(tmp_path):
  splits, config = tc.tiny_splits(), tc.tiny_config("la_posthoc", 4)
  full = experiment.train_and_evaluate(config, str(tmp_path / "full"), splits=splits,
                                       progress=False)
  killed = str(tmp_path / "killed")
  experiment.train_and_evaluate(config, killed, splits=splits, stop_after_epoch=2, progress=False)
  # An interrupted run may have logged an epoch after its last checkpoint: resume drops it.
  with open(os.path.join(killed, epoch_log.METRICS_FILE), "a") as f:
    f.write(json.dumps({"epoch": 3, "loss": -1.0}) + "\n")  # the third epoch
  resumed = experiment.train_and_evaluate(config, killed, splits=splits, resume=True,
                                          progress=False)

  for r, workdir in ((full, tmp_path / "full"), (resumed, killed)):
    assert [e["epoch"] for e in r["per_epoch"]] == [1, 2, 3, 4]  # counted from 1
    lines = epoch_log.EpochLog(str(workdir), start_epoch=4, tensorboard=False).records()
    assert lines == r["per_epoch"]
    for e in r["per_epoch"]:
      assert set(e["val"]) == set(e["test"]) == set(epoch_log.SHOT_KEYS)
      assert e["lr"] >= 0 and e["loss"] > 0 and e["tau"] in config.hparams.tau_grid
    # The last record is the final report's evaluation.
    assert r["per_epoch"][-1]["test"]["top1"] == r["test"]["top1"]
    best = r["best_test_epoch"]
    assert best["test"]["top1"] == max(e["test"]["top1"] for e in r["per_epoch"])
  assert [e["loss"] for e in full["per_epoch"]] == [e["loss"] for e in resumed["per_epoch"]]
  assert [e["test"] for e in full["per_epoch"]] == [e["test"] for e in resumed["per_epoch"]]

  scalars = _event_scalars(os.path.join(killed, epoch_log.EVENTS_DIR))
  assert sorted(scalars["train/loss"]) == [1, 2, 3, 4]  # steps are the records' epochs
  assert scalars["test/top1"][4] == pytest.approx(resumed["per_epoch"][3]["test"]["top1"])
  assert scalars["val/few"][1] == pytest.approx(resumed["per_epoch"][0]["val"]["few"])
  assert "val/many" not in scalars  # no class has > 100 images: None, not a number
  assert scalars["posthoc/tau"][2] == pytest.approx(resumed["per_epoch"][1]["tau"])


def test_eval_every_epochs_zero_evaluates_the_last_epoch_only(tmp_path):
  config = tc.tiny_config("ce", 2)
  config.eval_every_epochs = 0
  r = experiment.train_and_evaluate(config, str(tmp_path), splits=tc.tiny_splits(), progress=False)
  assert ["test" in e for e in r["per_epoch"]] == [False, True]
  assert r["best_test_epoch"]["epoch"] == 2  # the second (last) epoch, counted from 1


def test_best_test_epoch_reads_test_only_and_keeps_the_first_maximum():
  per_epoch = [
      {"epoch": 0, "val": {"top1": 0.9}, "test": {"top1": 0.5, "many": 0.6}},
      {"epoch": 1, "test": {"top1": 0.7}},
      {"epoch": 2},  # not evaluated
      {"epoch": 3, "val": {"top1": 0.1}, "test": {"top1": 0.7}},
  ]
  best = epoch_log.best_test_epoch(per_epoch)
  assert best == {"epoch": 1, "test": {"top1": 0.7}}
  final = {"top1": 0.4, "many": 0.5, "medium": 0.3, "few": None, "per_class": [0.4]}
  assert epoch_log.best_test_epoch([], final) == {
      "epoch": None, "test": {"top1": 0.4, "many": 0.5, "medium": 0.3, "few": None}}
  assert epoch_log.best_test_epoch([]) is None


def test_scalars_name_splits_methods_and_skip_replica_lists():
  record = {"epoch": 0, "loss": [1.0, 2.0], "lr": 0.1, "val": {"top1": 0.5, "few": None},
            "test": {"top1": 0.4}, "also": {"la_posthoc": {"test": {"top1": 0.6}, "tau": 1.0}}}
  assert epoch_log.scalars(record) == {
      "train/lr": 0.1, "val/top1": 0.5, "test/top1": 0.4, "la_posthoc/test/top1": 0.6,
      "la_posthoc/posthoc/tau": 1.0}


def test_one_run_counts_epochs_from_1_in_every_output(tmp_path, capsys):
  """Issue #24 item 5: metrics.jsonl, TensorBoard steps, fit's log lines, results.json's
  per_epoch and best epoch all show the same epochs, 1..N."""
  workdir = str(tmp_path / "w")
  r = experiment.train_and_evaluate(tc.tiny_config("ce", 3), workdir, splits=tc.tiny_splits(),
                                    progress=True)  # stderr is no terminal: one line per epoch
  out = capsys.readouterr().out
  logged = [line.split()[1] for line in out.splitlines() if line.startswith("epoch ")]
  with open(os.path.join(workdir, "results.json")) as f:
    written = json.load(f)
  lines = epoch_log.EpochLog(workdir, start_epoch=3, tensorboard=False).records()
  steps = _event_scalars(os.path.join(workdir, epoch_log.EVENTS_DIR))["train/loss"]

  assert logged == ["1/3", "2/3", "3/3"]
  assert [e["epoch"] for e in lines] == [e["epoch"] for e in written["per_epoch"]] == [1, 2, 3]
  assert sorted(steps) == [1, 2, 3]
  for e in written["per_epoch"]:  # the same epoch under the same number everywhere
    assert steps[e["epoch"]] == pytest.approx(e["loss"])
    assert f"epoch {e['epoch']}/3 loss {e['loss']:.4f} " in out
  best = written["best_test_epoch"]
  assert best["test"] == written["per_epoch"][best["epoch"] - 1]["test"]
  assert written["epochs_counted_from"] == 1 and r["per_epoch"] == written["per_epoch"]


def test_readers_count_older_results_from_1_too():
  """results.json written before epochs were counted from 1 (no "epochs_counted_from") are read
  with 1 added; newer ones as they are."""
  test = {"top1": 0.5, "many": 0.6, "medium": 0.4, "few": None}
  old = {"per_epoch": [{"epoch": 0, "test": test}, {"epoch": 1}], "test": test,
         "best_test_epoch": {"epoch": 0, "test": test}}
  new = dict(old, epochs_counted_from=1, per_epoch=[{"epoch": 1, "test": test}, {"epoch": 2}],
             best_test_epoch={"epoch": 1, "test": test})
  for results in (old, new):
    assert [e["epoch"] for e in epoch_log.per_epoch(results)] == [1, 2]
    assert epoch_log.best_epoch(results) == {"epoch": 1, "test": test}
    assert epoch_log.best_epoch({k: v for k, v in results.items()
                                 if k != "best_test_epoch"})["epoch"] == 1
  assert old["per_epoch"][0]["epoch"] == 0  # the file's own records are left as they are
  post_hoc = {"test": test, "best_test_epoch": {"epoch": None, "test": test}}
  assert epoch_log.best_epoch(post_hoc)["epoch"] is None


def test_a_resumed_run_of_an_older_ltjax_is_renumbered_from_1(tmp_path):
  """metrics.jsonl lines written counted from 0 (two epochs checkpointed, a third logged after
  the checkpoint) are renumbered when the run resumes, and the stale one still dropped."""
  with open(tmp_path / epoch_log.METRICS_FILE, "w") as f:
    f.writelines(json.dumps({"epoch": e, "loss": 1.0 / (e + 1)}) + "\n" for e in (0, 1, 2))
  log = epoch_log.EpochLog(str(tmp_path), start_epoch=2, tensorboard=False)
  assert log.records() == [{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}]
  assert epoch_log.counted_from_one(log.records()) == log.records()  # newer: as they are
