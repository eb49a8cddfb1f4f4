"""Decoupled stage 2 and post-hoc steps: frozen backbone on a restored stage-1 checkpoint,
re-initialised or kept head, and post-hoc tau chosen on the validation split only."""
import os

import jax
import numpy as np
import pytest
from test_checkpoint import tiny_config
from test_checkpoint import tiny_splits

from experiments import experiment
from ltjax import checkpointing


def _state(workdir):
  with checkpointing.Checkpointer(os.path.join(workdir, experiment.CHECKPOINT_DIR)) as ckpt:
    return ckpt.restore_tree()[0]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("stage1"))
  experiment.train_and_evaluate(tiny_config("ce", 2), workdir, splits=tiny_splits(), progress=False)
  return workdir


@pytest.mark.parametrize("method", ["crt", "los"])
def test_stage2_trains_the_head_only(tmp_path, stage1, method):
  config = tiny_config(method, 1)
  config.init_checkpoint = stage1
  experiment.train_and_evaluate(config, str(tmp_path), splits=tiny_splits(), progress=False)
  before, after = _state(stage1), _state(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, before["params"]["backbone"],
               after["params"]["backbone"])
  assert not np.allclose(before["params"]["head"]["kernel"], after["params"]["head"]["kernel"])
  # BN in train mode (the official code): the running statistics keep moving.
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(before["batch_stats"]),
                                                   jax.tree.leaves(after["batch_stats"])))


def test_stage2_bn_eval_mode_freezes_running_stats(tmp_path, stage1):
  config = tiny_config("los", 1)
  config.init_checkpoint = stage1
  config.stage2_bn_train = False
  experiment.train_and_evaluate(config, str(tmp_path), splits=tiny_splits(), progress=False)
  jax.tree.map(np.testing.assert_array_equal, _state(stage1)["batch_stats"],
               _state(str(tmp_path))["batch_stats"])


def test_tau_norm_selects_tau_on_validation_only(tmp_path, stage1):
  config = tiny_config("tau_norm", 0)
  config.init_checkpoint = stage1
  splits = tiny_splits()
  results = experiment.train_and_evaluate(config, str(tmp_path), splits=splits, progress=False)
  sweep = results["posthoc"]["val_sweep"]
  assert len(sweep) == 21
  assert sweep[str(results["posthoc"]["tau"])] == max(sweep.values())
  # Scrambling the test labels must not change the chosen tau.
  rng = np.random.default_rng(0)
  scrambled = experiment.Splits(**{**splits.__dict__,
                              "test_labels": rng.permutation(splits.test_labels)})
  again = experiment.train_and_evaluate(config, str(tmp_path / "again"), splits=scrambled,
                                   progress=False)
  assert again["posthoc"]["tau"] == results["posthoc"]["tau"]


def test_logit_posthoc_sweeps_on_validation_and_prs_keeps_its_tau(tmp_path):
  splits = tiny_splits()
  la = experiment.train_and_evaluate(tiny_config("la_posthoc", 1), str(tmp_path / "la"),
                                splits=splits, progress=False)
  sweep = la["posthoc"]["val_sweep"]
  assert la["posthoc"]["step"] == "adjust" and len(sweep) == 21
  assert sweep[str(la["posthoc"]["tau"])] == max(sweep.values())
  # At tau = 0 the adjustment is the identity, so the sweep's first entry is plain CE on val.
  ce_val = experiment.train_and_evaluate(tiny_config("ce", 1), str(tmp_path / "ce"), splits=splits,
                                    progress=False)["val"]["top1"]
  assert sweep["0.0"] == ce_val
  prs = experiment.train_and_evaluate(tiny_config("gala_prs", 1), str(tmp_path / "prs"),
                                 splits=splits, progress=False)
  assert prs["posthoc"] == {"step": "rebalance", "tau": 1.0, "val_sweep": {}}
