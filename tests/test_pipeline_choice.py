"""The choice between the on-device and the streaming pipeline (`config.pipeline`), and that both
train the same batches through the same compiled step: forced either way on a tiny array dataset
they reach the same parameters, and a streamed run stopped mid-epoch resumes at the next batch."""
import os
import shutil

import jax
import numpy as np
import pytest

from experiments import experiment
from experiments import train_streaming
from experiments.configs import fmnist_cnn
from experiments.configs import imagenet_lt_rx50
from ltjax import checkpointing
from tests.test_new_method import toy_source

MB = 2**20


def test_auto_puts_data_on_the_device_when_it_fits_half_its_memory():
  choose = train_streaming.choose_pipeline
  assert choose("auto", data_bytes=400 * MB, memory_bytes=1000 * MB) == "device"
  assert choose("auto", data_bytes=500 * MB, memory_bytes=1000 * MB) == "device"
  assert choose("auto", data_bytes=500 * MB + 1, memory_bytes=1000 * MB) == "streaming"
  assert choose("auto", data_bytes=30 * MB, memory_bytes=50 * MB, fraction=0.5) == "streaming"
  # Forced: whatever the sizes.
  assert choose("device", data_bytes=10**12, memory_bytes=1) == "device"
  assert choose("streaming", data_bytes=1, memory_bytes=10**12) == "streaming"


def test_record_only_datasets_stream_and_refuse_device():
  choose = train_streaming.choose_pipeline
  assert choose("auto", data_bytes=None, memory_bytes=10**12) == "streaming"
  assert choose("streaming", data_bytes=None, memory_bytes=10**12) == "streaming"
  with pytest.raises(experiment.ConfigError, match=r"pipeline='device' is not possible"):
    choose("device", data_bytes=None, memory_bytes=10**12)
  with pytest.raises(experiment.ConfigError, match=r"config\.pipeline='gpu'"):
    choose("gpu", data_bytes=1, memory_bytes=1)


def test_forcing_device_on_a_list_dataset_is_a_clear_config_error():
  config = imagenet_lt_rx50.get_config()
  config.pipeline = "device"
  with pytest.raises(experiment.ConfigError, match="exists only as encoded records"):
    train_streaming.validate(config, num_devices=1)
  config.pipeline = "streaming"
  train_streaming.validate(config, num_devices=1)


def test_a_streamed_run_takes_the_workdir_lock_before_reading_data(tmp_path, lock_holder):
  config = imagenet_lt_rx50.get_config()
  config.image_root = str(tmp_path / "no_images")
  config.data_dir = str(tmp_path / "tfds")
  workdir = tmp_path / "w"
  workdir.mkdir()
  holder = lock_holder(workdir)
  with pytest.raises(checkpointing.WorkdirLocked, match=f"pid {holder.pid}"):
    train_streaming.run(config, str(workdir), progress=False)
  holder.kill()
  holder.wait()
  # Unlocked, the same run gets as far as its (missing) data.
  with pytest.raises(FileNotFoundError, match="no_images"):
    train_streaming.run(config, str(workdir), progress=False)


def test_pipeline_is_a_validated_config_key():
  config = _config()
  config.pipeline = "disk"
  with pytest.raises(experiment.ConfigError, match=r"config.pipeline='disk' is not allowed"):
    experiment.validate_config(config, num_devices=1)


class _Device:
  def __init__(self, limit):
    self.limit = limit

  def memory_stats(self):
    return None if self.limit is None else {"bytes_limit": self.limit, "bytes_in_use": 7}


def test_device_memory_is_the_smallest_limit_or_the_hosts_ram_per_cpu_device():
  assert train_streaming.device_memory_bytes([_Device(80 * MB), _Device(40 * MB)]) == 40 * MB
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  assert train_streaming.device_memory_bytes([_Device(None)] * 4) == ram // 4
  assert jax.local_devices()[0].memory_stats() is None  # CPU: the host rule applies
  assert train_streaming.device_memory_bytes() == ram // jax.local_device_count()


def _config(**overrides):
  config = fmnist_cnn.get_config()
  config.update({"num_epochs": 2, "batch_size": 16, "eval_batch_size": 16,
                 "imbalance_ratio": 10.0, "val_per_class": 3, "checkpoint_every_epochs": 1,
                 "model_kwargs": {"widths": (4,), "features": 8}, **overrides})
  return config


def test_data_bytes_count_every_array_the_device_pipeline_holds(prepared):
  splits = experiment.load_splits(_config(data_dir=prepared), source=toy_source)
  expected = (splits.train_images.nbytes + 4 * len(splits.train_labels)
              + splits.test_images.nbytes + splits.val_images.nbytes)
  assert train_streaming.device_data_bytes(splits) == expected


def _final(workdir):
  with checkpointing.Checkpointer(os.path.join(workdir, experiment.CHECKPOINT_DIR)) as ckpt:
    tree, meta = ckpt.restore_tree()
  return tree, meta


@pytest.fixture
def spy(monkeypatch):
  """Records which loop `train_streaming.run` hands the run to."""
  calls = []
  device, streamed = experiment.train_and_evaluate, train_streaming.train_arrays_streamed

  def on_device(*args, **kwargs):
    calls.append("device")
    return device(*args, **kwargs)

  def streaming(*args, **kwargs):
    calls.append("streaming")
    return streamed(*args, **kwargs)

  monkeypatch.setattr(experiment, "train_and_evaluate", on_device)
  monkeypatch.setattr(train_streaming, "train_arrays_streamed", streaming)
  return calls


def test_forcing_either_pipeline_trains_the_same_parameters(prepared, tmp_path, spy):
  # keep_last_batch: an epoch of 6 full steps plus the remainder step (the second compiled shape).
  kwargs = {"data_dir": prepared, "keep_last_batch": True}
  results = {}
  for pipeline in ("auto", "device", "streaming"):
    results[pipeline] = train_streaming.run(_config(pipeline=pipeline, **kwargs),
                                            str(tmp_path / pipeline), progress=False,
                                            source=toy_source)
  assert spy == ["device", "device", "streaming"]  # auto: 40 kB fit on any device
  a, meta_a = _final(tmp_path / "device")
  b, meta_b = _final(tmp_path / "streaming")
  steps = int(a["step"])
  assert steps == int(b["step"]) and steps % 2 == 0 and meta_a["epoch"] == meta_b["epoch"] == 1
  # Same batches, same augmentation draws, same step function: equal up to the compiled
  # programs' float32 rounding (the streamed step all-gathers its batch instead of gathering
  # from the resident split; measured max |diff| 0 here).
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
               (a["params"], a["batch_stats"]), (b["params"], b["batch_stats"]))
  assert results["streaming"]["pipeline"] == "streaming"
  np.testing.assert_allclose(results["streaming"]["test"]["top1"],
                             results["device"]["test"]["top1"])
  assert [r["epoch"] for r in results["streaming"]["per_epoch"]] == [1, 2]


def test_streamed_run_stopped_mid_epoch_resumes_at_the_next_batch(prepared, tmp_path, spy):
  config = _config(data_dir=prepared, pipeline="streaming", num_epochs=2)
  splits = experiment.load_splits(config, source=toy_source)
  full = str(tmp_path / "full")
  uninterrupted = train_streaming.train_arrays_streamed(config, full, splits=splits,
                                                        progress=False)
  cut = str(tmp_path / "cut")
  steps_per_epoch = int(_final(full)[0]["step"]) // 2
  stop = steps_per_epoch + 2  # inside epoch 1
  assert train_streaming.train_arrays_streamed(config, cut, splits=splits, progress=False,
                                               max_steps=stop) == {}
  tree, meta = _final(cut)
  assert int(tree["step"]) == stop and (meta["epoch"], meta["step_in_epoch"]) == (0, 2)
  # Another batch size moves every later batch: refused, naming the key.
  with pytest.raises(experiment.ConfigError, match=r"another configuration \(config.batch_size"):
    train_streaming.train_arrays_streamed(_config(data_dir=prepared, batch_size=8), cut,
                                          splits=splits, resume=True, progress=False)
  device_cut = str(tmp_path / "device_cut")
  shutil.copytree(cut, device_cut)
  spy.clear()
  # auto resumes on the pipeline that wrote the checkpoint (bit-identical to its own run) ...
  streamed = train_streaming.run(_config(data_dir=prepared, pipeline="auto"), cut, resume=True,
                                 progress=False, source=toy_source)
  # ... and the on-device loop, forced, resumes the streamed mid-epoch checkpoint too.
  on_device = train_streaming.run(_config(data_dir=prepared, pipeline="device"), device_cut,
                                  resume=True, progress=False, source=toy_source)
  assert spy == ["streaming", "device"]
  # The cut epoch's recorded loss is the whole epoch's mean on either loop (the checkpoint
  # carries the loss summed before the stop).
  losses = [[r["loss"] for r in run["per_epoch"]] for run in (uninterrupted, streamed, on_device)]
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)
  # (The on-device loop reports the epochs of its own metrics.jsonl: here the resumed one only.)
  np.testing.assert_allclose(losses[2][-1], losses[0][-1], rtol=1e-5)
  a, b, c = _final(full)[0], _final(cut)[0], _final(device_cut)[0]
  assert int(a["step"]) == int(b["step"]) == int(c["step"])
  jax.tree.map(np.testing.assert_array_equal, (a["params"], a["batch_stats"], a["opt_state"]),
               (b["params"], b["batch_stats"], b["opt_state"]))
  # The pipelines' compiled programs may round differently (see the test above).
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
               (a["params"], a["batch_stats"]), (c["params"], c["batch_stats"]))


def test_a_stop_at_an_epochs_last_step_ends_the_epoch_first(prepared, tmp_path):
  config = _config(data_dir=prepared, pipeline="streaming", num_epochs=2)
  splits = experiment.load_splits(config, source=toy_source)
  workdir = str(tmp_path / "run")
  exp = experiment.build_experiment(config, splits, train_on_device=False)
  steps = exp.steps_per_epoch
  assert train_streaming.train_arrays_streamed(config, workdir, splits=splits, progress=False,
                                               max_steps=steps) == {}
  with checkpointing.Checkpointer(os.path.join(workdir, experiment.CHECKPOINT_DIR)) as ckpt:
    assert ckpt.all_steps() == [steps]  # the epoch's own checkpoint, not a second one
    meta = ckpt.restore_metadata()
  # An epoch-boundary checkpoint, as the on-device loop writes it, with the epoch's evaluation.
  assert (meta["epoch"], meta["step_in_epoch"]) == (0, 0)
  assert [r["epoch"] for r in meta["history"]] == [1] and "test" in meta["history"][0]
  results = train_streaming.run(config, workdir, resume=True, progress=False,
                                source=toy_source)
  assert [r["epoch"] for r in results["per_epoch"]] == [1, 2]
