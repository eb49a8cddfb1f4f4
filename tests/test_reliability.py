"""Reliability: a run never ends quietly wrong (issue 12).

A matrix of bad inputs and faults, each asserting the failure (exception type / exit status), the
message (names the key and the allowed values, or the epoch/step/checkpoint), and that nothing is
lost or claimed (no results.json, the last good checkpoint kept). Most cases go through the
CLI's validation entry point in-process (`experiments.experiment.validate_run`, no data read,
nothing compiled); a few run the real CLI in a subprocess; the loop faults train a tiny CNN on a
toy set.
"""
import dataclasses
import json
import logging
import math
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import experiment
from experiments import report
from experiments import runner
from experiments import shared_data
from experiments import tables
from experiments.configs import fmnist_cnn
from ltjax import checkpointing
from ltjax import train as lt
from tests.test_checkpoint import _state
from tests.test_checkpoint import tiny_config
from tests.test_checkpoint import tiny_splits

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  config = fmnist_cnn.get_config()
  # validate_run's dataset check reads only folder listings: point it at an empty prepared dir.
  for key, value in overrides.items():
    node, *path = key.split(".")
    target = config
    for p in [node, *path][:-1]:
      target = target[p]
    target[[node, *path][-1]] = value
  return config


def _validate(workdir, prepared_dir, **overrides):
  config = _config(data_dir=prepared_dir, **overrides)
  return experiment.validate_run(config, workdir, num_devices=1)


# ------------------------------------------------------------------ config values, one line each

# (overrides, substrings of the message). The first rows are the table.
BAD_CONFIGS = [
    ({"method": "la_loss", "hparams.tau": math.nan}, ["config.hparams.tau=nan",
                                                       "a finite number >= 0"]),
    ({"num_epochs": -1}, ["config.num_epochs=-1", "an integer >= 0"]),
    ({"hparams.los_delta": 1.5}, ["config.hparams.los_delta=1.5", "[0, 1]"]),
    ({"split_protocol": "xyz"}, ["config.split_protocol='xyz'", "'ldam', 'first', 'random'"]),
    ({"num_epochs": 0}, ["config.num_epochs=0", "0 only for post-hoc"]),
    ({"imbalance_ratio": math.nan}, ["config.imbalance_ratio=nan", ">= 1"]),
    ({"imbalance_ratio": 0.5}, ["config.imbalance_ratio=0.5", ">= 1"]),
    ({"batch_size": 0}, ["config.batch_size=0", "an integer >= 1"]),
    ({"eval_batch_size": -8}, ["config.eval_batch_size=-8", "an integer >= 1"]),
    ({"val_per_class": -1}, ["config.val_per_class=-1", "an integer >= 0"]),
    ({"seed": -3}, ["config.seed=-3", "an integer >= 0"]),
    ({"momentum": 1.0}, ["config.momentum=1.0", "[0, 1)"]),
    ({"weight_decay": -1e-4}, ["config.weight_decay=-0.0001", ">= 0"]),
    ({"weight_decay": math.inf}, ["config.weight_decay=inf", "finite"]),
    ({"checkpoint_every_epochs": 0}, ["config.checkpoint_every_epochs=0", ">= 1"]),
    ({"lr.base_lr": 0.0}, ["config.lr.base_lr=0.0", "> 0"]),
    ({"lr.base_lr": math.nan}, ["config.lr.base_lr=nan", "> 0"]),
    ({"head_init": "xavier"}, ["config.head_init='xavier'", "'torch', 'kaiming'"]),
    ({"augment": "big"}, ["config.augment='big'", "'crop_flip'"]),
    ({"model": "vgg"}, ["config.model 'vgg'", "small_cnn"]),
    ({"lr.name": "step"}, ["config.lr.name 'step'", "cosine"]),
    ({"method": "nope"}, ["Unknown method 'nope'", "la_loss"]),
    ({"method": "tau_norm", "num_epochs": 0}, ["init_checkpoint"]),
]


@pytest.mark.parametrize("overrides, fragments", BAD_CONFIGS,
                         ids=[",".join(o) + f"={list(o.values())[-1]}" for o, _ in BAD_CONFIGS])
def test_bad_config_value_is_one_clear_line_before_any_data(tmp_path, prepared, overrides,
                                                            fragments):
  workdir = tmp_path / "run"
  with pytest.raises(experiment.ConfigError) as info:
    _validate(str(workdir), prepared, **overrides)
  message = str(info.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message, message
  assert not workdir.exists()  # nothing created, nothing read


def test_the_recipe_defaults_and_a_huge_learning_rate_validate(tmp_path, prepared):
  # A huge lr is a legal value (the loop catches the divergence), not a config error.
  assert _validate(str(tmp_path / "w"), prepared, **{"lr.base_lr": 1e6}) is lt.METHODS["ce"]
  for recipe in ("fmnist_cnn", "ldam_r32", "gala_r32"):
    config = __import__(f"experiments.configs.{recipe}", fromlist=["x"]).get_config()
    experiment.validate_config(config, num_devices=1)


def _bad_values(param: lt.HParam):
  """Values just outside `param`'s domain (and non-finite ones), from its declaration."""
  d = param.domain
  if isinstance(d, lt.Real):
    out = [math.nan, math.inf, -math.inf]
    if d.lo is not None:
      out.append(d.lo if d.lo_open else d.lo - 0.5)
    if d.hi is not None:
      out.append(d.hi if d.hi_open else d.hi + 0.5)
    return out + ["1.0", True]
  if isinstance(d, lt.Integer):
    return [d.lo - 1, 1.5, True]
  if isinstance(d, lt.OneOf):
    return ["nope", 1]
  if isinstance(d, lt.Grid):
    return [(), (math.nan,), (-1.0, 1.0), 1.0]
  raise AssertionError(f"no bad values for {d}")


_HP_CASES = [(name, bad) for name, p in sorted(lt.declared_hparams().items())
             for bad in _bad_values(p)]


@pytest.mark.parametrize("name, bad", _HP_CASES, ids=[f"{n}={b!r}" for n, b in _HP_CASES])
def test_every_hyperparameter_has_a_domain_checked_whatever_the_method(tmp_path, prepared,
                                                                         name, bad):
  param = lt.declared_hparams()[name]
  with pytest.raises(ValueError) as info:
    lt.hparams({name: bad})
  assert f"hparams.{name}=" in str(info.value) and str(param.domain) in str(info.value)
  # Through the CLI's validation, with a method that never reads it (plain CE), when the config
  # can hold the value at all (ConfigDict keeps a key's type: a str for a float is refused by
  # ml_collections / absl itself).
  config = _config(data_dir=prepared)
  try:
    config.hparams[name] = bad
  except (TypeError, ValueError):
    return
  if param.domain.contains(config.hparams[name]):  # ConfigDict turned True into 1.0
    return
  with pytest.raises(experiment.ConfigError, match=f"config.hparams.{name}="):
    experiment.validate_run(config, str(tmp_path / "w"), num_devices=1)


def test_every_default_lies_in_its_domain_and_declarations_agree():
  declared = lt.declared_hparams()
  assert set(declared) == set(lt.DEFAULT_HPARAMS)
  assert lt.hparams() == dict(lt.DEFAULT_HPARAMS)
  for method in lt.METHODS.values():
    for p in method.hparams:
      assert declared[p.name] is p or declared[p.name] == p
      p.check(p.default)
  # The methods read what they declare: LDAM-DRW's margin, LOS's delta, the tau sweep.
  assert {"ldam_max_margin", "scale", "cb_beta"} <= {p.name for p in lt.METHODS["ldam_drw"].hparams}
  assert {"tau", "tau_grid"} == {p.name for p in lt.METHODS["tau_norm"].hparams}


# ------------------------------------------------------------------------- the registry API


def _toy_method(**kw):
  return lt.Method(head="linear", loss=lt.METHODS["ce"].loss, **kw)


def test_register_method_as_context_manager_is_temporary():
  margin = lt.HParam("toy_margin", 0.25, lt.Real(lo=0.0), "a toy margin")
  with lt.register_method("toy", _toy_method(hparams=(margin,))) as method:
    assert lt.METHODS["toy"] is method and lt.get_method("toy") is method
    assert lt.DEFAULT_HPARAMS["toy_margin"] == 0.25
    with pytest.raises(ValueError, match=r"hparams.toy_margin=-1.*>= 0"):
      lt.hparams({"toy_margin": -1.0})
  assert "toy" not in lt.METHODS and "toy_margin" not in lt.DEFAULT_HPARAMS


def test_register_method_refuses_duplicates_and_conflicting_hparams():
  with pytest.raises(ValueError, match="already registered"):
    lt.register_method("ce", _toy_method())
  clash = lt.HParam("tau", 2.0, lt.Real(lo=0.0), "another tau")
  with pytest.raises(ValueError, match="one name, one declaration"):
    lt.register_method("toy2", _toy_method(hparams=(clash,)))
  assert "toy2" not in lt.METHODS
  with pytest.raises(TypeError, match="Method"):
    lt.register_method("toy3", object())
  with pytest.raises(ValueError, match="default"):
    lt.HParam("bad", -1.0, lt.Real(lo=0.0))
  original = lt.METHODS["ce"]
  with lt.register_method("ce", _toy_method(), replace=True):
    assert lt.METHODS["ce"] is not original
  assert lt.METHODS["ce"] is original


# ------------------------------------------------------------------------------- the workdir


def test_unwritable_or_uncreatable_workdir_is_refused(tmp_path):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  with pytest.raises(experiment.ConfigError, match=r"cannot be created.*is a file"):
    experiment.check_workdir(str(a_file / "run"))
  with pytest.raises(experiment.ConfigError, match="exists and is not a folder"):
    experiment.check_workdir(str(a_file))
  with pytest.raises(experiment.ConfigError, match="not writable"):
    experiment.check_workdir("/proc/ltjax-run")  # read-only even for root
  with pytest.raises(experiment.ConfigError, match="--workdir is empty"):
    experiment.check_workdir("")
  experiment.check_workdir(str(tmp_path / "new" / "deeper"))  # creatable: fine, and not created
  assert not (tmp_path / "new").exists()
  assert os.listdir(tmp_path) == ["file"]  # the write probe left nothing


def test_second_run_on_a_locked_workdir_refuses_and_touches_nothing(tmp_path, lock_holder):
  workdir = tmp_path / "w"
  workdir.mkdir()
  holder = lock_holder(workdir)
  with pytest.raises(checkpointing.WorkdirLocked,
                     match=f"in use by another run .pid {holder.pid}"):
    experiment.train_and_evaluate(tiny_config("ce", 1), str(workdir), splits=tiny_splits(),
                                  progress=False)
  holder.kill()
  holder.wait()
  assert os.listdir(workdir) == [checkpointing.LOCK_FILE]  # no checkpoint, no failure.json
  # The kernel released the killed holder's lock: the workdir is usable again.
  with checkpointing.WorkdirLock(workdir), checkpointing.WorkdirLock(workdir):  # re-entrant
    pass
  assert os.listdir(workdir) == []  # a run that ends removes its lock file


# ------------------------------------------------------------------------- divergence in the loop


def _assert_nothing_claimed(workdir):
  assert not os.path.exists(os.path.join(workdir, experiment.RESULTS_FILE))
  assert not os.path.exists(os.path.join(workdir, experiment.PLOT_FILE))
  with open(os.path.join(workdir, experiment.FAILURE_FILE)) as f:
    return json.load(f)


def test_huge_learning_rate_stops_in_the_first_epoch(tmp_path):
  config = tiny_config("ce", num_epochs=50)
  config.lr.base_lr = 1e6
  workdir = str(tmp_path / "w")
  with pytest.raises(lt.TrainingDiverged) as info:
    experiment.train_and_evaluate(config, workdir, splits=tiny_splits(), progress=False)
  e = info.value
  assert e.epoch == 1 and 0 < e.step < 4  # 64 images / batch 16: 4 steps in epoch 1
  assert e.last_finite_loss is not None and math.isfinite(e.last_finite_loss)
  assert f"in epoch 1 at step {e.step};" in str(e) and "last finite loss" in str(e)
  failure = _assert_nothing_claimed(workdir)
  assert failure["status"] == "diverged" and failure["step"] == e.step and failure["epoch"] == 1
  assert failure["message"].startswith("Training diverged: ")
  with checkpointing.Checkpointer(os.path.join(workdir, experiment.CHECKPOINT_DIR)) as ckpt:
    assert ckpt.all_steps() == []  # the diverged state was never saved


def _nan_from_epoch(epoch):
  """CE whose loss turns NaN from `epoch` on (an injected divergence)."""
  ce = lt.METHODS["ce"].loss

  def loss(logits, labels, inputs, hp):
    return ce(logits, labels, inputs, hp) * jnp.where(inputs.epoch >= epoch, jnp.nan, 1.0)

  return lt.Method(head="linear", loss=loss)


def test_divergence_keeps_the_last_good_checkpoint_and_a_rerun_resumes_from_it(tmp_path):
  workdir = str(tmp_path / "w")
  with (lt.register_method("nan_from_epoch2", _nan_from_epoch(2)),
        pytest.raises(lt.TrainingDiverged) as info):
    experiment.train_and_evaluate(tiny_config("nan_from_epoch2", 4), workdir, splits=tiny_splits(),
                                  progress=False)
  assert info.value.epoch == 3 and info.value.step == 8  # first step of the third epoch
  assert [r["epoch"] for r in info.value.history] == [1, 2]
  failure = _assert_nothing_claimed(workdir)
  assert failure["last_finite_loss"] == pytest.approx(info.value.last_finite_loss)
  with checkpointing.Checkpointer(os.path.join(workdir, experiment.CHECKPOINT_DIR)) as ckpt:
    tree, meta = ckpt.restore_tree()
  assert meta["epoch"] == 1 and int(tree["step"]) == 8
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(tree["params"]))
  # A fixed method resumes from the kept checkpoint, finishes, and clears failure.json.
  with lt.register_method("nan_from_epoch2", _nan_from_epoch(99)):
    results = experiment.train_and_evaluate(tiny_config("nan_from_epoch2", 4), workdir,
                                       splits=tiny_splits(), resume=True, progress=False)
  assert [r["epoch"] for r in results["history"]] == [3, 4] and results["status"] == "ok"
  assert not os.path.exists(os.path.join(workdir, experiment.FAILURE_FILE))


class _NoData:
  """An input of `steps` steps per epoch whose batches are None (the fake steps ignore them)."""

  def __init__(self, steps):
    self.steps_per_epoch = self.examples_per_epoch = steps

  def epoch_batches(self, rng, epoch, start_step):
    del rng, epoch
    return iter([None] * (self.steps_per_epoch - start_step))


def test_divergence_is_detected_without_a_per_step_sync_and_every_n_steps_on_request():
  state = types.SimpleNamespace(rng=None)
  calls = []

  def step(state, batch, stats):
    del batch, stats
    calls.append(1)
    n = len(calls)
    return state, {"loss": jnp.float32(n if n != 3 else jnp.inf), "lr": jnp.float32(0.1),
                   "grad_norm": jnp.float32(1.0)}

  common = dict(step=step, data=_NoData(10), stats=lt.ClassStats(jnp.ones(2), jnp.zeros(2)),
                start_epoch=0, num_epochs=3, progress=False)
  with pytest.raises(lt.TrainingDiverged) as info:
    lt.fit(state, **common)
  assert len(calls) == 10  # checked at the end of the epoch only
  assert (info.value.epoch, info.value.step, info.value.last_finite_loss) == (1, 2, 2.0)
  calls.clear()
  with pytest.raises(lt.TrainingDiverged):
    lt.fit(state, check_every_steps=4, **common)
  assert len(calls) == 4  # stopped at the first check after step 2


def test_fit_stops_at_a_step_and_resumes_there_with_the_same_epoch_records():
  # A fake state counting its steps; a step's loss is its (1-based) global step number, so an
  # epoch record's mean loss tells which steps it summed.
  def step(state, batch, stats):
    del batch, stats
    return (types.SimpleNamespace(rng=None, step=state.step + 1),
            {"loss": jnp.float32(state.step + 1), "lr": jnp.float32(0.1)})

  def run(start=(0, 0, 0.0), stop_at=None):
    epoch, step_in_epoch, loss_sum = start
    ends, stops = [], []
    state, history = lt.fit(
        types.SimpleNamespace(rng=None, step=4 * epoch + step_in_epoch), step=step,
        data=_NoData(4), stats=lt.ClassStats(jnp.ones(2), jnp.zeros(2)), start_epoch=epoch,
        start_step=step_in_epoch, start_loss_sum=loss_sum, num_epochs=3,
        progress=False, stop=lambda done: done == stop_at,
        on_epoch_end=lambda e, s, r: ends.append(e),
        on_stop=lambda e, i, s, loss: stops.append((e, i, loss)))
    return [(r["epoch"], r["loss"]) for r in history], ends, stops, state.step

  full, _, _, _ = run()
  assert full == [(1, 2.5), (2, 6.5), (3, 10.5)]  # the means of 1..4, 5..8, 9..12
  # Stopped after step 6: epoch 1 with 2 steps done, summing 5 + 6.
  records, ends, stops, done = run(stop_at=6)
  assert (records, ends, stops, done) == (full[:1], [0], [(1, 2, 11.0)], 6)
  resumed, _, _, done = run(start=stops[0])
  assert resumed == full[1:] and done == 12
  # At an epoch's last step the epoch ends first (record, on_epoch_end), then the stop.
  records, ends, stops, _ = run(stop_at=8)
  assert (records, ends, stops) == (full[:2], [0, 1], [(2, 0, 0.0)])


def test_non_finite_gradient_norm_alone_is_divergence():
  def step(state, *args):
    del args
    return state, {"loss": jnp.float32(1.0), "lr": jnp.float32(0.1),
                   "grad_norm": jnp.float32(jnp.nan)}

  with pytest.raises(lt.TrainingDiverged, match="step 0; last finite loss none"):
    lt.fit(types.SimpleNamespace(rng=None), step=step, data=_NoData(2),
           stats=lt.ClassStats(jnp.ones(2), jnp.zeros(2)), start_epoch=0, num_epochs=1,
           progress=False)


def test_nan_evaluation_metrics_are_an_error_and_write_nothing(tmp_path):
  exp = experiment.build_experiment(tiny_config("ce", 1), tiny_splits())
  nan_state = exp.state.replace(params=jax.tree.map(lambda x: x * jnp.nan, exp.state.params))
  with pytest.raises(experiment.NonFiniteMetrics, match="val logits are not finite"):
    experiment.write_report(exp, nan_state, str(tmp_path), train_seconds=0.0, history=[])
  assert os.listdir(tmp_path) == []
  with pytest.raises(experiment.NonFiniteMetrics, match=r"test\.per_class\.1"):
    experiment.check_metrics_finite({"test": {"top1": 0.5, "per_class": [0.1, math.nan]}})
  experiment.check_metrics_finite({"test": {"top1": 0.5, "per_class": [0.1, 0.2]}, "n": 3})


# ------------------------------------------------------------------------------- checkpoints


def _truncate_arrays(workdir, step):
  """Truncates every array data file of checkpoint `step` to half (a partial write)."""
  folder = os.path.join(workdir, experiment.CHECKPOINT_DIR, str(step), "state")
  cut = 0
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      if os.sep + "d" + os.sep in path + os.sep and os.path.basename(root) == "d":
        with open(path, "r+b") as f:
          f.truncate(os.path.getsize(path) // 2)
        cut += 1
  assert cut


def test_resume_falls_back_past_a_truncated_checkpoint_and_ends_bit_identical(tmp_path, caplog):
  splits, config = tiny_splits(), tiny_config("ce", 3)
  full = experiment.train_and_evaluate(config, str(tmp_path / "full"), splits=splits,
                                       progress=False)
  killed = str(tmp_path / "killed")
  experiment.train_and_evaluate(config, killed, splits=splits, stop_after_epoch=2, progress=False)
  _truncate_arrays(killed, 8)  # epoch 1's checkpoint (step 8); epoch 0's (step 4) is intact
  with caplog.at_level(logging.WARNING, logger="ltjax"):
    resumed = experiment.train_and_evaluate(config, killed, splits=splits, resume=True,
                                       progress=False)
  assert "Checkpoint step 8" in caplog.text and "unreadable" in caplog.text
  assert "resumed from step 4" in caplog.text
  assert [h["epoch"] for h in resumed["history"]] == [2, 3]
  assert [h["loss"] for h in full["history"][1:]] == [h["loss"] for h in resumed["history"]]
  assert full["test"] == resumed["test"]  # nothing lost: the same run as uninterrupted
  assert os.path.isdir(os.path.join(killed, experiment.CHECKPOINT_DIR + "-unreadable", "8"))


def test_resume_refuses_clearly_when_no_checkpoint_is_readable(tmp_path):
  splits, config = tiny_splits(), tiny_config("ce", 3)
  workdir = str(tmp_path / "w")
  experiment.train_and_evaluate(config, workdir, splits=splits, stop_after_epoch=2, progress=False)
  for step in (4, 8):
    _truncate_arrays(workdir, step)
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"No readable checkpoint.*step 8.*step 4"):
    experiment.train_and_evaluate(config, workdir, splits=splits, resume=True, progress=False)
  failure = _assert_nothing_claimed(workdir)
  assert failure["status"] == "failed" and "Checkpoint error" in failure["message"]
  # Nothing deleted: the unreadable checkpoints stay where they were for inspection.
  assert sorted(os.listdir(os.path.join(workdir, experiment.CHECKPOINT_DIR))) == ["4", "8"]


def test_a_save_killed_midway_is_ignored_on_resume(tmp_path):
  splits, config = tiny_splits(), tiny_config("ce", 3)
  workdir = str(tmp_path / "w")
  experiment.train_and_evaluate(config, workdir, splits=splits, stop_after_epoch=2, progress=False)
  ckpt_dir = os.path.join(workdir, experiment.CHECKPOINT_DIR)
  # What a kill during Orbax's save of step 12 leaves: an unfinalised temp folder, half written.
  tmp = os.path.join(ckpt_dir, "12.orbax-checkpoint-tmp-1234567")
  os.makedirs(os.path.join(tmp, "state"))
  with open(os.path.join(tmp, "state", "manifest.ocdbt"), "wb") as f:
    f.write(b"\x00" * 10)
  results = experiment.train_and_evaluate(config, workdir, splits=splits, resume=True,
                                     progress=False)
  assert [h["epoch"] for h in results["history"]] == [3]


def _metrics_lines(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_on_device_run_stopped_mid_epoch_resumes_bit_identical_with_the_same_epoch_records(
    tmp_path):
  splits, config = tiny_splits(), tiny_config("ce", 3)  # 4 steps per epoch
  full = experiment.train_and_evaluate(config, str(tmp_path / "full"), splits=splits,
                                       progress=False)
  cut = str(tmp_path / "cut")
  # Stopped as on pre-emption after step 6: epoch 1, 2 of its 4 steps done.
  assert experiment.train_and_evaluate(config, cut, splits=splits, max_steps=6, preemptible=True,
                                       progress=False) == {}
  with checkpointing.Checkpointer(os.path.join(cut, experiment.CHECKPOINT_DIR)) as ckpt:
    tree, meta = ckpt.restore_tree()
  assert int(tree["step"]) == 6 and (meta["epoch"], meta["step_in_epoch"]) == (0, 2)
  assert [r["epoch"] for r in _metrics_lines(cut)] == [1]
  assert not os.path.exists(os.path.join(cut, experiment.RESULTS_FILE))
  with pytest.raises(experiment.ConfigError, match="--resume"):
    experiment.train_and_evaluate(config, cut, splits=splits, progress=False)
  # The sweep runner resumes at epoch ends only: it refuses rather than redo or skip steps.
  with pytest.raises(experiment.ConfigError, match="mid-epoch checkpoint"):
    runner.train_replicas([experiment.build_experiment(config, splits)], [cut], vmap=False,
                          desc="t")
  # A changed value that moves training is refused, naming it ...
  other = tiny_config("ce", 3)
  other.lr.base_lr = 0.1
  with pytest.raises(experiment.ConfigError,
                     match=r"another configuration \(config.lr.base_lr: 0.05 -> 0.1\)"):
    experiment.train_and_evaluate(other, cut, splits=splits, resume=True, progress=False)
  with pytest.raises(experiment.ConfigError, match=r"cut: Cannot resume: .*config.lr.base_lr"):
    runner.train_replicas([experiment.build_experiment(other, splits)], [cut], vmap=False,
                          desc="t")
  # ... one that does not (evaluation batch) resumes.
  evaluated_in_8 = tiny_config("ce", 3)
  evaluated_in_8.eval_batch_size = 8
  resumed = experiment.train_and_evaluate(evaluated_in_8, cut, splits=splits, resume=True,
                                          progress=False)
  a, b = (checkpointing.Checkpointer(os.path.join(w, experiment.CHECKPOINT_DIR))
          for w in (str(tmp_path / "full"), cut))
  with a, b:
    (ta, _), (tb, _) = a.restore_tree(), b.restore_tree()
  assert int(ta["step"]) == int(tb["step"]) == 12
  jax.tree.map(np.testing.assert_array_equal, ta, tb)  # params, BN, momentum, rng
  # Every epoch once, and epoch 1's mean loss is the whole epoch's, as uninterrupted.
  assert [r["epoch"] for r in resumed["per_epoch"]] == [1, 2, 3]
  assert ([r["loss"] for r in resumed["per_epoch"]] == [r["loss"] for r in full["per_epoch"]]
          == [r["loss"] for r in _metrics_lines(cut)])


def test_result_files_are_written_atomically_even_when_the_writer_is_killed(tmp_path):
  target = tmp_path / "results.json"
  checkpointing.atomic_write_text(target, '{"status": "ok", "top1": 0.5}')
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would make it
  script = textwrap.dedent(f"""
      import os, signal
      from ltjax import checkpointing
      with checkpointing.atomic_path({str(target)!r}) as tmp:
        with open(tmp, "w") as f:
          f.write('{{"status": "ok", "top1": 0.')
          f.flush()
          os.kill(os.getpid(), signal.SIGKILL)
  """)
  proc = subprocess.run([sys.executable, "-c", script], cwd=_ROOT, capture_output=True,
                        check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == -signal.SIGKILL
  assert json.loads(target.read_text()) == {"status": "ok", "top1": 0.5}  # old file intact
  # An exception (not a kill) removes the temp file too.
  with pytest.raises(RuntimeError), checkpointing.atomic_path(target) as tmp:
    pathlib.Path(tmp).write_text("partial")
    raise RuntimeError("disk full")
  assert json.loads(target.read_text()) == {"status": "ok", "top1": 0.5}
  leftovers = [n for n in os.listdir(tmp_path) if n != "results.json"]
  assert len(leftovers) == 1 and leftovers[0].startswith(".results.tmp-")  # only the killed one


# --------------------------------------------------------------------------------- sweeps


def _fake_results(path, method, seed, top1, status="ok"):
  os.makedirs(path, exist_ok=True)
  r = {"status": status, "method": method, "seed": seed, "num_epochs": 1, "recipe": "fmnist_cnn",
       "split_fingerprint": "f" * 64, "class_counts": [5, 3], "train_seconds_this_run": 1.0,
       "date": "2026-01-01T00:00:00Z", "config": {}, "device": "cpu", "versions": {},
       "test": {"top1": top1, "many": top1, "medium": top1, "few": top1,
                "per_class": [top1, top1]}}
  with open(os.path.join(path, experiment.RESULTS_FILE), "w") as f:
    json.dump(r, f)


def test_sweep_records_a_failed_run_goes_on_and_shows_it_as_missing(tmp_path):
  spec = tables.TableSpec(name="t", title="T", recipe="fmnist_cnn", imbalance_ratios=(100.0,),
                             methods=("ce", "focal"), seeds=(0, 1), num_epochs=1,
                             stage2_epochs=1)
  wd = str(tmp_path)
  _fake_results(tables.run_dir(wd, spec, "ce", 100.0, 0), "ce", 0, 0.5)
  _fake_results(tables.run_dir(wd, spec, "ce", 100.0, 1), "ce", 1, 0.7)
  _fake_results(tables.run_dir(wd, spec, "focal", 100.0, 1), "focal", 1, 0.9,
                status="diverged")  # a results.json not marked ok is never tabulated
  failures = []
  bad = tables.run_dir(wd, spec, "focal", 100.0, 0)
  err = lt.TrainingDiverged(epoch=0, step=3, last_finite_loss=2.5, history=[])
  assert runner._attempt(bad, lambda: (_ for _ in ()).throw(err), failures) is None
  assert failures == [{"path": bad, "message": str(err)}]
  rows = report.collect(spec, spec.methods, workdir=wd)["100"]
  assert set(rows) == {"ce"} and rows["ce"]["test"]["top1"]["mean"] == pytest.approx(60.0)
  failed = report.collect_failures(spec, spec.methods, workdir=wd)
  assert [(f["method"], f["seed"], f["status"]) for f in failed] == [("focal", 0, "diverged")]
  record = {"command": "x", "date": "d", "device": "cpu", "versions": {}, "wall_seconds": 1.0,
            "sum_train_seconds": 1.0, "runs_span": None,
            "rows": report.collect(spec, spec.methods, workdir=wd),
            "missing_methods": {"100": ["focal"]}, "failed_runs": failed}
  md = report.markdown(spec, record)
  assert "| focal" not in md and "Not run yet at this ratio: focal" in md
  assert "| ce |" in md  # both seeds present: no "(1/2 seeds)" marker
  assert "- focal seed 0: Training diverged" in md
  # A re-run retries it: a failed run is never "finished".
  config = tables.run_config(spec, "focal", 100.0, 0, workdir=wd)
  assert not runner.is_finished(bad, config)
  assert not runner.is_finished(tables.run_dir(wd, spec, "focal", 100.0, 1),
                                   tables.run_config(spec, "focal", 100.0, 1, workdir=wd))


def test_sweep_trains_the_other_seeds_when_one_diverges(tmp_path):
  # Replicas share one step function, so the fault rides on replica 1's data: a loss that turns
  # NaN when its class statistics are marked (a negative count).
  ce = lt.METHODS["ce"].loss

  def loss(logits, labels, inputs, hp):
    return ce(logits, labels, inputs, hp) * jnp.where(inputs.class_counts.min() < 0, jnp.nan, 1.)

  def experiments():  # fresh ones: a sequential run donates each state
    exps = []
    for seed in (0, 1):
      config = tiny_config("nan_if_marked", 1)
      config.seed = seed
      exp = experiment.build_experiment(config, tiny_splits())
      if seed == 1:
        stats = exp.device_data["stats"]
        marked = stats._replace(class_counts=stats.class_counts.at[0].set(-1.0))
        exp = dataclasses.replace(exp, device_data={**exp.device_data, "stats": marked})
      exps.append(exp)
    return exps

  with lt.register_method("nan_if_marked", lt.Method(head="linear", loss=loss)):
    for vmap in (False, True):
      paths = [str(tmp_path / f"vmap{vmap}" / f"seed{i}") for i in range(2)]
      states = runner.train_replicas(experiments(), paths, vmap=vmap, desc="t")
      assert isinstance(states[1], lt.TrainingDiverged), vmap
      assert not isinstance(states[0], BaseException), vmap
      assert all(np.isfinite(x).all() for x in jax.tree.leaves(states[0].params))


# ------------------------------------------------------------------ the real CLI, a few cases


def _cli(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "experiments.main",
                         "--config=experiments/configs/fmnist_cnn.py", "--progress=false", *args],
                        cwd=_ROOT, capture_output=True, text=True, timeout=timeout,
                        check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _one_line_failure(proc, fragment):
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert fragment in last, proc.stderr[-2000:]


@pytest.mark.parametrize("args, fragment", [
    (["--config.hparams.los_delta=1.5"], "Configuration error: config.hparams.los_delta=1.5"),
    (["--config.split_protocol=xyz"], "config.split_protocol='xyz' is not allowed"),
    (["--config.num_epochs=-1"], "config.num_epochs=-1 is not allowed"),
])
def test_cli_bad_values_exit_1_with_one_line(tmp_path, args, fragment):
  proc = _cli(*args, f"--workdir={tmp_path / 'w'}")
  _one_line_failure(proc, fragment)
  assert not (tmp_path / "w").exists()


def test_cli_unwritable_workdir_exits_1_with_one_line(tmp_path):
  (tmp_path / "file").write_text("x")
  _one_line_failure(_cli(f"--workdir={tmp_path / 'file' / 'w'}"), "cannot be created")


@pytest.mark.integration  # a whole-CLI subprocess run (.ci/run runs the marker)
def test_cli_divergence_exits_1_naming_the_step_and_writes_no_results(tmp_path):
  shared = shared_data.shared_data_dir() / "cifar10"
  if not shared.is_dir():
    pytest.fail(f"the shared CIFAR-10 copy is missing at {shared}")
  workdir = tmp_path / "w"
  proc = _cli("--config.dataset=cifar10", "--config.lr.base_lr=1e6", "--config.num_epochs=200",
              "--config.batch_size=2048", "--config.model_kwargs.widths=(4,)",
              "--config.model_kwargs.features=8", "--config.val_per_class=10",
              f"--config.data_dir={tmp_path / 'tfds'}", f"--workdir={workdir}")
  _one_line_failure(proc, "Training diverged: the loss or gradient norm is not finite in epoch 1")
  assert not (workdir / experiment.RESULTS_FILE).exists()
  assert json.loads((workdir / experiment.FAILURE_FILE).read_text())["status"] == "diverged"


# Fashion-MNIST-LT (~/tensorflow_datasets), a 4-channel CNN, 2 epochs of 115 steps.
_TINY_FMNIST = ("--config.num_epochs=2", "--config.model_kwargs.widths=(4,)",
                "--config.model_kwargs.features=8", "--config.eval_batch_size=1000")


def _final_tree(workdir):
  with checkpointing.Checkpointer(os.path.join(workdir, experiment.CHECKPOINT_DIR)) as ckpt:
    return ckpt.restore_tree()


@pytest.mark.slow
@pytest.mark.integration  # three whole-CLI runs (full, cut, resumed)
def test_cli_sigterm_mid_epoch_on_device_then_the_same_command_resumes_bit_identical(tmp_path):
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  proc = _cli(*_TINY_FMNIST, f"--workdir={full}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  # The progress bar ("ce:   0%|") or, stderr being no terminal here, the start line ("ce: 230
  # steps, ...") appears on stderr just before the first step: SIGTERM then.
  command = [sys.executable, "-m", "experiments.main",
             "--config=experiments/configs/fmnist_cnn.py", *_TINY_FMNIST, f"--workdir={cut}"]
  running = subprocess.Popen(command, cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  seen = ""
  while not seen.endswith("ce: ") and (char := running.stderr.read(1)):
    seen = (seen + char)[-8:]
  running.send_signal(signal.SIGTERM)
  out, err = running.communicate(timeout=300)
  assert running.returncode == 0, err[-3000:]
  assert "Pre-empted at step" in out and "run the same command again" in out
  tree, meta = _final_tree(cut)
  epoch, step_in_epoch = meta["epoch"] + 1, meta["step_in_epoch"]
  assert 0 < step_in_epoch < 115 and epoch < 2, meta  # inside an epoch
  assert int(tree["step"]) == 115 * epoch + step_in_epoch
  assert f"Pre-empted at step {int(tree['step'])};" in out
  assert not os.path.exists(os.path.join(cut, experiment.RESULTS_FILE))
  assert [r["epoch"] for r in _metrics_lines(cut)] == list(range(1, epoch + 1))
  # The same command, no flag: continues at the next step and ends as the uninterrupted run.
  resumed = subprocess.run(command, cwd=_ROOT, capture_output=True, text=True, timeout=300,
                           check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  (a, _), (b, _) = _final_tree(full), _final_tree(cut)
  assert int(a["step"]) == int(b["step"]) == 230
  jax.tree.map(np.testing.assert_array_equal, a, b)  # params, BN, momentum, rng
  assert ([(r["epoch"], r["loss"]) for r in _metrics_lines(cut)]
          == [(r["epoch"], r["loss"]) for r in _metrics_lines(full)])
  # Once more: the run is finished, nothing is trained or rewritten; --noresume refuses.
  written = pathlib.Path(cut, experiment.RESULTS_FILE).read_bytes()
  again = subprocess.run(command, cwd=_ROOT, capture_output=True, text=True, timeout=120,
                         check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert again.returncode == 0 and "nothing to train" in again.stdout, again.stderr[-3000:]
  assert "test top-1" in again.stdout
  assert pathlib.Path(cut, experiment.RESULTS_FILE).read_bytes() == written
  _one_line_failure(_cli(*_TINY_FMNIST, f"--workdir={cut}", "--noresume"),
                    "already holds checkpoints")
  _one_line_failure(_cli(*_TINY_FMNIST, "--config.num_epochs=3", f"--workdir={cut}"),
                    "holds a finished run of another configuration (config.num_epochs: 2 -> 3)")


def test_unreadable_stage1_checkpoint_is_refused_clearly(tmp_path):
  stage1 = str(tmp_path / "stage1")
  experiment.train_and_evaluate(tiny_config("ce", 1), stage1, splits=tiny_splits(), progress=False)
  _truncate_arrays(stage1, 4)
  config = tiny_config("crt", 1)
  config.init_checkpoint = stage1
  workdir = str(tmp_path / "crt")
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"stage-1 checkpoint \(step 4\).*unreadable"):
    experiment.train_and_evaluate(config, workdir, splits=tiny_splits(), progress=False)
  assert "Checkpoint error" in _assert_nothing_claimed(workdir)["message"]



def test_checkpoint_manifest_catches_altered_and_missing_files_before_orbax(tmp_path):
  mesh = lt.data_mesh()
  with checkpointing.Checkpointer(tmp_path / "c", max_to_keep=3) as ckpt:
    state = _state(mesh)
    for _ in range(2):
      state = state.replace(step=state.step + 1)
      ckpt.save(state, metadata={"epoch": int(state.step)})
    ckpt.check_intact(2)  # as saved: fine
    data = sorted(p for p in (tmp_path / "c" / "2").rglob("*") if p.is_file()
                  and p.parent.name == "d")[0]
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF  # same size, one byte flipped
    data.write_bytes(bytes(raw))
    with pytest.raises(checkpointing.CheckpointError, match="differs from what was saved"):
      ckpt.check_intact(2)
    data.unlink()
    with pytest.raises(checkpointing.CheckpointError, match="is missing"):
      ckpt.restore(_state(mesh), step=2)
    restored, meta, skipped = ckpt.restore_latest_readable(_state(mesh))
  assert meta == {"epoch": 1} and int(restored.step) == 1
  assert [s for s, _ in skipped] == [2] and "is missing" in skipped[0][1]
